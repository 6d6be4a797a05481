"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks"):
the rate rises exponentially batch by batch while the training loss is recorded; the rate where
the smoothed loss falls fastest is a good constant rate to train with.

Owns the schedule, the smoothing, the stop rule, the suggestion (per seed and from the median
curve over seeds), lr_find.csv and lr_find.png. The training steps themselves are main.py's: it
hands over `step(lr) -> loss` for a fresh network per seed, so the test's analysis lives
here, beside the summary that draws its suggestion on the rate curve.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_cnn.interrupts import UserError

BETA = 0.98  # the loss's exponential moving average, as fastai and torch-lr-finder smooth it
STOP_FACTOR = 4.0  # stop once the smoothed loss exceeds this many times its minimum
SKIP_START = 0.1  # the suggestion ignores the first 10% of a curve (it is flat there)
SKIP_END = 5  # ... and the last steps (the blow-up itself is steep too, upwards)
CSV_HEADER = ("seed", "step", "lr", "loss", "smoothed")


def rates(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """The schedule: `steps` rates from lr_min to lr_max, each the previous times one factor."""
    factor = (lr_max / lr_min) ** (1 / (steps - 1))
    return [lr_min * factor**i for i in range(steps)]


def smooth(losses: Sequence[float], beta: float = BETA) -> list[float]:
    """The bias-corrected exponential moving average of the losses (Adam's correction)."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


@dataclass
class Curve:
    """One seed's range test: the rates tried and the training loss after each."""

    seed: int
    lrs: list[float]
    losses: list[float]

    @property
    def smoothed(self) -> list[float]:
        """The smoothed losses."""
        return smooth(self.losses)


def run(seed: int, schedule: Sequence[float], step: Callable[[float], float]) -> Curve:
    """Train one batch per rate until the smoothed loss passes STOP_FACTOR x its minimum (or a
    loss is not finite); the step that passed it is kept, so the blow-up shows on the plot."""
    curve = Curve(seed, [], [])
    average, lowest = 0.0, math.inf
    for i, lr in enumerate(schedule, 1):
        loss = step(lr)
        curve.lrs.append(lr)
        curve.losses.append(loss)
        if not math.isfinite(loss):
            break
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA**i)
        lowest = min(lowest, smoothed)
        if smoothed > STOP_FACTOR * lowest:
            break
    return curve


def steepest(lrs: Sequence[float], smoothed: Sequence[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log10(rate), skipping the first
    SKIP_START of the curve's steps and its last SKIP_END; None if nothing is left."""
    start, end = math.ceil(SKIP_START * len(smoothed)), len(smoothed) - SKIP_END
    finite = [i for i in range(start, end) if math.isfinite(smoothed[i])]
    if len(finite) < 3:
        return None
    window = slice(finite[0], finite[-1] + 1)
    slope = np.gradient(np.asarray(smoothed[window]), np.log10(np.asarray(lrs[window])))
    return float(lrs[window][int(np.nanargmin(slope))])


def median_curve(curves: Sequence[Curve]) -> tuple[list[float], list[float]]:
    """Rates and the median smoothed loss over seeds, over the steps every seed reached."""
    n = min(len(c.lrs) for c in curves)
    values = np.array([c.smoothed[:n] for c in curves])
    return curves[0].lrs[:n], [float(v) for v in np.median(values, axis=0)]


@dataclass
class Suggestion:
    """The suggested rate (median curve) and the per-seed suggestions' spread."""

    lr: float | None
    per_seed: dict[int, float | None]

    def text(self) -> str:
        """One line for the console and the README."""
        found = [v for v in self.per_seed.values() if v is not None]
        if self.lr is None:
            return "no suggestion: the loss rose before any steady descent (lower --lr_min)"
        spread = f"{min(found):.3g}-{max(found):.3g}" if found else "none"
        return (
            f"suggested learning rate {self.lr:.3g} (steepest descent of the median smoothed "
            f"loss over {len(self.per_seed)} seed{'s' if len(self.per_seed) > 1 else ''}; "
            f"per-seed suggestions {spread})"
        )


def suggest(curves: Sequence[Curve]) -> Suggestion:
    """The suggestion from the median curve, and each seed's own."""
    lrs, median = median_curve(curves)
    return Suggestion(steepest(lrs, median), {c.seed: steepest(c.lrs, c.smoothed) for c in curves})


def csv_text(curves: Sequence[Curve]) -> str:
    """lr_find.csv: one row per seed and step."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for c in curves:
        for i, (lr, loss, smoothed) in enumerate(zip(c.lrs, c.losses, c.smoothed), 1):
            writer.writerow([c.seed, i, f"{lr:.6e}", f"{loss:.6f}", f"{smoothed:.6f}"])
    return buffer.getvalue()


def read_csv(path: Path) -> list[Curve]:
    """The curves of an lr_find.csv (for --summarize's rate curve); ValueError if it is not one."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if tuple(next(reader, ())) != CSV_HEADER:
            raise ValueError("its header is not lr_find.csv's")
        curves: dict[int, Curve] = {}
        for row in reader:
            seed, _, lr, loss, _ = row
            curve = curves.setdefault(int(seed), Curve(int(seed), [], []))
            curve.lrs.append(float(lr))
            curve.losses.append(float(loss))
    if not curves:
        raise ValueError("it holds no steps")
    return list(curves.values())


def plot(curves: Sequence[Curve], suggestion: Suggestion, path: Path, title: str) -> None:
    """lr_find.png: smoothed loss against rate (log x), one line per seed and their median, the
    suggestion marked with its per-seed spread."""
    from mnist_cnn.plots import new_figure, save_figure

    fig = new_figure(8, 5)
    ax = fig.subplots()
    for i, c in enumerate(curves):
        ax.plot(c.lrs, c.smoothed, color=f"C{i}", alpha=0.5, lw=1, label=f"seed {c.seed}")
    lrs, median = median_curve(curves)
    ax.plot(lrs, median, color="black", lw=2, label="median over seeds")
    found = [v for v in suggestion.per_seed.values() if v is not None]
    if found:
        ax.axvspan(min(found), max(found), color="green", alpha=0.15, label="per-seed suggestions")
    if suggestion.lr is not None:
        ax.axvline(suggestion.lr, color="green", lw=2, label=f"suggestion {suggestion.lr:.3g}")
    ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="smoothed training loss")
    ax.set_ylim(0, 1.1 * max(c.smoothed[0] for c in curves))  # the start in view; the rise cut
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def suggestion_in(folders: Sequence[Path]) -> Suggestion | None:
    """The range test's suggestion from the lr_find/ folders among --summarize's arguments."""
    curves = []
    for path in (Path(f) / "lr_find.csv" for f in folders):
        if path.is_file():
            try:
                curves += read_csv(path)
            except (ValueError, OSError, csv.Error) as e:
                raise UserError(
                    f"{path} cannot be read as the range test's curves ({e})."
                ) from None
    return suggest(curves) if curves else None
