"""Statistics over seeds: spreads, Student-t intervals of a mean and of paired differences, and
Holm's adjustment of a table's p-values.

The t distribution is scipy's (`scipy.stats.t`, exact for any number of seeds); this module only
decides what is compared. Values that are not finite (a diverged run's NaN) never reach scipy:
callers leave them out and say so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

CONFIDENCE = 0.95
LEVEL = 1 - CONFIDENCE  # a verdict needs a Holm-adjusted p below this


@dataclass(frozen=True)
class Difference:
    """The mean of paired differences a - b (or of one sample), its confidence interval, its
    two-sided p-value against 0 (or against `against`), and the Holm-adjusted p of its table."""

    n: int
    mean: float
    low: float  # low, high and p are NaN where every pair differs by the same amount
    high: float
    p: float
    holm: float = math.nan  # set by holm() once the table's family is known

    @property
    def estimable(self) -> bool:
        """Whether the values vary, so that the noise, and an interval, can be estimated."""
        return not math.isnan(self.p)

    @property
    def sign(self) -> int:
        """The direction (+1, -1) where the Holm-adjusted p is below LEVEL, else 0."""
        if not self.estimable or not self.holm < LEVEL:
            return 0
        return 1 if self.mean > 0 else -1

    def verdict(self, a: str, b: str) -> str:
        """Which of the two is larger (Holm-adjusted p < 0.05), that they cannot be told apart,
        or that there is no interval."""
        if not self.estimable:
            return "no verdict (every seed gives the same difference: no spread to estimate)"
        if self.sign:
            return f"{a if self.sign > 0 else b} is higher"
        return "cannot tell apart"


def t_interval(values: Sequence[float]) -> Difference:
    """Student's t over one sample: mean, 95% interval, two-sided p against a mean of 0."""
    from scipy.stats import t

    n, mean = len(values), statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    if sd == 0:  # a few seeds that happen to agree say nothing about the noise
        return Difference(n, mean, math.nan, math.nan, math.nan)
    scale = sd / math.sqrt(n)
    half = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * scale
    p = float(2 * t.sf(abs(mean) / scale, n - 1))
    return Difference(n, mean, mean - half, mean + half, p)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Student's paired t over (a[i], b[i]): mean difference, interval, p-value (2+ pairs)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired difference needs two or more pairs of equal length")
    # accuracies count images, so equal differences are equal: without rounding, float error
    # leaves a spread of 1e-15 whose t statistic would claim near-certainty
    return t_interval([round(x - y, 9) for x, y in zip(a, b)])


def holm(differences: Sequence[Difference]) -> list[Difference]:
    """Holm's step-down adjustment over one table's family of tests: the k-th smallest of m
    p-values is multiplied by m - k + 1, and each adjusted p is at least the one before it."""
    order = sorted(
        (i for i, d in enumerate(differences) if d.estimable), key=lambda i: differences[i].p
    )
    adjusted, running = list(differences), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * differences[i].p))
        adjusted[i] = replace(differences[i], holm=running)
    return adjusted


def spread(values: Sequence[float], fmt: str) -> str:
    """mean ± sample standard deviation (min–max); one value alone as itself."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return (
        f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}} "
        f"({min(values):{fmt}}–{max(values):{fmt}})"
    )


def count_interval(count: int, trials: int) -> tuple[float, float]:
    """The 95% interval of a count of events (errors) among `trials` independent ones, as a count:
    the exact (Clopper-Pearson) binomial interval of its rate (scipy's binomtest), times trials."""
    from scipy.stats import binomtest

    ci = binomtest(count, trials).proportion_ci(CONFIDENCE, method="exact")
    return ci.low * trials, ci.high * trials
