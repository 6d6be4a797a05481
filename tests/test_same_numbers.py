"""Every number kept: tools/same_numbers.py trains short runs with the reference commits and with
this tree, on this machine, and finds them tensor-equal (see its docstring for the cases)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from paths import REAL_MNIST, ROOT


@pytest.mark.slow
def test_short_runs_are_tensor_equal_to_the_reference_commits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.same_numbers", "--data_dir", str(REAL_MNIST)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and all(line.endswith(": equal") for line in lines), done.stdout
