"""Shared fixtures: a tiny learnable IDX dataset, a finished tiny run, the real MNIST."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mnist_files import write_mnist
from paths import REAL_MNIST

import main


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MNIST shared by the tests (read only)."""
    return write_mnist(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A finished 2-epoch run on the tiny data, shared: tests read it or copy it (see `trained`)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main.main(["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0
    return out


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Path:
    """A private copy of the finished tiny run, which the test may write into."""
    return Path(shutil.copytree(trained_once, tmp_path / "trained"))


@pytest.fixture
def real_mnist() -> Path:
    """The real MNIST beside the repository (../shared/mnist)."""
    if not (REAL_MNIST / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(f"real MNIST not found at {REAL_MNIST} (set MNIST_DIR)")
    return REAL_MNIST


@pytest.fixture(scope="session")
def medium_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough tiny images that an epoch has 16 batches of 64."""
    return write_mnist(tmp_path_factory.mktemp("medium"), n_train=1024, n_test=256, seed=1)
