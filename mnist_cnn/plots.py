"""Figures as PNG files: matplotlib without pyplot (no GUI backend), written atomically, and
the training-curve figure (loss and accuracy per epoch) of a run or of several seeds.
matplotlib loads where a figure is made: it costs a second of start-up."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnist_cnn.files import write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A bare matplotlib Figure (no pyplot, no GUI backend: it only ever becomes a PNG)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig: Figure, path: Path, dpi: int = 110) -> None:
    """Write a figure as PNG, through its folder's gate."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write(path, buffer.getvalue())


@dataclass
class Curve:
    """One line of a figure: a split's curves over one run or several seeds (drawn as their
    mean, with a band where `band` gives one per epoch), and the epochs whose models were
    selected."""

    label: str
    histories: Sequence[Sequence[dict]]
    prefix: str  # train, val or test
    selected: Sequence[int] = ()  # circles
    also: Sequence[int] = ()  # squares: the epochs another rule selects
    selected_label: str = "selected epoch (model.pth)"
    also_label: str = ""
    # seeds x epochs -> (low, high) per epoch; the analysis's statistic, named in band_label
    band: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    band_label: str = ""


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
            values[~np.isfinite(values)] = np.nan  # a diverged epoch: a gap, never a crash
            if key.endswith("_loss"):
                values[values <= 0] = np.nan  # nothing to draw on a log scale
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs stay NaN
                mean = np.nanmean(values, 0)
            ax.plot(epochs, mean, color=f"C{i}", label=curve.label)
            if curve.band and len(curve.histories) > 1:
                low, high = curve.band(values)
                if key.endswith("_acc"):  # an accuracy's band stays within 0-100%
                    low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
                else:  # and a loss's above 0, which the log scale cannot show
                    low = np.where(low > 0, low, np.nanmin(values, 0))
                ax.fill_between(epochs, low, high, color=f"C{i}", alpha=0.2)
            for selected, marker in ((curve.selected, "o"), (curve.also, "s")):
                marks = sorted({e for e in selected if e <= n})
                ax.plot(
                    marks,
                    mean[[e - 1 for e in marks]],
                    marker,
                    color=f"C{i}",
                    ms=7,
                    mfc="none",
                    mew=2,
                )
        shown = slice(1 if n > 5 else 0, n)  # epoch 1 would squash the curves of a long run
        accs = [100 * r[f"{curve.prefix}_acc"] for h in curve.histories for r in h[shown]]
        lowest += [a for a in accs if math.isfinite(a)]
    ax_loss.set(
        yscale="log",
        xlabel="epoch",
        title="loss",
        ylabel="cross-entropy loss (mean per image, log scale)",
    )
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    if lowest:
        ax_acc.set_ylim(max(min(lowest) - 0.2, 0), 100.05)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
    for marker, label, used in (
        ("o", curves[0].selected_label, any(c.selected for c in curves)),
        ("s", curves[0].also_label, any(c.also for c in curves)),
    ):
        if used:
            ax_acc.plot([], [], marker, color="grey", mfc="none", mew=2, label=label)
    banded = [c for c in curves if c.band and len(c.histories) > 1]
    if banded:
        ax_acc.fill_between([], [], [], color="grey", alpha=0.2, label=banded[0].band_label)
    # one legend for both panels, beneath them (beside the curves, long rule labels hid them),
    # in two columns where the labels fit side by side; the figure grows by its rows
    handles, labels = ax_acc.get_legend_handles_labels()
    columns = 2 if max(map(len, labels)) <= 60 else 1
    rows = math.ceil(len(labels) / columns)
    height = 4.2 + 0.22 * rows
    fig.set_size_inches(12, height)
    fig.legend(handles, labels, loc="lower center", ncol=columns, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, (0.24 * rows + 0.05) / height, 1, 1))
    save_figure(fig, path)


def plot_rates(points: Sequence, finder: tuple[float, float, float] | None, path: Path) -> None:
    """rates.png: test accuracy against rate (log x) under each rule, mean over seeds with the
    95% interval of the mean as a band; the selected epoch beneath; diverged rates marked; the
    range test's suggestion (with its per-seed spread) where given."""
    fig = new_figure(9, 7.5)
    ax_acc, ax_epoch = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    lrs = [p.lr for p in points]
    for i, label in enumerate(points[0].accuracy):
        d = [p.accuracy.get(label) for p in points]
        mean = np.array([x.mean if x else np.nan for x in d])
        low = np.array([x.low if x and x.estimable else np.nan for x in d])
        high = np.array([x.high if x and x.estimable else np.nan for x in d])
        ax_acc.plot(lrs, mean, "o-", color=f"C{i}", label=label)
        ax_acc.fill_between(
            lrs, np.clip(low, 0, 100), np.clip(high, 0, 100), color=f"C{i}", alpha=0.2
        )
    for i, label in enumerate(list(points[0].accuracy)[:2]):
        epochs = [p.epochs.get(label, np.nan) for p in points]
        ax_epoch.plot(lrs, epochs, "o-", color=f"C{i}", label=f"selected epoch: {label}")
    for p in points:
        if p.diverged:
            ax_acc.annotate(
                f"diverged\n{p.diverged} of {p.seeds}",
                (p.lr, ax_acc.get_ylim()[0]),
                ha="center",
                va="bottom",
                color="red",
                fontsize=8,
            )
    for ax in (ax_acc, ax_epoch):
        if finder is not None:
            ax.axvspan(finder[1], finder[2], color="green", alpha=0.12)
            ax.axvline(finder[0], color="green", lw=1.5, label="range test's suggestion (spread)")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    ax_acc.set_ylim(ax_acc.get_ylim()[0], min(ax_acc.get_ylim()[1], 100.05))  # bands stop at 100
    ax_acc.set(
        ylabel="test accuracy (%)",
        title="test accuracy per learning rate (mean over seeds, 95% interval)",
    )
    ax_epoch.set(xlabel="learning rate (log scale)", ylabel="epoch")
    fig.tight_layout()
    save_figure(fig, path)
