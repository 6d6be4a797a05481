"""Shared fixtures: a tiny learnable IDX dataset, the real MNIST, and CLI runners."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import main  # noqa: E402

REAL_MNIST = Path(os.environ.get("MNIST_DIR", ROOT.parent / "shared" / "mnist"))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    return struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright bar position encodes the label, with noise: easy to learn."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 3 + 2 * int(label)
        image[row:row + 2, 4:24] = 255
    return images


def write_mnist(folder: Path, n_train: int = 256, n_test: int = 128, seed: int = 0) -> Path:
    """Write a tiny dataset in torchvision's MNIST/raw layout; return the data_dir."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images_name, labels_name = main.SPLIT_FILES[split]
        (raw / images_name).write_bytes(idx_bytes(digit_images(labels, rng)))
        (raw / labels_name).write_bytes(idx_bytes(labels))
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only-by-convention tiny MNIST shared by the tests."""
    return write_mnist(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A finished 2-epoch run on the tiny data (its folder)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main.main(["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0
    return out


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST beside the repository (../shared/mnist)."""
    if not (REAL_MNIST / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {REAL_MNIST} (set MNIST_DIR)")
    return REAL_MNIST


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run main.py in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
