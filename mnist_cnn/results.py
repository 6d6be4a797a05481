"""results.md: the generated Answer, three selection rules, the training dynamics, the report's
claims checked, and spreads and paired comparisons over seeds.

Given runs already read back from their folders (runfolder.py reads config.json and
metrics.csv), this module only decides what is compared and composes the markdown; the numbers
come from stats.py. Every verdict follows from a Holm-adjusted p-value (below 0.05) within its
table, so the intervals beside it are the raw 95% ones. Values that are not finite (a diverged
run's NaN or inf) are shown as such and left out of statistics, with a note. Never imports main.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mnist_cnn.plots import Curve
from mnist_cnn.stats import (
    Difference,
    count_interval,
    holm,
    paired_difference,
    spread,
    t_interval,
)

FIT = 0.995  # "fits the training set": the first epoch at or above 99.5% training accuracy
REPORT_MISCLASSIFIED = 82  # the report's count of test errors at 1e-3
REPORT_RATE = 1e-3


class Column(Protocol):
    """What a results table needs of one of runfolder.py's epoch-table columns."""

    name: str
    fmt: str


@dataclass
class RunResult:
    """A finished (or stopped) run as read back from its folder."""

    name: str
    lr: float
    seed: int
    rows: list[dict]
    best: dict  # the saved epoch's row (model.pth): the lowest selection loss, or the last
    epochs: int | None = None  # as planned; None where the folder does not say
    finished: bool = True  # all epochs done, stopped by patience, or diverged
    diverged: int | None = None  # the epoch whose loss became infinite or NaN
    misclassified: int | None = None  # test mode's count beside model.pth (test.log), if any
    test_images: int = 10_000
    recipe: str = "report"  # the named settings it trained with (config.json)
    keep: str = "lowest"  # model.pth: the lowest selection loss's epoch, or the "last"
    setting: str = ""  # the folder given that names it apart from another run of its rate

    @property
    def validated(self) -> bool:
        """Whether a held-out validation split chose its model."""
        return "val_loss" in self.rows[0]

    @property
    def split(self) -> str:
        """The split the rules choose on: val, or test without a held-out split."""
        return "val" if self.validated else "test"

    @property
    def last(self) -> dict:
        """The last finished epoch."""
        return self.rows[-1]


def finite(x: float | None) -> bool:
    """Whether x is a real number to compute with (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)


def lowest_loss(r: RunResult) -> dict | None:
    """Rule (a): the epoch of the lowest selection loss, the first on ties (as training saves)."""
    rows = [row for row in r.rows if finite(row[f"{r.split}_loss"])]
    return min(rows, key=lambda row: row[f"{r.split}_loss"]) if rows else None


def highest_accuracy(r: RunResult) -> dict | None:
    """Rule (b): the epoch of the highest selection accuracy, the first on ties."""
    rows = [row for row in r.rows if finite(row[f"{r.split}_acc"])]
    return max(rows, key=lambda row: row[f"{r.split}_acc"]) if rows else None


@dataclass(frozen=True)
class Rule:
    """A way to pick one epoch of each run, whose test accuracy is then compared."""

    label: str
    pick: Callable[[RunResult], dict | None]


def notes(*parts: str) -> str:
    """A label's notes in brackets, the empty ones left out: " (a, b)", or nothing."""
    shown = [part for part in parts if part]
    return f" ({', '.join(shown)})" if shown else ""


def rules_for(results: Sequence[RunResult]) -> tuple[Rule, Rule, Rule]:
    """The three honest rules, named after the split that chooses and the one model.pth keeps."""
    validated = {r.validated for r in results}
    where, caveat = (
        ("validation", "")
        if validated == {True}
        else ("test", "chosen on the test set, optimistic")
        if validated == {False}
        else ("validation (test where none is held out)", "partly optimistic")
    )
    keeps = {r.keep for r in results}
    kept = "model.pth" + ("" if len(keeps) == 1 else " of the runs that keep it")
    return (
        Rule(
            f"lowest {where} loss" + notes(kept if "lowest" in keeps else "", caveat), lowest_loss
        ),
        Rule(f"highest {where} accuracy" + notes(caveat), highest_accuracy),
        Rule("last epoch" + notes(kept if "last" in keeps else ""), lambda r: r.last),
    )


def kept_rule(results: Sequence[RunResult]) -> int:
    """The index in rules_for of the rule that chose model.pth: (c) where every run keeps its
    last epoch, else (a)."""
    return 2 if {r.keep for r in results} == {"last"} else 0


def test_accuracy(rule: Rule) -> Callable[[RunResult], float | None]:
    """The test accuracy (in %) of the epoch a rule picks."""

    def value(r: RunResult) -> float | None:
        row = rule.pick(r)
        return 100 * row["test_acc"] if row is not None else None

    return value


# ---------------------------------------------------------------- training dynamics


def log_roughness(losses: Sequence[float]) -> float | None:
    """Mean |ln loss(e) - ln loss(e-1)| over consecutive epochs: how jagged the curve is."""
    if len(losses) < 2 or not all(finite(x) and x > 0 for x in losses):
        return None
    steps = [abs(math.log(b) - math.log(a)) for a, b in zip(losses, losses[1:])]
    return sum(steps) / len(steps)


def epochs_to_fit(r: RunResult) -> float | None:
    """The first epoch whose training accuracy is at least FIT; None if none is."""
    return next((row["epoch"] for row in r.rows if row["train_acc"] >= FIT), None)


def overfitting(r: RunResult) -> float | None:
    """The selection loss of the last epoch minus its lowest."""
    best = lowest_loss(r)
    last = r.last[f"{r.split}_loss"]
    return last - best[f"{r.split}_loss"] if best is not None and finite(last) else None


def spikes(r: RunResult) -> float:
    """Epochs whose training loss is more than twice the previous epoch's."""
    losses = [row["train_loss"] for row in r.rows]
    return sum(1 for a, b in zip(losses, losses[1:]) if finite(a) and finite(b) and b > 2 * a)


@dataclass(frozen=True)
class Statistic:
    """One number per run, with its name and format (`key` names it in the claims)."""

    name: str
    fmt: str
    of: Callable[[RunResult], float | None]
    key: str = ""


def dynamics(results: Sequence[RunResult]) -> list[Statistic]:
    """The training dynamics, defined once (the README gives the formulas)."""
    validated = {r.validated for r in results}
    split = {frozenset([True]): "validation", frozenset([False]): "test"}.get(
        frozenset(validated), "selection"
    )
    a, b = rules_for(results)[:2]
    return [
        Statistic(f"epochs to fit ({100 * FIT:g}% train acc)", ".1f", epochs_to_fit, "fit"),
        Statistic("selected epoch, rule (a)", ".1f", lambda r: (a.pick(r) or {}).get("epoch"), "a"),
        Statistic("selected epoch, rule (b)", ".1f", lambda r: (b.pick(r) or {}).get("epoch"), "b"),
        Statistic(f"overfitting ({split} loss, last - lowest)", ".4f", overfitting, "overfit"),
        Statistic(
            f"roughness ({split} loss)",
            ".4f",
            lambda r: log_roughness([row[f"{r.split}_loss"] for row in r.rows]),
            "rough",
        ),
        Statistic(
            "roughness (train loss)",
            ".4f",
            lambda r: log_roughness([row["train_loss"] for row in r.rows]),
            "rough_train",
        ),
        Statistic("spikes (train loss > 2x previous)", ".1f", spikes, "spikes"),
    ]


# ---------------------------------------------------------------- comparisons


@dataclass(frozen=True, order=True)
class Setting:
    """What one group of runs shares: a learning rate, and the folder given that trained it
    where two folders given trained one rate differently. Formats as the rate alone, or the
    rate with that folder: "0.004 (accurate60k)"."""

    lr: float
    folder: str = ""

    def __format__(self, spec: str) -> str:
        """The rate in `spec`'s format, and the folder where there is one."""
        return format(self.lr, spec) + (f" ({self.folder})" if self.folder else "")


Groups = dict[Setting, dict[int, RunResult]]


def rate_then_seed(r: RunResult) -> tuple[float, str, int]:
    """The order of every table: highest rate first, then by setting and seed."""
    return -r.lr, r.setting, r.seed


def by_rate(results: Sequence[RunResult]) -> Groups:
    """Runs grouped by setting (highest rate first), then by seed."""
    groups: Groups = {}
    for r in sorted(results, key=rate_then_seed):
        groups.setdefault(Setting(r.lr, r.setting), {})[r.seed] = r
    return groups


def named_settings(results: Sequence[RunResult]) -> bool:
    """Whether the runs are grouped by folder as well as rate (two folders trained one rate)."""
    return any(r.setting for r in results)


@dataclass
class Pair:
    """Two settings and the paired difference of one statistic (first minus second)."""

    a: Setting
    b: Setting
    d: Difference


def compare(
    groups: Groups,
    of: Callable[[RunResult], float | None],
    pairs: Sequence[tuple[Setting, Setting]],
) -> list[Pair]:
    """The paired difference of `of` for each pair of rates over their common seeds whose
    values are finite (2 or more, else the pair is left out)."""
    out = []
    for a, b in pairs:
        seeds = [
            s
            for s in sorted(set(groups[a]) & set(groups[b]))
            if finite(of(groups[a][s])) and finite(of(groups[b][s]))
        ]
        if len(seeds) >= 2:
            values = [[of(groups[lr][s]) for s in seeds] for lr in (a, b)]
            out.append(Pair(a, b, paired_difference(*values)))
    return out


def every_pair(groups: Groups) -> list[tuple[Setting, Setting]]:
    """Every pair of rates, the higher first."""
    rates = list(groups)
    return [(a, b) for i, a in enumerate(rates) for b in rates[i + 1 :]]


def adjusted(pairs: list[Pair]) -> list[Pair]:
    """The same pairs with their Holm-adjusted p-values over the list as one family."""
    return [Pair(p.a, p.b, d) for p, d in zip(pairs, holm([p.d for p in pairs]))]


def interval(d: Difference) -> str:
    """The 95% interval as printed, or why there is none."""
    return f"[{d.low:+.3f}, {d.high:+.3f}]" if d.estimable else "none (no spread)"


def p_cells(d: Difference) -> str:
    """The raw and the Holm-adjusted p-value cells."""
    return f"{d.p:.3g} | {d.holm:.3g}" if d.estimable else "– | –"


def describe(p: Pair) -> str:
    """One accuracy comparison in words, with its numbers."""
    a, b, d = p.a, p.b, p.d
    if not d.estimable:
        return (
            f"{a:g} and {b:g} cannot be judged ({a:g} − {b:g}: {d.mean:+.3f} points in each of "
            f"the {d.n} seeds; identical differences leave no spread to build an interval from, "
            "more seeds will)"
        )
    numbers = f"{d.mean:+.3f} points, 95% interval {interval(d)}, p = {d.p:.3g}, Holm {d.holm:.3g}"
    if d.sign:
        better, worse = (a, b) if d.sign > 0 else (b, a)
        return f"{better:g} beats {worse:g} by {abs(d.mean):.2f} points ({a:g} − {b:g}: {numbers})"
    return f"{a:g} and {b:g} cannot be told apart ({a:g} − {b:g}: {numbers})"


def finding(pairs: Sequence[Pair]) -> str:
    """What a rule says, in one phrase: which rates (or settings) beat which, or that none beats
    another."""
    wins = [
        f"{(p.a if p.d.sign > 0 else p.b):g} beats {(p.b if p.d.sign > 0 else p.a):g}"
        for p in pairs
        if p.d.sign
    ]
    noun = "setting" if any(p.a.folder for p in pairs) else "rate"
    return ", ".join(wins) if wins else f"no {noun} beats another"


def summary_line(rule: Rule, pairs: Sequence[Pair], groups: dict) -> str:
    """A rule's line of the Answer: every comparison for three rates or fewer; for more, the
    best rate and those that cannot be told apart from it."""
    n = max(p.d.n for p in pairs)
    head = f"- **{rule.label}**, test accuracy paired by seed over {n} seeds: "
    if len(groups) <= 3:
        return head + "; ".join(map(describe, pairs)) + "."
    of = test_accuracy(rule)
    means = {
        lr: sum(v) / len(v)
        for lr, runs in groups.items()
        if (v := [of(r) for r in runs.values() if finite(of(r))])
    }
    top = max(means, key=means.get)
    ties = [
        f"{(p.b if p.a == top else p.a):g}" for p in pairs if top in (p.a, p.b) and not p.d.sign
    ]
    return (
        head
        + f"the highest mean is {top:g} ({means[top]:.3f}%); "
        + (f"not told apart from it: {', '.join(ties)}; " if ties else "")
        + "every other rate is lower (Holm-adjusted p < 0.05)."
    )


Compared = Sequence[tuple[Rule, list[Pair]]]


def answer(results: Sequence[RunResult], compared: Compared) -> str:
    """The Answer, generated from the paired intervals of every rule: first whether the rules
    agree, then what each says."""
    lines, groups = ["## Answer", ""], by_rate(results)
    judged = [(rule, pairs) for rule, pairs in compared if pairs]
    if len(groups) == 1:
        # the rule that chose model.pth: the last epoch where the runs keep it
        (lr, runs), (rule, _) = next(iter(groups.items())), compared[kept_rule(results)]
        values = [v for r in runs.values() if finite(v := test_accuracy(rule)(r))]
        lines.append(
            f"One learning rate ({lr:g}), so nothing to compare within these runs: under the "
            f"{rule.label}, test accuracy (%) {spread(values, '.2f')} over "
            f"{len(values)} seed{'s' if len(values) > 1 else ''}."
        )
    elif not judged:
        lines.append(
            "Each rate has fewer than two seeds in common with another, so no interval "
            "can say whether one rate is better: train more seeds (--seed 0 1 2 3 4)."
        )
    else:
        findings = {
            rule.label: finding(pairs)
            for rule, pairs in judged
            if any(p.d.estimable for p in pairs)
        }
        unjudged = [rule.label for rule, _ in judged if rule.label not in findings]
        if len(set(findings.values())) <= 1:
            said = next(iter(findings.values()), "")
            first = f"The selection rules agree: {said}." if said else ""
        else:
            first = (
                "The selection rules disagree: "
                + "; ".join(f"under the {label}, {said}" for label, said in findings.items())
                + "."
            )
        if unjudged:
            first += (
                f" The {' and the '.join(unjudged)} cannot judge (every seed gives the same "
                "difference: no spread)."
            )
        first = first.strip()
        lines += [first, ""]
        lines += [summary_line(rule, pairs, groups) for rule, pairs in judged]
        lines += [
            "",
            "Better means: the paired difference's Holm-adjusted p-value (over the rule's table) "
            "is below 0.05. Intervals are Student's t over the seeds (paired: same seed, same "
            "data order), 95%, unadjusted.",
        ]
    unfinished = [
        f"{r.name} ({len(r.rows)} of {r.epochs} epochs)" for r in results if not r.finished
    ]
    if unfinished:
        lines += [
            "",
            f"**Unfinished runs**, counted as they stand: {', '.join(unfinished)}. "
            "Their last epoch is not the end of the run; resume them before reading this.",
        ]
    diverged = [f"{r.name} (in epoch {r.diverged})" for r in results if r.diverged]
    if diverged:
        lines += [
            "",
            f"**Diverged runs**: {', '.join(diverged)}: their loss became infinite or NaN; they "
            "are counted with the epochs before it.",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------- tables


def left_out_note(results: Sequence[RunResult], stats: Sequence[Statistic]) -> list[str]:
    """A note naming the runs whose value of a statistic is not a number (left out)."""
    missing = [
        f"{s.name}: {', '.join(r.name for r in results if not finite(s.of(r)))}"
        for s in stats
        if any(not finite(s.of(r)) for r in results)
    ]
    return (
        ["", "Not a number, so left out of the statistics: " + "; ".join(missing) + "."]
        if missing
        else []
    )


def shown(value: float | None, fmt: str) -> str:
    """A cell: the value, or what it is instead (never fit: –; NaN, inf: as such)."""
    return "–" if value is None else f"{value:{fmt}}"


def per_rate_table(groups: dict, stats: Sequence[Statistic]) -> list[str]:
    """Per rate: mean ± sd (min–max) of each statistic over its seeds with finite values."""
    lines = [
        "| learning rate | seeds | " + " | ".join(s.name for s in stats) + " |",
        "|---" * (len(stats) + 2) + "|",
    ]
    for lr, runs in groups.items():
        cells = []
        for s in stats:
            values = [s.of(r) for r in runs.values() if finite(s.of(r))]
            cells.append(spread(values, s.fmt) if values else "–")
        lines.append(f"| {lr:g} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def pairs_table(rows: Sequence[tuple[str, Pair]]) -> list[str]:
    """Paired differences, one row per (statistic, pair of rates)."""
    lines = [
        "| statistic | rates | seeds | mean difference | 95% interval | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in rows:
        lines.append(
            f"| {name} | {p.a:g} − {p.b:g} | {p.d.n} | {p.d.mean:+.3f} | {interval(p.d)} "
            f"| {p_cells(p.d)} | {p.d.verdict(f'{p.a:g}', f'{p.b:g}')} |"
        )
    return lines


def seed_statistics(results: Sequence[RunResult], compared: Compared) -> str:
    """Per rate: the test accuracy under each rule over seeds; per rule, every pair of rates."""
    groups = by_rate(results)
    accuracy = [
        Statistic(f"test acc, {rule.label}", ".3f", test_accuracy(rule)) for rule, _ in compared
    ]
    lines = [
        "## Over seeds",
        "",
        "Mean ± standard deviation over seeds (min–max in brackets), test accuracies in %.",
        "",
        *per_rate_table(groups, accuracy),
        *left_out_note(results, accuracy),
    ]
    for rule, pairs in compared:
        lines += [
            "",
            f"Paired by seed, {rule.label}: test accuracy of the first rate minus the "
            "second, in points; Holm over this table's rows.",
            "",
            *pairs_table([("test acc", p) for p in pairs]),
        ]
    return "\n".join(lines)


def dynamics_section(results: Sequence[RunResult]) -> str:
    """Per run and per rate, the training dynamics; paired differences for every pair of rates."""
    stats, groups = dynamics(results), by_rate(results)
    lines = [
        "## Training dynamics",
        "",
        "Per run (definitions in the README: epochs to fit, selected epochs, overfitting, "
        "roughness, spikes; – where a run never fits):",
        "",
        "| run | learning rate | seed | " + " | ".join(s.name for s in stats) + " |",
        "|---" * (len(stats) + 3) + "|",
    ]
    for r in sorted(results, key=rate_then_seed):
        lines.append(
            f"| {r.name} | {r.lr:g} | {r.seed} | "
            + " | ".join(shown(s.of(r), s.fmt) for s in stats)
            + " |"
        )
    lines += ["", "Per rate, over seeds:", "", *per_rate_table(groups, stats)]
    lines += left_out_note(results, stats)
    if len({r.seed for r in results}) > 1:
        rows = [(s.name, p) for s in stats for p in compare(groups, s.of, every_pair(groups))]
        adjusted_rows = list(zip([n for n, _ in rows], adjusted([p for _, p in rows])))
        if adjusted_rows:
            lines += [
                "",
                "Paired by seed, first rate minus second; Holm over all rows of this table.",
                "",
                *pairs_table(adjusted_rows),
            ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the report's claims


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
        values = [of(r) for r in runs.values() if finite(of(r))]
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


# ---------------------------------------------------------------- the rate curve


@dataclass
class RatePoint:
    """One rate of the curve: its seeds, per rule the mean test accuracy with the 95% interval
    of the mean, and the mean selected epoch under rules (a) and (b)."""

    lr: float
    seeds: int
    accuracy: dict[str, Difference]  # rule label -> mean, low, high (NaN bounds: no spread)
    epochs: dict[str, float]
    diverged: int


def rate_curve(results: Sequence[RunResult]) -> list[RatePoint]:
    """The curve behind rates.png, lowest rate first."""
    rules, points = rules_for(results), []
    for lr, runs in sorted(by_rate(results).items()):
        accuracy = {}
        for rule in rules:
            values = [v for r in runs.values() if finite(v := test_accuracy(rule)(r))]
            if values:
                accuracy[rule.label] = t_interval(values)
        epochs = {
            rule.label: sum(e) / len(e)
            for rule in rules[:2]
            if (e := [row["epoch"] for r in runs.values() if (row := rule.pick(r))])
        }
        diverged = sum(1 for r in runs.values() if r.diverged)
        points.append(RatePoint(lr.lr, len(runs), accuracy, epochs, diverged))
    return points


def rate_section(points: Sequence[RatePoint], suggestion: str) -> str:
    """results.md's table behind rates.png."""
    labels = list(points[0].accuracy)
    lines = [
        "## The rate curve",
        "",
        "Behind rates.png: per rate, test accuracy (%) mean ± sd over seeds under each rule "
        "(95% interval of the mean in brackets), and the mean selected epoch.",
        "",
        "| learning rate | seeds | "
        + " | ".join(f"test acc, {label}" for label in labels)
        + " | epoch (a) | epoch (b) | diverged |",
        "|---" * (len(labels) + 5) + "|",
    ]
    for p in points:
        cells = []
        for label in labels:
            d = p.accuracy.get(label)
            cells.append(
                "–"
                if d is None
                else f"{d.mean:.3f} [{d.low:.3f}, {d.high:.3f}]"
                if d.estimable
                else f"{d.mean:.3f} ({'one seed' if d.n == 1 else 'no spread'})"
            )
        epochs = [f"{p.epochs[k]:.1f}" if k in p.epochs else "–" for k in labels[:2]]
        lines.append(
            f"| {p.lr:g} | {p.seeds} | " + " | ".join(cells + epochs) + f" | {p.diverged} |"
        )
    if suggestion:
        lines += ["", f"The range test (lr_find.csv): {suggestion}."]
    return "\n".join(lines)


# ---------------------------------------------------------------- the whole file


def results_table(
    results: Sequence[RunResult],
    pick: Callable[[RunResult], dict | None],
    columns: Sequence[Column],
) -> str:
    """A markdown table of one row per run, at the epoch `pick` chooses."""
    cols = [c for c in columns if c.name not in ("seconds", "saved")]
    lines = [
        "| run | learning rate | seed | " + " | ".join(c.name for c in cols) + " |",
        "|---" * (len(cols) + 3) + "|",
    ]
    for r in results:
        row = pick(r) or {}
        lines.append(
            f"| {r.name} | {r.lr:g} | {r.seed} | "
            + " | ".join(f"{row[c.name]:{c.fmt}}" if c.name in row else "–" for c in cols)
            + " |"
        )
    return "\n".join(lines)


def mixed_recipes(results: Sequence[RunResult]) -> bool:
    """Whether the runs trained with more than one recipe."""
    return len({r.recipe for r in results}) > 1


def rate_axis(results: Sequence[RunResult]) -> bool:
    """Whether the runs differ by learning rate alone (one recipe, one folder per rate): only
    then is there a rate curve."""
    return not mixed_recipes(results) and not named_settings(results)


def settings_note(results: Sequence[RunResult]) -> str:
    """Why the groups carry folder names: two of the folders given trained one rate."""
    folders = ", ".join(dict.fromkeys(r.setting for r in results))
    return (
        f"**Settings**: two of the folders given ({folders}) trained one learning rate, so each "
        "group is named by its folder, and a comparison at one rate compares those folders' "
        "settings (paired by seed as before); the Claims section and the rate curve are left out."
    )


def recipes_note(groups: Groups) -> str:
    """Which recipe each rate's runs trained with, where the runs mix recipes: the comparisons
    between rates are then comparisons between recipes."""
    named = {
        lr: ", ".join(sorted({r.recipe for r in runs.values()})) for lr, runs in groups.items()
    }
    return (
        "**Recipes**: "
        + "; ".join(f"{lr:g}: {recipe}" for lr, recipe in named.items())
        + ". These runs mix recipes, so a comparison of two rates here compares their recipes "
        "(paired by seed as before); the Claims section reads only the report recipe's runs, "
        "and no rate curve is drawn."
    )


def report(
    results: Sequence[RunResult],
    columns: Sequence[Column],
    loss_note: str,
    skipped: Sequence[str] = (),
    suggestion: str = "",
) -> str:
    """The whole of results.md: the Answer, a table per rule, the training dynamics, the
    report's claims, the rate curve (four rates or more) and the statistics over seeds."""
    results = sorted(results, key=rate_then_seed)
    rules, groups = rules_for(results), by_rate(results)
    compared = [
        (rule, adjusted(compare(groups, test_accuracy(rule), every_pair(groups)))) for rule in rules
    ]
    parts = [
        "# Results",
        "",
        answer(results, compared),
        "",
        *(
            [settings_note(results), ""]
            if named_settings(results)
            else [recipes_note(groups), ""]
            if mixed_recipes(results)
            else []
        ),
        *([f"**Skipped**: {'; '.join(skipped)}.", ""] if skipped else []),
        f"{loss_note}. Accuracies in the run tables are fractions of the images.",
        "",
    ]
    for letter, rule in zip("abc", rules):
        parts += [
            f"## Per run, rule ({letter}): {rule.label}",
            "",
            results_table(results, rule.pick, columns),
            "",
        ]
    parts += [dynamics_section(results), ""]
    reported = [r for r in results if r.recipe == "report"]
    if reported and not named_settings(results):
        parts += [claims(reported), ""]
    if len(groups) >= 4 and rate_axis(results):  # a rate curve across recipes is none
        parts += [rate_section(rate_curve(results), suggestion), ""]
    if len({r.seed for r in results}) > 1:
        parts += [seed_statistics(results, compared), ""]
    return "\n".join(parts)


def rate_curves(results: Sequence[RunResult]) -> list[Curve]:
    """compare.png's curves: one per rate (mean over seeds), rules (a) and (b) marked."""
    a, b, _ = rules_for(results)
    return [
        Curve(
            f"lr {lr:g}"
            + (f" ({len(rs)} seeds)" if len(rs) > 1 else f" ({next(iter(rs.values())).name})"),
            [r.rows for r in rs.values()],
            "test",
            [(a.pick(r) or {}).get("epoch", 0) for r in rs.values()],
            [(b.pick(r) or {}).get("epoch", 0) for r in rs.values()],
            f"(a) {a.label}",
            f"(b) {b.label}",
        )
        for lr, rs in by_rate(results).items()
    ]
