"""The report's claims checked against a study's runs: the monotone trends over the rate, the
misclassified count at 1e-3 (one count: its exact binomial interval), each with its verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnist_cnn.analysis.comparisons import Pair, Setting, adjusted, by_rate, compare, interval
from mnist_cnn.analysis.rules import (
    RunResult,
    Statistic,
    dynamics,
    finite_values,
    rules_for,
    shown,
    test_accuracy,
)
from mnist_cnn.analysis.stats import (
    count_interval,
    t_interval,
)

REPORT_MISCLASSIFIED = 82  # the report's count of test errors at 1e-3


REPORT_RATE = 1e-3


@dataclass
class Claim:
    """One claim of the report, the statistic that tests it, its numbers and its verdict."""

    text: str
    statistic: str
    numbers: str
    verdict: str


def adjacent(groups: dict, stat: Statistic) -> list[Pair]:
    """Adjacent pairs of rates, the lower first: the statistic's paired difference (lower
    minus higher) for a claim about what a lower rate does."""
    rates = sorted(groups)
    return compare(groups, stat.of, list(zip(rates, rates[1:])))


def monotone_verdict(pairs: Sequence[Pair], direction: int, expected: int) -> str:
    """supported: every adjacent pair (all `expected` of them) differs in the claimed direction;
    contradicted: one differs the other way; else cannot tell."""
    if expected and len(pairs) == expected and all(p.d.sign == direction for p in pairs):
        return "supported"
    if any(p.d.sign == -direction for p in pairs):
        return "contradicted"
    return "cannot tell"


def above(
    groups: dict, of: Callable[[RunResult], float | None], threshold: float
) -> tuple[str, str]:
    """Whether every rate's mean is above a threshold (its 95% interval, or, where every seed
    gives the same value, that value): the numbers and the verdict."""
    cells, verdicts = [], []
    for lr, runs in sorted(groups.items()):
        values = finite_values(of(r) for r in runs.values())
        if len(values) < 2:
            cells.append(f"{lr:g}: {shown(values[0] if values else None, '.2f')} (one seed)")
            verdicts.append("cannot tell")
            continue
        d = t_interval(values)
        low, high = (d.low, d.high) if d.estimable else (d.mean, d.mean)
        spread_text = f"[{low:.2f}, {high:.2f}]" if d.estimable else "(every seed)"
        cells.append(f"{lr:g}: {d.mean:.2f} {spread_text}")
        verdicts.append(
            "contradicted"
            if high < threshold
            else "supported"
            if low > threshold
            else "cannot tell"
        )
    return "; ".join(cells), combined(verdicts)


def pair_numbers(pairs: Sequence[Pair]) -> str:
    """Adjacent pairs' differences with intervals and Holm p."""
    if not pairs:
        return "fewer than two common seeds"
    return "; ".join(
        f"{p.a:g} − {p.b:g}: {p.d.mean:+.3f} {interval(p.d)}"
        + (f", Holm p {p.d.holm:.2g}" if p.d.estimable else "")
        for p in pairs
    )


def combined(verdicts: Sequence[str]) -> str:
    """Several tests of one claim: contradicted by any, supported only by all."""
    if "contradicted" in verdicts:
        return "contradicted"
    return "supported" if set(verdicts) == {"supported"} else "cannot tell"


# the monotone claims: the statistics that test each, and whether a lower rate gives more (+1)
MONOTONE = (
    ("The lower the rate, the slower the network fits the training set", (("fit", +1),)),
    ("The lower the rate, the later it overfits", (("a", +1),)),
    ("With Adam, a lower rate did not make overfitting worse", (("overfit", -1),)),
    (
        "The lower the rate, the steadier the updates and the smoother the loss curves",
        (("rough", -1), ("rough_train", -1)),
    ),
)


def claims(results: Sequence[RunResult]) -> str:
    """The Claims section: each claim of the report, tested with intervals over seeds."""
    groups = by_rate(results)
    stats = {s.key: s for s in dynamics(results)}
    # Holm over every pair of the monotone claims, as one family
    raw = [
        [(stats[k], direction, adjacent(groups, stats[k])) for k, direction in keys]
        for _, keys in MONOTONE
    ]
    family = iter(adjusted([p for claim in raw for _, _, pairs in claim for p in pairs]))
    tested = [
        [(stat, direction, [next(family) for _ in pairs]) for stat, direction, pairs in claim]
        for claim in raw
    ]
    last = rules_for(results)[2]
    train_numbers, train_verdict = above(groups, lambda r: 100 * r.last["train_acc"], 99.60)
    test_numbers, test_verdict = above(groups, test_accuracy(last), 99.0)
    rows = [
        Claim(
            "All three rates fit the training set above 99.60% and the test set above 99%",
            "last epoch: mean train and test accuracy per rate (%) with its 95% interval; "
            "every rate's interval must lie above the threshold",
            f"train: {train_numbers}. test: {test_numbers}",
            combined([train_verdict, test_verdict]),
        ),
    ]
    for (text, _), claim in zip(MONOTONE, tested):
        rows.append(
            Claim(
                text,
                "; ".join(
                    f"{stat.name}, lower rate minus higher {'> 0' if direction > 0 else '< 0'}"
                    for stat, direction, _ in claim
                ),
                " / ".join(pair_numbers(pairs) for _, _, pairs in claim),
                combined(
                    [
                        monotone_verdict(pairs, direction, len(groups) - 1)
                        for _, direction, pairs in claim
                    ]
                ),
            )
        )
    rows.append(misclassified_claim(groups))
    lines = [
        "## Claims",
        "",
        "Each claim of the report, the statistic that tests it and a verdict that follows from "
        "the intervals: a monotone claim is supported when every adjacent pair of rates differs "
        "in the claimed direction (Holm-adjusted p < 0.05 over all the pairs of this table), "
        "contradicted when one pair differs the other way, and cannot tell otherwise.",
        "",
        "| # | the report's claim | statistic | numbers | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {c.text} | {c.statistic} | {c.numbers} | **{c.verdict}** |"
        for i, c in enumerate(rows, 1)
    ]
    return "\n".join(lines)


def misclassified_claim(groups: dict) -> Claim:
    """Claim 6: 82 misclassified test images at 1e-3, against this study's runs at 1e-3 (the
    model.pth of each seed) and test mode's count where one was written beside it. Over seeds
    that vary, one run's prediction interval; for one run (or seeds that all agree), the count's
    own binomial interval: one run can contradict 82 but never confirm it to the image."""
    text = f"{REPORT_MISCLASSIFIED} test images are misclassified at 1e-3"
    statistic = (
        "misclassified test images of model.pth at 1e-3; supported when 82 lies in the 95% "
        "prediction interval of one run over the seeds"
    )
    runs = groups.get(Setting(REPORT_RATE))
    if not runs:
        return Claim(text, statistic, "no run at 1e-3", "cannot tell")
    counts = [round((1 - r.best["test_acc"]) * r.test_images) for r in runs.values()]
    tested = [f"{r.name}: {r.misclassified}" for r in runs.values() if r.misclassified is not None]
    numbers = "per seed " + ", ".join(map(str, counts))
    if tested:
        numbers += f"; test mode ({', '.join(tested)})"
    d = t_interval(counts) if len(counts) > 1 else None
    if d is None or not d.estimable:
        return one_count_claim(text, numbers, runs, counts)
    half = (d.high - d.mean) * math.sqrt(len(counts) + 1)  # a new run: sd * sqrt(1 + 1/n)
    low, high = d.mean - half, d.mean + half
    numbers += f"; mean {d.mean:.1f}, one run's 95% prediction interval [{low:.1f}, {high:.1f}]"
    return Claim(
        text,
        statistic,
        numbers,
        "supported" if low <= REPORT_MISCLASSIFIED <= high else "contradicted",
    )


def one_count_claim(text: str, numbers: str, runs: dict, counts: list[int]) -> Claim:
    """Claim 6 from one count (test mode's where written): its exact 95% binomial interval
    over the test images; 82 outside it contradicts the claim, inside it cannot tell."""
    run = next(iter(runs.values()))
    count = counts[0] if run.misclassified is None else run.misclassified
    low, high = count_interval(count, run.test_images)
    statistic = (
        "misclassified test images of model.pth at 1e-3, one count; contradicted when 82 lies "
        "outside the count's exact 95% binomial interval over the test images, else cannot "
        "tell (one run cannot confirm a count to the image)"
    )
    numbers += f"; {count}'s 95% binomial interval [{low:.1f}, {high:.1f}]"
    verdict = "cannot tell" if low <= REPORT_MISCLASSIFIED <= high else "contradicted"
    return Claim(text, statistic, numbers, verdict)
