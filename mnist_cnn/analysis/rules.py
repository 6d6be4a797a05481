"""What one run shows, read back: `RunResult` (its settings and epoch rows), the three selection
rules (the report's lowest test loss, the highest test accuracy, the honest rule: lowest
validation loss or the kept epoch) and the training dynamics (epochs to fit, overfitting,
roughness, spikes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

FIT = 0.995  # "fits the training set": the first epoch at or above 99.5% training accuracy


@dataclass
class RunResult:
    """A finished (or stopped) run as read back from its folder."""

    name: str
    lr: float
    seed: int
    rows: list[dict]
    best: dict  # the saved epoch's row (model.pth): the lowest selection loss, or the last
    epochs: int | None = None  # as planned; None where the folder does not say
    finished: bool = True  # all epochs done, stopped by patience, or diverged
    diverged: int | None = None  # the epoch whose loss became infinite or NaN
    misclassified: int | None = None  # test mode's count beside model.pth (test.log), if any
    test_images: int = 10_000
    recipe: str = "report"  # the named settings it trained with (config.json)
    keep: str = "lowest"  # model.pth: the lowest selection loss's epoch, or the "last"
    setting: str = ""  # what names it apart from another run of its rate: settings or a folder
    differs: tuple[str, ...] = ()  # the settings that set groups apart, where they name them
    order: tuple = ()  # where a group of its rate comes: the folder given, then its settings
    optimizer: str = "adam"  # config.json's; older folders trained with Adam

    @property
    def validated(self) -> bool:
        """Whether a held-out validation split chose its model."""
        return "val_loss" in self.rows[0]

    @property
    def split(self) -> str:
        """The split the rules choose on: val, or test without a held-out split."""
        return "val" if self.validated else "test"

    @property
    def last(self) -> dict:
        """The last finished epoch."""
        return self.rows[-1]


def finite(x: float | None) -> TypeGuard[float]:
    """Whether x is a real number to compute with (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)


def finite_values(values: Iterable[float | None]) -> list[float]:
    """The values that are real numbers to compute with."""
    return [v for v in values if finite(v)]


def shown(value: float | None, fmt: str) -> str:
    """A cell: the value, or what it is instead (never fit: –; NaN, inf: as such)."""
    return "–" if value is None else f"{value:{fmt}}"


def lowest_loss(r: RunResult) -> dict | None:
    """Rule (a): the epoch of the lowest selection loss, the first on ties (as training saves)."""
    rows = [row for row in r.rows if finite(row[f"{r.split}_loss"])]
    return min(rows, key=lambda row: row[f"{r.split}_loss"]) if rows else None


def highest_accuracy(r: RunResult) -> dict | None:
    """Rule (b): the epoch of the highest selection accuracy, the first on ties."""
    rows = [row for row in r.rows if finite(row[f"{r.split}_acc"])]
    return max(rows, key=lambda row: row[f"{r.split}_acc"]) if rows else None


@dataclass(frozen=True)
class Rule:
    """A way to pick one epoch of each run, whose test accuracy is then compared."""

    label: str
    pick: Callable[[RunResult], dict | None]


def notes(*parts: str) -> str:
    """A label's notes in brackets, the empty ones left out: " (a, b)", or nothing."""
    shown = [part for part in parts if part]
    return f" ({', '.join(shown)})" if shown else ""


def rules_for(results: Sequence[RunResult]) -> tuple[Rule, Rule, Rule]:
    """The three honest rules, named after the split that chooses and the one model.pth keeps."""
    validated = {r.validated for r in results}
    where, caveat = (
        ("validation", "")
        if validated == {True}
        else ("test", "chosen on the test set, optimistic")
        if validated == {False}
        else ("validation (test where none is held out)", "partly optimistic")
    )
    keeps = {r.keep for r in results}
    kept = "model.pth" + ("" if len(keeps) == 1 else " of the runs that keep it")
    return (
        Rule(
            f"lowest {where} loss" + notes(kept if "lowest" in keeps else "", caveat), lowest_loss
        ),
        Rule(f"highest {where} accuracy" + notes(caveat), highest_accuracy),
        Rule("last epoch" + notes(kept if "last" in keeps else ""), lambda r: r.last),
    )


def kept_rule(results: Sequence[RunResult]) -> int:
    """The index in rules_for of the rule that chose model.pth: (c) where every run keeps its
    last epoch, else (a)."""
    return 2 if {r.keep for r in results} == {"last"} else 0


def test_accuracy(rule: Rule) -> Callable[[RunResult], float | None]:
    """The test accuracy (in %) of the epoch a rule picks."""

    def value(r: RunResult) -> float | None:
        row = rule.pick(r)
        return 100 * row["test_acc"] if row is not None else None

    return value


def log_roughness(losses: Sequence[float]) -> float | None:
    """Mean |ln loss(e) - ln loss(e-1)| over consecutive epochs: how jagged the curve is."""
    if len(losses) < 2 or not all(finite(x) and x > 0 for x in losses):
        return None
    steps = [abs(math.log(b) - math.log(a)) for a, b in zip(losses, losses[1:])]
    return sum(steps) / len(steps)


def epochs_to_fit(r: RunResult) -> float | None:
    """The first epoch whose training accuracy is at least FIT; None if none is."""
    return next((row["epoch"] for row in r.rows if row["train_acc"] >= FIT), None)


def overfitting(r: RunResult) -> float | None:
    """The selection loss of the last epoch minus its lowest."""
    best = lowest_loss(r)
    last = r.last[f"{r.split}_loss"]
    return last - best[f"{r.split}_loss"] if best is not None and finite(last) else None


def common_fit(results: Sequence[RunResult]) -> float | None:
    """The lowest training loss every run reaches: the highest of the runs' lowest."""
    lowest = [min(v) for r in results if (v := finite_values(row["train_loss"] for row in r.rows))]
    return max(lowest) if len(lowest) == len(results) else None


def gap_at_fit(r: RunResult, level: float) -> float | None:
    """Overfitting at a matched fit: the selection loss minus the training loss at the first
    epoch whose training loss is at most `level` (so slower fitting is not read as less
    overfitting)."""
    row = next(
        (row for row in r.rows if finite(row["train_loss"]) and row["train_loss"] <= level), None
    )
    if row is None or not finite(row[f"{r.split}_loss"]):
        return None
    return row[f"{r.split}_loss"] - row["train_loss"]


def spikes(r: RunResult) -> float:
    """Epochs whose training loss is more than twice the previous epoch's."""
    losses = [row["train_loss"] for row in r.rows]
    return sum(1 for a, b in zip(losses, losses[1:]) if finite(a) and finite(b) and b > 2 * a)


@dataclass(frozen=True)
class Statistic:
    """One number per run, with its name and format (`key` names it in the claims)."""

    name: str
    fmt: str
    of: Callable[[RunResult], float | None]
    key: str = ""


def dynamics(results: Sequence[RunResult]) -> list[Statistic]:
    """The training dynamics, defined once (the README gives the formulas)."""
    validated = {r.validated for r in results}
    split = {frozenset([True]): "validation", frozenset([False]): "test"}.get(
        frozenset(validated), "selection"
    )
    a, b = rules_for(results)[:2]
    return [
        Statistic(f"epochs to fit ({100 * FIT:g}% train acc)", ".1f", epochs_to_fit, "fit"),
        Statistic("selected epoch, rule (a)", ".1f", lambda r: (a.pick(r) or {}).get("epoch"), "a"),
        Statistic("selected epoch, rule (b)", ".1f", lambda r: (b.pick(r) or {}).get("epoch"), "b"),
        Statistic(f"overfitting ({split} loss, last - lowest)", ".4f", overfitting, "overfit"),
        Statistic(
            f"roughness ({split} loss)",
            ".4f",
            lambda r: log_roughness([row[f"{r.split}_loss"] for row in r.rows]),
            "rough",
        ),
        Statistic(
            "roughness (train loss)",
            ".4f",
            lambda r: log_roughness([row["train_loss"] for row in r.rows]),
            "rough_train",
        ),
        Statistic("spikes (train loss > 2x previous)", ".1f", spikes, "spikes"),
    ]
