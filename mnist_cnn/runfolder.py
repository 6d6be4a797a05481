"""One run's folder: what is written there, read back from there, and how a run starts in it.

Owns: the epoch table's columns (model.log's text, metrics.csv, the checkpoint's rows), `Run`,
model.log rendering, metrics.csv and config.json (written, read, resume and divergence records),
checkpoint save / verify / restore, the start mode (fresh, resume, or refuse), the folder lock,
atomic writes, safe loading of weights, and reading a finished run back for --summarize.
Never imports main: the trainer it checkpoints is anything with a model, optimizer and scaler.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import io
import json
import logging
import math
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from mnist_cnn.files import (
    atomic_write,
    load_tensors,
    write_text,
)
from mnist_cnn.flagtypes import LR_PREFIX, MAX_LEARNING_RATE, MAX_SEED, SEED_PREFIX, lr_folder
from mnist_cnn.interrupts import Interrupted, UserError

if TYPE_CHECKING:
    from mnist_cnn.results import RunResult

log = logging.getLogger("mnist_cnn")
LOSS_NOTE = (
    "loss = mean per-sample cross-entropy; loss_report = summed batch means / images, "
    "the lab report's column (about loss / batch_size)"
)


class Tallied(Protocol):
    """A running tally of a pass (main's Tally): its Metrics so far."""

    def result(self) -> Metrics: ...


class Trainable(Protocol):
    """What a checkpoint holds besides the run's own state."""

    model: nn.Module
    optimizer: object  # state_dict() and load_state_dict(), as torch's optimizers
    scaler: torch.amp.GradScaler
    ema: nn.Module | None  # torch's AveragedModel, or None


class Diverged(Exception):
    """A loss became infinite or NaN: training cannot recover."""

    def advice(self, run: Run) -> str:
        """What the user reads: what happened, what model.pth holds, what to try."""
        return (
            f"{self}. model.pth keeps the best epoch so far ({run.best_epoch or 'none'}). "
            "Try a lower --learning_rate."
        )


@dataclass
class Metrics:
    """One pass over a split: mean loss per image, the report's loss, accuracy."""

    loss: float
    loss_report: float
    acc: float


def torch_bytes(obj: object) -> bytes:
    """torch.save into memory, so that the file itself is written by atomic_write alone."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def apply_weights(model: nn.Module, state: dict, path: Path) -> None:
    """Put a state_dict read from `path` into the CNN, listing any mismatch (names, shapes,
    types, non-finite values) in one message."""
    own = model.state_dict()
    keys = [k for k in state if isinstance(k, str)]
    bad = [
        k
        for k in own
        if k in state
        and not (isinstance(state[k], torch.Tensor) and state[k].shape == own[k].shape)
    ]
    groups = {
        "wrong shape or type": [
            f"{k} is {tuple(getattr(state[k], 'shape', ()))}, expected {tuple(own[k].shape)}"
            for k in bad
        ],
        "unexpected": [k for k in keys if k not in own]
        + [repr(k) for k in state if not isinstance(k, str)],
        "missing": [f"{k} {tuple(v.shape)}" for k, v in own.items() if k not in state],
        "not finite": [
            k
            for k in own
            if k in state
            and k not in bad
            and state[k].is_floating_point()
            and not state[k].isfinite().all()
        ],
    }
    problems = [
        f"{len(items)} {name} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})"
        for name, items in groups.items()
        if items
    ]
    if problems:
        raise UserError(
            f"The model file {path} is not a usable checkpoint of this CNN: "
            f"{'; '.join(problems)}. Use a model.pth written by this tool's training."
        )
    model.load_state_dict(state)


@dataclass
class Speed:
    """How the model runs: mixed precision, memory format and compilation."""

    amp: bool = False
    channels_last: bool = True
    compile: bool = False


@dataclass(frozen=True)
class Column:
    """One column of the epoch table: model.log's text, metrics.csv and the results tables."""

    name: str
    width: int
    fmt: str
    parse: type


COLUMNS = (
    Column("epoch", 5, "d", int),
    Column("train_loss", 10, ".6f", float),
    Column("train_acc", 9, ".4f", float),
    Column("test_loss", 9, ".6f", float),
    Column("test_acc", 8, ".4f", float),
    Column("train_loss_report", 17, ".8f", float),
    Column("test_loss_report", 16, ".8f", float),
    Column("seconds", 7, ".1f", float),
    Column("saved", 5, "", str),
)


# with a validation split, its two columns follow the training ones
VAL_COLUMNS = (
    *COLUMNS[:3],
    Column("val_loss", 9, ".6f", float),
    Column("val_acc", 8, ".4f", float),
    *COLUMNS[3:],
)


def columns_of(row: dict) -> tuple[Column, ...]:
    """The table's columns for rows like this one (with or without validation)."""
    return VAL_COLUMNS if "val_loss" in row else COLUMNS


def selection_loss(row: dict) -> float:
    """The loss that chooses model.pth: validation loss, else the report's test loss."""
    return row["val_loss"] if "val_loss" in row else row["test_loss"]


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


def parse_row(fields: Sequence[str], cols: Sequence[Column], where: str) -> dict:
    """The inverse of format_row (and of a metrics.csv row): exactly the columns' fields, each
    of its column's type (NaN and inf are numbers here: a diverged epoch); else one line."""
    if len(fields) != len(cols):
        raise UserError(
            f"{where} has {len(fields)} fields, not the header's {len(cols)}: the file is "
            "damaged. Restore it (model.log holds the same table) or train the run again."
        )
    try:
        return {c.name: c.parse(v) for c, v in zip(cols, fields)}
    except ValueError:
        raise UserError(
            f"{where} holds a value that is not a number ({' '.join(fields)[:80]!r}): the "
            "file is damaged. Restore it or train the run again."
        ) from None


def checked_rows(rows: list[dict], path: Path) -> list[dict]:
    """Rows whose epochs count 1, 2, 3, ...: anything else is not one run's table."""
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise UserError(f"{path}: its epochs do not count 1, 2, 3, ...: the file is damaged.")
    return rows


def epoch_batches(epoch: int, epochs: int, fraction: float, per_epoch: int) -> int:
    """Training batches in one epoch of a run: all of them, the last epoch's share in the last."""
    return per_epoch if epoch < epochs else max(1, math.ceil(fraction * per_epoch))


def schedule_steps(epochs: int, fraction: float, per_epoch: int) -> int:
    """Optimizer steps of a run of `epochs` epochs whose last trains on `fraction` of them."""
    return sum(epoch_batches(e, epochs, fraction, per_epoch) for e in range(1, epochs + 1))


@dataclass(kw_only=True)
class Run:
    """One training run: its settings (every one given: main.py's RECIPES are their one
    source), its folder and what it has done so far."""

    lr: float
    folder: Path
    seed: int
    epochs: int
    batch_size: int
    limit: int | None
    speed: Speed
    recipe: str
    lr_schedule: str
    label_smoothing: float
    weight_decay: float  # decoupled (AdamW's); 0: off
    val_split: int
    patience: int | None
    keep: str  # which epoch model.pth holds: "lowest" selection loss or "last"
    augment: bool  # training images distorted (augment.py)
    distortion: float  # the affine distortions' scale (1: augment.py's)
    elastic: float  # and the elastic part's alpha, in pixels; 0: off
    clean_epochs: int  # the last epochs, which train on undistorted images; 0: none
    ema: float  # the decay of the weight average that is evaluated and saved; 0: off
    last_epoch_fraction: float  # the share of the training batches the last epoch trains on
    figure: bool  # whether the run's end draws figure.png (no number depends on it)
    command: str = ""  # the command line that started it
    resume_command: str = ""  # and the one that continues it
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    header: str = ""
    diverged: int | None = None  # the epoch whose loss became infinite or NaN

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
        clean_epochs)."""
        return self.augment and epoch <= self.epochs - self.clean_epochs

    def batches(self, epoch: int, per_epoch: int) -> int:
        """Training batches in an epoch: all of them, the last epoch's share in the last."""
        return epoch_batches(epoch, self.epochs, self.last_epoch_fraction, per_epoch)

    def steps(self, per_epoch: int) -> int:
        """Optimizer steps of the whole run (the one-cycle schedule's length)."""
        return schedule_steps(self.epochs, self.last_epoch_fraction, per_epoch)

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
        return {
            "learning_rate": self.lr,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "limit": self.limit,
            "lr_schedule": self.lr_schedule,
            "label_smoothing": self.label_smoothing,
            "weight_decay": self.weight_decay,
            "val_split": self.val_split,
            "augment": self.augment,
            "distortion": self.distortion,
            "elastic": self.elastic,
            "clean_epochs": self.clean_epochs,
            "ema": self.ema,
            "last_epoch_fraction": self.last_epoch_fraction,
            "keep": self.keep,
        }

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
    honest = (
        [
            f"val_split: {run.val_split}  validation images: {sizes.get('val', 0)}  "
            f"model.pth: {run.rule}  patience: {run.patience or 'off'}"
        ]
        if run.val_split or run.patience or run.keep == "last"
        else []
    )
    if run.augment or run.ema:  # the report's lines stay as they were without them
        parts = [f"augment: {run.augment}"]
        parts += [f"distortion: {run.distortion:g}"] if run.distortion != 1 else []
        parts += [f"elastic: {run.elastic:g}"] if run.elastic else []
        parts += [f"clean_epochs: {run.clean_epochs}"] if run.clean_epochs else []
        honest.append("  ".join([*parts, f"ema: {run.ema:g}", f"model.pth holds {run.weights}"]))
    if run.last_epoch_fraction != 1:
        honest.append(
            f"last_epoch_fraction: {run.last_epoch_fraction:g} (the last epoch trains on that "
            "share of its shuffled batches)"
        )
    return "\n".join(
        [
            "MNIST CNN training log",
            f"command: {run.command}",
            f"learning_rate: {run.lr:g}  batch_size: {run.batch_size}  epochs: {run.epochs}  "
            f"seed: {run.seed}  optimizer: Adam  device: {device.type}  amp: {s.amp}  "
            f"channels_last: {s.channels_last}  compile: {s.compile}",
            f"recipe: {run.recipe}  lr_schedule: {run.lr_schedule}  "
            f"label_smoothing: {run.label_smoothing:g}"
            + (f"  weight_decay: {run.weight_decay:g}" if run.weight_decay else ""),
            *honest,
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
        "patience": run.patience,
        "figure": run.figure,
        "selection": run.rule,
        "model.pth": run.weights,
    }
    images = {f"{split}_images": sizes.get(split, 0) for split in ("train", "val", "test")}
    config = {**settings, **images, **machine(device), "command": run.command, "resumes": []}
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


def recorded_divergence(folder: Path) -> int | None:
    """The epoch config.json says the run diverged in, if any."""
    path = folder / "config.json"
    diverged = load_config(path).get("diverged") if path.is_file() else None
    epoch = diverged.get("epoch") if isinstance(diverged, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def bad_config(path: Path, why: object) -> UserError:
    """The one paragraph for a config.json that is not a run's settings."""
    return UserError(
        f"{path} cannot be read as a run's settings ({why}). Restore it, or delete it: "
        "--summarize then reads the rate and seed from model.log's header, and --resume goes "
        "on without it (the checkpoint is untouched)."
    )


def load_config(path: Path) -> dict:
    """A run folder's config.json as written, checked to be a JSON object."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise bad_config(path, str(e)[:200]) from None
    except RecursionError:
        raise bad_config(path, "nested too deeply to be a run's settings") from None
    if not isinstance(config, dict):
        raise bad_config(path, f"a JSON {type(config).__name__}, not an object")
    return config


TABLE_HEADERS = ([c.name for c in COLUMNS], [c.name for c in VAL_COLUMNS])


def metrics_csv(rows: Sequence[dict]) -> str:
    """metrics.csv: the epoch table as CSV, formatted as in model.log so the two agree."""
    cols = columns_of(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in cols])
    writer.writerows([[f"{row[c.name]:{c.fmt}}" for c in cols] for row in rows])
    return buffer.getvalue()


def read_metrics_csv(path: Path) -> list[dict]:
    """The rows of a metrics.csv, every field checked (one line naming the file otherwise)."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header not in TABLE_HEADERS:
                raise UserError(f"{path} is not a metrics.csv written by this tool (other header).")
            cols = VAL_COLUMNS if len(header) == len(VAL_COLUMNS) else COLUMNS
            rows = [
                parse_row(fields, cols, f"{path} line {i}") for i, fields in enumerate(reader, 2)
            ]
    except (csv.Error, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} cannot be read as CSV ({str(e)[:120]}): the file is damaged."
        ) from None
    return checked_rows(rows, path)


def read_log(path: Path) -> str:
    """A model.log's text, or a clear error."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UserError(
            f"Cannot read {path} ({e.strerror}). Give folders that hold a model.log from training."
        ) from None
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not text (byte {e.start} is not UTF-8): the file is damaged or not a "
            "model.log. Restore it or train the run again."
        ) from None


def parse_log(path: Path) -> list[dict]:
    """Read the epoch table of a model.log back into rows."""
    lines = read_log(path).splitlines()
    header = next((i for i, line in enumerate(lines) if line.split() in TABLE_HEADERS), None)
    if header is None:
        raise UserError(f"{path} has no epoch table; is it a model.log written by this tool?")
    rows = []
    cols = VAL_COLUMNS if len(lines[header].split()) == len(VAL_COLUMNS) else COLUMNS
    for i, line in enumerate(lines[header + 1 :], header + 2):
        fields = line.split()
        if not fields or not fields[0].isdigit():  # the table ends at the blank line
            break
        rows.append(parse_row(fields, cols, f"{path} line {i}"))
    if not rows:
        raise UserError(f"{path} has no finished epochs yet.")
    return checked_rows(rows, path)


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


def digest(obj: object) -> str:
    """SHA-256 of a checkpoint's contents: tensors by dtype, shape and bytes, the rest by repr,
    dictionaries in key order. A flipped byte anywhere in the values changes it."""
    import hashlib

    h = hashlib.sha256()

    def feed(x: object) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for item in x:
                feed(item)
            h.update(b"]")
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.hexdigest()


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


def save_checkpoint(run: Run, t: Trainable) -> None:
    """Atomically write everything a resume needs, after each finished epoch, with a checksum of
    its contents. No RNG state: the data order depends only on (seed, epoch) and nothing else
    draws random numbers in training."""
    state = {
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "config": run.config(),
        "epochs": run.epochs,
        "history": run.history,
        "best_epoch": run.best_epoch,
        "best_loss": run.best_loss,
        "header": run.header,
    }
    if t.scaler.is_enabled():
        state["scaler"] = t.scaler.state_dict()
    if t.ema is not None:
        state["ema"] = t.ema.state_dict()
    state["sha256"] = digest(state)
    atomic_write(run.folder / "checkpoint.pth", torch_bytes(state))


def checkpoint_problems(state: dict, run: Run, t: Trainable) -> list[str]:
    """What is wrong with a loaded checkpoint's fields (types, shapes, ranges, checksum)."""
    if (
        "sha256" in state
        and digest({k: v for k, v in state.items() if k != "sha256"}) != state["sha256"]
    ):
        return ["its checksum does not match its contents (a changed byte)"]
    history, best = state.get("history"), state.get("best_epoch")
    cols = [c.name for c in (VAL_COLUMNS if run.val_split else COLUMNS)]
    problems = []
    if not isinstance(history, list) or not all(
        isinstance(r, dict)
        and list(r) == cols
        and r["epoch"] == i
        and all(isinstance(r[c], float) and math.isfinite(r[c]) for c in cols[1:-1])
        for i, r in enumerate(history, 1)
    ):
        problems.append("its epoch history is not a list of rows of this run's columns")
    elif not isinstance(best, int) or not 0 <= best <= len(history) or (history and not best):
        problems.append(f"its best epoch {best!r} is not one of its {len(history)} epochs")
    elif best and state.get("best_loss") != selection_loss(history[best - 1]):
        problems.append("its best loss is not the loss of its best epoch")
    if not isinstance(state.get("header"), str):
        problems.append("its log header is not text")
    if not isinstance(state.get("epochs"), int):
        problems.append("its epoch count is not a number")
    optimizer = state.get("optimizer")
    moments = optimizer.get("state") if isinstance(optimizer, dict) else None
    params = [p for p in t.model.parameters()]
    if (
        not isinstance(moments, dict)
        or sorted(moments, key=repr) != list(range(len(params)))
        or not all(
            isinstance(moments[i], dict)
            and all(
                isinstance(moments[i].get(k), torch.Tensor)
                and moments[i][k].shape == p.shape
                and moments[i][k].isfinite().all()
                for k in ("exp_avg", "exp_avg_sq")
            )
            and isinstance(moments[i].get("step"), torch.Tensor)
            for i, p in enumerate(params)
        )
    ):
        problems.append("its optimizer state does not fit this CNN")
    return problems


def restore_checkpoint(run: Run, t: Trainable, legacy: dict) -> None:
    """Load checkpoint.pth into the run, refusing a damaged one or one made with other settings,
    before anything is written. `legacy`: the settings of checkpoints that predate them."""
    path = run.folder / "checkpoint.pth"
    state = load_tensors(path, "checkpoint")
    advice = (
        "Delete it to start the run over, or add --overwrite; model.pth, metrics.csv and "
        "model.log were left as they are."
    )
    problems = checkpoint_problems(state, run, t)
    if problems:
        raise UserError(
            f"The checkpoint {path} is damaged or not this tool's: {'; '.join(problems)}. {advice}"
        )
    saved = {**legacy, **(state["config"] if isinstance(state.get("config"), dict) else {})}
    differ = [f"{k} {saved.get(k)} (now {v})" for k, v in run.config().items() if saved.get(k) != v]
    if run.lr_schedule == "onecycle" and state.get("epochs") != run.epochs:
        differ.append(
            f"epochs {state.get('epochs')} (now {run.epochs}; the one-cycle schedule "
            "spans the whole run)"
        )
    if differ:
        raise UserError(
            f"The run in {run.folder} was made with {', '.join(differ)}. Resume it "
            "with its own settings, or start anew with --out_dir (or --overwrite)."
        )
    apply_weights(t.model, state.get("model") if isinstance(state.get("model"), dict) else {}, path)
    t.optimizer.load_state_dict(state["optimizer"])
    if t.ema is not None:
        try:
            t.ema.load_state_dict(state["ema"])
        except (KeyError, RuntimeError, TypeError):
            raise UserError(
                f"The checkpoint {path} lacks a usable weight average (--ema). {advice}"
            ) from None
    if t.scaler.is_enabled() and isinstance(state.get("scaler"), dict):
        t.scaler.load_state_dict(state["scaler"])
    run.history, run.best_epoch = state["history"], state["best_epoch"]
    run.best_loss, run.header = state["best_loss"], state["header"]


RUN_FILES = ("model.pth", "checkpoint.pth", "model.log", "metrics.csv")


class Start(enum.Enum):
    """How a run begins."""

    FRESH = "fresh"
    RESUME = "resume"


def start_mode(folder: Path, resume: bool, overwrite: bool, restarted: bool) -> Start:
    """Whether a run starts fresh or resumes, refusing to start over an earlier run by accident.
    A restarted torchrun worker resumes what it can and replaces what its killed first epoch
    left; a --resume that finds no finished epoch starts from epoch 1, losing nothing."""
    earlier = [n for n in RUN_FILES if (folder / n).exists()]
    if (resume or restarted) and "checkpoint.pth" in earlier:
        return Start.RESUME
    if restarted or overwrite:
        return Start.FRESH
    if resume and "model.pth" in earlier and "metrics.csv" in earlier:
        raise UserError(
            f"Nothing to resume: {folder} holds a model.pth but no checkpoint.pth "
            "(a finished run, or one copied without it). Add --overwrite to train "
            "it anew, or --out_dir NEW_FOLDER to keep it."
        )
    if resume:
        log.info("%s: no epoch had finished there; starting from epoch 1", folder)
        return Start.FRESH
    if earlier:
        advice = "--resume to continue it, " if "checkpoint.pth" in earlier else ""
        raise UserError(
            f"{folder} already holds an earlier run ({', '.join(earlier)}). Add "
            f"{advice}--overwrite to replace it, or --out_dir NEW_FOLDER to keep it "
            "and train elsewhere."
        )
    return Start.FRESH


def checked_number(
    raw: dict, key: str, kind: type, high: float, where: Path, optional: bool = False
) -> int | float | None:
    """raw[key] as a finite `kind` in (0, high] (seeds: [0, high]), else one line naming it."""
    value = raw.get(key)
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int:
        ok = float(value).is_integer() if isinstance(value, float) else value.bit_length() < 64
    low = 0 if key == "seed" else math.ulp(0)
    if not ok or not (math.isfinite(value) and low <= value <= high):
        big = isinstance(value, int) and value.bit_length() > 64  # str() of it may fail
        shown = f"a {value.bit_length()}-bit integer" if big else repr(value)[:40]
        raise bad_config(where, f"{key} is {shown}, not a {kind.__name__} in [{low:g}, {high:g}]")
    return kind(value)


def checked_recipe(value: object, where: Path) -> str:
    """A recipe's name as config.json or model.log gives it: a short word."""
    if not isinstance(value, str) or not re.fullmatch(r"[a-z_]{1,40}", value):
        raise bad_config(where, f"recipe is {repr(value)[:40]}, not a recipe's name")
    return value


def checked_keep(value: object, where: Path) -> str:
    """Which epoch model.pth holds, as config.json gives it: lowest or last."""
    if value not in ("lowest", "last"):
        raise bad_config(where, f"keep is {repr(value)[:40]}, not lowest or last")
    return str(value)


def checked_settings(raw: dict, where: Path) -> dict:
    """The settings --summarize needs, each checked for type and range (one line otherwise)."""
    diverged = raw.get("diverged")
    return {
        "learning_rate": checked_number(raw, "learning_rate", float, MAX_LEARNING_RATE, where),
        "seed": checked_number(raw, "seed", int, MAX_SEED, where),
        "epochs": checked_number(raw, "epochs", int, 100_000, where, optional=True),
        "patience": checked_number(raw, "patience", int, 100_000, where, optional=True),
        "test_images": checked_number(raw, "test_images", int, 2**31, where, optional=True),
        "recipe": checked_recipe(raw.get("recipe", "report"), where),
        "keep": checked_keep(raw.get("keep", "lowest"), where),
        "diverged": checked_number(diverged, "epoch", int, 100_000, where)
        if isinstance(diverged, dict)
        else None,
    }


def header_settings(folder: Path) -> dict:
    """For folders written before config.json existed: the settings in model.log's header."""
    header = read_log(folder / "model.log")
    found = {
        key: match.group(1)
        for key, pattern in (
            ("learning_rate", r"learning_rate: (\S+)"),
            ("seed", r"seed: (\d+)"),
            ("epochs", r"epochs: (\d+)"),
            ("patience", r"patience: (\d+)"),
            ("recipe", r"recipe: ([a-z_]+)"),
        )
        if (match := re.search(pattern, header))
    }
    try:
        kinds = {"learning_rate": float, "recipe": str}
        raw = {k: kinds.get(k, lambda v: int(v[:20]))(v) for k, v in found.items()}
    except ValueError as e:
        raise bad_config(folder / "model.log", e) from None
    return checked_settings({"seed": 0, **raw}, folder / "model.log")


def read_config(folder: Path) -> dict:
    """A run folder's settings for --summarize: config.json's, checked; model.log's header for
    folders written before it existed."""
    path = folder / "config.json"
    return checked_settings(load_config(path), path) if path.is_file() else header_settings(folder)


def grid_member(parent: Path, seed: int | None, lr: float) -> Path:
    """A grid's run folder: <parent>/[seed<k>/]lr_<rate>/ (no seed part for a one-seed sweep)."""
    return parent / (f"{SEED_PREFIX}{seed}" if seed is not None else "") / lr_folder(lr)


GRID_PATTERNS = (f"{LR_PREFIX}*/model.log", f"{SEED_PREFIX}*/{LR_PREFIX}*/model.log")


def run_name(folder: Path) -> str:
    """How tables name a run: seed<k>/lr_<rate> inside a grid, else the folder's name."""
    seeded = folder.parent.name.startswith(SEED_PREFIX)
    return f"{folder.parent.name}/{folder.name}" if seeded else folder.name


def read_run(folder: Path) -> RunResult:
    """A run folder's settings (config.json) and its rows (metrics.csv); whether it finished
    follows from them: all epochs done, stopped by patience, or diverged."""
    from mnist_cnn.results import RunResult

    folder = Path(folder)
    config = read_config(folder)
    csv_path = folder / "metrics.csv"
    rows = read_metrics_csv(csv_path) if csv_path.is_file() else parse_log(folder / "model.log")
    if not rows:
        raise UserError(f"{folder} has no finished epochs yet.")
    finite = [row for row in rows if math.isfinite(selection_loss(row))]
    # model.pth's epoch: the last, or the lowest selection loss (the first on ties, as training)
    best = rows[-1] if config["keep"] == "last" else min(finite or rows, key=selection_loss)
    epochs, patience = config["epochs"], config["patience"]
    early = patience is not None and len(rows) - best["epoch"] >= patience
    finished = not epochs or len(rows) >= epochs or early or config["diverged"] is not None
    misclassified, tested = test_log_count(folder / "test.log")
    return RunResult(
        run_name(folder),
        config["learning_rate"],
        config["seed"],
        rows,
        best,
        epochs,
        finished,
        config["diverged"],
        misclassified,
        config["test_images"] or tested or 10_000,
        config["recipe"],
        config["keep"],
    )


def test_log_count(path: Path) -> tuple[int | None, int | None]:
    """Test mode's misclassified count and test images, where a test.log lies beside model.pth."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None, None
    match = re.search(r"^misclassified: (\d{1,9}) of (\d{1,9})$", text, re.M)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def run_folders(paths: Sequence[Path]) -> dict[Path, Path]:
    """Run folders as given, and those inside grid folders (lr_*/ and seed*/lr_*/), each with
    the path given that holds it; a folder named twice (or inside a grid also named) counts once."""
    folders: dict[Path, tuple[Path, Path]] = {}
    for path in map(Path, paths):
        if (path / "model.log").exists() or not path.is_dir():
            found = [path]
        else:
            found = sorted(p.parent for pattern in GRID_PATTERNS for p in path.glob(pattern))
        for folder in found or [path]:  # an empty folder gets the usual "cannot read" message
            folders.setdefault(folder.resolve(), (folder, path))
    return dict(folders.values())


def read_runs(folders: Sequence[Path]) -> tuple[list[RunResult], list[str]]:
    """Every run folder read back; runs that diverged before their first epoch ended are
    skipped, with the reason. Where two of the paths given hold a run of one (rate, seed), each
    run is named by the path given that holds it (its setting), so that the summary compares
    those paths; two runs of one (rate, seed) under one path given are refused."""
    found, skipped = [], []
    for folder, given in run_folders(folders).items():
        if not (folder / "metrics.csv").is_file() and recorded_divergence(folder) == 1:
            skipped.append(f"{folder} (diverged in epoch 1: no finished epoch)")
            continue
        found.append((folder, given, read_run(folder)))
    # named: some (rate, seed) lies under more than one path given
    keys = {(r.lr, r.seed, given) for _, given, r in found}
    named = len(keys) > len({key[:2] for key in keys})
    first: dict[tuple[float, int], tuple[Path, RunResult]] = {}
    seen: dict[tuple[float, str, int], Path] = {}
    for folder, given, r in found:
        twin, twin_run = first.setdefault((r.lr, r.seed), (folder, r))
        # the same rows to the second (the seconds column too) are a copy, never another setting
        if named and twin_run is not r and twin_run.rows == r.rows:
            raise UserError(duplicate_run(twin, folder, r))
        if named:  # tables name the run by its folder too: two seed0/lr_4e-3 would read alike
            r.setting, r.name = str(given), f"{given.name}/{r.name}"
        other = seen.setdefault((r.lr, r.setting, r.seed), folder)
        if other != folder:
            raise UserError(duplicate_run(other, folder, r))
    return [r for _, _, r in found], skipped


def duplicate_run(one: Path, other: Path, r: RunResult) -> str:
    """The one paragraph for two folders of one run."""
    return (
        f"{one} and {other} are both the run of learning rate {r.lr:g} and seed {r.seed}: one "
        "of them is a copy or has an edited config.json. Give one of them (two folders given "
        "that trained one rate differently are compared as such)."
    )


# ---------------------------------------------------------------- a run's start, epochs and end


class Progress:
    """The terminal's bar over a run's remaining batches: epoch k/N, the running loss and
    accuracy, and tqdm's estimate of the time left. Off without a terminal (no bar in logs)."""

    EVERY = 50  # batches between refreshes of loss and accuracy: each costs a device sync

    def __init__(self, run: Run, batches_per_epoch: int) -> None:
        self.run, self.count = run, 0
        self.bar = tqdm(
            total=sum(
                run.batches(e, batches_per_epoch) for e in range(run.done + 1, run.epochs + 1)
            ),
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )

    def epoch_started(self, epoch: int) -> None:
        """Show which epoch runs now."""
        self.bar.set_description(f"epoch {epoch}/{self.run.epochs}", refresh=False)

    def batch_done(self, tally: Tallied) -> None:
        """Advance the bar; refresh loss and accuracy every EVERY batches."""
        self.bar.update()
        self.count += 1
        if not self.bar.disable and self.count % self.EVERY == 0:
            m = tally.result()
            self.bar.set_postfix_str(f"loss {m.loss:.4f}  acc {100 * m.acc:.2f}%", refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the bar from the terminal (before any closing message)."""
        self.bar.close()


def begin_run(run: Run, device: torch.device, sizes: dict, model_table: str) -> None:
    """A fresh run: its log header and config.json, and the header on the console."""
    run.header = log_header(run, device, sizes, model_table)
    if not run.figure:  # an earlier run's figure (--overwrite) must not pass for this one's
        (run.folder / "figure.png").unlink(missing_ok=True)
    write_text(run.folder / "config.json", run_config_json(run, device, sizes))
    log.info("%s", render_log(run).rstrip())


def resumed_finished(run: Run, t: Trainable, device: torch.device, legacy: dict) -> bool:
    """Restore a run from its checkpoint; whether it had already finished (then its missing
    final outputs, if a stop during its last writes left any, are written now)."""
    restore_checkpoint(run, t, legacy)
    run.diverged = recorded_divergence(run.folder)
    if not run.finished:
        record_resume(run, device)
        log.info("%s: resuming after epoch %d of %d", run.folder, run.done, run.epochs)
        return False
    how = f" (stopped early: patience {run.patience})" if run.stopped_early else ""
    if run.diverged:
        how = f" (stopped: diverged in epoch {run.diverged})"
    done = "nothing to do."
    if not run.diverged and final_outputs_missing(run):
        write_run_files(run, closing_summary(run))
        done = f"wrote its missing {'figure.png and ' if run.figure else ''}log summary."
    log.info(
        "%s: already finished %d of %d epochs%s; %s", run.folder, run.done, run.epochs, how, done
    )
    return True


def check_finite(run: Run, row: dict) -> None:
    """Stop a diverged run: a non-finite loss would never recover."""
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        loss = row.get(f"{split}_loss", 0.0)
        if not math.isfinite(loss):
            raise Diverged(
                f"The {name} loss became {loss} in epoch {row['epoch']} "
                f"at learning rate {run.lr:g}: training diverged"
            )


def end_epoch(run: Run, t: Trainable, weights: nn.Module, row: dict, began: float) -> None:
    """Record a finished epoch: `weights` (the trained ones, or their average) as model.pth if
    its selection loss is the lowest so far (the validation loss; the report's rule without a
    split: the test loss) or the run keeps the last epoch, the checkpoint, then model.log and
    metrics.csv."""
    check_finite(run, row)
    saved = run.keep == "last" or selection_loss(row) < run.best_loss
    if saved:
        run.best_epoch, run.best_loss = row["epoch"], selection_loss(row)
        atomic_write(run.folder / "model.pth", torch_bytes(weights.state_dict()))
    row.update(seconds=time.perf_counter() - began, saved="yes" if saved else "-")
    run.history.append(row)
    save_checkpoint(run, t)
    write_epoch_files(run)


@contextlib.contextmanager
def outcome_recorded(run: Run) -> Iterator[None]:
    """Around the epoch loop: however it ends (finished, stopped by a signal, diverged), the
    run's model.log says so, and metrics.csv and figure.png (if it draws one) are complete."""
    try:
        yield
    except Interrupted:
        write_run_files(
            run, [f"interrupted after epoch {run.done}; resume with: {run.resume_command}"]
        )
        log.warning(
            "Stopped after %d finished epochs; outputs are in %s. Resume with:\n  %s",
            run.done,
            run.folder,
            run.resume_command,
        )
        raise
    except Diverged as e:
        write_run_files(run, [f"stopped: {e}"])
        run.diverged = run.done + 1
        record_divergence(run, str(e))  # last: once recorded, the run's files are complete
        raise
    write_run_files(run, closing_summary(run))
    log.info(
        "\n%s\nwrote %s, model.log, metrics.csv%s",
        "\n".join(closing_summary(run)),
        run.folder / "model.pth",
        " and figure.png" if run.figure else " (no figure.png: --figure true draws it)",
    )
