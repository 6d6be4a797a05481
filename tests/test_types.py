"""The type checker covers every module: mypy (pyproject.toml's [tool.mypy], which .ci/run
runs) reports a type error injected into each of main.py, mnist_cnn/ and tools/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

CHECKED = sorted(
    str(p.relative_to(ROOT))
    for p in [ROOT / "main.py", *(ROOT / "mnist_cnn").rglob("*.py"), *(ROOT / "tools").glob("*.py")]
)


@pytest.mark.slow
def test_mypy_reports_an_error_injected_into_every_module(tmp_path: Path) -> None:
    for name in ("main.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("mnist_cnn", "tools"):
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in CHECKED:
        with open(tmp_path / name, "a") as f:
            f.write('\n\nINJECTED: int = "not a number"\n')
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    reported = {
        line.split(":")[0]
        for line in done.stdout.splitlines()
        if "INJECTED" in line or "assignment" in line
    }
    assert reported == set(CHECKED), set(CHECKED) - reported
