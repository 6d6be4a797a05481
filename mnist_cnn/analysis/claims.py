"""The report's claims checked against a study's runs: the monotone trends over the rate, the
misclassified count at 1e-3 (one count: its exact binomial interval), each with its verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from mnist_cnn.analysis.comparisons import Pair, Setting, adjusted, by_rate, compare, interval
from mnist_cnn.analysis.rules import (
    RunResult,
    Statistic,
    common_fit,
    dynamics,
    finite,
    finite_values,
    gap_at_fit,
    overfitting,
    rules_for,
    shown,
    test_accuracy,
)
from mnist_cnn.analysis.stats import (
    Difference,
    count_interval,
    holm,
    needed_text,
    paired_difference,
    seeds_for_prediction,
    seeds_needed,
    t_interval,
)
from mnist_cnn.settings import OPTIMIZER_NAMES

REPORT_MISCLASSIFIED = 82  # the report's count of test errors at 1e-3
FULL_TEST_SET = 10_000  # MNIST's test images: the count was made on all of them
COUNT_MARGIN = 0.2  # supported only where one run's interval lies within ±20% of the count


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
        if d.estimable and (low < 0 or high > 100):  # an accuracy lies within 0-100%
            spread_text = f"[{max(low, 0):.2f}, {min(high, 100):.2f}] (clipped to 0–100)"
        verdict = "contradicted" if high < threshold else "supported" if low > threshold else ""
        if not verdict:
            effect = (d.mean - threshold) / statistics.stdev(values) if d.estimable else 0
            spread_text += f", seeds needed {needed_text(replace(d, needed=seeds_needed(effect)))}"
        cells.append(f"{lr:g}: {d.mean:.2f} {spread_text}")
        verdicts.append(verdict or "cannot tell")
    return "; ".join(cells), combined(verdicts)


def pair_numbers(pairs: Sequence[Pair]) -> str:
    """Adjacent pairs' differences with intervals and Holm p."""
    if not pairs:
        return "fewer than two common seeds"
    return "; ".join(
        f"{p.a:g} − {p.b:g}: {p.d.mean:+.3f} {interval(p.d)}"
        + (f", Holm p {p.d.holm:.2g}" if p.d.estimable else "")
        + ("" if p.d.sign else f", seeds needed {needed_text(p.d)}")
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
    ("With {optimizer}, a lower rate did not make overfitting worse", (("overfit", -1),)),
    (
        "The lower the rate, the steadier the updates and the smoother the loss curves",
        (("rough", -1), ("rough_train", -1)),
    ),
)


def claims(results: Sequence[RunResult]) -> str:
    """The Claims section: each claim of the report, tested with intervals over seeds; where
    Adam's and SGD's runs are summarized together, the claims on Adam's and a seventh row, the
    report's explanation, put to SGD as its control."""
    optimizers = {r.optimizer for r in results}
    if optimizers != {"adam", "sgd"}:
        return claims_section(claim_rows(by_rate(results), results))
    adam = [r for r in results if r.optimizer == "adam"]
    rows = claim_rows(by_rate_alone(adam), adam)
    return claims_section([*rows, explanation_claim(results)], EXPLANATION_NOTE)


def by_rate_alone(results: Sequence[RunResult]) -> dict:
    """Runs grouped by rate alone (the folder that names a group apart left out), then seed."""
    groups: dict = {}
    for r in sorted(results, key=lambda r: (-r.lr, r.seed)):
        groups.setdefault(Setting(r.lr), {})[r.seed] = r
    return groups


def claim_rows(groups: dict, results: Sequence[RunResult]) -> list[Claim]:
    """Claims 1-6 on one set of runs grouped by rate."""
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
    # claim 4 names the optimizer its runs used: the report's Adam, or the control's SGD
    names = {OPTIMIZER_NAMES[r.optimizer] for r in results}
    optimizer = names.pop() if len(names) == 1 else " and ".join(sorted(names))
    for (text, _), claim in zip(MONOTONE, tested):
        rows.append(
            Claim(
                text.format(optimizer=optimizer),
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
    return rows


def claims_section(rows: Sequence[Claim], note: str = "") -> str:
    """The Claims section's text: how verdicts follow, then one table row per claim."""
    lines = [
        "## Claims",
        "",
        "Each claim of the report, the statistic that tests it and a verdict that follows from "
        "the intervals: a monotone claim is supported when every adjacent pair of rates differs "
        "in the claimed direction (Holm-adjusted p < 0.05 over all the pairs of this table), "
        "contradicted when one pair differs the other way, and cannot tell otherwise. Supported "
        "means the test could have contradicted the claim and did not: an interval wider than "
        "the margin a row states cannot tell. Where a test cannot tell, seeds needed says how "
        "many seeds a t test at the 5% level would need to decide it 80% of the time at the "
        "observed difference and spread (paired, or for a threshold one-sample).",
        *([note] if note else []),
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
    low_end, high_end = margin_of(REPORT_MISCLASSIFIED)
    statistic = (
        "misclassified test images of model.pth at 1e-3 on the full test set; supported when "
        "the 95% prediction interval of one run over the seeds holds 82 and lies within "
        f"±{COUNT_MARGIN:.0%} of it ({low_end:g}–{high_end:g}), contradicted when it misses 82"
    )
    runs = groups.get(Setting(REPORT_RATE))
    if not runs:
        return Claim(text, statistic, "no run at 1e-3", "cannot tell")
    partial = sorted({r.test_images for r in runs.values()} - {FULL_TEST_SET})
    if partial:
        tested_on = ", ".join(f"{n:,}" for n in partial)
        return Claim(
            text,
            statistic,
            f"tested on {tested_on} images, not the full {FULL_TEST_SET:,}: a count of "
            "another set says nothing of this one",
            "cannot tell",
        )
    counts = [round((1 - r.best["test_acc"]) * r.test_images) for r in runs.values()]
    tested = [f"{r.name}: {r.misclassified}" for r in runs.values() if r.misclassified is not None]
    numbers = "per seed " + ", ".join(map(str, counts))
    if tested:
        numbers += f"; test mode ({', '.join(tested)})"
    d = t_interval(counts) if len(counts) > 1 else None
    if d is None or not d.estimable:
        return one_count_claim(text, numbers, runs, counts)
    half = (d.high - d.mean) * math.sqrt(len(counts) + 1)  # a new run: sd * sqrt(1 + 1/n)
    low, high = max(d.mean - half, 0), d.mean + half  # a count is never below 0
    clipped = " (clipped at 0)" if d.mean - half < 0 else ""
    numbers += (
        f"; mean {d.mean:.1f}, one run's 95% prediction interval [{low:.1f}, {high:.1f}]{clipped}"
    )
    if not low <= REPORT_MISCLASSIFIED <= high:
        return Claim(text, statistic, numbers, "contradicted")
    if low_end <= low and high <= high_end:
        return Claim(text, statistic, numbers, "supported")
    spread = statistics.stdev(counts)
    return Claim(text, statistic, numbers + f", {wider_than_margin(d.mean, spread)}", "cannot tell")


def margin_of(count: int) -> tuple[float, float]:
    """The counts within COUNT_MARGIN of a claimed count."""
    return count * (1 - COUNT_MARGIN), count * (1 + COUNT_MARGIN)


def wider_than_margin(mean: float, sd: float) -> str:
    """How many seeds would bring one run's prediction interval within the margin (at the
    observed mean and spread), or that none would: the interval never gets narrower than one
    run's own spread, about ±1.96 sd."""
    low_end, high_end = margin_of(REPORT_MISCLASSIFIED)
    n = seeds_for_prediction(sd, min(mean - low_end, high_end - mean))
    if n is None:
        return "wider than the margin at any number of seeds (one run's own spread is)"
    return f"wider than the margin; seeds needed {n:,}"


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


EXPLANATION = (
    "The report's explanation of claim 4: Adam's adaptive step is why a lower rate did not "
    "make overfitting worse (with SGD, which does not adapt, it would)"
)
EXPLANATION_NOTE = (
    "Claims 1–6 are judged on the Adam runs, the report's optimizer. Claim 7 puts the report's "
    "explanation to SGD as its control: under each optimizer the trend of overfitting from its "
    "highest rate to its lowest (lowest minus highest, paired by seed), and the difference of "
    "the two trends, SGD's minus Adam's, paired by seed. Because a lower rate also fits more "
    "slowly, the row measures overfitting twice: as claim 4 does, and at a matched fit (the "
    "selection loss minus the training loss at the first epoch whose training loss reaches the "
    "lowest level every run reaches), and it is judged at the matched fit, so that slower "
    "fitting is not read as less overfitting. The explanation is supported when with SGD a "
    "lower rate overfits more, and more so than with Adam (both Holm-adjusted p < 0.05 over the "
    "row's tests); contradicted when with SGD a lower rate overfits less, or SGD's trend is "
    "the lower of the two; cannot tell otherwise."
)


def trend(runs: Sequence[RunResult], of: Callable[[RunResult], float | None]) -> dict[int, float]:
    """Per seed, the statistic at an optimizer's lowest rate minus at its highest."""
    low, high = min(r.lr for r in runs), max(r.lr for r in runs)
    at = {(r.lr, r.seed): of(r) for r in runs}
    return {
        seed: lower - higher
        for seed in sorted({r.seed for r in runs})
        if finite(lower := at.get((low, seed))) and finite(higher := at.get((high, seed)))
    }


def explanation_claim(results: Sequence[RunResult]) -> Claim:
    """Claim 7: the explanation, by SGD's overfitting trend against Adam's, on two statistics."""
    level = common_fit(results)
    stats = [Statistic("overfitting (selection loss, last - lowest)", ".4f", overfitting, "o")]
    if level is not None:
        name = f"gap at matched fit (selection - train loss where train loss first ≤ {level:.4f})"
        stats.append(Statistic(name, ".4f", lambda r: gap_at_fit(r, level), "m"))
    runs = {o: [r for r in results if r.optimizer == o] for o in ("adam", "sgd")}
    raw = []
    for stat in stats:
        adam, sgd = trend(runs["adam"], stat.of), trend(runs["sgd"], stat.of)
        seeds = sorted(set(adam) & set(sgd))
        if len(seeds) < 2:
            continue
        tests = [
            one_sample(list(adam.values())),
            one_sample(list(sgd.values())),
            paired_difference([sgd[s] for s in seeds], [adam[s] for s in seeds]),
        ]
        raw.append((stat, tests))
    family = iter(holm([d for _, tests in raw for d in tests]))
    judged = [(stat, [next(family) for _ in tests]) for stat, tests in raw]
    if not judged:
        return Claim(EXPLANATION, "", "fewer than two seeds with both optimizers", "cannot tell")
    numbers = [
        f"{stat.name}: Adam {adam_d.mean:+.4f} {interval(adam_d)}, SGD {sgd_d.mean:+.4f} "
        f"{interval(sgd_d)}, SGD − Adam {both.mean:+.4f} {interval(both)}"
        + (f", Holm p {both.holm:.2g}" if both.estimable else "")
        + ("" if both.sign else f", seeds needed {needed_text(both)}")
        for stat, (adam_d, sgd_d, both) in judged
    ]
    # judged at the matched fit where there is one: claim 4's statistic reads slower fitting
    # as less overfitting, and SGD at its lowest rate fits slowest of all
    _, (_, sgd_d, both) = judged[-1]
    verdict = (
        "supported"
        if both.sign > 0 and sgd_d.sign > 0
        else "contradicted"
        if both.sign < 0 or sgd_d.sign < 0
        else "cannot tell"
    )
    rates = {
        o: "/".join(f"{lr:g}" for lr in (max(r.lr for r in rs), min(r.lr for r in rs)))
        for o, rs in runs.items()
    }
    statistic = (
        f"lowest rate minus highest (Adam {rates['adam']}, SGD {rates['sgd']}), per optimizer "
        "and SGD minus Adam paired by seed, > 0 for SGD and for the difference; on "
        + " and on ".join(stat.name for stat, _ in judged)
        + f"; judged on the {judged[-1][0].name.split(' (')[0]}"
    )
    return Claim(EXPLANATION, statistic, "; ".join(numbers), verdict)


def one_sample(values: Sequence[float]) -> Difference:
    """A trend's mean over seeds with its interval and p against 0 (as a paired difference)."""
    return paired_difference(values, [0.0] * len(values))
