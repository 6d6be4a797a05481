"""Figures as PNG files: matplotlib without pyplot (no GUI backend), written atomically, and
the training-curve figure (loss and accuracy per epoch) of a run or of several seeds."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from runfolder import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A bare matplotlib Figure (no pyplot, no GUI backend: it only ever becomes a PNG)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write(path, buffer.getvalue())


@dataclass
class Curve:
    """One line of a figure: a split's curves over one run or several seeds (drawn as their
    mean with a min-max band), and the epochs whose models were selected."""

    label: str
    histories: Sequence[Sequence[dict]]
    prefix: str  # train, val or test
    selected: Sequence[int] = ()


def plot_curves(curves: Sequence[Curve], path: Path, title: str) -> None:
    """Loss (log scale) and accuracy per epoch, selected epochs marked with circles."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(12, 4.5)
    ax_loss, ax_acc = fig.subplots(1, 2)
    lowest = []
    for i, curve in enumerate(curves):
        n = min(map(len, curve.histories))
        epochs = [r["epoch"] for r in curve.histories[0][:n]]
        for ax, key, scale in (
            (ax_loss, f"{curve.prefix}_loss", 1),
            (ax_acc, f"{curve.prefix}_acc", 100),
        ):
            values = np.array([[scale * r[key] for r in h[:n]] for h in curve.histories])
            ax.plot(epochs, values.mean(0), color=f"C{i}", label=curve.label)
            if len(curve.histories) > 1:
                ax.fill_between(epochs, values.min(0), values.max(0), color=f"C{i}", alpha=0.2)
            marks = sorted({e for e in curve.selected if e <= n})
            ax.plot(
                marks,
                values.mean(0)[[e - 1 for e in marks]],
                "o",
                color=f"C{i}",
                ms=7,
                mfc="none",
                mew=2,
            )
        shown = slice(1 if n > 5 else 0, n)  # epoch 1 would squash the curves of a long run
        lowest.append(
            min(100 * r[f"{curve.prefix}_acc"] for h in curve.histories for r in h[shown])
        )
    ax_loss.set(
        yscale="log",
        xlabel="epoch",
        title="loss",
        ylabel="cross-entropy loss (mean per image, log scale)",
    )
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.set_ylim(min(lowest) - 0.2, 100.05)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        if any(c.selected for c in curves):
            ax.plot(
                [], [], "o", color="grey", mfc="none", mew=2, label="selected epoch (model.pth)"
            )
        if any(len(c.histories) > 1 for c in curves):
            ax.fill_between([], [], [], color="grey", alpha=0.2, label="min-max over seeds")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
