"""Statistics over seeds: spreads, and paired differences with Student-t intervals and p-values.

Pure Python, exact for any number of seeds: the t distribution's CDF is the regularised
incomplete beta function (Lentz's continued fraction, Numerical Recipes 6.4) and its quantile
is found by bisection on that CDF, so no table runs out at 30 degrees of freedom.
Imports nothing of this project (results.py imports it for results.md).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the continued fraction converges fast only on this side
        return 1.0 - incomplete_beta(b, a, 1 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 10_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T <= t) = p, for 0 < p < 1 (bisection to full double precision)."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, not {p}")
    if p < 0.5:
        return -t_quantile(1 - p, dof)
    low, high = 0.0, 1.0
    while t_cdf(high, dof) < p:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, dof) < p else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Difference:
    """The mean of paired differences a - b, its confidence interval and two-sided p-value."""

    n: int
    mean: float
    low: float  # low, high and p are NaN where every pair differs by the same amount
    high: float
    p: float

    @property
    def estimable(self) -> bool:
        """Whether the pairs' differences vary, so that the noise, and an interval, can be
        estimated from them."""
        return not math.isnan(self.p)

    def verdict(self, a: str, b: str) -> str:
        """Which of the two is better, that the interval holds 0, or that there is no interval."""
        if not self.estimable:
            return "no verdict (every seed gives the same difference: no spread to estimate)"
        if self.low > 0:
            return f"{a} is better"
        if self.high < 0:
            return f"{b} is better"
        return "cannot tell apart (the interval holds 0)"


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Difference:
    """Student's paired t over (a[i], b[i]): mean difference, interval, p-value (2+ pairs)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired difference needs two or more pairs of equal length")
    # accuracies count images, so equal differences are equal: without rounding, float error
    # leaves a spread of 1e-15 whose t statistic would claim near-certainty
    d = [round(x - y, 9) for x, y in zip(a, b)]
    n, mean, sd = len(d), statistics.fmean(d), statistics.stdev(d)
    if sd == 0:  # a few seeds that happen to agree say nothing about the noise
        return Difference(n, mean, math.nan, math.nan, math.nan)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    p = 2 * (1 - t_cdf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Difference(n, mean, mean - half, mean + half, p)


def spread(values: Sequence[float], fmt: str) -> str:
    """mean ± sample standard deviation (min–max)."""
    return (
        f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}} "
        f"({min(values):{fmt}}–{max(values):{fmt}})"
    )
