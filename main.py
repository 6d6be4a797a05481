#!/usr/bin/env python3
"""Train, test and use the lab report's small MNIST CNN from one command-line script."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import random
import re
import shlex
import signal
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

MEAN, STD = 0.1307, 0.3081
IMAGE_SIZE = 28
NUM_CLASSES = 10
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
EXIT_BAD_INPUT = 2
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
LOG_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc",
               "train_loss_report", "test_loss_report", "seconds", "saved")
LOSS_NOTE = ("loss = mean per-sample cross-entropy; loss_report = summed batch means / images, "
             "the lab report's column (about loss / batch_size)")

log = logging.getLogger("mnist_cnn")


class UserError(Exception):
    """A problem the user can fix: printed as one paragraph, exit code 2, no traceback."""


class Interrupted(Exception):
    """Training was stopped by SIGINT or SIGTERM at a batch boundary."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# ---------------------------------------------------------------- flags

def str2bool(text: str) -> bool:
    """Parse true/false/yes/no/1/0 in any case."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false/yes/no/1/0, got {text!r}")


def bounded(kind: type, low: float, strict: bool) -> Callable[[str], float]:
    """Argparse type: a finite number of `kind` above `low` (or at least `low` when not strict)."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if strict else 'at least'} {low:g}")
        return value
    parse.__name__ = kind.__name__
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    p = argparse.ArgumentParser(
        description="Train, test and use the lab report's MNIST CNN.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch_size", type=bounded(int, 1, False), default=128)
    p.add_argument("--epoch", type=bounded(int, 1, False), default=50, help="epochs to train")
    p.add_argument("--learning_rate", type=bounded(float, 0, True), nargs="+", default=[1e-3],
                   help="one or more Adam learning rates; several run one after another (a sweep)")
    p.add_argument("--test", type=str2bool, default=False,
                   help="evaluate --model_path on the test set instead of training")
    p.add_argument("--model_path", default=None,
                   help="weights for test/predict mode (default: <lr folder>/model.pth)")
    p.add_argument("--seed", type=bounded(int, 0, False), default=0)
    p.add_argument("--data_dir", default="data",
                   help="folder holding MNIST/raw/*-ubyte (downloaded there if missing)")
    p.add_argument("--out_dir", default=None,
                   help="run folder (default lr_<rate>, e.g. lr_1e-3); for a sweep, the parent folder")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto picks cuda, then mps, then cpu")
    p.add_argument("--limit", type=bounded(int, 1, False), default=None,
                   help="use only the first N training and test images")
    p.add_argument("--resume", action="store_true", help="continue the run in the folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh over an earlier run in the folder")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (fp16 on older GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels_last", type=str2bool, default=True,
                   help="channels-last memory format (faster on CPU and GPU)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels (CPU runs are deterministic anyway)")
    p.add_argument("--summarize", nargs="+", metavar="RUN_DIR", default=None,
                   help="rebuild results.md and compare.png from run folders, no training")
    p.add_argument("--predict", nargs="+", metavar="PATH", default=None,
                   help="read the digit in these image files or folders with --model_path")
    p.add_argument("--topk", type=bounded(int, 1, False), default=1,
                   help="with --predict: also list the k most likely digits")
    p.add_argument("--output_csv", default=None, help="with --predict: also write the rows to this CSV")
    p.add_argument("--save_preprocessed", default=None, metavar="DIR",
                   help="with --predict: save the 28x28 images the model saw into DIR")
    p.add_argument("--no_preprocess", action="store_true",
                   help="with --predict: only greyscale and resize to 28x28 (the naive way, for comparison)")
    args = p.parse_args(argv)
    if args.topk > NUM_CLASSES:
        p.error(f"argument --topk: at most {NUM_CLASSES}, there are only {NUM_CLASSES} digits")
    if args.test and len(args.learning_rate) > 1:
        p.error("--test takes one model; give one --learning_rate or a --model_path")
    return args


def lr_folder(lr: float) -> str:
    """Folder name for a learning rate in its shortest exact mantissa-exponent form: 5e-4."""
    sign, digits, exponent = Decimal(repr(lr)).normalize().as_tuple()
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"lr_{mantissa}e{exponent + len(digits) - 1}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """Pick the device: auto is cuda, then mps, then cpu; a named one must exist."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(),
                 "cpu": True}
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    if not available[name]:
        raise UserError(f"--device {name} was asked for, but this machine has no {name} device "
                        "PyTorch can use. Use --device auto or --device cpu.")
    return torch.device(name)


# ---------------------------------------------------------------- files

def atomic_write(path: Path, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write a file so that a crash leaves either the old or the new one: temp, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    atomic_write(path, lambda f: f.write(text.encode()))


def prepare_out_dir(path: Path) -> None:
    """Create the output folder and prove it is writable, before any work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"Cannot write to the output folder {path} ({e.strerror or e}). "
                        "Choose a writable folder with --out_dir.") from None


def load_tensors(path: Path, what: str) -> dict:
    """torch.load with weights_only=True; any failure becomes a clear UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"The {what} {path} is a directory, not a file. Give the path of the "
                        ".pth file inside it, e.g. {path / 'model.pth'}.")
    if not path.exists():
        raise UserError(f"The {what} {path} does not exist. Train a model first "
                        "(python main.py --learning_rate 0.001) or pass --model_path.")
    if path.stat().st_size == 0:
        raise UserError(f"The {what} {path} is empty (0 bytes), probably from an interrupted copy. "
                        "Copy or train it again.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"The {what} {path} cannot be read as PyTorch weights: it is truncated, "
                        f"damaged, not a PyTorch file, or holds more than tensors ({reason}). "
                        "Only files saved by this tool (torch.save of a state_dict) load.") from None
    if not isinstance(obj, dict):
        raise UserError(f"The {what} {path} holds a {type(obj).__name__}, not a dictionary of "
                        "tensors (a state_dict). Save weights with torch.save(model.state_dict()).")
    return obj


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state_dict file (or a checkpoint's weights) into the CNN."""
    state = load_tensors(path, "model file")
    apply_weights(model, state["model"] if isinstance(state.get("model"), dict) else state, path)


def apply_weights(model: nn.Module, state: dict, path: Path) -> None:
    """Put a state_dict read from `path` into the CNN, listing any mismatch."""
    own = model.state_dict()
    groups = {
        "wrong shape": [f"{k} is {tuple(getattr(state[k], 'shape', ()))}, expected {tuple(v.shape)}"
                        for k, v in own.items() if k in state and getattr(state[k], "shape", None) != v.shape],
        "unexpected": [k for k in state if k not in own],
        "missing": [f"{k} {tuple(v.shape)}" for k, v in own.items() if k not in state]}
    problems = [f"{len(items)} {name} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})"
                for name, items in groups.items() if items]
    if problems:
        raise UserError(f"The model file {path} is not a checkpoint of this CNN: {'; '.join(problems)}. "
                        "Use a model.pth written by this tool's training.")
    model.load_state_dict(state)


# ---------------------------------------------------------------- data

def idx_count(path: Path, ndim: int) -> int:
    """Check an IDX file's magic number, shape and length; return how many items it holds."""
    header_len = 4 + 4 * ndim
    with path.open("rb") as f:
        header = f.read(header_len)
    fix = (f"Replace it with the original MNIST file (see {path.parent} and the README's "
           "'Data' section).")
    if len(header) < header_len:
        raise UserError(f"The MNIST file {path} is truncated: {len(header)} bytes, shorter than "
                        f"its {header_len}-byte header. {fix}")
    magic = struct.unpack(">I", header[:4])[0]
    if magic != 0x800 + ndim:
        raise UserError(f"The MNIST file {path} has magic number 0x{magic:08x}, expected "
                        f"0x{0x800 + ndim:08x} (unsigned bytes, {ndim} dimensions): it is not "
                        f"an IDX {'image' if ndim == 3 else 'label'} file. {fix}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] not in ((), (IMAGE_SIZE, IMAGE_SIZE)):
        raise UserError(f"The MNIST file {path} holds {dims[1]}x{dims[2]} images; this model "
                        f"needs {IMAGE_SIZE}x{IMAGE_SIZE}. {fix}")
    size, expected = path.stat().st_size, header_len + math.prod(dims)
    if size != expected:
        raise UserError(f"The MNIST file {path} is {size:,} bytes but its header announces "
                        f"{expected:,} ({dims[0]:,} items): it is truncated or damaged. {fix}")
    return dims[0]


def check_split(raw: Path, split: str) -> None:
    """Validate one split's image and label files and that their counts agree."""
    images, labels = (raw / name for name in SPLIT_FILES[split])
    n_images, n_labels = idx_count(images, 3), idx_count(labels, 1)
    if n_images != n_labels:
        raise UserError(f"The MNIST files {images} ({n_images:,} images) and {labels} "
                        f"({n_labels:,} labels) do not match. Use the two files of one release.")


def missing_data_message(raw: Path) -> str:
    """The one-paragraph message for MNIST files that are absent and could not be downloaded."""
    names = ", ".join(n for pair in SPLIT_FILES.values() for n in pair)
    return (f"MNIST is not in {raw} and could not be downloaded (no network?). Place the four "
            f"uncompressed files {names} in that folder, or point --data_dir at a folder that "
            "holds MNIST/raw/ with them (on this project's machines: --data_dir ../shared/mnist).")


def read_split(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a split through torchvision (downloading if missing) as uint8 images and labels."""
    from torchvision.datasets import MNIST
    raw = Path(data_dir) / "MNIST" / "raw"
    if not all((raw / name).is_file() for name in SPLIT_FILES[split]):
        try:
            with contextlib.redirect_stdout(sys.stderr):
                MNIST(root=data_dir, train=split == "train", download=True)
        except Exception:  # any network or disk failure means the same thing to the user
            raise UserError(missing_data_message(raw)) from None
    check_split(raw, split)
    dataset = MNIST(root=data_dir, train=split == "train", download=False)
    return dataset.data, dataset.targets


class TensorBatches:
    """Batches sliced from a whole split held as one tensor, reshuffled per epoch by a seeded generator."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 shuffle: bool, seed: int = 0) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle order the next iteration uses."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's sample order; it depends only on (seed, epoch), so a resume repeats it."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        return torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.images.device) if self.shuffle else None
        for start in range(0, len(self.labels), self.batch_size):
            if order is None:
                yield (self.images[start:start + self.batch_size],
                       self.labels[start:start + self.batch_size])
            else:
                idx = order[start:start + self.batch_size]
                yield self.images[idx], self.labels[idx]


def get_loader(split: str, data_dir: str, batch_size: int, limit: int | None = None,
               device: torch.device = torch.device("cpu"), seed: int = 0) -> TensorBatches:
    """The split as normalised tensors on `device`; training batches shuffled, test batches not."""
    images, labels = read_split(data_dir, split)
    images, labels = images[:limit], labels[:limit]
    images = images.to(device).unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return TensorBatches(images, labels.to(device), batch_size, shuffle=split == "train", seed=seed)


# ---------------------------------------------------------------- model

class CNN(nn.Module):
    """The report's network: two conv-BN-ReLU-maxpool blocks and one linear layer (29,034 weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.MaxPool2d(2))
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
    """Move the model to the device and memory format; return the module to call (maybe compiled)."""
    model.to(device, memory_format=torch.channels_last if speed.channels_last else torch.contiguous_format)
    return torch.compile(model) if speed.compile else model


class RunningMetrics:
    """Sums of loss, batch-mean loss and correct predictions, kept on the device until read."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.batch_means = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, mean_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch (no host synchronisation)."""
        mean_loss = mean_loss.detach().double()
        self.loss += mean_loss * len(labels)
        self.batch_means += mean_loss
        self.correct += (logits.argmax(1) == labels).sum()
        self.count += len(labels)

    def result(self) -> dict[str, float]:
        """Mean per-sample loss, the report's loss and accuracy."""
        return {"loss": self.loss.item() / self.count,
                "loss_report": self.batch_means.item() / self.count,
                "acc": self.correct.item() / self.count}


def forward_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 speed: Speed) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and mean cross-entropy of one batch, under autocast when asked."""
    with torch.autocast(images.device.type, dtype=amp_dtype(images.device), enabled=speed.amp):
        logits = model(images)
    return logits, F.cross_entropy(logits.float(), labels)


def train_epoch(model: nn.Module, loader: TensorBatches, optimizer: torch.optim.Optimizer,
                speed: Speed, stop: "StopFlag | None" = None) -> dict[str, float]:
    """One pass of the optimizer over the training set; mean loss and accuracy of that pass."""
    model.train()
    metrics = RunningMetrics(loader.images.device)
    scaler = torch.amp.GradScaler(enabled=speed.amp and amp_dtype(loader.images.device) == torch.float16)
    for images, labels in tqdm(loader, desc="batches", leave=False, disable=None):
        if stop is not None and stop.signum is not None:
            raise Interrupted(stop.signum)
        logits, loss = forward_loss(model, images, labels, speed)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        metrics.add(loss, logits, labels)
    return metrics.result()


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Adam:
    """Adam with the multi-tensor update: faster than the default loop, with identical numbers on CPU."""
    return torch.optim.Adam(model.parameters(), lr=lr, foreach=True)


@dataclass
class Evaluation:
    """Loss, accuracy and per-image predictions on one split."""
    loss: float
    loss_report: float
    acc: float
    predictions: torch.Tensor
    confidences: torch.Tensor


def evaluate(model: nn.Module, loader: TensorBatches, speed: Speed = Speed()) -> Evaluation:
    """Evaluate in eval mode without gradients."""
    model.eval()
    metrics = RunningMetrics(loader.images.device)
    probs = []
    with torch.inference_mode():
        for images, labels in loader:
            logits, loss = forward_loss(model, images, labels, speed)
            metrics.add(loss, logits, labels)
            probs.append(logits.float().softmax(1))
    confidences, predictions = torch.cat(probs).max(1)
    m = metrics.result()
    return Evaluation(m["loss"], m["loss_report"], m["acc"], predictions.cpu(), confidences.cpu())


# ---------------------------------------------------------------- training

class StopFlag:
    """Remembers the first SIGINT/SIGTERM so training stops cleanly at the next batch."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is None:
            log.warning("%s received: stopping after this batch (the last finished epoch is kept)",
                        signal.Signals(signum).name)
        self.signum = self.signum or signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Catch SIGINT and SIGTERM into a StopFlag for the duration of the block."""
    flag = StopFlag()
    previous = {s: signal.signal(s, flag) for s in EXIT_CODES}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass
class Run:
    """One learning rate's training: its settings, folder and state."""
    lr: float
    out_dir: Path
    args: argparse.Namespace
    history: list[dict]
    best_epoch: int = 0
    best_loss: float = math.inf
    header: str = ""

    @property
    def done(self) -> int:
        """Epochs finished so far."""
        return len(self.history)

    def config(self) -> dict:
        """Settings a resumed run must share with the original one."""
        return {"learning_rate": self.lr, "batch_size": self.args.batch_size,
                "seed": self.args.seed, "limit": self.args.limit}


def format_row(row: dict) -> str:
    """One epoch's line of the log table."""
    return (f"{row['epoch']:>5}  {row['train_loss']:10.6f}  {row['train_acc']:9.4f}  "
            f"{row['test_loss']:9.6f}  {row['test_acc']:8.4f}  {row['train_loss_report']:17.8f}  "
            f"{row['test_loss_report']:16.8f}  {row['seconds']:7.1f}  {row['saved']:>5}")


def render_log(run: Run, footer: Sequence[str] = ()) -> str:
    """The whole model.log, derived from the run's state so that a resume rewrites it identically."""
    table = "  ".join(f"{c:>{w}}" for c, w in zip(LOG_COLUMNS, (5, 10, 9, 9, 8, 17, 16, 7, 5)))
    lines = [run.header, "", table, *map(format_row, run.history)]
    if footer:
        lines += ["", *footer]
    return "\n".join(lines) + "\n"


def closing_summary(run: Run) -> list[str]:
    """Best-epoch and last-epoch rows, as the report's two tables have them."""
    best = run.history[run.best_epoch - 1]
    return ["summary",
            f"best epoch (lowest test loss, saved as model.pth): {run.best_epoch}",
            format_row(best).replace(f"{best['epoch']:>5}", " best", 1),
            format_row(run.history[-1]).replace(f"{run.history[-1]['epoch']:>5}", " last", 1)]


def log_header(run: Run, device: torch.device, speed: Speed, n_train: int, n_test: int) -> str:
    """The log's opening lines: command, settings, data sizes, the model table."""
    a = run.args
    return "\n".join([
        "MNIST CNN training log",
        f"command: python {shlex.join(sys.argv)}",
        f"learning_rate: {run.lr:g}  batch_size: {a.batch_size}  epochs: {a.epoch}  seed: {a.seed}  "
        f"optimizer: Adam  device: {device.type}  amp: {speed.amp}  channels_last: "
        f"{speed.channels_last}  compile: {speed.compile}",
        f"torch: {torch.__version__}  data: {a.data_dir}  train images: {n_train}  test images: {n_test}",
        model_summary(), LOSS_NOTE])


def rng_states() -> dict[str, torch.Tensor]:
    """PyTorch, NumPy and Python RNG states as tensors (weights_only loading accepts only those)."""
    _, keys, pos, *_ = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(keys.astype(np.int64)),
            "numpy_pos": torch.tensor(pos), "python": torch.tensor(random.getstate()[1])}


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Restore what rng_states saved."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), int(states["numpy_pos"])))
    random.setstate((3, tuple(states["python"].tolist()), None))


def save_checkpoint(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Atomically write everything a resume needs, after each finished epoch."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "config": run.config(), "epochs": run.args.epoch, "history": run.history,
             "best_epoch": run.best_epoch, "best_loss": run.best_loss, "header": run.header,
             "rng": rng_states()}
    atomic_write(run.out_dir / "checkpoint.pth", lambda f: torch.save(state, f))


def restore_checkpoint(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load checkpoint.pth into the run, refusing one made with other settings."""
    path = run.out_dir / "checkpoint.pth"
    if not path.exists():
        raise UserError(f"Nothing to resume: {path} does not exist. Start the run without --resume.")
    state = load_tensors(path, "checkpoint")
    config = state["config"] if isinstance(state.get("config"), dict) else {}
    differ = [f"{k} {config.get(k)} (now {v})" for k, v in run.config().items() if config.get(k) != v]
    if differ:
        raise UserError(f"The run in {run.out_dir} was made with {', '.join(differ)}. Resume it "
                        "with its own settings, or start a new run with --out_dir (or --overwrite).")
    try:
        apply_weights(model, state["model"], path)
        optimizer.load_state_dict(state["optimizer"])
        run.history, run.best_epoch, run.best_loss = state["history"], state["best_epoch"], state["best_loss"]
        run.header = state["header"]
        set_rng_states(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"The checkpoint {path} is incomplete or damaged ({e}). "
                        "Start the run again with --overwrite.") from None


def check_fresh_folder(out_dir: Path) -> None:
    """Refuse to start afresh over an earlier run's files unless --overwrite says so."""
    earlier = [n for n in ("model.pth", "checkpoint.pth", "model.log") if (out_dir / n).exists()]
    if earlier:
        resume = "--resume to continue it, " if "checkpoint.pth" in earlier else ""
        raise UserError(f"{out_dir} already holds an earlier run ({', '.join(earlier)}). Add {resume}"
                        "--overwrite to replace it, or --out_dir NEW_FOLDER to keep it and train elsewhere.")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported late: training needs none of it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: "matplotlib.figure.Figure", path: Path, dpi: int = 110) -> None:
    """Write a figure as PNG atomically and free it."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    pyplot().close(fig)


def plot_runs(curves: Sequence[tuple[str, list[dict], int, str]], path: Path, title: str) -> None:
    """Loss (log scale) and accuracy per epoch for (label, history, best epoch, prefix) curves."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    lowest = []
    for i, (label, history, best, prefix) in enumerate(curves):
        epochs = [r["epoch"] for r in history]
        color = f"C{i}"
        ax_loss.plot(epochs, [r[f"{prefix}_loss"] for r in history], color=color, label=label)
        accuracy = [100 * r[f"{prefix}_acc"] for r in history]
        ax_acc.plot(epochs, accuracy, color=color, label=label)
        lowest.append(min(accuracy[1:] or accuracy))
        if best:
            row = history[best - 1]
            ax_loss.plot(best, row[f"{prefix}_loss"], "o", color=color, ms=7, mfc="none", mew=2)
            ax_acc.plot(best, 100 * row[f"{prefix}_acc"], "o", color=color, ms=7, mfc="none", mew=2)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="cross-entropy loss (mean per image, log scale)",
                title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.set_ylim(min(lowest) - 0.2, 100.05)  # epoch 1 would squash the curves that matter
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="both", alpha=0.3)
        ax.plot([], [], "o", color="grey", mfc="none", mew=2, label="best epoch (lowest test loss)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_outputs(run: Run, footer: Sequence[str]) -> None:
    """Rewrite model.log and figure.png for the epochs done."""
    write_text(run.out_dir / "model.log", render_log(run, footer))
    if run.history:
        name = run.out_dir.name
        plot_runs([("train", run.history, 0, "train"), ("test", run.history, run.best_epoch, "test")],
                  run.out_dir / "figure.png", f"{name}: learning rate {run.lr:g}, batch {run.args.batch_size}")


def resume_hint(run: Run) -> str:
    """The command that continues an interrupted run."""
    argv = [a for a in sys.argv if a != "--resume"]
    return f"python {shlex.join(argv)} --resume"


def train(args: argparse.Namespace, lr: float, out_dir: Path, device: torch.device,
          train_loader: TensorBatches, test_loader: TensorBatches) -> Run:
    """Train one learning rate into out_dir: log, best-test-loss weights, checkpoints, figure."""
    speed = Speed(args.amp, args.channels_last, args.compile)
    seed_everything(args.seed)
    model = CNN()
    runner = prepare_model(model, device, speed)
    optimizer = make_optimizer(model, lr)
    run = Run(lr, out_dir, args, history=[])
    if args.resume:
        restore_checkpoint(run, model, optimizer)
        if run.done >= args.epoch:
            log.info("%s: already finished %d of %d epochs; nothing to do.", out_dir, run.done, args.epoch)
            return run
        log.info("%s: resuming after epoch %d of %d", out_dir, run.done, args.epoch)
    else:
        run.header = log_header(run, device, speed, len(train_loader.labels), len(test_loader.labels))
        log.info("%s", render_log(run).rstrip())
    with stop_on_signals() as stop:
        try:
            for epoch in tqdm(range(run.done + 1, args.epoch + 1), desc=out_dir.name, disable=None,
                              initial=run.done, total=args.epoch):
                run_epoch(run, epoch, runner, model, optimizer, train_loader, test_loader, speed, stop)
        except Interrupted:
            write_outputs(run, [f"interrupted after epoch {run.done}; resume with: {resume_hint(run)}"])
            log.warning("Stopped after %d finished epochs; outputs are in %s. Resume with:\n  %s",
                        run.done, out_dir, resume_hint(run))
            raise
        except FloatingPointError as e:
            write_outputs(run, [f"stopped: {e}"])
            raise UserError(f"{e}. model.pth keeps the best epoch so far "
                            f"({run.best_epoch or 'none'}). Try a lower --learning_rate.") from None
    write_outputs(run, closing_summary(run))
    log.info("\n%s", "\n".join(closing_summary(run)))
    log.info("wrote %s, %s and %s", out_dir / "model.pth", out_dir / "model.log", out_dir / "figure.png")
    return run


def run_epoch(run: Run, epoch: int, runner: nn.Module, model: nn.Module,
              optimizer: torch.optim.Optimizer, train_loader: TensorBatches,
              test_loader: TensorBatches, speed: Speed, stop: StopFlag) -> None:
    """Train and evaluate one epoch, save the best weights, the checkpoint and the log."""
    start = time.perf_counter()
    train_loader.set_epoch(epoch)
    train_m = train_epoch(runner, train_loader, optimizer, speed, stop)
    test_m = evaluate(runner, test_loader, speed)
    for split, loss in (("training", train_m["loss"]), ("test", test_m.loss)):
        if not math.isfinite(loss):
            raise FloatingPointError(f"The {split} loss became {loss} in epoch {epoch} "
                                     f"at learning rate {run.lr:g}: training diverged")
    saved = test_m.loss < run.best_loss
    if saved:
        run.best_epoch, run.best_loss = epoch, test_m.loss
        atomic_write(run.out_dir / "model.pth", lambda f: torch.save(model.state_dict(), f))
    row = {"epoch": epoch, "train_loss": train_m["loss"], "train_acc": train_m["acc"],
           "test_loss": test_m.loss, "test_acc": test_m.acc,
           "train_loss_report": train_m["loss_report"], "test_loss_report": test_m.loss_report,
           "seconds": time.perf_counter() - start, "saved": "yes" if saved else "-"}
    run.history.append(row)
    save_checkpoint(run, model, optimizer)
    write_text(run.out_dir / "model.log", render_log(run))
    if sys.stderr.isatty():  # keep the progress bars intact
        tqdm.write(format_row(row))
    else:
        log.info("%s", format_row(row))


def train_all(args: argparse.Namespace) -> list[Run]:
    """Train every requested learning rate, one after another; summarise a sweep."""
    sweep = len(args.learning_rate) > 1
    parent = Path(args.out_dir) if (sweep and args.out_dir) else Path(".")
    folders = [parent / lr_folder(lr) if (sweep or not args.out_dir) else Path(args.out_dir)
               for lr in args.learning_rate]
    for folder in folders:
        prepare_out_dir(folder)
        if not args.resume and not args.overwrite:
            check_fresh_folder(folder)
    device = resolve_device(args.device)
    configure_backends(device, args)
    train_loader = get_loader("train", args.data_dir, args.batch_size, args.limit, device, args.seed)
    test_loader = get_loader("test", args.data_dir, args.batch_size, args.limit, device)
    runs = [train(args, lr, folder, device, train_loader, test_loader)
            for lr, folder in zip(args.learning_rate, folders)]
    if sweep:
        summarize(folders, parent)
    return runs


def configure_backends(device: torch.device, args: argparse.Namespace) -> None:
    """cuDNN autotuning unless determinism is asked for; warn where bf16 is emulated."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.use_deterministic_algorithms(args.deterministic, warn_only=True)
    if args.amp and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("--amp: this CPU has no native bfloat16 (AVX512-BF16 or AMX), so autocast is "
                    "emulated and slower than float32 here.")


# ---------------------------------------------------------------- results of a sweep

def parse_log(path: Path) -> list[dict]:
    """Read the epoch table of a model.log back into rows."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e.strerror}). Give folders that hold a model.log "
                        "from training.") from None
    header = next((i for i, l in enumerate(lines) if l.split()[:2] == ["epoch", "train_loss"]), None)
    if header is None:
        raise UserError(f"{path} has no epoch table; is it a model.log written by this tool?")
    rows = []
    for line in lines[header + 1:]:
        fields = line.split()
        if len(fields) != len(LOG_COLUMNS) or not fields[0].isdigit():
            break
        row = {c: float(v) for c, v in zip(LOG_COLUMNS[1:-1], fields[1:-1])}
        rows.append({"epoch": int(fields[0]), **row, "saved": fields[-1]})
    if not rows:
        raise UserError(f"{path} has no finished epochs yet.")
    return rows


def read_run(folder: Path) -> tuple[str, float, list[dict]]:
    """A run folder's name, learning rate (from its log header) and epoch rows."""
    rows = parse_log(folder / "model.log")
    match = re.search(r"learning_rate: (\S+)", (folder / "model.log").read_text())
    return folder.name, float(match.group(1)) if match else math.nan, rows


def best_row(rows: list[dict]) -> dict:
    """The epoch with the lowest test loss (the first one on ties, as training saves it)."""
    return min(rows, key=lambda r: r["test_loss"])


def results_table(runs: Sequence[tuple[str, float, list[dict]]], pick: Callable[[list[dict]], dict]) -> str:
    """A markdown table of one row per run, at the epoch `pick` chooses."""
    lines = ["| run | learning rate | epoch | train loss | train acc | test loss | test acc | "
             "train loss (report) | test loss (report) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, lr, rows in runs:
        r = pick(rows)
        lines.append(f"| {name} | {lr:g} | {r['epoch']} | {r['train_loss']:.6f} | {r['train_acc']:.4f} "
                     f"| {r['test_loss']:.6f} | {r['test_acc']:.4f} | {r['train_loss_report']:.8f} "
                     f"| {r['test_loss_report']:.8f} |")
    return "\n".join(lines)


def summarize(folders: Sequence[Path], out_dir: Path) -> str:
    """Write results.md and compare.png from the model.log of each run folder."""
    runs = [read_run(Path(f)) for f in folders]
    text = "\n".join([
        "# Results", "",
        f"{LOSS_NOTE}. Accuracies are fractions of the images.", "",
        "## Epoch with the lowest test loss (the saved model.pth)", "",
        results_table(runs, best_row), "",
        "## Last epoch", "",
        results_table(runs, lambda rows: rows[-1]), ""])
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)
    write_text(out_dir / "results.md", text)
    plot_runs([(f"{name} (lr {lr:g})", rows, best_row(rows)["epoch"], "test") for name, lr, rows in runs],
              out_dir / "compare.png", "test loss and accuracy per learning rate")
    log.info("%s\nwrote %s and %s", text, out_dir / "results.md", out_dir / "compare.png")
    return text


# ---------------------------------------------------------------- test mode

def show_error_images(images: torch.Tensor, labels: torch.Tensor, ev: Evaluation, path: Path) -> int:
    """Save a 5x5 grid of misclassified images, most confident mistakes first; return the count."""
    plt = pyplot()
    wrong = (ev.predictions != labels.cpu()).nonzero().flatten()
    wrong = wrong[ev.confidences[wrong].argsort(descending=True)]
    fig, axes = plt.subplots(5, 5, figsize=(8, 9))
    for ax, i in zip(axes.flat, [*wrong.tolist(), *[None] * 25]):
        ax.axis("off")
        if i is not None:
            ax.imshow((images[i, 0].cpu().float() * STD + MEAN).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{labels[i]} → {ev.predictions[i]} (p={ev.confidences[i]:.2f})", fontsize=9)
    fig.suptitle(f"{len(wrong)} misclassified test images (true → predicted), "
                 f"the {min(len(wrong), 25)} most confident shown")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    return len(wrong)


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """10x10 counts: rows true digit, columns predicted digit."""
    return torch.bincount(labels.cpu() * NUM_CLASSES + predictions,
                          minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def plot_confusion(matrix: torch.Tensor, path: Path) -> None:
    """Save the confusion matrix as a labelled heat map with counts in the cells."""
    plt = pyplot()
    from matplotlib.colors import LogNorm
    fig, ax = plt.subplots(figsize=(7, 6))
    shown = LogNorm(vmin=1, vmax=max(2, int(matrix.max())))
    im = ax.imshow(matrix.clamp(min=1).numpy(), cmap="Blues", norm=shown)
    for t in range(NUM_CLASSES):
        for p in range(NUM_CLASSES):
            n = int(matrix[t, p])
            if n:
                ax.text(p, t, n, ha="center", va="center", fontsize=8,
                        color="white" if t == p else "black")
    ax.set(xticks=range(NUM_CLASSES), yticks=range(NUM_CLASSES), xlabel="predicted digit",
           ylabel="true digit", title=f"confusion matrix ({int(matrix.sum()) - int(matrix.trace())} errors)")
    fig.colorbar(im, label="images (log scale)")
    fig.tight_layout()
    save_figure(fig, path)


def per_class_table(matrix: torch.Tensor) -> str:
    """Per-digit accuracy lines."""
    lines = ["digit  images  correct  accuracy"]
    for d in range(NUM_CLASSES):
        total, ok = int(matrix[d].sum()), int(matrix[d, d])
        lines.append(f"{d:>5}  {total:>6}  {ok:>7}  {100 * ok / max(total, 1):7.2f}%")
    return "\n".join(lines)


def default_model_path(args: argparse.Namespace) -> Path:
    """--model_path, or the model.pth in the first learning rate's folder."""
    return Path(args.model_path or Path(args.out_dir or lr_folder(args.learning_rate[0])) / "model.pth")


def run_test(args: argparse.Namespace) -> Evaluation:
    """Evaluate saved weights on the test set; write test.log, errors.png and confusion.png beside them."""
    path = default_model_path(args)
    model = CNN()
    load_weights(model, path)
    device = resolve_device(args.device)
    speed = Speed(args.amp, args.channels_last, False)
    prepare_model(model, device, speed)
    loader = get_loader("test", args.data_dir, args.batch_size, args.limit, device)
    ev = evaluate(model, loader, speed)
    wrong = show_error_images(loader.images, loader.labels, ev, path.parent / "errors.png")
    matrix = confusion_matrix(loader.labels, ev.predictions)
    plot_confusion(matrix, path.parent / "confusion.png")
    n = len(loader.labels)
    report = (f"model: {path}\ntest images: {n}\ntest loss: {ev.loss:.6f} (report's convention: "
              f"{ev.loss_report:.8f})\ntest accuracy: {100 * ev.acc:.2f}% ({ev.acc:.4f})\n"
              f"misclassified: {wrong} of {n}\n{per_class_table(matrix)}\n")
    write_text(path.parent / "test.log", report)
    log.info("%swrote %s, %s and %s", report, path.parent / "test.log", path.parent / "errors.png",
             path.parent / "confusion.png")
    return ev


# ---------------------------------------------------------------- predicting people's own digits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def otsu_threshold(values: np.ndarray) -> float:
    """The grey level in [0, 1] that best splits values into two classes (Otsu's method)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    weight = hist.cumsum()
    mean = (hist * edges[:-1]).cumsum()
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(edges[np.nanargmax(between) + 1])


def to_grey(image: "PIL.Image.Image") -> np.ndarray:
    """Greyscale in [0, 1], transparency flattened onto white, camera rotation applied."""
    from PIL import Image, ImageOps
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def preprocess_image(image: "PIL.Image.Image") -> np.ndarray:
    """Make any digit picture look like MNIST: white ink on black, 20 px box, centred by mass, normalised."""
    from PIL import Image, ImageFilter
    grey = to_grey(image)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 0.5:  # light paper, dark ink: the common case
        grey = 1 - grey
    if min(grey.shape) >= 64:  # speckle noise of photos and scans; small images keep thin strokes
        grey = np.asarray(Image.fromarray(grey).filter(ImageFilter.MedianFilter(3)))
    if grey.max() - grey.min() < 0.15:
        raise ValueError("no digit found: the image is blank (one flat colour)")
    threshold = otsu_threshold(grey)
    ink = np.clip((grey - threshold) / (grey.max() - threshold), 0, 1)
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    scale = 20 / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = np.clip(np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.LANCZOS)), 0, 1)
    return centre_by_mass(small)


def centre_by_mass(small: np.ndarray) -> np.ndarray:
    """Place a digit of at most 20x20 in 28x28 with its centre of mass at the centre, normalised."""
    h, w = small.shape
    ys, xs = np.indices(small.shape)
    mass = small.sum() or 1.0
    top = int(np.clip(round(IMAGE_SIZE / 2 - (ys * small).sum() / mass - 0.5), 0, IMAGE_SIZE - h))
    left = int(np.clip(round(IMAGE_SIZE / 2 - (xs * small).sum() / mass - 0.5), 0, IMAGE_SIZE - w))
    canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    canvas[top:top + h, left:left + w] = small
    return (canvas - MEAN) / STD


def naive_image(image: "PIL.Image.Image") -> np.ndarray:
    """The usual tutorial's input: greyscale resized to 28x28, normalised, nothing else."""
    from PIL import Image
    grey = Image.fromarray(to_grey(image)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return (np.asarray(grey, dtype=np.float32) - MEAN) / STD


def image_files(paths: Sequence[str]) -> list[Path]:
    """The files named, and the image files inside the folders named (sorted)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and
                            (f.suffix.lower() in IMAGE_SUFFIXES or not f.name.startswith(".")))
        else:
            files.append(p)
    return files


def read_digit(path: Path, prepare: Callable) -> np.ndarray:
    """Open one image and prepare it; raise ValueError with a short reason when it cannot be read."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            return prepare(image)
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        raise ValueError(f"not an image this tool can read ({type(e).__name__})") from None


def save_preprocessed(images: dict[Path, np.ndarray], folder: Path) -> None:
    """Write each 28x28 model input as an 8-bit PNG named after its source file."""
    from PIL import Image
    prepare_out_dir(folder)
    used: set[str] = set()
    for path, array in images.items():
        name = path.stem
        while name in used:
            name += "_"
        used.add(name)
        pixels = np.clip((array * STD + MEAN) * 255, 0, 255).round().astype(np.uint8)
        atomic_write(folder / f"{name}.png", lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def run_predict(args: argparse.Namespace) -> int:
    """Print PATH DIGIT CONFIDENCE per image (and the top-k), optionally to CSV; 2 if none was readable."""
    model = CNN()
    load_weights(model, default_model_path(args))
    model.eval()
    prepare = naive_image if args.no_preprocess else preprocess_image
    images: dict[Path, np.ndarray] = {}
    for path in image_files(args.predict):
        try:
            images[path] = read_digit(path, prepare)
        except ValueError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
    if not images:
        raise UserError("None of the given files could be read as a digit image. Give PNG, JPEG, BMP "
                        "or similar files (or folders of them) with one dark or light digit each.")
    with torch.inference_mode():
        batch = torch.from_numpy(np.stack(list(images.values()))).unsqueeze(1)
        probs = model(batch).softmax(1)
    top_p, top_d = probs.topk(args.topk, dim=1)
    rows = []
    for path, ps, ds in zip(images, top_p.tolist(), top_d.tolist()):
        rows.append([str(path), ds[0], f"{ps[0]:.3f}"] +
                    [f"{d}:{p:.3f}" for d, p in zip(ds, ps)] * (args.topk > 1))
        print("  ".join(map(str, rows[-1])))
    if args.output_csv:
        header = ["path", "digit", "confidence"] + [f"top{i + 1}" for i in range(args.topk)] * (args.topk > 1)
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        write_text(Path(args.output_csv), buffer.getvalue())
    if args.save_preprocessed:
        save_preprocessed(images, Path(args.save_preprocessed))
    return 0


# ---------------------------------------------------------------- entry

def configure_logging() -> None:
    """Console messages as plain lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)  # the current stdout, also when a caller swapped it
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def report_errors(command: Callable[[], object]) -> int:
    """Run a command; turn a UserError into its one-paragraph message and a stop into its exit code."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Interrupted as e:
        return EXIT_CODES[e.signum]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES[signal.SIGINT]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = parse_args(argv)
    configure_logging()
    if args.summarize:
        return report_errors(lambda: summarize([Path(p) for p in args.summarize], Path(args.out_dir or ".")))
    if args.predict:
        return report_errors(lambda: run_predict(args))
    if args.test:
        return report_errors(lambda: run_test(args))
    return report_errors(lambda: train_all(args))


if __name__ == "__main__":
    sys.exit(main())
