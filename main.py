#!/usr/bin/env python3
"""Train, study, test and use the lab report's small MNIST CNN, from one script.

Modes, one per command (add --data_dir ../shared/mnist on machines without a network):
  train one rate   python main.py --learning_rate 1e-3          -> lr_1e-3/
  honest selection python main.py --val_split 10000 --patience 10   (model.pth chosen on the
                   last 10,000 training images; the test set chooses nothing)
  fast recipe      python main.py --recipe fast                 -> fast/ (the report's accuracy
                                                                   in seconds)
  sweep and grid   python main.py --learning_rate 1e-3 5e-4 1e-4 --seed 0 1 2
                   -> seed<k>/lr_<rate>/ (lr_<rate>/ for one seed), results.md, compare.png;
                   torchrun --nproc_per_node N main.py ... spreads the runs over N workers
  test             python main.py --test true --model_path lr_1e-3/model.pth
                   -> test.log, errors.png, confusion.png beside the model
  predict          python main.py --predict my_digits/ --topk 3
  summarize        python main.py --summarize lr_1e-3 lr_5e-4 lr_1e-4   (or a grid folder)
  serve            python main.py --serve      -> a draw-a-digit page and POST /api/predict
  export           python main.py --export model.onnx
A run folder holds model.pth (the weights of the epoch with the lowest validation loss, or test
loss without --val_split), model.log, metrics.csv (one row per epoch), config.json (every
setting and the machine), figure.png, and checkpoint.pth for --resume.

Sections, in reading order: flags, files, data, model, train and evaluate (the epoch loop is
train()), run folder, plots, grid and results, test mode, predict, serve and export, entry.
Beside it, leaf modules that never import this one: optim.py (Adam, one-cycle), stats.py
(intervals over seeds), results.py (results.md and its Answer), digits.py (photos -> MNIST-style
pixels), server.py (the page's HTTP).
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def exit_during_import(signum: int, frame: object) -> None:
    """A signal while Python loads its modules: nothing has started, so leave with the code."""
    print(f"{signal.Signals(signum).name} received during start-up: stopped", file=sys.stderr)
    os._exit(EXIT_CODES[signum])


if __name__ == "__main__":  # first of all, so that no moment of the start is left unhandled
    for _signum in EXIT_CODES:
        signal.signal(_signum, exit_during_import)

import argparse  # noqa: I001  (after the handlers above on purpose)
import contextlib
import csv
import dataclasses
import datetime
import enum
import errno
import functools
import io
import json
import logging
import math
import platform
import random
import re
import shlex
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

IMAGE_SIZE = 28
NUM_CLASSES = 10
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and standard deviation, as in the report
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EXIT_BAD_INPUT, EXIT_WRITE_FAILED = 2, 1
LOSS_NOTE = (
    "loss = mean per-sample cross-entropy; loss_report = summed batch means / images, "
    "the lab report's column (about loss / batch_size)"
)
# The named recipes: the report's (the default) and the fast one. Flags given explicitly win.
RECIPES = {
    "report": {
        "epoch": 50,
        "learning_rate": [1e-3],
        "batch_size": 128,
        "lr_schedule": "constant",
        "label_smoothing": 0.0,
        "amp": False,
    },
    "fast": {
        "epoch": 2,
        "learning_rate": [1.2e-2],
        "batch_size": 128,
        "lr_schedule": "onecycle",
        "label_smoothing": 0.1,
        "amp": "auto",
    },
}
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
MAX_LEARNING_RATE = 10.0  # Adam steps of 10 already wreck any network; larger ones are typos

log = logging.getLogger("mnist_cnn")


class UserError(Exception):
    """A problem the user can fix: printed as one paragraph, exit code 2 (1 for failed writes)."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the process (training: at a batch or file boundary)."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.note = signum, note


def stop_at_once(signum: int, frame: object) -> None:
    """A signal where nothing is half-written: stop now (report_errors prints the line)."""
    raise Interrupted(signum, "stopped")


class Diverged(Exception):
    """A loss became infinite or NaN: training cannot recover."""

    def advice(self, run: Run) -> str:
        """What the user reads: what happened, what model.pth holds, what to try."""
        return (
            f"{self}. model.pth keeps the best epoch so far ({run.best_epoch or 'none'}). "
            "Try a lower --learning_rate."
        )


# ---------------------------------------------------------------- flags


def str2bool(text: str) -> bool:
    """Parse true/false/yes/no/1/0 in any case."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/yes/no/1/0, got {text!r}")


def bounded(
    kind: type, low: float, strict: bool, high: float = math.inf, high_included: bool = False
) -> Callable[[str], float]:
    """Argparse type: a finite `kind` above `low` (at least `low` when not strict), below `high`
    (at most `high` when high_included)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if strict else 'at least'} {low:g}"
            )
        if value > high or (value == high and not high_included):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'at most' if high_included else 'less than'} {high:g}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def learning_rates(text: str) -> list[float]:
    """Argparse type: one rate (1e-3), or LOW:HIGH:N, N rates evenly spaced on a log scale from
    LOW to HIGH inclusive, each rounded to three significant digits (1e-5:1e-1:9)."""
    one_rate = bounded(float, 0, True, MAX_LEARNING_RATE, True)
    if ":" not in text:
        return [one_rate(text)]
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise argparse.ArgumentTypeError("not a rate nor LOW:HIGH:N")
        low, high = one_rate(parts[0]), one_rate(parts[1])
        count = bounded(int, 2, False, 1000, True)(parts[2])
        if low >= high:
            raise argparse.ArgumentTypeError("LOW must be below HIGH")
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e} (e.g. 1e-5:1e-1:9)") from None
    step = (math.log10(high) - math.log10(low)) / (count - 1)
    return [float(f"{10 ** (math.log10(low) + i * step):.3g}") for i in range(count)]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default unless it has none or its help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block buries the message)."""

    def error(self, message: str) -> None:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


MODES = ("test", "predict", "summarize", "serve", "export")


def build_parser() -> tuple[ArgumentParser, dict[str, argparse._ArgumentGroup]]:
    """The command line's flags, in one group per mode; the groups name which flags belong to
    which mode (flags of a mode's group are refused without it)."""
    p = ArgumentParser(
        prog="main.py",
        formatter_class=HelpFormatter,
        description="Train, test and use the lab report's MNIST CNN.",
    )
    modes = p.add_argument_group("modes (one at a time; none means: train)")
    mode = modes.add_mutually_exclusive_group()
    mode.add_argument(
        "--test",
        type=str2bool,
        default=False,
        help="evaluate --model_path on the test set instead of training",
    )
    mode.add_argument(
        "--predict",
        nargs="+",
        metavar="PATH",
        default=None,
        help="read the digit in these image files or folders with --model_path",
    )
    mode.add_argument(
        "--summarize",
        nargs="+",
        metavar="RUN_DIR",
        default=None,
        help="rebuild results.md and compare.png from run or grid folders",
    )
    mode.add_argument(
        "--serve",
        action="store_true",
        default=None,
        help="serve a draw-a-digit page and a JSON API for --model_path",
    )
    mode.add_argument(
        "--export",
        metavar="FILE.onnx",
        default=None,
        help="write --model_path as ONNX (images N x 1 x 28 x 28 -> logits N x 10)",
    )
    common = p.add_argument_group("every mode: which run, data and device")
    common.add_argument(
        "--recipe",
        choices=RECIPES,
        default="report",
        help="named settings: the report's (50 epochs, Adam 1e-3) or fast (2 "
        "epochs, one-cycle); flags given explicitly override its values",
    )
    common.add_argument(
        "--learning_rate",
        type=learning_rates,
        nargs="+",
        default=None,
        help="one or more Adam learning rates (the peak rate with one-cycle), or "
        "LOW:HIGH:N for N rates log-spaced from LOW to HIGH (1e-5:1e-1:9); "
        "default: the recipe's, 1e-3 or 1.2e-2",
    )
    common.add_argument(
        "--seed",
        type=bounded(int, 0, False, MAX_SEED, True),
        nargs="+",
        default=[0],
        help="one or more seeds; every (rate, seed) pair is one run",
    )
    common.add_argument(
        "--out_dir",
        default=None,
        help="run folder (default lr_<rate>, or fast/); for a grid, the parent",
    )
    common.add_argument(
        "--model_path",
        default=None,
        help="weights for the other modes (default: <run folder>/model.pth)",
    )
    common.add_argument(
        "--data_dir",
        default="data",
        help="folder holding MNIST/raw/*-ubyte (downloaded there if missing)",
    )
    common.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="auto picks cuda, then mps, then cpu",
    )
    common.add_argument(
        "--batch_size",
        type=bounded(int, 1, False, 2**20, True),
        default=None,
        help="images per batch (default: the recipe's, 128)",
    )
    common.add_argument(
        "--limit",
        type=bounded(int, 1, False),
        default=None,
        help="use only the first N training and test images",
    )
    common.add_argument(
        "--amp",
        type=str2bool,
        nargs="?",
        const=True,
        default=None,
        help="bfloat16 autocast (fp16 on older GPUs); default: the recipe's "
        "(fast: where the CPU or GPU does it natively)",
    )
    common.add_argument(
        "--channels_last",
        type=str2bool,
        default=True,
        help="channels-last memory format (faster on CPU and GPU)",
    )
    training = p.add_argument_group("training and grids (no mode flag)")
    training.add_argument(
        "--epoch",
        type=bounded(int, 1, False, 100_000, True),
        default=None,
        help="epochs to train (default: the recipe's, 50 or 2)",
    )
    training.add_argument(
        "--lr_schedule",
        choices=("constant", "onecycle"),
        default=None,
        help="learning rate per batch (default: the recipe's)",
    )
    training.add_argument(
        "--label_smoothing",
        type=bounded(float, 0, False, 1),
        default=None,
        help="label smoothing of the training loss (default: the recipe's)",
    )
    training.add_argument(
        "--val_split",
        type=bounded(int, 0, False),
        default=0,
        help="hold out the last N training images for validation: model.pth "
        "is then the epoch with the lowest validation loss and the test "
        "set chooses nothing (10000: the classic 50,000/10,000 split); "
        "0 keeps the report's rule, the lowest test loss",
    )
    training.add_argument(
        "--patience",
        type=bounded(int, 1, False),
        default=None,
        help="stop a run once its selection loss (validation, or test without "
        "--val_split) has not improved for K epochs (default: never)",
    )
    training.add_argument(
        "--resume", action="store_true", help="continue the run(s) in the folder(s)"
    )
    training.add_argument(
        "--overwrite", action="store_true", help="start afresh over an earlier run in the folder"
    )
    training.add_argument("--compile", action="store_true", help="torch.compile the model")
    training.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic GPU kernels (CPU runs are deterministic anyway)",
    )
    predict = p.add_argument_group("predict")
    predict.add_argument(
        "--topk",
        type=bounded(int, 1, False, NUM_CLASSES, True),
        default=1,
        help="also list the k most likely digits (at most 10)",
    )
    predict.add_argument("--output_csv", default=None, help="also write a CSV")
    predict.add_argument(
        "--save_preprocessed",
        default=None,
        metavar="DIR",
        help="save the 28x28 images the model saw into DIR",
    )
    predict.add_argument(
        "--no_preprocess",
        action="store_true",
        help="only greyscale and resize to 28x28 (the naive way)",
    )
    serve = p.add_argument_group("serve")
    serve.add_argument(
        "--port",
        type=bounded(int, 0, False, 65536),
        default=8000,
        help="the port (0 picks a free one)",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (127.0.0.1: this machine only)",
    )
    return p, {"train": training, "predict": predict, "serve": serve}


def lr_folder(lr: float) -> str:
    """Folder name for a learning rate: mantissa-exponent, three significant digits at most,
    no trailing zeros (5e-4, 3.16e-5)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"lr_{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Read the command line and fill in the recipe's values for the flags not given."""
    p, groups = build_parser()
    args = p.parse_args(argv)
    args.argv = list(argv)  # the run's own command line, for its log and its resume hint
    active = next((m for m in MODES if getattr(args, m) not in (None, False)), "train")
    for mode_name, group in groups.items():
        given = [
            a.option_strings[0] for a in group._group_actions if getattr(args, a.dest) != a.default
        ]
        if given and mode_name != active:
            p.error(
                f"{', '.join(given)} only {'works' if len(given) == 1 else 'work'} "
                f"{'when training' if mode_name == 'train' else 'with --' + mode_name}"
            )
    if args.learning_rate is not None:  # each token gave a list (LOW:HIGH:N gives N rates)
        args.learning_rate = [lr for rates in args.learning_rate for lr in rates]
        folders: dict[str, float] = {}
        for lr in args.learning_rate:
            other = folders.setdefault(lr_folder(lr), lr)
            if other != lr:
                p.error(
                    f"the rates {other:g} and {lr:g} would share the folder {lr_folder(lr)} "
                    "(names keep three significant digits); give rates that differ there"
                )
        if len(folders) < len(args.learning_rate):
            p.error("a learning rate is given twice; give each rate once")
    for key, value in RECIPES[args.recipe].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if active == "test" and len(args.learning_rate) * len(args.seed) > 1:
        p.error("--test takes one model; give one --learning_rate and --seed, or --model_path")
    return args


if __name__ == "__main__":  # --help and flag errors answer here, before torch loads (seconds)
    parse_args(sys.argv[1:])

# the heavy imports come after the early answer above on purpose
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

if TYPE_CHECKING:  # imported for real only where used: they cost startup time
    from matplotlib.figure import Figure

    from optim import Adam
    from results import RunResult


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device: auto is cuda, then mps, then cpu; torchrun workers take the GPUs in turn."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    if not available[name]:
        raise UserError(
            f"--device {name} was asked for, but this machine has no {name} device "
            "PyTorch can use. Use --device auto or --device cpu."
        )
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def native_low_precision(device: torch.device) -> bool:
    """Whether autocast runs natively here: any CUDA GPU, or a CPU with AVX512-BF16 or AMX."""
    return device.type == "cuda" or (
        device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_amp(amp: bool | str, device: torch.device) -> bool:
    """--amp auto (the fast recipe's) means: where the device does bf16 natively."""
    return native_low_precision(device) if amp == "auto" else bool(amp)


def command_line(argv: Sequence[str]) -> str:
    """The command that ran this process, as torchrun or plain python."""
    nodes, per_node = os.environ.get("GROUP_WORLD_SIZE"), os.environ.get("LOCAL_WORLD_SIZE")
    launcher = "python"
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        launcher = f"torchrun --nnodes {nodes or 1} --nproc_per_node {per_node or '?'}"
    return f"{launcher} main.py {shlex.join(argv)}".rstrip()


def resume_command(argv: Sequence[str]) -> str:
    """The command that continues this process's runs where they stopped."""
    return command_line(argv if "--resume" in argv else [*argv, "--resume"])


# ---------------------------------------------------------------- files


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so a crash or a full disk leaves the old one intact: temp, fsync, rename."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a full disk often shows only here, not at write()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself survives a power cut only once synced
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise UserError(
                f"Cannot write {path}: {reason}. The files written before it are "
                "unchanged; free some space or choose another --out_dir, then run "
                "again (add --resume to continue a training run).",
                EXIT_WRITE_FAILED,
            ) from None
        raise


def sync_folder(folder: Path) -> None:
    """fsync a folder's entry list (POSIX; Windows cannot open folders and needs no such step)."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, text.encode())


def torch_bytes(obj: object) -> bytes:
    """torch.save into memory, so that the file itself is written by atomic_write alone."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def prepare_out_dir(path: Path) -> None:
    """Create the output folder and prove it is writable, before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(
            f"Cannot write to the output folder {path} ({e.strerror or e}). "
            "Choose a writable folder with --out_dir."
        ) from None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an OS lock on a run folder while writing there (flock on POSIX, msvcrt on Windows,
    through filelock); the OS drops it even on kill -9. The holder's PID is written inside."""
    import filelock

    path = folder / ".lock"
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = ""
        with contextlib.suppress(OSError):
            holder = path.read_text(errors="replace").strip()
        raise UserError(
            f"{folder} is in use: process {holder or 'unknown'} is training there. "
            "Wait for it to finish (or stop it), or train into another --out_dir."
        ) from None
    try:
        with open(path, "r+") as f:
            f.write(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()


def load_tensors(path: Path, what: str) -> dict:
    """torch.load with weights_only=True; any failure becomes a clear UserError."""
    path = Path(path)
    try:
        kind = path.stat()
    except FileNotFoundError:
        raise UserError(
            f"The {what} {path} does not exist. Train a model first "
            "(python main.py --learning_rate 0.001) or pass --model_path."
        ) from None
    except OSError as e:  # a name too long, no permission, a loop of links
        raise UserError(f"The {what} {path} cannot be opened ({e.strerror}).") from None
    if path.is_dir():
        raise UserError(
            f"The {what} {path} is a directory, not a file. Give the path of the "
            f".pth file inside it, e.g. {path / 'model.pth'}."
        )
    if not path.is_file():
        raise UserError(
            f"The {what} {path} is not a regular file (a pipe or a device?). Give "
            "the path of a .pth file."
        )
    if kind.st_size == 0:
        raise UserError(
            f"The {what} {path} is empty (0 bytes), probably from an interrupted copy. "
            "Copy or train it again."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(
            f"The {what} {path} cannot be read as PyTorch weights: it is truncated, "
            f"damaged, not a PyTorch file, or holds more than tensors ({reason}). "
            "Only files saved by this tool (torch.save of a state_dict) load."
        ) from None
    if not isinstance(obj, dict):
        raise UserError(
            f"The {what} {path} holds a {type(obj).__name__}, not a dictionary of "
            "tensors (a state_dict). Save weights with torch.save(model.state_dict())."
        )
    return obj


def load_model(path: Path) -> CNN:
    """The CNN with the weights of a model.pth (or of a checkpoint), in eval mode."""
    state = load_tensors(path, "model file")
    model = CNN()
    apply_weights(model, state["model"] if isinstance(state.get("model"), dict) else state, path)
    return model.eval()


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


# ---------------------------------------------------------------- data


def idx_count(path: Path, ndim: int) -> int:
    """Check an IDX file's magic number, shape and length; return how many items it holds."""
    header_len = 4 + 4 * ndim
    with path.open("rb") as f:
        header = f.read(header_len)
    fix = (
        f"Replace it with the original MNIST file (see {path.parent} and the README's "
        "'Data' section)."
    )
    if len(header) < header_len:
        raise UserError(
            f"The MNIST file {path} is truncated: {len(header)} bytes, shorter than "
            f"its {header_len}-byte header. {fix}"
        )
    magic = struct.unpack(">I", header[:4])[0]
    if magic != 0x800 + ndim:
        raise UserError(
            f"The MNIST file {path} has magic number 0x{magic:08x}, expected "
            f"0x{0x800 + ndim:08x} (unsigned bytes, {ndim} dimensions): it is not "
            f"an IDX {'image' if ndim == 3 else 'label'} file. {fix}"
        )
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] not in ((), (IMAGE_SIZE, IMAGE_SIZE)):
        raise UserError(
            f"The MNIST file {path} holds {dims[1]}x{dims[2]} images; this model "
            f"needs {IMAGE_SIZE}x{IMAGE_SIZE}. {fix}"
        )
    size, expected = path.stat().st_size, header_len + math.prod(dims)
    if size != expected:
        raise UserError(
            f"The MNIST file {path} is {size:,} bytes but its header announces "
            f"{expected:,} ({dims[0]:,} items): it is truncated or damaged. {fix}"
        )
    return dims[0]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A validated IDX file's items as a uint8 array (images N x 28 x 28, labels N)."""
    count = idx_count(path, ndim)
    data = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(count, IMAGE_SIZE, IMAGE_SIZE) if ndim == 3 else data


def missing_data_message(raw: Path) -> str:
    """The one-paragraph message for MNIST files that are absent and could not be downloaded."""
    names = ", ".join(n for pair in SPLIT_FILES.values() for n in pair)
    return (
        f"MNIST is not in {raw} and could not be downloaded (no network?). Place the four "
        f"uncompressed files {names} in that folder, or point --data_dir at a folder that "
        "holds MNIST/raw/ with them (on this project's machines: --data_dir ../shared/mnist)."
    )


def read_split(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's uint8 images and int64 labels, read with NumPy (torchvision only downloads)."""
    raw = Path(data_dir) / "MNIST" / "raw"
    images_path, labels_path = (raw / name for name in SPLIT_FILES[split])
    if not (images_path.is_file() and labels_path.is_file()):
        from torchvision.datasets import MNIST  # imported only here: it costs about a second

        try:
            with contextlib.redirect_stdout(sys.stderr):
                MNIST(root=data_dir, train=split == "train", download=True)
        except Exception:  # any network or disk failure means the same thing to the user
            raise UserError(missing_data_message(raw)) from None
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise UserError(
            f"The MNIST files {images_path} ({len(images):,} images) and {labels_path} "
            f"({len(labels):,} labels) do not match. Use the two files of one release."
        )
    return torch.from_numpy(images), torch.from_numpy(labels).long()


@dataclass(eq=False)
class TensorBatches:
    """Batches sliced from a whole split held as one tensor; the training order depends only on
    (seed, epoch), so a resumed or re-run epoch sees the same batches."""

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    shuffle: bool
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle order the next iteration uses."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's sample order, from a generator of its own (the global RNG is untouched)."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        return torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.images.device) if self.shuffle else None
        for start in range(0, len(self.labels), self.batch_size):
            if order is None:
                yield (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                yield self.images[idx], self.labels[idx]


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the network's input, as the report normalised MNIST."""
    return (pixels - MEAN) / STD


def to_pixels(inputs: torch.Tensor) -> torch.Tensor:
    """The network's input -> pixels in [0, 1] (the inverse of normalise)."""
    return inputs * STD + MEAN


def get_loader(
    split: str,
    data_dir: str,
    batch_size: int,
    limit: int | None = None,
    device: torch.device = torch.device("cpu"),
    seed: int = 0,
    val_split: int = 0,
) -> TensorBatches:
    """The split (train, val or test) as normalised tensors on `device`; training batches
    shuffled, the others not. val is the last `val_split` images of the training file, train
    the ones before them (the first `limit` of those)."""
    images, labels = read_split(data_dir, "test" if split == "test" else "train")
    if split != "test" and val_split >= len(labels):
        raise UserError(
            f"--val_split {val_split} leaves no training images: the training file "
            f"holds {len(labels):,}. Hold out fewer (10000 is the classic split)."
        )
    if split == "val":
        images, labels = images[len(labels) - val_split :], labels[len(labels) - val_split :]
    else:
        end = len(labels) - (val_split if split == "train" else 0)
        images, labels = images[:end][:limit], labels[:end][:limit]
    images = normalise(images.to(device).unsqueeze(1).float().div_(255))
    return TensorBatches(images, labels.to(device), batch_size, shuffle=split == "train", seed=seed)


# ---------------------------------------------------------------- model


class CNN(nn.Module):
    """The report's network: two conv-BN-ReLU-maxpool blocks, one linear layer; 29,034 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(1, 16, 5, 1, 2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(16, 32, 5, 1, 2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.out = nn.Linear(32 * 7 * 7, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of 1x28x28 images."""
        return self.out(self.conv2(self.conv1(x)).flatten(1))


def model_summary() -> str:
    """torchsummary's table of the CNN, captured as text."""
    from torchsummary import summary

    out = io.StringIO()
    with torch.random.fork_rng(), contextlib.redirect_stdout(out):  # summary draws random input
        summary(CNN(), (1, IMAGE_SIZE, IMAGE_SIZE), device="cpu")
    return out.getvalue().rstrip()


@dataclass
class Speed:
    """How the model runs: mixed precision, memory format and compilation."""

    amp: bool = False
    channels_last: bool = True
    compile: bool = False


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device does it; float16 on GPUs without bfloat16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def prepare_model(model: nn.Module, device: torch.device, speed: Speed) -> nn.Module:
    """Move the model to the device and memory format, compiling it in place when asked."""
    layout = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device, memory_format=layout)
    if speed.compile:
        model.compile()  # in place: state_dict keys stay those of a plain CNN
    return model


def make_scaler(device: torch.device, speed: Speed) -> torch.amp.GradScaler:
    """Loss scaling, active only for float16 autocast (bf16 has float32's range and needs none)."""
    fp16 = speed.amp and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=fp16)


# ---------------------------------------------------------------- train and evaluate


@dataclass
class Metrics:
    """One pass over a split: mean loss per image, the report's loss, accuracy."""

    loss: float
    loss_report: float
    acc: float


class Tally:
    """Running sums for Metrics, kept on the device so that no batch waits for the host."""

    def __init__(self, device: torch.device) -> None:
        # float64: 60,000 float32 additions would lose the last digits the log prints
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.batch_means = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, mean_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch."""
        mean_loss = mean_loss.detach().double()
        self.loss += mean_loss * len(labels)
        self.batch_means += mean_loss
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += len(labels)

    def result(self) -> Metrics:
        """The pass's Metrics (the one host synchronisation)."""
        return Metrics(
            self.loss.item() / self.count,
            self.batch_means.item() / self.count,
            self.correct.item() / self.count,
        )


def forward_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    speed: Speed,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean cross-entropy of one batch, under autocast when asked."""
    with torch.autocast(images.device.type, dtype=amp_dtype(images.device), enabled=speed.amp):
        logits = model(images)
    # the loss in float32 even under autocast: softmax of bf16 logits loses the small losses
    return logits, F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


@dataclass
class Trainer:
    """What one optimisation step needs besides the batch."""

    model: nn.Module
    optimizer: Adam
    speed: Speed
    scaler: torch.amp.GradScaler
    schedule: Callable[[int], tuple[float, float]] | None = None  # steps done -> lr, beta1
    label_smoothing: float = 0.0


def train_epoch(
    t: Trainer,
    loader: TensorBatches,
    stop: StopFlag | None = None,
    progress: Progress | None = None,
) -> Metrics:
    """One pass of the optimizer over the training set; loss and accuracy of that pass."""
    t.model.train()
    tally = Tally(loader.images.device)
    for images, labels in loader:
        if stop is not None and stop.signum is not None:
            raise Interrupted(stop.signum)
        logits, loss = forward_loss(t.model, images, labels, t.speed, t.label_smoothing)
        t.optimizer.zero_grad()
        t.scaler.scale(loss).backward()
        if t.schedule is not None:
            t.optimizer.lr, t.optimizer.beta1 = t.schedule(t.optimizer.steps)
        t.scaler.step(t.optimizer)
        t.scaler.update()
        tally.add(loss, logits, labels)
        if progress is not None:
            progress.batch_done(tally)
    return tally.result()


def evaluate(
    model: nn.Module,
    loader: TensorBatches,
    speed: Speed = Speed(),
    label_smoothing: float = 0.0,
    probabilities: list[torch.Tensor] | None = None,
) -> Metrics:
    """Loss and accuracy in eval mode without gradients; test mode also collects probabilities."""
    model.eval()
    tally = Tally(loader.images.device)
    with torch.inference_mode():
        for images, labels in loader:
            logits, loss = forward_loss(model, images, labels, speed, label_smoothing)
            tally.add(loss, logits, labels)
            if probabilities is not None:
                probabilities.append(logits.float().softmax(1).cpu())
    return tally.result()


class Progress:
    """The terminal's bar over a run's remaining batches: epoch k/N, the running loss and
    accuracy, and tqdm's estimate of the time left. Off without a terminal (no bar in logs)."""

    EVERY = 50  # batches between refreshes of loss and accuracy: each costs a device sync

    def __init__(self, run: Run, batches_per_epoch: int) -> None:
        self.run, self.count = run, 0
        self.bar = tqdm(
            total=(run.epochs - run.done) * batches_per_epoch,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )

    def epoch_started(self, epoch: int) -> None:
        """Show which epoch runs now."""
        self.bar.set_description(f"epoch {epoch}/{self.run.epochs}", refresh=False)

    def batch_done(self, tally: Tally) -> None:
        """Advance the bar; refresh loss and accuracy every EVERY batches."""
        self.bar.update()
        self.count += 1
        if not self.bar.disable and self.count % self.EVERY == 0:
            m = tally.result()
            self.bar.set_postfix_str(f"loss {m.loss:.4f}  acc {100 * m.acc:.2f}%", refresh=False)

    def close(self) -> None:
        """Remove the bar from the terminal."""
        self.bar.close()


class StopFlag:
    """SIGINT/SIGTERM of a training process. During start-up (nothing written yet) it stops at
    once; once a run has begun it is remembered, and the process stops at the next boundary:
    the next batch, or, in figures and final writes, after the file being written, before any
    further run starts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False  # set when the first run begins

    def __call__(self, signum: int, frame: object) -> None:
        if not self.deferred:
            raise Interrupted(signum, "during start-up, before any epoch; nothing was written")
        if self.signum is None:
            log.warning(
                "%s received: stopping at the next batch or after the file being written "
                "(finished epochs are kept)",
                signal.Signals(signum).name,
            )
        self.signum = self.signum or signum

    def check(self, resume_command: str) -> None:
        """Stop here if a signal came: every finished run's files are complete."""
        if self.signum is not None:
            log.warning("Stopped before the next step; resume with:\n  %s", resume_command)
            raise Interrupted(self.signum)


@contextlib.contextmanager
def signals_to(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Send SIGINT and SIGTERM to `handler` for the duration of the block."""
    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Catch SIGINT and SIGTERM into a StopFlag for the duration of the block."""
    flag = StopFlag()
    with signals_to(flag):
        yield flag


def train(
    run: Run,
    loaders: dict[str, TensorBatches],
    device: torch.device,
    stop: StopFlag,
    resume: bool = False,
) -> Run:
    """Train one run into its folder, from scratch or from its checkpoint; the epoch loop is
    here. With a "val" loader its loss chooses model.pth and the test set only reports."""
    from optim import Adam, one_cycle

    stop.deferred = True  # from here on a signal waits for a batch or a file to finish

    seed_everything(run.seed)
    model = prepare_model(CNN(), device, run.speed)
    train_loader = dataclasses.replace(loaders["train"], seed=run.seed)
    val_loader, test_loader = loaders.get("val"), loaders["test"]
    t = Trainer(
        model,
        Adam(model.parameters(), run.lr),
        run.speed,
        make_scaler(device, run.speed),
        label_smoothing=run.label_smoothing,
    )
    if run.lr_schedule == "onecycle":
        t.schedule = functools.partial(one_cycle, total=run.epochs * len(train_loader), peak=run.lr)
    if resume:
        restore_checkpoint(run, t)
        run.diverged = recorded_divergence(run.folder)
        if run.finished:
            early = f" (stopped early: patience {run.patience})" if run.stopped_early else ""
            if run.diverged:
                early = f" (stopped: diverged in epoch {run.diverged})"
            if not run.diverged and final_outputs_missing(
                run
            ):  # a stop during its last writes left them undone
                write_run_files(run, closing_summary(run))
                log.info(
                    "%s: already finished %d of %d epochs%s; wrote its missing figure.png "
                    "and log summary.",
                    run.folder,
                    run.done,
                    run.epochs,
                    early,
                )
            else:
                log.info(
                    "%s: already finished %d of %d epochs%s; nothing to do.",
                    run.folder,
                    run.done,
                    run.epochs,
                    early,
                )
            return run
        record_resume(run, device)
        log.info("%s: resuming after epoch %d of %d", run.folder, run.done, run.epochs)
    else:
        sizes = {split: len(loader.labels) for split, loader in loaders.items()}
        run.header = log_header(run, device, sizes)
        write_text(run.folder / "config.json", run_config_json(run, device, sizes))
        log.info("%s", render_log(run).rstrip())
    progress = Progress(run, len(train_loader))
    try:
        for epoch in range(run.done + 1, run.epochs + 1):
            began = time.perf_counter()
            progress.epoch_started(epoch)
            train_loader.set_epoch(epoch)
            train_m = train_epoch(t, train_loader, stop, progress)
            # evaluation losses with the training's smoothing: plain cross-entropy of a
            # smoothed model can be lowest at an earlier, less accurate epoch
            val_m = (
                evaluate(model, val_loader, run.speed, run.label_smoothing)
                if val_loader is not None
                else None
            )
            test_m = evaluate(model, test_loader, run.speed, run.label_smoothing)
            row = epoch_row(epoch, train_m, val_m, test_m)
            check_finite(run, row)
            # keep the epoch with the lowest validation loss (the report's rule without a
            # split: the lowest test loss)
            saved = selection_loss(row) < run.best_loss
            if saved:
                run.best_epoch, run.best_loss = epoch, selection_loss(row)
                atomic_write(run.folder / "model.pth", torch_bytes(model.state_dict()))
            row.update(seconds=time.perf_counter() - began, saved="yes" if saved else "-")
            run.history.append(row)
            save_checkpoint(run, t)
            write_epoch_files(run)
            if run.stopped_early:
                break
    except Interrupted:
        progress.close()
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
        progress.close()
        write_run_files(run, [f"stopped: {e}"])
        run.diverged = run.done + 1
        record_divergence(run, str(e))  # last: once recorded, the run's files are complete
        raise
    progress.close()
    write_run_files(run, closing_summary(run))
    log.info(
        "\n%s\nwrote %s, model.log, metrics.csv and figure.png",
        "\n".join(closing_summary(run)),
        run.folder / "model.pth",
    )
    return run


def check_finite(run: Run, row: dict) -> None:
    """Stop a diverged run: a non-finite loss would never recover."""
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        loss = row.get(f"{split}_loss", 0.0)
        if not math.isfinite(loss):
            raise Diverged(
                f"The {name} loss became {loss} in epoch {row['epoch']} "
                f"at learning rate {run.lr:g}: training diverged"
            )


# ---------------------------------------------------------------- run folder: log, csv, checkpoint


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


def parse_row(fields: Sequence[str]) -> dict:
    """The inverse of format_row (and of a metrics.csv row)."""
    cols = VAL_COLUMNS if len(fields) == len(VAL_COLUMNS) else COLUMNS
    return {c.name: c.parse(v) for c, v in zip(cols, fields)}


@dataclass
class Run:
    """One training run: its settings, its folder and what it has done so far."""

    lr: float
    folder: Path
    seed: int = 0
    epochs: int = 50
    batch_size: int = 128
    limit: int | None = None
    speed: Speed = field(default_factory=Speed)
    recipe: str = "report"
    lr_schedule: str = "constant"
    label_smoothing: float = 0.0
    val_split: int = 0
    patience: int | None = None
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
            "val_split": self.val_split,
        }


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
        f"best epoch (lowest {run.selection}, saved as model.pth): {run.best_epoch}",
        format_row({**best, "epoch": 0}).replace("    0", " best", 1),
        format_row({**last, "epoch": 0}).replace("    0", " last", 1),
    ]


def log_header(run: Run, device: torch.device, sizes: dict) -> str:
    """The log's opening lines: command, settings, data sizes, the model table. The lines of
    the report's protocol are those it always had; a split or patience adds one line."""
    s = run.speed
    honest = (
        [
            f"val_split: {run.val_split}  validation images: {sizes.get('val', 0)}  "
            f"model.pth: lowest {run.selection}  patience: {run.patience or 'off'}"
        ]
        if run.val_split or run.patience
        else []
    )
    return "\n".join(
        [
            "MNIST CNN training log",
            f"command: {run.command}",
            f"learning_rate: {run.lr:g}  batch_size: {run.batch_size}  epochs: {run.epochs}  "
            f"seed: {run.seed}  optimizer: Adam  device: {device.type}  amp: {s.amp}  "
            f"channels_last: {s.channels_last}  compile: {s.compile}",
            f"recipe: {run.recipe}  lr_schedule: {run.lr_schedule}  "
            f"label_smoothing: {run.label_smoothing:g}",
            *honest,
            f"torch: {torch.__version__}  train images: {sizes['train']}  "
            f"test images: {sizes['test']}  threads: {torch.get_num_threads()}",
            model_summary(),
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
        "selection": f"lowest {run.selection}",
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
    except (OSError, ValueError) as e:
        raise bad_config(path, e) from None
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
    """The rows of a metrics.csv."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) not in TABLE_HEADERS:
            raise UserError(f"{path} is not a metrics.csv written by this tool (other header).")
        return [parse_row(fields) for fields in reader]


def read_log(path: Path) -> str:
    """A model.log's text, or a clear error."""
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UserError(
            f"Cannot read {path} ({e.strerror}). Give folders that hold a model.log from training."
        ) from None


def parse_log(path: Path) -> list[dict]:
    """Read the epoch table of a model.log back into rows."""
    lines = read_log(path).splitlines()
    header = next((i for i, line in enumerate(lines) if line.split() in TABLE_HEADERS), None)
    if header is None:
        raise UserError(f"{path} has no epoch table; is it a model.log written by this tool?")
    rows = []
    width = len(lines[header].split())
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) != width or not fields[0].isdigit():
            break
        rows.append(parse_row(fields))
    if not rows:
        raise UserError(f"{path} has no finished epochs yet.")
    return rows


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
    stop between the checkpoint and the epoch's files left it a row short) and figure.png."""
    write_text(run.folder / "model.log", render_log(run, footer))
    if run.history:
        write_text(run.folder / "metrics.csv", metrics_csv(run.history))
    if run.history:
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
        not (run.folder / "figure.png").is_file()
        or not log_path.is_file()
        or "\nsummary\n" not in log_path.read_text(errors="replace")
        or not csv_path.is_file()
        or len(csv_path.read_text().splitlines()) != run.done + 1
    )


def save_checkpoint(run: Run, t: Trainer) -> None:
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
    state["sha256"] = digest(state)
    atomic_write(run.folder / "checkpoint.pth", torch_bytes(state))


def checkpoint_problems(state: dict, run: Run, t: Trainer) -> list[str]:
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


def restore_checkpoint(run: Run, t: Trainer) -> None:
    """Load checkpoint.pth into the run, refusing a damaged one or one made with other settings,
    before anything is written."""
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
    # checkpoints written before these settings existed trained with these values
    saved = {
        "lr_schedule": "constant",
        "label_smoothing": 0.0,
        "val_split": 0,
        **(state["config"] if isinstance(state.get("config"), dict) else {}),
    }
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


# ---------------------------------------------------------------- plots


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


def show_error_images(
    images: torch.Tensor, labels: torch.Tensor, probabilities: torch.Tensor, path: Path
) -> int:
    """Save a 5x5 grid of misclassified images, most confident mistakes first; return the count."""
    confidences, predictions = probabilities.max(1)
    wrong = (predictions != labels.cpu()).nonzero().flatten()
    wrong = wrong[confidences[wrong].argsort(descending=True)]
    fig = new_figure(8, 9)
    for ax, i in zip(fig.subplots(5, 5).flat, [*wrong.tolist(), *[None] * 25]):
        ax.axis("off")
        if i is not None:
            pixels = to_pixels(images[i, 0].cpu().float()).numpy()
            ax.imshow(pixels, cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{labels[i]} → {predictions[i]} (p={confidences[i]:.2f})", fontsize=9)
    fig.suptitle(
        f"{len(wrong)} misclassified test images (true → predicted), "
        f"the {min(len(wrong), 25)} most confident shown"
    )
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return len(wrong)


def plot_confusion(matrix: torch.Tensor, path: Path) -> None:
    """Save the confusion matrix as a labelled heat map with counts in the cells."""
    from matplotlib.colors import LogNorm

    fig = new_figure(7, 6)
    ax = fig.subplots()
    shown = LogNorm(vmin=1, vmax=max(2, int(matrix.max())))
    im = ax.imshow(matrix.clamp(min=1).numpy(), cmap="Blues", norm=shown)
    for t in range(NUM_CLASSES):
        for p in range(NUM_CLASSES):
            n = int(matrix[t, p])
            if n:
                ax.text(
                    p,
                    t,
                    n,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if t == p else "black",
                )
    errors = int(matrix.sum()) - int(matrix.trace())
    ax.set(
        xticks=range(NUM_CLASSES),
        yticks=range(NUM_CLASSES),
        xlabel="predicted digit",
        ylabel="true digit",
        title=f"confusion matrix ({errors} errors)",
    )
    fig.colorbar(im, label="images (log scale)")
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------- grid and results


@dataclass
class Worker:
    """This process's place among torchrun's workers (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restarted: bool = False

    @classmethod
    def from_env(cls) -> Worker:
        """Read the variables torchrun sets."""
        env = os.environ
        return cls(
            int(env.get("RANK", 0)),
            int(env.get("WORLD_SIZE", 1)),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0,
        )


def named_folder(args: argparse.Namespace) -> str | None:
    """The folder the command names: --out_dir, or fast/ for the fast recipe."""
    return args.out_dir or ("fast" if args.recipe == "fast" else None)


def run_folder(args: argparse.Namespace, seed: int, lr: float) -> Path:
    """A run's folder: the named one (else lr_<rate>/) for a single run, and
    <named>/[seed<k>/]lr_<rate>/ in a grid. The other modes read their model.pth there."""
    if len(args.seed) * len(args.learning_rate) == 1:
        return Path(named_folder(args) or lr_folder(lr))
    seed_part = f"seed{seed}" if len(args.seed) > 1 else ""
    return Path(named_folder(args) or ".") / seed_part / lr_folder(lr)


def plan_runs(args: argparse.Namespace, amp: bool) -> list[Run]:
    """Every (seed, learning rate) pair as a Run with its folder."""
    speed = Speed(amp, args.channels_last, args.compile)
    return [
        Run(
            lr,
            run_folder(args, seed, lr),
            seed,
            args.epoch,
            args.batch_size,
            args.limit,
            speed,
            args.recipe,
            args.lr_schedule,
            args.label_smoothing,
            args.val_split,
            args.patience,
            command_line(args.argv),
            resume_command(args.argv),
        )
        for seed in args.seed
        for lr in args.learning_rate
    ]


def train_grid(args: argparse.Namespace) -> list[Run]:
    """Train this worker's share of the grid; rank 0 then summarises the whole grid."""
    worker = Worker.from_env()
    device = resolve_device(args.device, worker.local_rank)
    amp = resolve_amp(args.amp, device)
    configure_backends(device, args.deterministic, amp)
    runs = plan_runs(args, amp)
    mine = runs[worker.rank :: worker.world]  # a fixed share: the same runs after a restart
    if worker.world > 1:
        import torch.distributed as dist

        # the final barrier waits for the slowest share, which may take hours; a dead worker
        # makes torchrun stop (or restart) the others, so the long timeout cannot hang
        timeout = datetime.timedelta(days=30)
        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            worker.world,
            is_master=worker.rank == 0 and not agent_store,
            timeout=timeout,
        )
        # torchrun's store outlives a restart: keys of the killed round must not be read again
        round_store = dist.PrefixStore(
            f"restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}", store
        )
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=round_store,
            rank=worker.rank,
            world_size=worker.world,
            timeout=timeout,
        )
    with stop_on_signals() as stop, contextlib.ExitStack() as locks:
        # the data first: a bad --data_dir or --val_split must leave no folder behind
        loaders = {
            split: get_loader(
                split, args.data_dir, args.batch_size, args.limit, device, val_split=args.val_split
            )
            for split in ("train", "val", "test")
            if split != "val" or args.val_split
        }
        starts = []
        for run in mine:
            prepare_out_dir(run.folder)
            locks.enter_context(folder_lock(run.folder))
            for leftover in run.folder.glob(".*.tmp"):  # a kill during a write left it
                leftover.unlink(missing_ok=True)
            starts.append(start_mode(run.folder, args.resume, args.overwrite, worker.restarted))
        for run, start in zip(mine, starts):
            stop.check(run.resume_command)  # a signal during the last run's final writes
            try:
                train(run, loaders, device, stop, resume=start is Start.RESUME)
            except Diverged as e:
                if len(runs) == 1:
                    raise UserError(e.advice(run)) from None
                # in a grid a diverged run is a result (the rate is too high): record, go on
                log.warning("%s: %s; the grid goes on with its other runs", run.folder, e)
        stop.check(runs[0].resume_command)
    if worker.world > 1:
        # the barrier blocks inside gloo, where no Python handler runs: let a signal end the
        # process as the OS does (this worker's runs are all written by now)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        dist.barrier()
        dist.destroy_process_group()
    if len(runs) > 1 and worker.rank == 0:
        with stop_on_signals() as stop:
            stop.deferred = True  # results.md and compare.png are finished before stopping
            summarize([run.folder for run in runs], Path(named_folder(args) or "."))
            stop.check(runs[0].resume_command)
    return mine


def configure_backends(device: torch.device, deterministic: bool, amp: bool) -> None:
    """cuDNN autotuning unless determinism is asked for; warn where bf16 is emulated."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if amp and not native_low_precision(device):
        log.warning(
            "--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so autocast is "
            "emulated and slower than float32 here."
        )


def read_config(folder: Path) -> dict:
    """A run folder's config.json; for folders written before it existed, the rate and seed
    read from model.log's header."""
    path = folder / "config.json"
    if path.is_file():
        config = load_config(path)
        try:
            return {
                "learning_rate": float(config["learning_rate"]),
                "seed": int(config["seed"]),
                "epochs": int(config["epochs"]),
            }
        except (ValueError, KeyError, TypeError) as e:
            raise bad_config(path, e) from None
    header = read_log(folder / "model.log")
    lr, seed = re.search(r"learning_rate: (\S+)", header), re.search(r"seed: (\d+)", header)
    epochs = re.search(r"epochs: (\d+)", header)
    return {
        "learning_rate": float(lr.group(1)) if lr else math.nan,
        "seed": int(seed.group(1)) if seed else 0,
        "epochs": int(epochs.group(1)) if epochs else None,
    }


def read_run(folder: Path) -> RunResult:
    """A run folder's learning rate and seed (config.json) and its rows (metrics.csv)."""
    from results import RunResult

    folder = Path(folder)
    config = read_config(folder)
    csv_path = folder / "metrics.csv"
    rows = read_metrics_csv(csv_path) if csv_path.is_file() else parse_log(folder / "model.log")
    if not rows:
        raise UserError(f"{folder} has no finished epochs yet.")
    seeded = folder.parent.name.startswith("seed")
    name = f"{folder.parent.name}/{folder.name}" if seeded else folder.name
    log_path = folder / "model.log"
    early = log_path.is_file() and "\nstopped early after epoch" in log_path.read_text()
    finished = early or not config["epochs"] or len(rows) >= config["epochs"]
    best = min(rows, key=selection_loss)  # the first on ties, as in training
    return RunResult(
        name, config["learning_rate"], config["seed"], rows, best, config["epochs"], finished
    )


def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Run folders as given, and those inside grid folders (lr_*/ and seed*/lr_*/)."""
    folders = []
    for path in map(Path, paths):
        if (path / "model.log").exists() or not path.is_dir():
            folders.append(path)
            continue
        found = sorted(
            p.parent
            for pattern in ("lr_*/model.log", "seed*/lr_*/model.log")
            for p in path.glob(pattern)
        )
        folders += found or [path]  # an empty folder gets the usual "cannot read" message
    return folders


def summarize(folders: Sequence[Path], out_dir: Path) -> str:
    """Write results.md and compare.png from run folders (grid folders are searched for runs)."""
    from results import by_rate, report

    results = [read_run(f) for f in run_folders(folders)]
    columns = VAL_COLUMNS if any(r.validated for r in results) else COLUMNS
    text = report(results, columns, LOSS_NOTE)
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)
    write_text(out_dir / "results.md", text)
    curves = [
        Curve(
            f"lr {lr:g}"
            + (f" ({len(rs)} seeds)" if len(rs) > 1 else f" ({next(iter(rs.values())).name})"),
            [r.rows for r in rs.values()],
            "test",
            [r.best["epoch"] for r in rs.values()],
        )
        for lr, rs in by_rate(results).items()
    ]
    plot_curves(
        curves,
        out_dir / "compare.png",
        "test loss and accuracy per learning rate"
        + (" (mean over seeds, min-max band)" if len(results) > len(curves) else ""),
    )
    log.info("%s\nwrote %s and %s", text, out_dir / "results.md", out_dir / "compare.png")
    return text


# ---------------------------------------------------------------- test mode


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """10x10 counts: rows true digit, columns predicted digit."""
    return torch.bincount(
        labels.cpu() * NUM_CLASSES + predictions, minlength=NUM_CLASSES**2
    ).reshape(NUM_CLASSES, NUM_CLASSES)


def per_class_table(matrix: torch.Tensor) -> str:
    """Per-digit accuracy lines."""
    lines = ["digit  images  correct  accuracy"]
    for d in range(NUM_CLASSES):
        total, ok = int(matrix[d].sum()), int(matrix[d, d])
        lines.append(f"{d:>5}  {total:>6}  {ok:>7}  {100 * ok / max(total, 1):7.2f}%")
    return "\n".join(lines)


def default_model_path(args: argparse.Namespace) -> Path:
    """--model_path, or the model.pth in the folder training would write (lr_<rate>/, fast/)."""
    if args.model_path:
        return Path(args.model_path)
    return run_folder(args, args.seed[0], args.learning_rate[0]) / "model.pth"


def run_test(args: argparse.Namespace) -> Metrics:
    """Evaluate saved weights on the test set; write test.log, errors.png and confusion.png."""
    path = default_model_path(args)
    model = load_model(path)
    device = resolve_device(args.device)
    speed = Speed(resolve_amp(args.amp, device), args.channels_last, False)
    prepare_model(model, device, speed)
    loader = get_loader("test", args.data_dir, args.batch_size, args.limit, device)
    batches: list[torch.Tensor] = []
    m = evaluate(model, loader, speed, probabilities=batches)
    probabilities = torch.cat(batches)
    wrong = show_error_images(
        loader.images, loader.labels, probabilities, path.parent / "errors.png"
    )
    matrix = confusion_matrix(loader.labels, probabilities.argmax(1))
    plot_confusion(matrix, path.parent / "confusion.png")
    n = len(loader.labels)
    report = (
        f"model: {path}\ntest images: {n}\ntest loss: {m.loss:.6f} (report's convention: "
        f"{m.loss_report:.8f})\ntest accuracy: {100 * m.acc:.2f}% ({m.acc:.4f})\n"
        f"misclassified: {wrong} of {n}\n{per_class_table(matrix)}\n"
    )
    write_text(path.parent / "test.log", report)
    log.info(
        "%swrote %s, %s and %s",
        report,
        path.parent / "test.log",
        path.parent / "errors.png",
        path.parent / "confusion.png",
    )
    return m


# ---------------------------------------------------------------- predict, serve and export


def classify(model: nn.Module, pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """Digit probabilities (N x 10) for 28x28 pixel arrays in [0, 1]."""
    batch = normalise(torch.from_numpy(np.stack(pixels))).unsqueeze(1)
    with torch.inference_mode():
        return model(batch).softmax(1)


def save_preprocessed(images: dict[Path, np.ndarray], folder: Path) -> None:
    """Write each 28x28 model input as a PNG named after its source file."""
    from digits import png_bytes

    prepare_out_dir(folder)
    used: set[str] = set()
    for path, pixels in images.items():
        name = path.stem
        while name in used:
            name += "_"
        used.add(name)
        atomic_write(folder / f"{name}.png", png_bytes(pixels))


def run_predict(args: argparse.Namespace) -> None:
    """Print PATH DIGIT CONFIDENCE per image (and the top-k), optionally to CSV."""
    from digits import image_files, mnist_style, naive, read_digit

    model = load_model(default_model_path(args))
    prepare = naive if args.no_preprocess else mnist_style
    images: dict[Path, np.ndarray] = {}
    for path in image_files(args.predict):
        try:
            images[path] = read_digit(path, prepare)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    if not images:
        raise UserError(
            "None of the given files could be read as a digit image. Give PNG, JPEG, "
            "BMP or similar files (or folders of them), one dark or light digit each."
        )
    top_p, top_d = classify(model, list(images.values())).topk(args.topk, dim=1)
    header = ["path", "digit", "confidence"]
    if args.topk > 1:
        header += [f"top{i + 1}" for i in range(args.topk)]
    rows = []
    for path, ps, ds in zip(images, top_p.tolist(), top_d.tolist()):
        row = [str(path), ds[0], f"{ps[0]:.3f}"]
        if args.topk > 1:
            row += [f"{d}:{p:.3f}" for d, p in zip(ds, ps)]
        rows.append(row)
        print("  ".join(map(str, row)))
    if args.output_csv:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        write_text(Path(args.output_csv), buffer.getvalue())
    if args.save_preprocessed:
        save_preprocessed(images, Path(args.save_preprocessed))


def answer_image(model: nn.Module, image: bytes) -> dict:
    """The API's answer for one uploaded image: digit, confidence, probabilities, model input."""
    import base64

    from digits import png_bytes, read_digit

    pixels = read_digit(image)
    probabilities = classify(model, [pixels])[0].tolist()
    digit = max(range(NUM_CLASSES), key=probabilities.__getitem__)
    return {
        "digit": digit,
        "confidence": probabilities[digit],
        "probabilities": probabilities,
        "preprocessed": "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode(),
    }


def run_serve(args: argparse.Namespace) -> None:
    """Serve the draw-a-digit page and the JSON API until Ctrl-C or SIGTERM."""
    from server import Server, is_loopback

    model = load_model(default_model_path(args))
    page = Path(__file__).with_name("page.html").read_bytes()
    try:
        server = Server((args.host, args.port), functools.partial(answer_image, model), page)
    except (OSError, OverflowError) as e:
        reason = getattr(e, "strerror", None) or e
        raise UserError(
            f"Cannot listen on {args.host}:{args.port} ({reason}). Choose another "
            "--port (0 picks a free one) or --host."
        ) from None
    if not is_loopback(args.host):
        log.warning(
            "warning: listening on %s: every machine that can reach this address can "
            "use the page and the API (no password, no TLS). Use --host 127.0.0.1 to "
            "keep it to this machine.",
            args.host,
        )
    host, port = server.server_address[:2]
    log.info(
        "serving %s at http://%s:%d/ (Ctrl-C stops)",
        default_model_path(args),
        "localhost" if args.host == "127.0.0.1" else host,
        port,
    )

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop it (exit 0), also where SIGINT was inherited ignored
    with signals_to(stop), server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("stopped")


def run_export(args: argparse.Namespace) -> None:
    """Write the CNN as ONNX: images N x 1 x 28 x 28, normalised as in training -> logits N x 10."""
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxscript  # noqa: F401  (the dynamo exporter translates through it)
    except ImportError:
        raise UserError(
            "--export needs the onnx and onnxscript packages: pip install -r requirements.txt."
        ) from None
    path, model = Path(args.export), load_model(default_model_path(args))
    prepare_out_dir(path.parent)
    batch = torch.export.Dim("batch", min=1)
    # the exporter reports its progress and its warnings on stdout and through warnings;
    # people asked for one file and one line
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE),),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            dynamo=True,
            verbose=False,
        )
        program.save(f"{tmp}/model.onnx")
        atomic_write(path, Path(tmp, "model.onnx").read_bytes())
    log.info(
        "wrote %s. Read a digit with onnxruntime and digits.py (NumPy and Pillow only):\n"
        "  import onnxruntime as ort; from pathlib import Path\n"
        "  from digits import read_digit\n"
        "  x = ((read_digit(Path('digit.png')) - %g) / %g)[None, None]\n"
        "  print(ort.InferenceSession('%s').run(None, {'images': x})[0].argmax(1))",
        path,
        MEAN,
        STD,
        path,
    )


# ---------------------------------------------------------------- entry


class StdoutHandler(logging.StreamHandler):
    """A handler that writes to whatever sys.stdout is at the time (callers and tests swap it)."""

    @property
    def stream(self) -> io.TextIOBase:
        return sys.stdout

    @stream.setter
    def stream(self, value: io.TextIOBase) -> None:
        pass


def configure_logging() -> None:
    """Console messages as plain lines on stdout."""
    handler = StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def report_errors(command: Callable[[], object]) -> int:
    """Run a command; a UserError becomes its one-paragraph message, a stop its exit code."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except OSError as e:  # a path the OS refuses: too long, a device, no permission
        where = f"{e.filename}: " if e.filename else ""
        print(
            f"error: {where}{e.strerror or e}. Check the path given on the command line.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except Interrupted as e:
        if e.note:
            print(f"{signal.Signals(e.signum).name} received {e.note}", file=sys.stderr)
        return EXIT_CODES[e.signum]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage line; --help exits 0
        return int(e.code or 0)
    configure_logging()
    modes = {
        "summarize": lambda: summarize(args.summarize, Path(args.out_dir or ".")),
        "predict": lambda: run_predict(args),
        "serve": lambda: run_serve(args),
        "export": lambda: run_export(args),
        "test": lambda: run_test(args),
    }
    chosen = next((m for m in MODES if getattr(args, m) not in (None, False)), None)
    if chosen:
        with signals_to(stop_at_once):  # nothing these modes write can be left half done
            return report_errors(modes[chosen])
    return report_errors(lambda: train_grid(args))


if __name__ == "__main__":
    sys.exit(main())
