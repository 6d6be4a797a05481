#!/usr/bin/env python3
"""Every number kept: short runs of the three recipes, a 2x2 grid and an SGD run, trained by a
reference commit and by this tree on this machine, must give model.pth tensor for tensor and
metrics.csv value for value (the seconds, and columns the reference did not have, aside), and
model.log's setting lines alike. Float results differ between CPUs and thread counts, so the
reference is trained here, in a temporary git worktree, never read from a file. From the
clone's root (about a minute and a half on 2 cores; tests/test_same_numbers.py runs it in CI):

    python -m tools.same_numbers --data_dir ../shared/mnist
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mnist_cnn.runformat import LOG, METRICS, MODEL

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["--limit", "1200", "--batch_size", "100"]
REFERENCE = "3a75359"  # before this round's refactors
OPTIMIZER_COMMIT = "f61e5ca"  # the commit that added --optimizer
# (name, flags, then: flags of a second command into the same folder, the commit whose numbers
# it keeps)
CASES: tuple[tuple[str, list[str], list[str], str], ...] = (
    ("report", [], [], REFERENCE),
    ("fast", ["--recipe", "fast", "--amp", "false"], [], REFERENCE),
    ("accurate", ["--recipe", "accurate", "--epoch", "3", "--val_split", "200"], [], REFERENCE),
    ("grid", ["--learning_rate", "1e-3", "5e-4", "--seed", "0", "1"], [], REFERENCE),
    ("resumed", ["--epoch", "1"], ["--epoch", "3", "--resume"], REFERENCE),
    ("sgd", ["--optimizer", "sgd", "--recipe", "fast", "--amp", "false"], [], OPTIMIZER_COMMIT),
)
HEADER_SKIP = ("command:", "torch:", "code:")  # provenance lines, which later work may extend


def train(tree: Path, out: Path, flags: list[str], data_dir: str) -> None:
    """Train with main.py of a tree into a fresh folder, one thread (the numbers depend on it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "main.py", *SHORT, "--epoch", "2", *flags, "--data_dir", data_dir]
    done = subprocess.run(
        [*command, "--out_dir", str(out), "--figure", "false"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{tree}: {' '.join(flags)} failed:\n{done.stderr[-2000:]}")


@contextmanager
def worktree(commit: str) -> Iterator[Path]:
    """A temporary checkout of a commit of this clone."""
    with tempfile.TemporaryDirectory(prefix="same_numbers_") as scratch:
        path = Path(scratch) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run(
            [*git, "worktree", "add", "--detach", str(path), commit],
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                [*git, "worktree", "remove", "--force", str(path)], check=True, capture_output=True
            )


def rows(folder: Path) -> list[dict]:
    """metrics.csv's rows without the seconds."""
    with open(folder / METRICS, newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def setting_lines(folder: Path) -> list[str]:
    """model.log's header lines that carry settings (up to the layer table)."""
    lines = (folder / LOG).read_text().split("\n" + "-" * 64)[0].splitlines()
    return [line for line in lines if not line.startswith(HEADER_SKIP)]


def run_folders(top: Path) -> list[Path]:
    """Every run folder under a training's out_dir (one, or a grid's)."""
    return sorted(p.parent for p in top.rglob(MODEL))


def differences(old: Path, new: Path) -> list[str]:
    """What differs between two trainings' run folders: weights, rows, setting lines."""
    found = []
    old_runs, new_runs = run_folders(old), run_folders(new)
    if [p.relative_to(old) for p in old_runs] != [p.relative_to(new) for p in new_runs]:
        return [f"run folders {old_runs} against {new_runs}"]
    for a, b in zip(old_runs, new_runs):
        wa, wb = (torch.load(p / MODEL, weights_only=True) for p in (a, b))
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            found.append(f"{b}: {MODEL} differs")
        ra, rb = rows(a), rows(b)
        if [{k: r[k] for k in ra[0]} for r in rb] != ra:
            found.append(f"{b}: metrics.csv differs")
        if setting_lines(a) != setting_lines(b):
            found.append(f"{b}: model.log's setting lines differ")
    return found


def main(argv: list[str] | None = None) -> int:
    """Train each case with the reference and with this tree; print what differs."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data_dir", default=os.environ.get("MNIST_DIR", "../shared/mnist"))
    p.add_argument(
        "--cases", nargs="+", choices=[c[0] for c in CASES], default=[c[0] for c in CASES]
    )
    args = p.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve())
    failed = 0
    with tempfile.TemporaryDirectory(prefix="same_numbers_out_") as scratch:
        for name, flags, then, commit in (c for c in CASES if c[0] in args.cases):
            old, new = Path(scratch) / name / "old", Path(scratch) / name / "new"
            with worktree(commit) as tree:
                for command in filter(None, (flags, then)):
                    train(tree, old, command, data_dir)
            for command in filter(None, (flags, then)):
                train(ROOT, new, command, data_dir)
            found = differences(old, new)
            failed += bool(found)
            print(f"{name} against {commit}: {'; '.join(found) or 'equal'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
