"""Tiny learnable MNIST copies in torchvision's layout (IDX files), for tests that train."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

import main


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose bright bar position encodes the label, with noise: easy to learn."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for image, label in zip(images, labels):
        row = 3 + 2 * int(label)
        image[row : row + 2, 4:24] = 255
    return images


def write_mnist(
    folder: Path, n_train: int = 256, n_test: int = 128, seed: int = 0, shuffle_labels: bool = False
) -> Path:
    """Write a tiny dataset in torchvision's MNIST/raw layout; return the data_dir. With
    shuffle_labels the labels are shuffled after the images are drawn: nothing can learn them."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        images_name, labels_name = main.SPLIT_FILES[split]
        (raw / images_name).write_bytes(idx_bytes(digit_images(labels, rng)))
        if shuffle_labels:
            rng.shuffle(labels)
        (raw / labels_name).write_bytes(idx_bytes(labels))
    return folder


def replace_test_set(data: Path, seed: int) -> None:
    """Put other test images and labels (drawn with `seed`) in a tiny dataset's place."""
    other = write_mnist(data.parent / f"other{seed}", n_train=8, n_test=96, seed=seed)
    for name in main.SPLIT_FILES["test"]:
        (data / "MNIST" / "raw" / name).write_bytes((other / "MNIST" / "raw" / name).read_bytes())
