"""The learning-rate range test: its schedule, smoothing, stop rule and suggestion, and the mode."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from mnist_files import write_mnist

import main
from mnist_cnn import files
from mnist_cnn.analysis import lrfind


def test_the_schedule_multiplies_by_one_factor_from_min_to_max() -> None:
    lrs = lrfind.rates(1e-7, 10, 100)
    assert len(lrs) == 100 and lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) == pytest.approx(1e8 ** (1 / 99))


def test_smoothing_is_the_bias_corrected_moving_average() -> None:
    losses = [2.3, 2.1, 2.2, 1.5, 1.0, 3.0]
    expected = []
    for i in range(len(losses)):  # the weighted mean of the losses so far, weights beta^age
        weights = [0.98 ** (i - j) for j in range(i + 1)]
        expected.append(sum(w * x for w, x in zip(weights, losses)) / sum(weights))
    assert lrfind.smooth(losses) == pytest.approx(expected, rel=1e-12)


def test_the_suggestion_is_the_steepest_point_of_a_curve_built_to_have_one() -> None:
    lrs = lrfind.rates(1e-6, 1, 121)  # 20 steps a decade: 1e-3 is step 60
    smoothed = [2 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]
    assert lrfind.steepest(lrs, smoothed) == pytest.approx(1e-3)
    # steeper still in the first 10% and the last 5 steps: both are skipped
    spiky = [s - (5 if i < 12 or i >= 116 else 0) * i for i, s in enumerate(smoothed)]
    assert lrfind.steepest(lrs, spiky) == pytest.approx(1e-3)
    # over seeds: the steepest point of the median of the smoothed curves, and each seed's own
    curves = [
        lrfind.Curve(s, lrs, [v + 0.1 * s * (i % 3) for i, v in enumerate(smoothed)])
        for s in range(3)
    ]
    median = np.median([lrfind.smooth(c.losses) for c in curves], axis=0)
    suggestion = lrfind.suggest(curves)
    assert suggestion.lr == lrfind.steepest(lrs, list(median))
    assert suggestion.per_seed == {c.seed: lrfind.steepest(lrs, c.smoothed) for c in curves}


def test_the_run_stops_once_the_smoothed_loss_passes_four_times_its_minimum() -> None:
    losses = iter([1.0] * 10 + [0.5] * 10 + [100.0] * 10)
    curve = lrfind.run(0, lrfind.rates(1e-5, 1, 30), lambda lr: next(losses))
    smoothed = curve.smoothed
    assert smoothed[-1] > 4 * min(smoothed[:-1])
    assert all(s <= 4 * min(smoothed[: i + 1]) for i, s in enumerate(smoothed[:-1]))
    assert len(curve.losses) == 21  # the first 100 already passes it
    diverging = iter([1.0, math.nan, 1.0])
    assert len(lrfind.run(0, [1e-3, 1e-2, 1e-1], lambda lr: next(diverging)).losses) == 2


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_mode_stops_where_the_loss_blows_up_and_repeats_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # labels that no image predicts: no rate fits them, and large rates make the logits huge
    noise = write_mnist(tmp_path / "noise", n_train=512, n_test=16, shuffle_labels=True)
    args = ["--lr_find", "--lr_min", "1e-5", "--lr_max", "1e3", "--lr_steps", "60"]
    args += ["--seed", "0", "1", "--batch_size", "32", "--data_dir", str(noise)]
    assert main.main([*args, "--out_dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate" in out and "over 2 seeds" in out
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == [files.RECORD, "lr_find.csv", "lr_find.png"]
    rows = read_rows(tmp_path / "a" / "lr_find.csv")
    for seed in ("0", "1"):
        mine = [r for r in rows if r["seed"] == seed]
        lrs = [float(r["lr"]) for r in mine]
        assert lrs == pytest.approx(lrfind.rates(1e-5, 1e3, 60)[: len(mine)], rel=1e-6)
        losses = [float(r["loss"]) for r in mine]
        smoothed = [float(r["smoothed"]) for r in mine]
        assert smoothed == pytest.approx(lrfind.smooth(losses), abs=2e-6)
        assert len(mine) < 60, "the loss should blow up before 1e3"
        assert not math.isfinite(losses[-1]) or smoothed[-1] > 4 * min(smoothed[:-1])
        assert all(s <= 4 * min(smoothed[: i + 1]) for i, s in enumerate(smoothed[:-1]))
    assert main.main([*args, "--out_dir", str(tmp_path / "b")]) == 0
    first, again = (tmp_path / name / "lr_find.csv" for name in ("a", "b"))
    assert first.read_bytes() == again.read_bytes()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["--lr_find", "--lr_min", "1", "--lr_max", "0.1"],
            "--lr_min 1 must be below --lr_max 0.1",
        ),
        (["--lr_find", "--lr_steps", "5"], "'5' must be at least 10"),
        (["--lr_find", "--lr_min", "0"], "'0' must be greater than 0"),
        (["--test", "true", "--lr_steps", "50"], "--lr_steps only works with --lr_find"),
        (["--lr_find", "--epoch", "3"], "--epoch only works when training"),
        (["--lr_find", "--test", "true"], "not allowed with argument"),
    ],
)
def test_bad_finder_flags_are_one_line(
    capsys: pytest.CaptureFixture, tmp_path: Path, argv: list[str], needle: str
) -> None:
    assert main.main([*argv, "--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_a_folder_without_an_lr_find_csv_is_not_read_as_one(tmp_path: Path) -> None:
    (tmp_path / "lr_find.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        lrfind.read_csv(tmp_path / "lr_find.csv")
