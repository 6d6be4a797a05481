"""main.py run as a user runs it (a fresh interpreter) or in-process: its exit code, its one-
paragraph errors, a progress poll and a stop in a chosen epoch."""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from paths import ROOT

import main
from mnist_cnn import runformat


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run main.py in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def start_cli(*args: str) -> subprocess.Popen:
    """Start main.py in a fresh interpreter, its output piped as text."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter in the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def modules_after(argv: list[str]) -> tuple[int, set[str]]:
    """main.main(argv) in a fresh interpreter: its exit code and every module then loaded."""
    probe = f"import sys, main\ncode = main.main({argv!r})\nprint(code, sorted(sys.modules))"
    result = run_python(probe)
    code, _, loaded = result.stdout.strip().splitlines()[-1].partition(" ")
    return int(code), set(ast.literal_eval(loaded))


def refused(capsys: pytest.CaptureFixture, argv: list[str], *needles: str) -> str:
    """Run main in-process; assert exit code 2 and a one-paragraph message holding the needles."""
    code = main.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, (code, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def wait_for_epochs(
    folder: Path, epochs: int, proc: subprocess.Popen, timeout: float = 300
) -> None:
    """Poll a run's metrics.csv until it holds `epochs` rows; fail if the process ends first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-3000:]}"
        try:
            if len(runformat.read_metrics_csv(folder / "metrics.csv")) >= epochs:
                return
        except (OSError, main.UserError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{folder} made no progress")


@contextlib.contextmanager
def stopped_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> Iterator[None]:
    """Inside the block, training stops as on SIGTERM when epoch `epoch` (counted over the whole
    block, 1-based) begins; after it, main.train_epoch is the real one again."""
    real, calls = main.train_epoch, []

    def stop_there(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == epoch:
            raise main.Interrupted(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(main, "train_epoch", stop_there)
    try:
        yield
    finally:
        monkeypatch.setattr(main, "train_epoch", real)
