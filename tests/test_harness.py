"""A bounded fault harness: kill -9 and SIGTERM at random moments of a tiny run and of a
two-rate sweep, each followed by --resume, must end with the files of an uninterrupted run."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli import start_cli
from runs import same_weights

from mnist_cnn import runformat
from mnist_cnn.training import checkpoints

pytestmark = pytest.mark.slow

SINGLE = ["--epoch", "3", "--batch_size", "64"]
SWEEP = ["--epoch", "2", "--batch_size", "64", "--learning_rate", "1e-3", "5e-4"]


def start(args: list[str], data: Path, out: Path) -> subprocess.Popen:
    return start_cli(*args, "--data_dir", str(data), "--out_dir", str(out))


def run_folders(out: Path, args: list[str]) -> list[Path]:
    return [out / f for f in ("lr_1e-3", "lr_5e-4")] if args is SWEEP else [out]


def comparable(folder: Path) -> dict[str, object]:
    """A run folder's outputs without wall-clock seconds and the command line."""

    def text(name: str) -> str:
        lines = (folder / name).read_text().splitlines()
        return "\n".join(line for line in lines if not line.startswith("command:"))

    rows = [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in runformat.read_metrics_csv(folder / "metrics.csv")
    ]
    log = "\n".join(
        " ".join(line.split()[:-2]) if line.split()[-1:] in (["yes"], ["-"]) else line
        for line in text("model.log").splitlines()
    )  # rows: no seconds
    return {
        "rows": rows,
        "log": log.split("summary")[1],
        "figure": (folder / "figure.png").is_file(),
    }


def finish(args: list[str], data: Path, out: Path) -> None:
    """--resume until the run or sweep is complete (once is enough; a few to be safe)."""
    for _ in range(3):
        proc = start([*args, "--resume"], data, out)
        _, err = proc.communicate(timeout=300)
        assert "Traceback" not in err, err
        if proc.returncode == 0:
            return
    raise AssertionError(f"--resume never finished: {err}")


@pytest.mark.parametrize("args", [SINGLE, SWEEP], ids=["single", "sweep"])
def test_kills_and_sigterms_at_random_moments_lose_nothing(
    tiny_data: Path, tmp_path: Path, args: list[str]
) -> None:
    reference = tmp_path / "reference"
    began = time.perf_counter()
    proc = start(args, tiny_data, reference)
    assert proc.wait(timeout=300) == 0
    duration = time.perf_counter() - began
    expected = {f.relative_to(reference): comparable(f) for f in run_folders(reference, args)}
    rng = random.Random(len(args))
    counts = {signal.SIGKILL: 0, signal.SIGTERM: 0}
    # moments that fall after a (warm, faster) process has ended do not count: go on until
    # 10 of each kind met a running process, within a bound
    trial = 0
    while min(counts.values()) < 10 and trial < 48:
        trial += 1
        signum = (
            signal.SIGKILL if counts[signal.SIGKILL] < counts[signal.SIGTERM] else signal.SIGTERM
        )
        out = tmp_path / f"trial{trial}"
        proc = start(args, tiny_data, out)
        # from 0.5 s: before that the Python interpreter itself is starting, and nothing of
        # ours runs (a signal then ends it as the OS does, with nothing written)
        delay = rng.uniform(0.5, 0.9 * duration)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signum)
            counts[signum] += 1
            said, err = proc.communicate(timeout=300)
            assert "Traceback" not in err, err
            # never exit 0 after a signal, always say so; but once the last file is written
            # and its line printed, the process's end (which restores the OS's handlers) may be
            # what the signal meets: then -15, or 0 when the exit was already under way (the
            # kernel takes 25-45 ms to end a process holding torch after os._exit, and a signal
            # then changes nothing), with every file complete
            finished = said.rstrip().endswith(("and figure.png", "compare.png"))
            if signum == signal.SIGTERM and not (finished and proc.returncode in (0, -15)):
                assert proc.returncode == 143, (trial, delay, duration, said[-300:], err)
                assert "SIGTERM received" in said + err, said + err
        else:
            proc.communicate()
        finish(args, tiny_data, out)
        for folder in run_folders(out, args):
            name = folder.relative_to(out)
            assert same_weights(folder / "model.pth", reference / name / "model.pth"), trial
            assert comparable(folder) == expected[name], trial
            assert not list(folder.glob(".*.tmp"))
        if args is SWEEP:
            assert (out / "results.md").read_text() == (reference / "results.md").read_text()
            assert (out / "compare.png").is_file()
    print(f"\n{counts[signal.SIGKILL]} kill -9 and {counts[signal.SIGTERM]} SIGTERM moments")
    assert min(counts.values()) >= 10  # with both scenarios: at least 20 of each kind
    for folder in run_folders(out, args):  # every resumed checkpoint verifies, and is the same
        state = torch.load(folder / "checkpoint.pth", weights_only=True)
        assert (
            checkpoints.digest({k: v for k, v in state.items() if k != "sha256"}) == state["sha256"]
        )
        ref = torch.load(reference / folder.relative_to(out) / "checkpoint.pth", weights_only=True)
        assert torch.equal(state["model"]["out.weight"], ref["model"]["out.weight"])
