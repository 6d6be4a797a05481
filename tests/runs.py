"""Run folders compared and made: equal weights, the epoch rows without their seconds, one run's
settings."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from mnist_cnn import runformat
from mnist_cnn.files import RECORD
from mnist_cnn.settings import REPORT, Settings


def same_weights(a: Path, b: Path) -> bool:
    """Whether two state_dict (or checkpoint) files hold equal model tensors."""
    wa, wb = (torch.load(p, weights_only=True) for p in (a, b))
    wa, wb = (w.get("model", w) for w in (wa, wb))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def metrics(folder: Path) -> list[dict]:
    """The log's rows without the wall-clock column."""
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in runformat.parse_log(folder / "model.log")
    ]


def report_settings(**changed: object) -> Settings:
    """One run's settings: the report's values (its first rate) with some changed."""
    report = {**REPORT, "learning_rate": REPORT["learning_rate"][0]}
    return Settings(**{**report, **changed})


def before_records(folder: Path) -> Path:
    """A run folder as one made before the tool kept its record of what it wrote (the form
    every test that edits a run's files by hand simulates): its record removed."""
    (folder / RECORD).unlink()
    return folder


def config_record(lr: float, seed: int, epochs: int, **more: object) -> dict:
    """A config.json as this tool writes one, with every key config.json has held since its
    first version (the report's values, a full MNIST) and `more` besides."""
    val_split = int(cast(int, more.get("val_split", 0)))
    return {
        "learning_rate": lr,
        "seed": seed,
        "epochs": epochs,
        "batch_size": 128,
        "limit": None,
        "val_split": val_split,
        "lr_schedule": "constant",
        "label_smoothing": 0.0,
        "patience": None,
        "recipe": "report",
        "amp": False,
        "train_images": 60_000 - val_split,
        "test_images": 10_000,
        **more,
    }
