"""Every committed summary regenerates byte for byte from its committed runs: results.md and
compare.png (rates.png where it has one), each from the paths its README names."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import EXPERIMENTS, ROOT

import main

# each committed summary (under experiments/) and the run or grid folders it was made from,
# as given from the clone's root (group names quote them)
SUMMARIES = {
    "report": [
        "lr_1e-3",
        "lr_5e-4",
        "lr_1e-4",
        *(f"experiments/report/seed{k}" for k in range(1, 5)),
    ],
    "report/seed1": ["experiments/report/seed1"],
    "study": ["experiments/study"],
    "rates": ["experiments/rates", "experiments/lr_find"],
    "accurate": ["experiments/accurate"],
    "accurate/vs_study": ["experiments/accurate", "experiments/study"],
    "accurate60k": ["experiments/accurate60k"],
    "accurate60k/vs_accurate": ["experiments/accurate", "experiments/accurate60k"],
    "optimizer": ["experiments/optimizer", "experiments/optimizer/lr_find"],
    "optimizer/with_adam": ["experiments/study", "experiments/optimizer"],
    "batch_smoothing": ["experiments/batch_smoothing"],
}


def test_the_table_names_every_committed_summary() -> None:
    found = {str(p.parent.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("results.md")}
    assert found == set(SUMMARIES)


@pytest.mark.parametrize("summary", SUMMARIES)
def test_a_committed_summary_regenerates_byte_for_byte(
    summary: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main.main(["--summarize", *SUMMARIES[summary], "--out_dir", str(tmp_path)]) == 0
    committed = EXPERIMENTS / summary
    for name in ("results.md", "compare.png", "rates.png"):
        if (committed / name).exists() or (tmp_path / name).exists():
            assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
