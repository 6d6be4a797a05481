"""One run's record while it trains: `Run` (its settings, folder and epochs so far), the epoch
table's rows, model.log (header, table, closing summary), metrics.csv and config.json (with the
resume and divergence records) written, and whether a finished run's outputs are complete.

Reading a finished run back is mnist_cnn.analysis.readback's, writing files safely
mnist_cnn.files', the settings' declarations settings'. Imports torch and tqdm; never imports main.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mnist_cnn.analysis.readback import (
    COLUMNS,
    LOSS_NOTE,
    VAL_COLUMNS,
    Column,
    bad_config,
    columns_of,
    load_config,
    selection_loss,
)
from mnist_cnn.files import write_text
from mnist_cnn.training.settings import BINDING, HEADER_LINES, OPTIMIZER_NAMES, header_line

log = logging.getLogger("mnist_cnn")


@dataclass
class Metrics:
    """One pass over a split: mean loss per image, the report's loss, accuracy."""

    loss: float
    loss_report: float
    acc: float


@dataclass
class Speed:
    """How the model runs: mixed precision, memory format and compilation."""

    amp: bool = False
    channels_last: bool = True
    compile: bool = False


def epoch_row(epoch: int, train_m: Metrics, val_m: Metrics | None, test_m: Metrics) -> dict:
    """One epoch's metrics, keyed by the column names (seconds and saved are added after)."""
    val = {"val_loss": val_m.loss, "val_acc": val_m.acc} if val_m is not None else {}
    return {
        "epoch": epoch,
        "train_loss": train_m.loss,
        "train_acc": train_m.acc,
        **val,
        "test_loss": test_m.loss,
        "test_acc": test_m.acc,
        "train_loss_report": train_m.loss_report,
        "test_loss_report": test_m.loss_report,
    }


def table_header(cols: Sequence[Column]) -> str:
    """The log table's header line."""
    return "  ".join(f"{c.name:>{c.width}}" for c in cols)


def format_row(row: dict) -> str:
    """One epoch's line of the log table."""
    return "  ".join(f"{row[c.name]:>{c.width}{c.fmt}}" for c in columns_of(row))


def epoch_batches(epoch: int, epochs: int, fraction: float, per_epoch: int) -> int:
    """Training batches in one epoch of a run: all of them, the last epoch's share in the last."""
    return per_epoch if epoch < epochs else max(1, math.ceil(fraction * per_epoch))


def schedule_steps(epochs: int, fraction: float, per_epoch: int) -> int:
    """Optimizer steps of a run of `epochs` epochs whose last trains on `fraction` of them."""
    return sum(epoch_batches(e, epochs, fraction, per_epoch) for e in range(1, epochs + 1))


EVENT_FILE = "events.out.tfevents.mnist_cnn"  # TensorBoard's view of the run (analysis/events.py)


@dataclass(kw_only=True)
class Run:
    """One training run: its settings (every one given: main.py's RECIPES are their one
    source), its folder and what it has done so far. The settings declared in
    mnist_cnn/training/settings.py read as attributes: run.ema is settings["ema"]."""

    lr: float
    folder: Path
    seed: int
    epochs: int
    speed: Speed
    recipe: str
    settings: dict  # every setting settings.IN_RUN names
    command: str = ""  # the command line that started it
    resume_command: str = ""  # and the one that continues it
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    header: str = ""
    diverged: int | None = None  # the epoch whose loss became infinite or NaN

    def __getattr__(self, name: str) -> Any:
        """A declared setting's value (called only for names that are not fields)."""
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def done(self) -> int:
        """Epochs finished so far."""
        return len(self.history)

    @property
    def stopped_early(self) -> bool:
        """Whether the selection loss has not improved for `patience` epochs."""
        return self.patience is not None and self.done - self.best_epoch >= self.patience

    @property
    def finished(self) -> bool:
        """All epochs done, stopped by patience, or diverged."""
        return self.done >= self.epochs or self.stopped_early or self.diverged is not None

    def distorted(self, epoch: int) -> bool:
        """Whether the epoch's training images are distorted (--augment, but not its last
        clean epochs)."""
        return self.augment and epoch <= self.epochs - self.clean_epochs

    def batches(self, epoch: int, per_epoch: int) -> int:
        """Training batches in an epoch: all of them, the last epoch's share in the last."""
        return epoch_batches(epoch, self.epochs, self.last_epoch_fraction, per_epoch)

    def steps(self, per_epoch: int) -> int:
        """Optimizer steps of the whole run (the one-cycle schedule's length)."""
        return schedule_steps(self.epochs, self.last_epoch_fraction, per_epoch)

    def chooses(self, row: dict) -> bool:
        """Whether model.pth takes this epoch: its selection loss is the lowest so far (the
        validation loss; the report's rule without a split: the test loss), or the run keeps
        the last epoch. A chosen epoch becomes the run's best."""
        chosen = self.keep == "last" or selection_loss(row) < self.best_loss
        if chosen:
            self.best_epoch, self.best_loss = row["epoch"], selection_loss(row)
        return chosen

    def record(self, row: dict, seconds: float, saved: bool) -> None:
        """Add a finished epoch's row, with its seconds and whether model.pth took it."""
        row.update(seconds=seconds, saved="yes" if saved else "-")
        self.history.append(row)

    @property
    def rule(self) -> str:
        """Which epoch model.pth holds, in words."""
        return "last epoch" if self.keep == "last" else f"lowest {self.selection}"

    @property
    def selection(self) -> str:
        """The loss that chooses model.pth, in words."""
        return "validation loss" if self.val_split else "test loss"

    def config(self) -> dict:
        """Settings a resumed run must share with the original one (they change the numbers)."""
        binding = {k: self.settings[k] for k in BINDING}
        return {"learning_rate": self.lr, "seed": self.seed, **binding}

    @property
    def weights(self) -> str:
        """Which weights model.pth holds, in words."""
        return (
            f"the weight average (EMA, decay {self.ema:g})" if self.ema else "the trained weights"
        )


def render_log(run: Run, footer: Sequence[str] = ()) -> str:
    """The whole model.log, derived from the run's state, so a resume rewrites it identically."""
    table = table_header(VAL_COLUMNS if run.val_split else COLUMNS)
    lines = [run.header, "", table, *map(format_row, run.history)]
    if footer:
        lines += ["", *footer]
    return "\n".join(lines) + "\n"


def closing_summary(run: Run) -> list[str]:
    """Best-epoch and last-epoch rows, as the report's two tables have them."""
    best, last = run.history[run.best_epoch - 1], run.history[-1]
    early = (
        [
            f"stopped early after epoch {run.done}: the {run.selection} had not improved for "
            f"{run.patience} epochs"
        ]
        if run.stopped_early
        else []
    )
    return [
        "summary",
        *early,
        f"best epoch ({run.rule}, saved as model.pth): {run.best_epoch}",
        format_row({**best, "epoch": 0}).replace("    0", " best", 1),
        format_row({**last, "epoch": 0}).replace("    0", " last", 1),
    ]


def log_header(run: Run, device: torch.device, sizes: dict, model_table: str) -> str:
    """The log's opening lines: command, settings, data sizes, the model table. The lines of
    the report's protocol are those it always had; a split or patience adds one line."""
    s = run.speed
    values = {**run.settings, **run.config()}
    lines = [header_line(line, values, run, sizes) for line in HEADER_LINES]
    return "\n".join(
        [
            "MNIST CNN training log",
            f"command: {run.command}",
            f"learning_rate: {run.lr:g}  batch_size: {run.batch_size}  epochs: {run.epochs}  "
            f"seed: {run.seed}  optimizer: {OPTIMIZER_NAMES[run.optimizer]}  "
            f"device: {device.type}  amp: {s.amp}  channels_last: {s.channels_last}  "
            f"compile: {s.compile}",
            f"recipe: {run.recipe}  {lines[0]}",
            *filter(None, lines[1:]),
            f"torch: {torch.__version__}  train images: {sizes['train']}  "
            f"test images: {sizes['test']}  threads: {torch.get_num_threads()}",
            model_table,
            LOSS_NOTE,
        ]
    )


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name, as the system reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def run_config_json(run: Run, device: torch.device, sizes: dict) -> str:
    """config.json: every setting of the run and where it ran, for --summarize and people."""
    settings = {
        **run.config(),
        "epochs": run.epochs,
        "recipe": run.recipe,
        "amp": run.speed.amp,
        "compile": run.speed.compile,
        "channels_last": run.speed.channels_last,
        **{k: v for k, v in run.settings.items() if k not in BINDING},
        "selection": run.rule,
        "model.pth": run.weights,
    }
    images = {f"{split}_images": sizes.get(split, 0) for split in ("train", "val", "test")}
    config = {
        **settings,
        **images,
        **machine(device),
        "command": run.command,
        "started": round(time.time(), 3),  # the wall clock TensorBoard's events count from
        "resumes": [],
    }
    return json.dumps(config, indent=2) + "\n"


# what makes the same run give other floats: kernels, vector instructions, thread count
FLOAT_DECIDING = ("device", "device_name", "cpu_capability", "threads", "torch")


def machine(device: torch.device) -> dict:
    """Where this process computes: floats are reproducible only on the same kind."""
    return {
        "device": device.type,
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def record_resume(run: Run, device: torch.device) -> None:
    """Add this continuation to config.json's "resumes": after which epoch, where, and how.

    A run resumed on another kind of machine goes on with other (equally valid) floats; this
    list is what tells. Folders from before config.json existed have nothing to add to."""
    path = run.folder / "config.json"
    if not path.is_file():
        return
    config, here = load_config(path), machine(device)
    try:
        resumes = config.setdefault("resumes", [])
        earlier = resumes[-1] if resumes else config
        # only what the earlier record names: older ones lack cpu_capability
        before = {k: earlier[k] for k in FLOAT_DECIDING if k in earlier}
        resumes.append({"after_epoch": run.done, **here, "command": run.command})
    except (AttributeError, KeyError, TypeError) as e:
        raise bad_config(path, e) from None
    write_text(path, json.dumps(config, indent=2) + "\n")
    changed = [f"{k} {v} -> {here[k]}" for k, v in before.items() if v != here[k]]
    if changed:
        log.warning(
            "%s: resuming on another kind of machine (%s): the epochs from here on are valid, "
            "but not bit for bit those an uninterrupted run there would have given.",
            run.folder,
            ", ".join(changed),
        )


def record_divergence(run: Run, reason: str) -> None:
    """Note in config.json the epoch a run diverged in: a resume then leaves it as it is."""
    path = run.folder / "config.json"
    if path.is_file():
        config = load_config(path)
        config["diverged"] = {"epoch": run.diverged, "reason": reason}
        write_text(path, json.dumps(config, indent=2) + "\n")


def metrics_csv(rows: Sequence[dict]) -> str:
    """metrics.csv: the epoch table as CSV, formatted as in model.log so the two agree."""
    cols = columns_of(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in cols])
    writer.writerows([[f"{row[c.name]:{c.fmt}}" for c in cols] for row in rows])
    return buffer.getvalue()


def write_epoch_files(run: Run) -> None:
    """The files rewritten after every epoch: model.log and metrics.csv."""
    write_text(run.folder / "model.log", render_log(run))
    write_text(run.folder / "metrics.csv", metrics_csv(run.history))
    if sys.stderr.isatty():  # keep the progress bars intact
        tqdm.write(format_row(run.history[-1]))
    else:
        log.info("%s", format_row(run.history[-1]))


def write_run_files(run: Run, footer: Sequence[str]) -> None:
    """The files written when a run ends or stops: model.log with its footer, metrics.csv (a
    stop between the checkpoint and the epoch's files left it a row short) and figure.png (unless
    the run draws none)."""
    write_text(run.folder / "model.log", render_log(run, footer))
    if run.history:
        write_text(run.folder / "metrics.csv", metrics_csv(run.history))
    if run.history and run.figure:
        from mnist_cnn.plots import Curve, plot_curves  # matplotlib costs startup time: only here

        chose = "val" if run.val_split else "test"
        plot_curves(
            [
                Curve(label, [run.history], split, [run.best_epoch] if split == chose else [])
                for split, label in (("train", "train"), ("val", "validation"), ("test", "test"))
                if split != "val" or run.val_split
            ],
            run.folder / "figure.png",
            f"{run.folder.name}: learning rate {run.lr:g}, batch {run.batch_size}",
        )


def final_outputs_missing(run: Run) -> bool:
    """Whether a finished run's figure.png, the summary of its model.log or a row of its
    metrics.csv is missing."""
    log_path, csv_path = run.folder / "model.log", run.folder / "metrics.csv"
    return (
        (run.figure and not (run.folder / "figure.png").is_file())
        or not log_path.is_file()
        or "\nsummary\n" not in log_path.read_text(errors="replace")
        or not csv_path.is_file()
        or len(csv_path.read_text().splitlines()) != run.done + 1
    )
