"""Runs grouped by their setting (rate, recipe) and compared over seeds: paired differences with
Holm-adjusted p-values, and each comparison in words. Every verdict follows from an adjusted
p-value below 0.05 within its table; where every seed gives the same difference there is no
spread to estimate, so no interval and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnist_cnn.analysis.rules import RunResult, finite, finite_values
from mnist_cnn.analysis.stats import (
    Difference,
    holm,
    needed_text,
    paired_difference,
)


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


def rate_then_seed(r: RunResult) -> tuple:
    """The order of every table: highest rate first, then by the folder given and the settings
    (their values, in order), and by seed."""
    return -r.lr, r.order, r.setting, r.seed


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
            values = [finite_values(of(groups[lr][s]) for s in seeds) for lr in (a, b)]
            out.append(Pair(a, b, paired_difference(*values)))
    return out


def every_pair(groups: Groups) -> list[tuple[Setting, Setting]]:
    """Every pair of rates, the higher first."""
    rates = list(groups)
    return [(a, b) for i, a in enumerate(rates) for b in rates[i + 1 :]]


def adjusted(pairs: list[Pair]) -> list[Pair]:
    """The same pairs with their Holm-adjusted p-values over the list as one family."""
    return [Pair(p.a, p.b, d) for p, d in zip(pairs, holm([p.d for p in pairs]))]


def interval(d: Difference, bound: float = math.inf) -> str:
    """The 95% interval as printed, within ±bound (a difference of accuracies in points lies
    within ±100), or why there is none."""
    if not d.estimable:
        return "none (no spread)"
    clipped = " (clipped)" if d.low < -bound or d.high > bound else ""
    return f"[{max(d.low, -bound):+.3f}, {min(d.high, bound):+.3f}]{clipped}"


def boot_interval(d: Difference) -> str:
    """The bootstrap's 95% interval as printed (none from fewer than four seeds)."""
    if not d.estimable or math.isnan(d.boot[0]):
        return "–"
    return f"[{d.boot[0]:+.3f}, {d.boot[1]:+.3f}]"


def improvement_cell(d: Difference) -> str:
    """The probability of improvement with its bootstrap interval (from four seeds)."""
    if not d.estimable:
        return "–"
    low, high = d.improvement_ci
    return f"{d.improvement:.2f}" + ("" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]")


def needed_cell(d: Difference) -> str:
    """Seeds needed, for a comparison that cannot tell; a dash where it can."""
    return "–" if d.sign else needed_text(d)


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
    numbers = (
        f"{d.mean:+.3f} points, 95% interval {interval(d, 100)}, p = {d.p:.3g}, Holm {d.holm:.3g}"
    )
    if d.sign:
        better, worse = (a, b) if d.sign > 0 else (b, a)
        return f"{better:g} beats {worse:g} by {abs(d.mean):.2f} points ({a:g} − {b:g}: {numbers})"
    return (
        f"{a:g} and {b:g} cannot be told apart ({a:g} − {b:g}: {numbers}; seeds a paired test "
        f"would need: {needed_text(d)})"
    )


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
