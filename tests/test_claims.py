"""The study's analysis: the training dynamics as defined, the report's claims with verdicts that
follow from their intervals, and every statistic of the committed study against scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from paths import EXPERIMENTS
from test_results import fake_run

import main
from mnist_cnn import runformat
from mnist_cnn.analysis import comparisons, readback, results, rules

RATES = ((1e-3, "lr_1e-3"), (5e-4, "lr_5e-4"), (1e-4, "lr_1e-4"))


def test_each_dynamic_follows_its_definition(tmp_path: Path) -> None:
    train_losses = [1.0, 0.5, 1.2, 0.3, 0.7]  # epochs 3 and 5 more than double the one before
    val_losses = [0.5, 0.2, 0.3, 0.25, 0.4]
    fake_run(
        tmp_path / "lr_1e-3",
        1e-3,
        [0.1] * 5,
        val_losses=val_losses,
        val_accs=[0.9, 0.95, 0.97, 0.97, 0.96],
        train_accs=[0.9, 0.99, 0.996, 0.998, 0.999],
        train_losses=train_losses,
    )
    r = readback.read_run(tmp_path / "lr_1e-3")
    stats = {s.key: s.of(r) for s in rules.dynamics([r])}
    rough = np.mean(np.abs(np.diff(np.log(val_losses))))
    assert stats == {
        "fit": 3,  # the first epoch at 99.5% training accuracy
        "a": 2,  # the lowest validation loss
        "b": 3,  # the highest validation accuracy, the first of the tie
        "overfit": pytest.approx(0.4 - 0.2),
        "rough": pytest.approx(rough),
        "rough_train": pytest.approx(np.mean(np.abs(np.diff(np.log(train_losses))))),
        "spikes": 2,
    }


def grid(tmp_path: Path, fit: dict[float, list[int]]) -> str:
    """Three rates x five seeds whose epochs to fit are given; everything else alike."""
    for seed in range(5):
        for lr, name in RATES:
            first = fit[lr][seed]
            fake_run(
                tmp_path / f"seed{seed}" / name,
                lr,
                [0.1] * 30,
                seed,
                val_losses=[0.2] * 30,
                train_accs=[0.99 if e < first else 0.999 for e in range(1, 31)],
            )
    text = main.summarize([tmp_path], tmp_path)
    return next(line for line in text.splitlines() if line.startswith("| 2 |"))


def test_a_claim_is_supported_only_when_every_adjacent_pair_differs_as_claimed(
    tmp_path: Path,
) -> None:
    fit = {1e-3: [5, 6, 5, 6, 5], 5e-4: [10, 11, 10, 12, 10], 1e-4: [20, 21, 22, 20, 21]}
    assert grid(tmp_path / "a", fit).endswith("| **supported** |")
    # the reverse: a lower rate fits sooner
    assert grid(tmp_path / "b", {1e-3: fit[1e-4], 5e-4: fit[5e-4], 1e-4: fit[1e-3]}).endswith(
        "| **contradicted** |"
    )
    # 1e-3 and 5e-4 alike: one adjacent pair cannot tell, so the claim cannot be told
    noisy = {1e-3: [10, 11, 10, 12, 10], 5e-4: [11, 10, 12, 10, 10], 1e-4: fit[1e-4]}
    assert grid(tmp_path / "c", noisy).endswith("| **cannot tell** |")


def test_one_run_cannot_confirm_82_misclassified_but_can_contradict_it(tmp_path: Path) -> None:
    """One run's count varies by about +-18 on 10,000 images (binomial): 81 or 82 against the
    report's 82 cannot tell; 120, outside the count's exact 95% interval, contradicts."""
    fake_run(tmp_path / "lr_1e-3", 1e-3, [0.05, 0.03], test_accs=[0.98, 0.9918])

    def claim_six(test_log: str) -> str:
        (tmp_path / "lr_1e-3" / "test.log").write_text(test_log)
        text = main.summarize([tmp_path / "lr_1e-3"], tmp_path, overwrite=True)
        return next(line for line in text.splitlines() if line.startswith("| 6 |"))

    row = claim_six("misclassified: 81 of 10000\n")
    assert "per seed 82; test mode (lr_1e-3: 81); 81's 95% binomial interval [64.4, 100.6]" in row
    assert row.endswith("**cannot tell** |")
    assert claim_six("misclassified: 82 of 10000\n").endswith("**cannot tell** |")
    row = claim_six("misclassified: 120 of 10000\n")
    assert "120's 95% binomial interval [99.6, 143.3]" in row
    assert row.endswith("**contradicted** |")


def committed_study() -> list[rules.RunResult]:
    runs, skipped = readback.read_runs([EXPERIMENTS / "study"])
    assert not skipped and len(runs) == 15
    return runs


def test_every_statistic_of_the_committed_study_equals_scipy() -> None:
    runs = committed_study()
    text = (EXPERIMENTS / "study" / "results.md").read_text()
    assert text == results.report(runs, runformat.VAL_COLUMNS, runformat.LOSS_NOTE)
    table = text.split("## Training dynamics")[1].split("## Claims")[0]
    groups = comparisons.by_rate(runs)
    pairs = [(a, b) for i, a in enumerate(groups) for b in list(groups)[i + 1 :]]
    found = 0
    for stat in rules.dynamics(runs):
        for a, b in pairs:
            x = [stat.of(groups[a][s]) for s in range(5)]
            y = [stat.of(groups[b][s]) for s in range(5)]
            diff = np.round(np.array(x, float) - np.array(y, float), 9)
            row = next(
                line
                for line in table.splitlines()
                if line.startswith(f"| {stat.name} | {a:g} − {b:g} |")
            )
            cells = [c.strip() for c in row.strip("|").split("|")]
            if np.std(diff) == 0:
                assert cells[4] == "none (no spread)"
                continue
            t = scipy.stats.ttest_rel(np.array(x, float), np.array(y, float))
            ci = t.confidence_interval(0.95)
            low, high = map(float, cells[4].strip("[]").split(","))
            assert float(cells[3]) == pytest.approx(diff.mean(), abs=6e-4)
            assert (low, high) == pytest.approx((ci.low, ci.high), abs=6e-4)
            assert float(cells[7]) == pytest.approx(t.pvalue, rel=5e-3)
            found += 1
    assert found >= 18


def test_claim_one_reads_the_last_epochs_intervals() -> None:
    runs = committed_study()
    groups = comparisons.by_rate(runs)
    row = next(
        line
        for line in (EXPERIMENTS / "study" / "results.md").read_text().splitlines()
        if line.startswith("| 1 |")
    )
    for lr, group in groups.items():
        test = [100 * r.last["test_acc"] for r in group.values()]
        ci = scipy.stats.ttest_1samp(test, 0).confidence_interval(0.95)
        assert f"{lr:g}: {np.mean(test):.2f} [{ci.low:.2f}, {ci.high:.2f}]" in row


def test_the_seed_0_runs_alone_cannot_tell_82_from_their_81(tmp_path: Path) -> None:
    root = EXPERIMENTS.parent
    folders = [root / f"lr_{rate}" for rate in ("1e-3", "5e-4", "1e-4")]
    text = main.summarize(folders, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| 6 |"))
    assert "test mode (lr_1e-3: 81); 81's 95% binomial interval [64.4, 100.6]" in row
    assert row.endswith("| **cannot tell** |")


def control_study(tmp_path: Path, adam_trend: float, sgd_trend: float) -> str:
    """Adam at 1e-3 and 1e-4, SGD at 5e-3 and 5e-4, four seeds, every run fitting alike: the
    lowest rate's last test loss exceeds the highest rate's by each optimizer's trend."""
    train = [1.0, 0.5, 0.2, 0.1, 0.05]
    for seed in range(4):
        noise = 0.001 * seed
        for optimizer, (high, low), rise in (
            ("adam", (1e-3, 1e-4), adam_trend),
            ("sgd", (5e-3, 5e-4), sgd_trend + 0.002 * (seed % 2)),  # the trends' own noise
        ):
            for lr, last in ((high, 0.21 + noise), (low, 0.21 + rise + 2 * noise)):
                fake_run(
                    tmp_path / optimizer / f"seed{seed}" / runformat.lr_folder(lr),
                    lr,
                    [0.5, 0.3, 0.2, 0.2, last],
                    seed,
                    train_losses=train,
                    optimizer=optimizer,
                )
    return main.summarize([tmp_path / "adam", tmp_path / "sgd"], tmp_path)


def test_the_explanation_stands_when_only_sgd_overfits_more_at_a_lower_rate(
    tmp_path: Path,
) -> None:
    text = control_study(tmp_path / "stands", adam_trend=0.0, sgd_trend=0.09)
    row = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert "Adam 0.001/0.0001, SGD 0.005/0.0005" in row
    assert "SGD − Adam +0.0910" in row and "train loss first ≤ 0.0500" in row
    assert row.endswith("**supported** |")
    claim_4 = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    assert "0.0001 − 0.001" in claim_4 and "0.005" not in claim_4  # judged on Adam's runs
    text = control_study(tmp_path / "falls", adam_trend=0.09, sgd_trend=0.0)
    row = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert "SGD − Adam -0.0890" in row and row.endswith("**contradicted** |")
    # SGD no worse at a lower rate, Adam better: a difference, but not the one explained
    text = control_study(tmp_path / "adam_only", adam_trend=-0.09, sgd_trend=0.0)
    row = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert "SGD − Adam +0.0910" in row and row.endswith("**cannot tell** |")
    # with SGD too a lower rate overfits less: SGD behaves as Adam, which is then no reason
    text = control_study(tmp_path / "sgd_alike", adam_trend=-0.09, sgd_trend=-0.09)
    row = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert row.endswith("**contradicted** |")
    text = control_study(tmp_path / "alike", adam_trend=0.05, sgd_trend=0.05)
    row = next(line for line in text.splitlines() if line.startswith("| 7 |"))
    assert row.endswith("**cannot tell** |") and "seeds needed" in row
