"""Where the tests find things: the clone's root, its committed results and the real MNIST."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


EXPERIMENTS = ROOT / "experiments"  # the committed results


REAL_MNIST = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "mnist"))
