"""Checkpoints: a run's weights, optimizer and record saved after every epoch with a checksum,
verified field by field and restored for --resume (refusing one made with other settings), and
the start mode (fresh, resume, or refuse to start over an earlier run); weights put into the
CNN with every mismatch named. What it checkpoints is anything with a model, optimizer and
scaler (Trainable), so it knows no training loop.
"""

from __future__ import annotations

import enum
import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn as nn

from mnist_cnn.files import (
    load_tensors,
    write,
)
from mnist_cnn.interrupts import UserError
from mnist_cnn.runformat import (
    CHECKPOINT,
    COLUMNS,
    CONFIG,
    EVENTS,
    FIGURE,
    LOG,
    LR,
    METRICS,
    MODEL,
    VAL_COLUMNS,
    bad_config,
    load_config,
    read_metrics_csv,
    selection_loss,
)
from mnist_cnn.settings import REPORT
from mnist_cnn.training.optim import OPTIMIZERS, SGD, Adam
from mnist_cnn.training.runrecord import Run

if TYPE_CHECKING:
    from torch.optim.swa_utils import AveragedModel

log = logging.getLogger("mnist_cnn")


class Trainable(Protocol):
    """What a checkpoint holds besides the run's own state."""

    model: nn.Module
    optimizer: Adam | SGD
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None


def torch_bytes(obj: object) -> bytes:
    """torch.save into memory, so that the file itself is written by the gate alone."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_weights(weights: nn.Module, path: Path) -> None:
    """Write a model's state_dict as model.pth, atomically."""
    write(path, torch_bytes(weights.state_dict()))


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
    hollow = [k for k in own if k in state and k not in bad and state[k].is_meta]
    groups = {
        "wrong shape or type": [
            f"{k} is {tuple(getattr(state[k], 'shape', ()))}, expected {tuple(own[k].shape)}"
            for k in bad
        ],
        "unexpected": [k for k in keys if k not in own]
        + [repr(k) for k in state if not isinstance(k, str)],
        "missing": [f"{k} {tuple(v.shape)}" for k, v in own.items() if k not in state],
        "without values (meta tensors)": hollow,
        "not finite": [
            k
            for k in own
            if k in state
            and k not in bad + hollow
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
    write(run.folder / CHECKPOINT, torch_bytes(state))


def checkpoint_problems(state: dict, run: Run, t: Trainable) -> list[str]:
    """What is wrong with a loaded checkpoint's fields (types, shapes, ranges, checksum)."""
    if (
        "sha256" in state
        and digest({k: v for k, v in state.items() if k != "sha256"}) != state["sha256"]
    ):
        return ["its checksum does not match its contents (a changed byte)"]
    history, best = state.get("history"), state.get("best_epoch")
    cols = [c.name for c in (VAL_COLUMNS if run.settings.val_split else COLUMNS)]
    if (
        isinstance(history, list)
        and history
        and isinstance(history[0], dict)
        and LR.name in history[0]
    ):
        cols.append(LR.name)  # recorded since the column exists: every row or none
    numbers = [c for c in cols if c not in ("epoch", "saved")]
    problems = []
    if not isinstance(history, list) or not all(
        isinstance(r, dict)
        and list(r) == cols
        and r["epoch"] == i
        and all(isinstance(r[c], float) and math.isfinite(r[c]) for c in numbers)
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
    config = state.get("config")
    made_by = OPTIMIZERS.get(
        config.get("optimizer", REPORT["optimizer"])
        if isinstance(config, dict)
        else REPORT["optimizer"]
    )
    params = [p for p in t.model.parameters()]
    if (
        made_by is None
        or not isinstance(moments, dict)
        or sorted(moments, key=repr) != list(range(len(params)))
        or not all(
            isinstance(moments[i], dict)
            and all(
                isinstance(moments[i].get(k), torch.Tensor)
                and moments[i][k].shape == p.shape
                and moments[i][k].isfinite().all()
                for k in made_by.state_keys
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
    path = run.folder / CHECKPOINT
    state = load_tensors(path, "checkpoint")
    advice = (
        "Delete it to start the run over, or train anew with --overwrite in place of --resume; "
        "model.pth, metrics.csv and model.log were left as they are."
    )
    problems = checkpoint_problems(state, run, t)
    if problems:
        raise UserError(
            f"The checkpoint {path} is damaged or not this tool's: {'; '.join(problems)}. {advice}"
        )
    saved = {**REPORT, **(state["config"] if isinstance(state.get("config"), dict) else {})}
    differ = [f"{k} {saved.get(k)} (now {v})" for k, v in run.config().items() if saved.get(k) != v]
    if run.settings.lr_schedule == "onecycle" and state.get("epochs") != run.epochs:
        differ.append(
            f"epochs {state.get('epochs')} (now {run.epochs}; the one-cycle schedule "
            "spans the whole run)"
        )
    if differ:
        raise UserError(
            f"The run in {run.folder} was made with {', '.join(differ)}. Resume it "
            "with its own settings, or start anew with --out_dir (or --overwrite)."
        )
    weights = state.get("model")
    apply_weights(t.model, weights if isinstance(weights, dict) else {}, path)
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


RUN_FILES = (MODEL, CHECKPOINT, LOG, METRICS)
# a fresh run writes these too: found without --overwrite, they are someone's, never replaced
WRITTEN_TOO = (CONFIG, FIGURE, EVENTS)


class Start(enum.Enum):
    """How a run begins."""

    FRESH = "fresh"
    RESUME = "resume"


def start_mode(folder: Path, resume: bool, overwrite: bool, restarted: bool) -> Start:
    """Whether a run starts fresh or resumes, refusing to start over an earlier run by accident.
    A restarted torchrun worker resumes what it can and replaces what its killed first epoch
    left; a --resume that finds no finished epoch starts from epoch 1, losing nothing."""
    earlier = [n for n in RUN_FILES if (folder / n).exists()]
    if (resume or restarted) and CHECKPOINT in earlier:
        return Start.RESUME
    if restarted or overwrite:
        return Start.FRESH
    if resume and METRICS in earlier and read_metrics_csv(folder / METRICS):
        # finished epochs, but nothing to continue them from
        kept = ", ".join(n for n in earlier if n != CHECKPOINT)
        raise UserError(
            f"Nothing to resume: {folder} holds a run's epochs ({kept}) but no checkpoint.pth "
            "(a finished run whose checkpoint was removed, or one copied without it); "
            "resuming would train it again over them. Train it anew with --overwrite in place "
            "of --resume (for a job array's --run_index, remove the folder first), or give "
            "--out_dir NEW_FOLDER to keep it."
        )
    if resume:
        if (folder / CONFIG).exists():  # a run stopped in epoch 1 wrote it; a stranger's stays
            if "command" not in load_config(folder / CONFIG):
                raise bad_config(folder / CONFIG, "no command: not a record this tool wrote")
        log.info("%s: no epoch had finished there; starting from epoch 1", folder)
        return Start.FRESH
    earlier += [n for n in WRITTEN_TOO if (folder / n).exists()]
    if earlier:
        advice = "--resume to continue it, " if CHECKPOINT in earlier or CONFIG in earlier else ""
        raise UserError(
            f"{folder} already holds an earlier run ({', '.join(earlier)}). Add "
            f"{advice}--overwrite to replace it, or --out_dir NEW_FOLDER to keep it "
            "and train elsewhere."
        )
    return Start.FRESH
