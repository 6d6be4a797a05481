"""One run's folder while it trains: `Run`, model.log's text, metrics.csv and config.json written
(with the resume and divergence records), checkpoints saved, verified and restored, the start
mode (fresh, resume, or refuse), and the epoch loop's bookkeeping and progress bar.

Reading a finished run back is mnist_cnn.readback's, writing files safely mnist_cnn.files'.
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
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from mnist_cnn.files import (
    atomic_write,
    load_tensors,
    write_text,
)
from mnist_cnn.interrupts import Interrupted, UserError
from mnist_cnn.readback import (
    COLUMNS,
    LOSS_NOTE,
    VAL_COLUMNS,
    Column,
    bad_config,
    columns_of,
    load_config,
    recorded_divergence,
    selection_loss,
)
from mnist_cnn.settings import BINDING, HEADER_LINES, REPORT, header_line

log = logging.getLogger("mnist_cnn")


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


@dataclass(kw_only=True)
class Run:
    """One training run: its settings (every one given: main.py's RECIPES are their one
    source), its folder and what it has done so far. The settings declared in
    mnist_cnn/settings.py read as attributes: run.ema is settings["ema"]."""

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
        return sum(self.batches(e, per_epoch) for e in range(1, self.epochs + 1))

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
            f"seed: {run.seed}  optimizer: Adam  device: {device.type}  amp: {s.amp}  "
            f"channels_last: {s.channels_last}  compile: {s.compile}",
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


def restore_checkpoint(run: Run, t: Trainable) -> None:
    """Load checkpoint.pth into the run, refusing a damaged one or one made with other settings,
    before anything is written. A checkpoint older than a setting trained with the report's
    value of it."""
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
    saved = {**REPORT, **(state["config"] if isinstance(state.get("config"), dict) else {})}
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


def resumed_finished(run: Run, t: Trainable, device: torch.device) -> bool:
    """Restore a run from its checkpoint; whether it had already finished (then its missing
    final outputs, if a stop during its last writes left any, are written now)."""
    restore_checkpoint(run, t)
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
