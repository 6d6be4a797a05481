"""Statistics over seeds: spreads with the median and the interquartile mean, Student-t
intervals of a mean and of paired differences beside a bootstrap interval, the probability of
improvement, the seeds a paired test would need, and Holm's adjustment of a table's p-values.

Every distribution is scipy's (`scipy.stats.t`, exact for any number of seeds; `nct` for power;
`bootstrap`, seeded, so a summary regenerates byte for byte; `trim_mean`); this module only
decides what is compared. Values that are not finite (a diverged run's NaN) never reach scipy:
callers leave them out and say so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

CONFIDENCE = 0.95
LEVEL = 1 - CONFIDENCE  # a verdict needs a Holm-adjusted p below this
RESAMPLES = 10_000  # the bootstrap's resamples, percentile method, generator seeded with 0
FEWEST_TO_RESAMPLE = 4  # below this many seeds a percentile bootstrap under-covers: none given
POWER = 0.8  # seeds needed: a paired t test at LEVEL that finds the observed difference this often
MOST_SEEDS = 100_000  # beyond this many seeds, "more than" is all that is said
NaN2 = (math.nan, math.nan)


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
    boot: tuple[float, float] = NaN2  # the bootstrap's 95% interval of the mean (paired)
    improvement: float = math.nan  # P(first > second) on a seed drawn at random, ties 1/2
    improvement_ci: tuple[float, float] = NaN2  # its bootstrap 95% interval
    needed: int | None = None  # seeds a paired test would need (80% power, 5%); None: never

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
    """Student's paired t over (a[i], b[i]): mean difference, interval, p-value (2+ pairs);
    beside it the bootstrap interval, the probability of improvement and the seeds needed."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a paired difference needs two or more pairs of equal length")
    # accuracies count images, so equal differences are equal: without rounding, float error
    # leaves a spread of 1e-15 whose t statistic would claim near-certainty
    differences = [round(x - y, 9) for x, y in zip(a, b)]
    d = t_interval(differences)
    if not d.estimable:
        return replace(d, improvement=improvement(differences))
    d = replace(
        d,
        improvement=improvement(differences),
        needed=seeds_needed(d.mean / statistics.stdev(differences)),
    )
    if len(differences) < FEWEST_TO_RESAMPLE:
        return d
    return replace(
        d,
        boot=bootstrap_interval(differences, mean_of),
        improvement_ci=bootstrap_interval(differences, improvement_of),
    )


def mean_of(values: Any, axis: int = -1) -> Any:
    """The mean along an axis (the bootstrap's statistic, vectorised)."""
    import numpy as np

    return np.mean(values, axis=axis)


def improvement_of(differences: Any, axis: int = -1) -> Any:
    """The share of seeds on which the first beats the second, a tie counting half."""
    import numpy as np

    return np.mean((differences > 0) + 0.5 * (differences == 0), axis=axis)


def improvement(differences: Sequence[float]) -> float:
    """The probability of improvement, paired by seed: P(first > second) + P(tie) / 2."""
    import numpy as np

    return float(improvement_of(np.asarray(differences)))


def bootstrap_interval(values: Sequence[float], statistic: Callable) -> tuple[float, float]:
    """scipy's bootstrap 95% interval of a statistic over the seeds: percentile method,
    RESAMPLES resamples, its generator seeded with 0 (the same interval every time)."""
    import numpy as np
    from scipy.stats import bootstrap

    found = bootstrap(
        (np.asarray(values, dtype=float),),
        statistic,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    return float(found.low), float(found.high)


def needed_text(d: Difference) -> str:
    """The seeds a paired test would need to find the observed difference, in words."""
    if not d.estimable:
        return "–"
    if d.needed is not None:
        return f"{d.needed:,}"
    return "no difference to find" if d.mean == 0 else f"more than {MOST_SEEDS:,}"


def seeds_for_prediction(sd: float, half_width: float) -> int | None:
    """The fewest seeds whose 95% prediction interval of one more run (Student's t,
    sd * sqrt(1 + 1/n)) is at most `half_width` wide on each side; None where none is, for it
    never narrows below about 1.96 sd."""
    from scipy.stats import t

    if half_width <= float(t.ppf(0.5 + CONFIDENCE / 2, MOST_SEEDS)) * sd:
        return None
    n = 2
    while float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd * math.sqrt(1 + 1 / n) > half_width:
        n += 1
    return n


def power(effect: float, n: int) -> float:
    """The chance that a two-sided paired t test at LEVEL over n seeds finds a true mean
    difference of `effect` standard deviations (scipy's noncentral t)."""
    from scipy.stats import nct, t

    critical = float(t.ppf(1 - LEVEL / 2, n - 1))
    shift = effect * math.sqrt(n)
    return float(nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift))


def seeds_needed(effect: float) -> int | None:
    """The fewest seeds at which a paired t test would find a difference of `effect` standard
    deviations with POWER (None where there is no difference, or past MOST_SEEDS)."""
    if effect == 0 or not math.isfinite(effect):
        return None
    low, high = 2, 2
    while power(effect, high) < POWER:  # power grows with n: double, then bisect
        if high == MOST_SEEDS:
            return None
        low, high = high, min(high * 2, MOST_SEEDS)
    while low < high:
        middle = (low + high) // 2
        low, high = (middle + 1, high) if power(effect, middle) < POWER else (low, middle)
    return high


def mean_band(values: Any) -> tuple[Any, Any]:
    """Per column of a seeds x epochs array, Student's t 95% interval of the mean over the
    finite values (NaN where fewer than two): compare.png's band."""
    import numpy as np
    from scipy.stats import t

    finite = np.isfinite(values)
    n = finite.sum(0)
    with np.errstate(all="ignore"):
        mean = np.nanmean(np.where(finite, values, np.nan), 0)
        sd = np.nanstd(np.where(finite, values, np.nan), 0, ddof=1)
        half = t.ppf(0.5 + CONFIDENCE / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return mean - half, mean + half


def expected_max(scores: Sequence[float], n: int) -> tuple[float, float]:
    """Dodge et al. 2019's expected best of n trials drawn at random (with replacement) from
    the scores observed, with its standard deviation: the k-th smallest of N is the best with
    probability (k/N)^n - ((k-1)/N)^n."""
    ranked, total = sorted(scores), len(scores)
    chances = [(k / total) ** n - ((k - 1) / total) ** n for k in range(1, total + 1)]
    mean = sum(p * v for p, v in zip(chances, ranked))
    second = sum(p * v * v for p, v in zip(chances, ranked))
    return mean, math.sqrt(max(second - mean * mean, 0.0))


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
    """mean ± sample standard deviation (min–max), then the median and the interquartile mean
    (where there are four values or more: fewer leave no quartile to trim); one value alone as
    itself."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    text = (
        f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}} "
        f"({min(values):{fmt}}–{max(values):{fmt}})"
    )
    if len(values) < 4:
        return text
    return (
        f"{text}; median {statistics.median(values):{fmt}}, IQM {interquartile_mean(values):{fmt}}"
    )


def interquartile_mean(values: Sequence[float]) -> float:
    """The mean of the middle half (scipy's trim_mean cutting a quarter at each end; rliable's
    IQM): robust to one collapsed seed, unlike the mean."""
    from scipy.stats import trim_mean

    return float(trim_mean(values, 0.25))


def count_interval(count: int, trials: int) -> tuple[float, float]:
    """The 95% interval of a count of events (errors) among `trials` independent ones, as a count:
    the exact (Clopper-Pearson) binomial interval of its rate (scipy's binomtest), times trials."""
    from scipy.stats import binomtest

    ci = binomtest(count, trials).proportion_ci(CONFIDENCE, method="exact")
    return ci.low * trials, ci.high * trials
