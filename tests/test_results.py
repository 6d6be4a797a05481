"""The study's results: tables, statistics over seeds, compare.png, and the sweep command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from PIL import Image
from runs import config_record, report_settings

import main
from mnist_cnn import runformat
from mnist_cnn.analysis import readback, stats
from mnist_cnn.training import runrecord


def fake_run(
    folder: Path,
    lr: float,
    test_losses: list[float],
    seed: int = 0,
    test_accs: list[float] | None = None,
    val_losses: list[float] | None = None,
    val_accs: list[float] | None = None,
    train_accs: list[float] | None = None,
    train_losses: list[float] | None = None,
    recipe: str = "report",
    keep: str = "lowest",
    optimizer: str = "adam",
) -> None:
    """A run folder in the tool's format (model.log, metrics.csv; config.json where the run
    keeps its last epoch) with known numbers."""
    folder.mkdir(parents=True)
    rows = []
    for e, test_loss in enumerate(test_losses, start=1):
        acc = test_accs[e - 1] if test_accs else 0.98 + e / 10000
        val_acc = val_accs[e - 1] if val_accs else 0.97
        val = {"val_loss": val_losses[e - 1], "val_acc": val_acc} if val_losses else {}
        rows.append(
            {
                "epoch": e,
                "train_loss": train_losses[e - 1] if train_losses else 1.0 / e,
                "train_acc": train_accs[e - 1] if train_accs else 0.9 + e / 1000,
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
        settings=report_settings(
            learning_rate=lr, epoch=len(rows), val_split=64 if val_losses else 0, keep=keep
        ),
        folder=folder,
        seed=seed,
        speed=main.Speed(),
        recipe=recipe,
        history=rows,
        header=f"MNIST CNN training log\nlearning_rate: {lr:g}  batch_size: 128  "
        f"epochs: {len(rows)}  seed: {seed}\nrecipe: {recipe}",
    )
    (folder / "model.log").write_text(runrecord.render_log(run, ["summary", "not a row"]))
    (folder / "metrics.csv").write_text(runrecord.metrics_csv(rows))
    if keep != "lowest" or optimizer != "adam":
        val_split = 64 if val_losses else 0
        settings = config_record(lr, seed, len(rows), keep=keep, optimizer=optimizer)
        settings |= {"recipe": recipe, "val_split": val_split, "train_images": 60_000 - val_split}
        (folder / "config.json").write_text(json.dumps(settings))


def test_summary_tables_pick_lowest_test_loss_and_last_epoch(tmp_path: Path) -> None:
    fake_run(tmp_path / "lr_1e-3", 0.001, [0.05, 0.03, 0.02, 0.04])
    fake_run(tmp_path / "lr_1e-4", 0.0001, [0.09, 0.07, 0.06, 0.05, 0.05, 0.055])
    text = main.summarize([tmp_path / "lr_1e-3", tmp_path / "lr_1e-4"], tmp_path)
    assert (tmp_path / "results.md").read_text() == text
    assert "chosen on the test set, optimistic" in text
    best_part, last_part = text.split("## Per run, rule (c): last epoch")
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


def holm(p: list[float]) -> list[float]:
    """Holm's adjustment, written here from its definition (independent of stats.py)."""
    order = sorted(range(len(p)), key=p.__getitem__)
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


RATES = ((1e-3, "lr_1e-3"), (5e-4, "lr_5e-4"), (1e-4, "lr_1e-4"))


@pytest.mark.parametrize("n", [2, 5, 40])
def test_every_interval_equals_an_independent_scipy_paired_t(tmp_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    # per seed, test accuracy at epoch 2 (lowest val loss), 3 (highest val acc), 4 (the last)
    shift = {1e-3: 0.002, 5e-4: 0.001, 1e-4: 0.0}
    acc = {lr: rng.normal(0.990 + shift[lr], 0.001, size=(n, 3)).round(4) for lr, _ in RATES}
    for seed in range(n):
        for lr, name in RATES:
            fake_run(
                tmp_path / f"seed{seed}" / name,
                lr,
                [0.05, 0.03, 0.01, 0.02],
                seed,
                [0.95, *acc[lr][seed]],
                val_losses=[0.06, 0.02, 0.05, 0.07],
                val_accs=[0.96, 0.97, 0.985, 0.98],
            )
    text = main.summarize([tmp_path], tmp_path)
    rules = ("lowest validation loss (model.pth)", "highest validation accuracy", "last epoch")
    assert all(f"**{rule}**" in text for rule in rules)
    verdicts = 0
    for column, rule in enumerate(rules):
        pairs = [(a, b) for i, (a, _) in enumerate(RATES) for b, _ in RATES[i + 1 :]]
        tests = [
            scipy.stats.ttest_rel(100 * acc[a][:, column], 100 * acc[b][:, column])
            for a, b in pairs
        ]
        adjusted = holm([float(t.pvalue) for t in tests])
        table = text.split(f"Paired by seed, {rule}")[1].split("\n\n")[1]
        for (a, b), t, h in zip(pairs, tests, adjusted):
            ci = t.confidence_interval(0.95)
            mean = float(np.mean(100 * (acc[a][:, column] - acc[b][:, column])))
            verdict = (
                f"{a:g} is higher"
                if h < 0.05 and mean > 0
                else f"{b:g} is higher"
                if h < 0.05
                else "cannot tell apart"
            )
            verdicts += h < 0.05
            row = next(
                r for r in table.splitlines() if r.startswith(f"| test acc | {a:g} − {b:g} |")
            )
            cells = [c.strip() for c in row.strip("|").split("|")]
            low, high = map(float, cells[4].strip("[]").split(","))
            assert cells[2] == str(n) and float(cells[3]) == pytest.approx(mean, abs=6e-4)
            assert (low, high) == pytest.approx((ci.low, ci.high), abs=6e-4)
            assert float(cells[7]) == pytest.approx(t.pvalue, rel=5e-3)
            assert float(cells[8]) == pytest.approx(h, rel=5e-3) and cells[9] == verdict
            differences = 100 * (acc[a][:, column] - acc[b][:, column])
            wins = np.mean((differences > 1e-9) + 0.5 * (np.abs(differences) <= 1e-9))
            assert cells[6].split(" [")[0] == f"{wins:.2f}"  # P(first better), counted directly
            assert (cells[5] == "–") == (n < 4)  # no bootstrap from fewer than four seeds
            assert (cells[10] == "–") == (h < 0.05)  # seeds needed, where it cannot tell
        answer = text.split("## Answer")[1].split("\n\n")[2]
        sentence = answer.split(f"**{rule}**")[1].split("\n")[0]
        assert sentence.count("beats") == sum(h < 0.05 for h in adjusted)
    if n == 40:
        assert verdicts >= 6  # 0.1 points apart with 40 seeds: every rule sees most pairs


def test_without_a_split_the_selected_model_is_labelled_optimistic(tmp_path: Path) -> None:
    for seed, (a, b) in enumerate([(0.9920, 0.990), (0.9925, 0.990), (0.9930, 0.990)]):
        fake_run(
            tmp_path / f"seed{seed}" / "lr_1e-3", 0.001, [0.05, 0.03, 0.04], seed, [0.95, a, 0.97]
        )
        fake_run(
            tmp_path / f"seed{seed}" / "lr_1e-4", 0.0001, [0.05, 0.03, 0.04], seed, [0.95, b, 0.96]
        )
    text = main.summarize([tmp_path], tmp_path)  # a grid folder is searched for its runs
    # three per-run tables (one per rule) and the dynamics table name every run
    assert all(text.count(f"| seed{s}/lr_1e-{e} |") == 4 for s in range(3) for e in (3, 4))
    assert (
        "| 0.001 | 3 | 99.250 ± 0.050 (99.200–99.300) | 99.250 ± 0.050 (99.200–99.300) "
        "| 97.000 ± 0.000 (97.000–97.000) |"
    ) in text
    assert "**lowest test loss (model.pth, chosen on the test set, optimistic)**" in text
    assert "**highest test accuracy (chosen on the test set, optimistic)**" in text
    assert "0.001 beats 0.0001 by 0.25 points" in text
    assert text.split("## Answer\n\n")[1].startswith(
        "The selection rules agree: 0.001 beats 0.0001. The last epoch cannot judge"
    )
    # at the last epoch every seed differs by exactly one point: no spread, so no interval
    # and no verdict, rather than "certain"
    assert (
        "0.001 and 0.0001 cannot be judged (0.001 − 0.0001: +1.000 points in each of the 3 seeds"
        in text
    )
    assert (
        "| test acc | 0.001 − 0.0001 | 3 | +1.000 | none (no spread) | – | – | – | – | no verdict"
        in text
    )
    assert "beats" not in text.split("**last epoch**")[1].split("\n")[0]
    with Image.open(tmp_path / "compare.png") as im:
        assert im.format == "PNG"


def test_runs_that_keep_their_last_epoch_name_it_model_pth(tmp_path: Path) -> None:
    # the test loss is lowest at epoch 2, yet model.pth is the last epoch (97%)
    for seed in range(2):
        losses, accs = [0.05, 0.03, 0.04], [0.95, 0.99, 0.97]
        fake_run(
            tmp_path / "last" / f"seed{seed}" / "lr_1e-3", 0.001, losses, seed, accs, keep="last"
        )
        fake_run(tmp_path / "low" / f"seed{seed}" / "lr_1e-4", 0.0001, losses, seed, accs)
    assert readback.read_run(tmp_path / "last" / "seed0" / "lr_1e-3").best["epoch"] == 3
    text = main.summarize([tmp_path / "last"], tmp_path / "last")
    assert "rule (a): lowest test loss (chosen on the test set, optimistic)\n" in text
    assert "rule (c): last epoch (model.pth)\n" in text
    assert "under the last epoch (model.pth), test accuracy (%) 97.00" in text
    text = main.summarize([tmp_path / "last", tmp_path / "low"], tmp_path)
    assert "lowest test loss (model.pth of the runs that keep it, chosen on the test" in text
    assert "rule (c): last epoch (model.pth of the runs that keep it)\n" in text


def test_a_verdict_inside_the_noise_says_so() -> None:
    d = stats.paired_difference([99.1, 99.3, 99.0, 99.2], [99.2, 99.1, 99.1, 99.15])
    assert d.mean == pytest.approx(0.0125) and d.low < 0 < d.high
    assert d.verdict("a", "b") == "cannot tell apart"
    assert stats.holm([d])[0].verdict("a", "b") == "cannot tell apart"


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
    folders = [f.parent for f in (root / "experiments").rglob("metrics.csv")]
    folders += [root / f"lr_{rate}" for rate in ("1e-3", "5e-4", "1e-4")]
    # the report's 15 runs, the study's 15, the rates' 27, accurate's 10, the search's 42, fast,
    # the optimizer control's 15 SGD runs, batch size x label smoothing's 20
    assert len(folders) == 15 + 15 + 27 + 10 + 42 + 1 + 15 + 20
    for folder in folders:
        rows = runformat.read_metrics_csv(folder / "metrics.csv")
        logged = [{k: v for k, v in r.items() if k != "lr"} for r in rows]
        assert logged == runformat.parse_log(folder / "model.log")


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


def test_runs_of_several_recipes_are_named_and_draw_no_rate_curve(tmp_path: Path) -> None:
    folders = []
    for seed in (0, 1):
        for lr, recipe in (
            (4e-3, "accurate"),
            (1e-3, "report"),
            (5e-4, "report"),
            (1e-4, "report"),
        ):
            folder = tmp_path / f"seed{seed}" / main.lr_folder(lr)
            accs = [0.99 + (lr * 100 + seed) / 1000, 0.991 + (lr * 100 + seed) / 1000]
            fake_run(folder, lr, [0.05, 0.04], seed, test_accs=accs, recipe=recipe)
            folders.append(folder)
    text = main.summarize(folders, tmp_path / "out")
    assert "**Recipes**: 0.004: accurate; 0.001: report; 0.0005: report; 0.0001: report." in text
    assert "## The rate curve" not in text and not (tmp_path / "out" / "rates.png").exists()
    claims = text.split("## Claims")[1].split("## ")[0]
    assert "0.004" not in claims  # the report's claims read the report recipe's runs alone
    one = main.summarize([f for f in folders if "4e-3" in f.name], tmp_path / "one")
    assert "One learning rate (0.004), so nothing to compare within these runs" in one
    assert "**Recipes**" not in one
