"""Where the tests find things: the clone's root, its committed results and the real MNIST."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


EXPERIMENTS = ROOT / "experiments"  # the committed results


REAL_MNIST = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "mnist"))


def git_status(clone: Path = ROOT) -> str:
    """A clone's changed and new files (git status --porcelain; ignored files left out)."""
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored=no"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
