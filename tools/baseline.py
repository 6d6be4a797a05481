#!/usr/bin/env python3
"""The usual MNIST script, in pytorch/examples' shape: torchvision's MNIST with ToTensor and
Normalize, a shuffled DataLoader, torch.optim.Adam, one model, a train and a test function.
tools/bench.py times main.py against it, process against process. From the clone's root:

    python -m tools.baseline --epochs 1 --data_dir ../shared/mnist     # prints "test_acc 0.98xx"
"""

from __future__ import annotations

import argparse
from collections.abc import Sized
from typing import cast

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from main import CNN, MEAN, STD


def mnist_loader(
    data_dir: str, batch_size: int, train: bool, limit: int | None = None
) -> DataLoader:
    """torchvision's MNIST as tensors normalised per image, in a DataLoader."""
    dataset = datasets.MNIST(
        data_dir,
        train=train,
        download=False,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        ),
    )
    if limit:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    return DataLoader(dataset, batch_size=batch_size, shuffle=train)


def train(
    model: CNN, device: torch.device, loader: DataLoader, optimizer: torch.optim.Optimizer
) -> None:
    """One epoch."""
    model.train()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()


def test(model: CNN, device: torch.device, loader: DataLoader) -> float:
    """Test accuracy."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
    return correct / len(cast(Sized, loader.dataset))


def run() -> None:
    """Read the flags, train, print the test accuracy."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    p.add_argument("--data_dir", default="data")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_loader = mnist_loader(args.data_dir, args.batch_size, True, args.limit)
    for _ in range(args.epochs):
        train(model, device, train_loader, optimizer)
    print(f"test_acc {test(model, device, mnist_loader(args.data_dir, 1000, False)):.4f}")


if __name__ == "__main__":
    run()
