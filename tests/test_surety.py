"""Statistics that say how sure: the bootstrap interval against scipy.stats.bootstrap, the
probability of improvement against a direct count, the seeds needed against statsmodels' power
solver, the median and the interquartile mean, compare.png's band against scipy's t interval;
and no verdict the data cannot carry (margins, bounds, the full test set)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.power import TTestPower
from test_results import fake_run

import main
from mnist_cnn.analysis import stats

FIRST = [99.12, 99.01, 99.07, 99.19, 99.08, 99.15, 99.02]
SECOND = [99.02, 99.04, 99.19, 99.17, 99.17, 99.01, 98.97]


def test_the_bootstrap_interval_is_scipys_seeded_percentile_bootstrap() -> None:
    d = stats.paired_difference(FIRST, SECOND)
    differences = np.round(np.subtract(FIRST, SECOND), 9)
    direct = scipy.stats.bootstrap(
        (differences,),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert d.boot == (pytest.approx(direct.low, abs=1e-12), pytest.approx(direct.high, abs=1e-12))
    assert d.boot == stats.paired_difference(FIRST, SECOND).boot  # the same every time
    assert d.low < d.boot[0] < d.boot[1] < d.high  # narrower than t's with 7 seeds, here


def test_the_probability_of_improvement_is_the_share_of_seeds_won() -> None:
    d = stats.paired_difference(FIRST, SECOND)
    wins = sum(a > b for a, b in zip(FIRST, SECOND)) + 0.5 * sum(
        a == b for a, b in zip(FIRST, SECOND)
    )
    assert d.improvement == wins / len(FIRST) == 4 / 7
    tie = stats.paired_difference([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 4.0, 3.5])
    assert tie.improvement == (0.5 + 1 + 0 + 1) / 4
    low, high = tie.improvement_ci
    assert 0 <= low <= tie.improvement <= high <= 1


@pytest.mark.parametrize("effect", [0.05, 0.2, 0.5, 1.0, 2.5, -0.7])
def test_the_seeds_needed_are_statsmodels_power_solution(effect: float) -> None:
    solved = TTestPower().solve_power(effect_size=abs(effect), alpha=0.05, power=0.8)
    assert stats.seeds_needed(effect) == math.ceil(solved)


def test_seeds_needed_say_never_rather_than_a_number_past_their_reach() -> None:
    assert stats.seeds_needed(0.0) is None
    assert stats.seeds_needed(0.001) is None  # about 7.8 million seeds
    no_difference = stats.paired_difference([1.0, 2.0, 3.0], [1.5, 1.5, 3.0])
    assert stats.needed_text(no_difference) == "no difference to find"
    assert stats.needed_text(stats.paired_difference([1.0, 2.0], [1.5, 1.499])) == (
        "more than 100,000"
    )


def test_the_median_and_the_interquartile_mean_sit_beside_the_mean() -> None:
    collapsed = [97.73, 99.2, 99.3, 99.34, 99.31]  # one seed collapsed
    text = stats.spread(collapsed, ".2f")
    assert text == "98.98 ± 0.70 (97.73–99.34); median 99.30, IQM 99.27"
    assert stats.interquartile_mean(collapsed) == pytest.approx(np.mean([99.2, 99.3, 99.31]))
    assert stats.spread([1.0, 2.0, 4.0], ".1f") == "2.3 ± 1.5 (1.0–4.0)"  # no quartile to trim


def test_compare_pngs_band_is_the_t_interval_of_the_mean_per_epoch() -> None:
    values = np.array([[98.0, 99.0, 99.5], [98.4, 99.2, np.nan], [97.9, 98.8, 99.1]])
    low, high = stats.mean_band(values)
    for epoch in range(3):
        column = values[:, epoch][np.isfinite(values[:, epoch])]
        ci = scipy.stats.ttest_1samp(column, 0).confidence_interval(0.95)
        assert (low[epoch], high[epoch]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def claim(text: str, number: int) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {number} |"))


def counts_study(tmp_path: Path, errors: list[int]) -> str:
    """Five seeds at 1e-3 whose model.pth misclassify `errors` of 10,000 test images."""
    for seed, wrong in enumerate(errors):
        accs = [0.98, 1 - wrong / 10_000]
        fake_run(tmp_path / f"seed{seed}" / "lr_1e-3", 1e-3, [0.05, 0.03], seed, test_accs=accs)
    return main.summarize([tmp_path], tmp_path / "summary")


def test_82_is_supported_only_by_an_interval_within_its_margin(tmp_path: Path) -> None:
    row = claim(counts_study(tmp_path / "tight", [81, 82, 83, 80, 84]), 6)
    assert "one run's 95% prediction interval [77.2, 86.8]" in row
    assert row.endswith("**supported** |")
    row = claim(counts_study(tmp_path / "wide", [70, 95, 82, 77, 90]), 6)
    assert "wider than the margin" in row and row.endswith("**cannot tell** |")
    row = claim(counts_study(tmp_path / "far", [120, 125, 118, 122, 121]), 6)
    assert row.endswith("**contradicted** |")


@pytest.mark.parametrize("rule", ["study", "report"])
def test_every_cannot_tell_of_the_committed_claims_names_its_seeds_needed(rule: str) -> None:
    from paths import EXPERIMENTS

    text = (EXPERIMENTS / rule / "results.md").read_text()
    undecided = [claim(text, n) for n in range(1, 7) if "**cannot tell**" in claim(text, n)]
    assert undecided
    for row in undecided:
        assert "seeds needed" in row or "at any number of seeds" in row, row[:120]


def test_a_tiny_grid_judges_nothing_it_cannot_and_bounds_every_interval(
    tmp_path: Path, tiny_data: Path
) -> None:
    """Two rates x two seeds, one epoch on at most 600 images: claim 6 is about the full test
    set, so cannot tell; no accuracy or count interval leaves what the quantity can take."""
    flags = ["--learning_rate", "1e-3", "5e-4", "--seed", "0", "1", "--epoch", "1"]
    flags += ["--limit", "600", "--amp", "false", "--data_dir", str(tiny_data)]
    assert main.main([*flags, "--out_dir", str(tmp_path)]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "not the full 10,000" in claim(text, 6) and claim(text, 6).endswith("cannot tell** |")
    accuracies = claim(text, 1).split("|")[4]
    for low, high in re.findall(r"\[(-?[\d.]+), (-?[\d.]+)\]", accuracies):
        assert 0 <= float(low) <= float(high) <= 100


@pytest.mark.parametrize("n", [1, 2, 3])
def test_the_expected_best_of_n_is_the_mean_over_every_draw(n: int) -> None:
    """Dodge et al.'s closed form against the brute force: every ordered draw of n of the
    scores, with replacement, each as likely."""
    import itertools

    scores = [99.1, 99.4, 99.4, 99.55, 98.7]
    bests = [max(draw) for draw in itertools.product(scores, repeat=n)]
    mean, sd = stats.expected_max(scores, n)
    assert mean == pytest.approx(np.mean(bests)) and sd == pytest.approx(np.std(bests))


def test_the_searchs_luck_table_regenerates_byte_for_byte(tmp_path: Path) -> None:
    from paths import EXPERIMENTS

    from tools import expected_max

    assert expected_max.main(["--out_dir", str(tmp_path)]) == 0
    for name in ("expected_max.md", "expected_max.png"):
        committed = EXPERIMENTS / "search" / name
        assert (tmp_path / name).read_bytes() == committed.read_bytes(), name
    text = (tmp_path / "expected_max.md").read_text()
    assert "| 21 | 99.548 | 0.007 |" in text and "K6, scored 99.550%" in text


def test_no_bootstrap_from_fewer_than_four_seeds() -> None:
    """A percentile bootstrap over three seeds under-covers: the interval is left out, and the
    probability of improvement stands without one."""
    d = stats.paired_difference([1.0, 2.0, 4.0], [0.5, 2.5, 3.0])
    assert math.isnan(d.boot[0]) and math.isnan(d.improvement_ci[0]) and d.estimable
    from mnist_cnn.analysis import comparisons

    assert comparisons.boot_interval(d) == "–" and comparisons.improvement_cell(d) == "0.67"


def test_the_answer_never_calls_lower_a_rate_it_did_not_compare(tmp_path: Path) -> None:
    """Four rates, one of them trained on other seeds: it is named as not compared."""
    for seeds, lr, acc in (
        ((0, 1, 2), 1e-3, 0.99),
        ((0, 1, 2), 5e-4, 0.98),
        ((0, 1, 2), 2e-4, 0.97),
    ):
        for seed in seeds:
            accs = [acc - 0.01, acc + 0.001 * seed]
            folder = tmp_path / f"seed{seed}" / f"lr_{lr:g}"
            fake_run(folder, lr, [0.05, 0.03], seed, test_accs=accs)
    for seed in (7, 8):
        fake_run(
            tmp_path / f"seed{seed}" / "lr_1e-4", 1e-4, [0.05, 0.03], seed, test_accs=[0.5, 0.6]
        )
    text = main.summarize([tmp_path], tmp_path / "s")
    line = next(x for x in text.splitlines() if x.startswith("- **lowest test loss"))
    assert "not compared with it (fewer than two common seeds): 0.0001" in line
    assert "every other rate is lower" not in line
