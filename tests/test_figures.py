"""Every figure the front page (README.md) and the report's page (docs/report.md) state is read
here from the committed files it comes from: an accuracy, a count or a verdict that drifts from
its evidence fails a test."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from paths import EXPERIMENTS, ROOT

import main
from mnist_cnn import runformat

README = (ROOT / "README.md").read_text()
REPORT_PAGE = (ROOT / "docs" / "report.md").read_text()
RATES = ("1e-3", "5e-4", "1e-4")


def rows(folder: Path) -> list[dict]:
    return runformat.read_metrics_csv(folder / runformat.METRICS)


def best_by(folder: Path, loss: str) -> dict:
    """The epoch with the lowest `loss`, the first among equals (model.pth's)."""
    return min(rows(folder), key=lambda r: r[loss])


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def test_test_modes_figures_are_those_of_the_committed_test_log() -> None:
    log = (ROOT / "lr_1e-3" / runformat.TEST_LOG).read_text()
    accuracy = re.search(r"test accuracy: ([\d.]+%)", log).group(1)
    wrong = re.search(r"misclassified: (\d+) of", log).group(1)
    assert f"the accuracy ({accuracy})" in README
    assert f"the count of misclassified images ({wrong})" in README
    assert f"{accuracy} ({wrong} errors)" in README


def listed(items: list[str]) -> str:
    """ "a, b and c", as the pages write a list."""
    return f"{', '.join(items[:-1])} and {items[-1]}"


def test_the_seed_0_accuracies_are_those_of_the_committed_runs() -> None:
    best = [best_by(ROOT / f"lr_{rate}", "test_loss") for rate in RATES]
    last = [rows(ROOT / f"lr_{rate}")[-1] for rate in RATES]
    for rate, row in zip(RATES, best):
        assert re.search(
            rf"^\| rate {rate}, seed 0[^|]* \| [\d.]+% \| {percent(row['test_acc'])}", README, re.M
        ), rate
    text = " ".join(REPORT_PAGE.split())
    accuracies = listed([percent(r["test_acc"]) for r in best])
    assert f"{accuracies} at the best epoch ({listed([str(r['epoch']) for r in best])})" in text
    assert f"at epoch 50 {listed([percent(r['test_acc']) for r in last])}" in text


def study_model(rate: str) -> list[dict]:
    """The study's model.pth epochs at one rate (lowest validation loss), seed by seed."""
    return [best_by(f, "val_loss") for f in sorted(EXPERIMENTS.glob(f"study/seed*/lr_{rate}"))]


def test_the_studys_mean_accuracies_are_those_of_its_runs() -> None:
    means = []
    for rate in RATES:
        chosen = [
            best_by(f, "val_loss") for f in sorted(EXPERIMENTS.glob(f"study/seed*/lr_{rate}"))
        ]
        assert len(chosen) == 5
        means.append(f"{100 * statistics.fmean(r['test_acc'] for r in chosen):.2f}")
    assert f"| {' / '.join(means)}% |" in README


def verdicts(results: Path) -> list[str]:
    """The verdict of each of the report's claims in a results.md, in order."""
    found = re.findall(
        r"^\| (\d) \|.*\*\*(supported|contradicted|cannot tell)\*\* \|$", results.read_text(), re.M
    )
    assert [n for n, _ in found] == list("123456")
    return [v for _, v in found]


def test_the_report_pages_verdicts_are_those_of_the_committed_summaries() -> None:
    table = re.findall(r"^\| (\d) \| [^|]+ \| ([a-z ]+) \| ([a-z ]+) \|$", REPORT_PAGE, re.M)
    assert [n for n, _, _ in table] == list("123456")
    assert [own for _, own, _ in table] == verdicts(EXPERIMENTS / "report" / runformat.RESULTS)
    assert [honest for _, _, honest in table] == verdicts(EXPERIMENTS / "study" / runformat.RESULTS)


def test_the_layer_order_the_pages_state_is_the_printed_tables() -> None:
    layers = re.findall(r"^\s+(\w+)-\d+", main.model_summary(), re.M)
    assert layers[:4] == ["Conv2d", "BatchNorm2d", "MaxPool2d", "ReLU"]
    assert "the code pools before the ReLU, which gives the same numbers" in " ".join(
        README.split()
    )
    assert "lists MaxPool before ReLU" in " ".join(REPORT_PAGE.split())


@pytest.mark.slow
def test_the_test_counts_the_readme_states_are_the_suites() -> None:
    def collected(*marks: str) -> int:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", *marks, "tests"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return int(re.search(r"(\d+)(?:/\d+)? tests collected", done.stdout).group(1))

    every, fast = collected(), collected("-m", "not slow")
    assert f"It holds {every} tests, {fast} of them in the fast subset" in " ".join(README.split())


def spread(values: list[float]) -> str:
    """ "99.50 ± 0.04%": mean and standard deviation over seeds, in percent."""
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}%"


def test_the_recipes_accuracies_are_those_of_their_committed_runs() -> None:
    fast = rows(EXPERIMENTS / "fast")[-1]
    assert f"| {percent(fast['test_acc'])} (seed 0, committed) in 1.85 epochs |" in README
    accurate = sorted(EXPERIMENTS.glob("accurate/seed*/lr_*"))
    chosen = [100 * best_by(f, "val_loss")["test_acc"] for f in accurate]
    assert f"| {spread(chosen)} (five seeds) |" in README
    every = sorted(EXPERIMENTS.glob("accurate60k/seed*/lr_*"))
    assert f"| {spread([100 * rows(f)[-1]['test_acc'] for f in every])} |" in README
    assert len(accurate) == len(every) == 5


def minutes(folder: Path) -> float:
    """A run's training time: its epochs' seconds in metrics.csv, in minutes."""
    return sum(r["seconds"] for r in rows(folder)) / 60


@pytest.mark.parametrize(
    ("row", "runs"),
    [
        ("| rate 1e-3, seed 0,", [ROOT / f"lr_{rate}" for rate in RATES]),
        ("| five seeds, chosen on validation", sorted(EXPERIMENTS.glob("study/seed*/lr_*"))),
        ("| `--recipe accurate`", sorted(EXPERIMENTS.glob("accurate/seed*/lr_*"))),
        ("| the same on all 60,000", sorted(EXPERIMENTS.glob("accurate60k/seed*/lr_*"))),
    ],
)
def test_the_front_pages_times_are_those_of_the_runs_logs(row: str, runs: list[Path]) -> None:
    line = next(line for line in README.splitlines() if line.startswith(row))
    low, high = min(map(minutes, runs)), max(map(minutes, runs))
    said = re.search(r"([\d.]+)–([\d.]+) min", line)
    assert said, line
    digits = len(said.group(1).partition(".")[2])
    assert (float(said.group(1)), float(said.group(2))) == (round(low, digits), round(high, digits))


def test_the_optimizer_chapter_quotes_the_explanations_row_as_generated() -> None:
    """experiments/optimizer/README.md gives the answer from claim 7 of the joint summary."""
    joint = (EXPERIMENTS / "optimizer" / "with_adam" / runformat.RESULTS).read_text()
    row = next(line for line in joint.splitlines() if line.startswith("| 7 |"))
    chapter = (EXPERIMENTS / "optimizer" / "README.md").read_text()
    assert row in chapter
    verdict = re.search(r"\*\*(supported|contradicted|cannot tell)\*\* \|$", row).group(1)
    assert f"the explanation's verdict: **{verdict}**" in " ".join(chapter.split())


def test_the_batch_and_smoothing_row_is_that_of_its_runs() -> None:
    """The front page's range of the four groups' mean accuracies and of the runs' seconds."""
    line = next(line for line in README.splitlines() if "experiments/batch_smoothing/" in line)
    runs = sorted(EXPERIMENTS.glob("batch_smoothing/*/*/seed*/lr_*"))
    assert len(runs) == 20
    groups: dict[Path, list[float]] = {}
    for run in runs:
        groups.setdefault(run.parent.parent, []).append(100 * rows(run)[-1]["test_acc"])
    means = [statistics.fmean(accs) for accs in groups.values()]
    assert f"{min(means):.2f}–{max(means):.2f}% over the four" in line
    seconds = [60 * minutes(run) for run in runs]
    assert f"{min(seconds):.0f}–{max(seconds):.0f} s each" in line
