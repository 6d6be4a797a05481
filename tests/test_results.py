"""The study's results: tables, statistics over seeds, compare.png, and the sweep command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import main
import runfolder
import stats


def fake_run(
    folder: Path,
    lr: float,
    test_losses: list[float],
    seed: int = 0,
    test_accs: list[float] | None = None,
    val_losses: list[float] | None = None,
) -> None:
    """A run folder in the tool's format (model.log, metrics.csv) with known numbers."""
    folder.mkdir(parents=True)
    rows = []
    for e, test_loss in enumerate(test_losses, start=1):
        acc = test_accs[e - 1] if test_accs else 0.98 + e / 10000
        val = {"val_loss": val_losses[e - 1], "val_acc": 0.97} if val_losses else {}
        rows.append(
            {
                "epoch": e,
                "train_loss": 1.0 / e,
                "train_acc": 0.9 + e / 1000,
                **val,
                "test_loss": test_loss,
                "test_acc": acc,
                "train_loss_report": 1.0 / e / 128,
                "test_loss_report": test_loss / 128,
                "seconds": 1.5,
                "saved": "-",
            }
        )
    run = main.Run(
        lr,
        folder,
        seed,
        history=rows,
        header=f"MNIST CNN training log\nlearning_rate: {lr:g}  batch_size: 128  "
        f"epochs: {len(rows)}  seed: {seed}",
    )
    (folder / "model.log").write_text(runfolder.render_log(run, ["summary", "not a row"]))
    (folder / "metrics.csv").write_text(runfolder.metrics_csv(rows))


def test_summary_tables_pick_lowest_test_loss_and_last_epoch(tmp_path: Path) -> None:
    fake_run(tmp_path / "lr_1e-3", 0.001, [0.05, 0.03, 0.02, 0.04])
    fake_run(tmp_path / "lr_1e-4", 0.0001, [0.09, 0.07, 0.06, 0.05, 0.05, 0.055])
    text = main.summarize([tmp_path / "lr_1e-3", tmp_path / "lr_1e-4"], tmp_path)
    assert (tmp_path / "results.md").read_text() == text
    assert "chosen on the test set, optimistic" in text
    best_part, last_part = text.split("## Per run: last epoch")
    assert (
        "| lr_1e-3 | 0.001 | 0 | 3 | 0.333333 | 0.9030 | 0.020000 | 0.9803 | 0.00260417 "
        "| 0.00015625 |"
    ) in best_part
    assert (
        "| lr_1e-4 | 0.0001 | 0 | 4 | 0.250000 | 0.9040 | 0.050000 | 0.9804 | 0.00195312 "
        "| 0.00039063 |"
    ) in best_part  # a tie at 0.05: the first epoch, as training saves it
    assert "| lr_1e-3 | 0.001 | 0 | 4 | 0.250000 | 0.9040 | 0.040000 | 0.9804 |" in last_part
    assert "| lr_1e-4 | 0.0001 | 0 | 6 | 0.166667 | 0.9060 | 0.055000 | 0.9806 |" in last_part
    assert "Over seeds" not in text  # one seed: no statistics
    with Image.open(tmp_path / "compare.png") as im:
        assert im.format == "PNG" and im.width > 800


def test_summary_reads_metrics_csv_before_the_log(tmp_path: Path) -> None:
    fake_run(tmp_path / "lr_1e-3", 0.001, [0.05, 0.03])
    csv_text = (tmp_path / "lr_1e-3" / "metrics.csv").read_text().replace("0.030000", "0.010000")
    (tmp_path / "lr_1e-3" / "metrics.csv").write_text(csv_text)
    assert "| 0.010000 |" in main.summarize([tmp_path / "lr_1e-3"], tmp_path)


# Student's t 97.5% quantiles from published tables (independent of stats.py's bisection)
T_975 = {1: 12.706204736174707, 4: 2.7764451051977934, 39: 2.0226909200367595}


def two_sided_p(t: float, dof: int) -> float:
    """P(|T| > |t|) by integrating the t density numerically (independent of stats.py)."""
    x = np.linspace(0.0, abs(t), 400_001)
    scale = math.gamma((dof + 1) / 2) / (math.sqrt(dof * math.pi) * math.gamma(dof / 2))
    return 1 - 2 * np.trapezoid(scale * (1 + x**2 / dof) ** (-(dof + 1) / 2), x)


@pytest.mark.parametrize("n", [2, 5, 40])
def test_every_interval_equals_an_independent_paired_t(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    # per seed, test accuracy at epoch 2 (the lowest validation loss) and epoch 3 (the last)
    acc = {lr: rng.normal(0.990 + 0.002 * (lr == 0.001), 0.001, size=(n, 2)) for lr in (1e-3, 1e-4)}
    for seed in range(n):
        for lr, name in ((1e-3, "lr_1e-3"), (1e-4, "lr_1e-4")):
            accs = [0.95, *acc[lr][seed].round(4)]
            fake_run(
                tmp_path / f"seed{seed}" / name,
                lr,
                [0.05, 0.03, 0.01],
                seed,
                accs,
                val_losses=[0.06, 0.02, 0.05],
            )
    text = main.summarize([tmp_path], tmp_path)
    assert "selected model (chosen on the validation set)" in text
    verdicts = 0
    for column, rule in ((0, "selected model (chosen on the validation set)"), (1, "last epoch")):
        d = 100 * (acc[1e-3][:, column].round(4) - acc[1e-4][:, column].round(4))
        mean, sd = d.mean(), d.std(ddof=1)
        half = T_975[n - 1] * sd / math.sqrt(n)
        p = two_sided_p(mean / (sd / math.sqrt(n)), n - 1)
        low, high = mean - half, mean + half
        verdict = (
            "0.001 is better"
            if low > 0
            else "0.0001 is better"
            if high < 0
            else "cannot tell apart (the interval holds 0)"
        )
        verdicts += verdict != "cannot tell apart (the interval holds 0)"
        table = text.split(f"Paired by seed, {rule}")[1]
        assert (
            f"| 0.001 − 0.0001 | {n} | {mean:+.3f} | [{low:+.3f}, {high:+.3f}] | {p:.3g} "
            f"| {verdict} |"
        ) in table
        answer = text.split("## Answer")[1].split("\n\n")[1]
        sentence = answer.split(f"**{rule}**")[1].split("\n")[0]
        assert (("beats" in sentence) == (low > 0 or high < 0)) and f"p = {p:.3g}" in sentence
    if n == 40:
        assert verdicts == 2  # 0.2 points apart with 40 seeds: both rules see it


def test_without_a_split_the_selected_model_is_labelled_optimistic(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.9920, 0.990), (0.9925, 0.990), (0.9930, 0.990)]):
        fake_run(
            tmp_path / f"seed{seed}" / "lr_1e-3", 0.001, [0.05, 0.03, 0.04], seed, [0.95, a, 0.97]
        )
        fake_run(
            tmp_path / f"seed{seed}" / "lr_1e-4", 0.0001, [0.05, 0.03, 0.04], seed, [0.95, b, 0.96]
        )
    text = main.summarize([tmp_path], tmp_path)  # a grid folder is searched for its runs
    assert all(text.count(f"| seed{s}/lr_1e-{e} |") == 2 for s in range(3) for e in (3, 4))
    assert (
        "| 0.001 | 3 | 99.250 ± 0.050 (99.200–99.300) | 97.000 ± 0.000 (97.000–97.000) "
        "| 2.0 ± 0.0 (2.0–2.0) |"
    ) in text
    assert "**selected model (chosen on the test set, optimistic)**" in text
    assert "0.001 beats 0.0001 by 0.25 points" in text
    # at the last epoch every seed differs by exactly one point: no spread, so no interval
    # and no verdict, rather than "certain"
    assert (
        "0.001 and 0.0001 cannot be judged (0.001 − 0.0001: +1.000 points in each of the 3 seeds"
        in text
    )
    assert "| 0.001 − 0.0001 | 3 | +1.000 | none (no spread) | – | no verdict" in text
    assert "beats" not in text.split("**last epoch**")[1].split("\n")[0]
    with Image.open(tmp_path / "compare.png") as im:
        assert im.format == "PNG"


def test_a_verdict_inside_the_noise_says_so() -> None:
    d = stats.paired_difference([99.1, 99.3, 99.0, 99.2], [99.2, 99.1, 99.1, 99.15])
    assert d.mean == pytest.approx(0.0125) and d.low < 0 < d.high
    assert d.verdict("a", "b") == "cannot tell apart (the interval holds 0)"


def test_differences_equal_but_for_float_error_claim_nothing() -> None:
    # 99.09 - 99.03 and 99.13 - 99.07 (as fractions times 100) differ in the 14th digit; the
    # t statistic of that spread would say p = 7.5e-14, "better"
    d = stats.paired_difference([100 * 0.9909, 100 * 0.9913], [100 * 0.9903, 100 * 0.9907])
    assert d.mean == pytest.approx(0.06) and not d.estimable and math.isnan(d.low)
    assert d.verdict("a", "b").startswith("no verdict")


def test_summarize_flag_rebuilds_without_training(tmp_path: Path, capsys) -> None:
    fake_run(tmp_path / "runs" / "lr_5e-4", 0.0005, [0.3, 0.2])
    assert (
        main.main(
            ["--summarize", str(tmp_path / "runs" / "lr_5e-4"), "--out_dir", str(tmp_path / "out")]
        )
        == 0
    )
    assert "| lr_5e-4 | 0.0005 | 0 | 2 |" in (tmp_path / "out" / "results.md").read_text()
    assert str(tmp_path / "out" / "compare.png") in capsys.readouterr().out


def test_summarize_of_a_folder_without_log_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main.main(["--summarize", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "Cannot read" in err and "model.log" in err


def test_committed_runs_have_metrics_csv_agreeing_with_their_logs() -> None:
    root = Path(main.__file__).parent
    folders = main.run_folders([root])
    assert {"lr_1e-3", "seed1/lr_5e-4"} <= {main.read_run(f).name for f in folders}
    for folder in folders:
        assert runfolder.read_metrics_csv(folder / "metrics.csv") == runfolder.parse_log(
            folder / "model.log"
        )


def test_sweep_trains_each_rate_into_its_folder_and_summarises(
    tiny_data: Path, tmp_path: Path
) -> None:
    assert (
        main.main(
            [
                "--epoch",
                "2",
                "--learning_rate",
                "1e-3",
                "5e-4",
                "--data_dir",
                str(tiny_data),
                "--out_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    for name in ("lr_1e-3", "lr_5e-4"):
        assert {"model.pth", "model.log", "metrics.csv", "figure.png"} <= {
            p.name for p in (tmp_path / name).iterdir()
        }
    assert "learning_rate: 0.0005" in (tmp_path / "lr_5e-4" / "model.log").read_text()
    results = (tmp_path / "results.md").read_text()
    assert "| lr_1e-3 | 0.001 | 0 |" in results and "| lr_5e-4 | 0.0005 | 0 |" in results
    assert (tmp_path / "compare.png").stat().st_size > 0


def test_several_seeds_go_to_seed_folders_in_one_process(tiny_data: Path, tmp_path: Path) -> None:
    assert (
        main.main(
            [
                "--epoch",
                "1",
                "--learning_rate",
                "1e-3",
                "--seed",
                "3",
                "4",
                "--data_dir",
                str(tiny_data),
                "--out_dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    for seed in (3, 4):
        assert f"seed: {seed}" in (tmp_path / f"seed{seed}" / "lr_1e-3" / "model.log").read_text()
    assert "## Over seeds" in (tmp_path / "results.md").read_text()


def test_unfinished_runs_are_named_above_the_numbers(tmp_path: Path) -> None:
    for seed in (0, 1):
        for lr, name in ((0.001, "lr_1e-3"), (0.0001, "lr_1e-4")):
            fake_run(tmp_path / f"seed{seed}" / name, lr, [0.05, 0.03, 0.04], seed)
    log = tmp_path / "seed1" / "lr_1e-4" / "model.log"
    log.write_text(log.read_text().replace("epochs: 3", "epochs: 50"))
    answer = main.summarize([tmp_path], tmp_path).split("## Per run")[0]
    assert "**Unfinished runs**, counted as they stand: seed1/lr_1e-4 (3 of 50 epochs)." in answer
