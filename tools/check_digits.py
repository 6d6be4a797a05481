#!/usr/bin/env python3
"""How well does a trained model read digits that are not MNIST? Preprocessing on against off."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import main
from mnist_cnn.use import digits


def accuracy(model: main.CNN, images: list[Image.Image], labels: np.ndarray, prepare) -> float:
    """Share of images whose predicted digit is the label, with one way of preparing them."""
    probabilities = main.classify(model, [prepare(digits.to_grey(im)) for im in images])
    return float((probabilities.argmax(1).numpy() == labels).mean())


def photo_of(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit re-drawn as a phone photo: dark ink, light noisy page, 3-5x, off-centre."""
    side = round(28 * rng.uniform(3, 5))
    big = (
        np.asarray(
            Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32
        )
        / 255
    )
    page_size = 320
    top, left = rng.integers(0, page_size - side, size=2)
    alpha = np.zeros((page_size, page_size), dtype=np.float32)
    alpha[top : top + side, left : left + side] = np.clip(big, 0, 1)
    paper, ink = rng.uniform(200, 240, size=3), rng.uniform(10, 70, size=3)
    rgb = (
        paper * (1 - alpha[..., None])
        + ink * alpha[..., None]
        + rng.normal(0, 6, size=(page_size, page_size, 3))
    )
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def photographed_mnist(data_dir: str, count: int = 500) -> tuple[list[Image.Image], np.ndarray]:
    """`count` MNIST test digits (seeded pick) as phone photos."""
    images, labels = main.read_split(data_dir, "test")
    rng = np.random.default_rng(5)
    picks = rng.choice(len(labels), size=count, replace=False)
    return [photo_of(images[i].numpy(), rng) for i in picks], labels[picks].numpy()


def uci_digits() -> tuple[list[Image.Image], np.ndarray]:
    """The UCI handwritten digits bundled with scikit-learn (1,797 images, 8x8, 43 writers)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise main.UserError(
            "This check needs scikit-learn for its bundled UCI digits: pip install scikit-learn"
        ) from None
    digits = load_digits()
    images = [Image.fromarray((d * 255 / 16).round().astype(np.uint8)) for d in digits.images]
    return images, digits.target


def main_check() -> None:
    """Print the accuracy table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model_path", default="lr_1e-3/model.pth")
    p.add_argument(
        "--data_dir", default="../shared/mnist", help="MNIST, for the photographed test digits"
    )
    args = p.parse_args()
    model = main.load_model(Path(args.model_path))
    print(f"model {args.model_path}")
    sets = {
        "UCI handwritten digits (scikit-learn load_digits, 8x8)": uci_digits(),
        "MNIST test digits re-drawn as phone photos (320x320 RGB)": photographed_mnist(
            args.data_dir
        ),
    }
    for title, (images, labels) in sets.items():
        print(f"{title}: {len(labels)} images")
        for name, prepare in (
            ("naive resize to 28x28", digits.naive),
            ("MNIST-style preprocessing", digits.mnist_style),
        ):
            print(f"  {name:<28} {100 * accuracy(model, images, labels, prepare):6.2f}%")


if __name__ == "__main__":
    sys.exit(main.report_errors(main_check))
