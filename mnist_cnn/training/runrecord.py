"""One run's record while it trains: `Run` (its settings, folder and epochs so far), the epoch
table's rows, model.log (header, table, closing summary), metrics.csv and config.json (with the
resume and divergence records) written, and whether a finished run's outputs are complete. The
files' shapes are mnist_cnn.runformat's; this module fills them from a training run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from mnist_cnn.files import write_text
from mnist_cnn.runformat import (
    COLUMNS,
    CONFIG,
    FIGURE,
    LOG,
    LOSS_NOTE,
    LR,
    METRICS,
    VAL_COLUMNS,
    bad_config,
    config_text,
    epoch_batches,
    format_row,
    load_config,
    metrics_csv,
    schedule_steps,
    selection_loss,
    table_header,
)
from mnist_cnn.settings import (
    BINDING,
    HEADER_LINES,
    OPTIMIZER_NAMES,
    Settings,
    header_line,
    in_run,
)

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


@dataclass(kw_only=True)
class Run:
    """One training run: its settings (every one given: main.py's RECIPES are their one
    source), its folder and what it has done so far."""

    settings: Settings
    folder: Path
    seed: int
    speed: Speed
    recipe: str
    command: str = ""  # the command line that started it
    resume_command: str = ""  # and the one that continues it
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_loss: float = math.inf
    header: str = ""
    diverged: int | None = None  # the epoch whose loss became infinite or NaN
    place: tuple[int, int] = (1, 1)  # k-th of the n runs this process trains (progress lines)
    table_shown: bool = False  # the console has shown the layer table (a grid shows it once)
    code: dict = field(default_factory=dict)  # provenance(): commit, dirty, package versions

    @property
    def lr(self) -> float:
        """The run's learning rate (the peak rate with one-cycle)."""
        return self.settings.learning_rate

    @property
    def epochs(self) -> int:
        """The epochs the run is to train."""
        return self.settings.epoch

    @property
    def done(self) -> int:
        """Epochs finished so far."""
        return len(self.history)

    @property
    def stopped_early(self) -> bool:
        """Whether the selection loss has not improved for `patience` epochs."""
        return (
            self.settings.patience is not None
            and self.done - self.best_epoch >= self.settings.patience
        )

    @property
    def finished(self) -> bool:
        """All epochs done, stopped by patience, or diverged."""
        return self.done >= self.epochs or self.stopped_early or self.diverged is not None

    def distorted(self, epoch: int) -> bool:
        """Whether the epoch's training images are distorted (--augment, but not its last
        clean epochs)."""
        return self.settings.augment and epoch <= self.epochs - self.settings.clean_epochs

    def batches(self, epoch: int, per_epoch: int) -> int:
        """Training batches in an epoch: all of them, the last epoch's share in the last."""
        return epoch_batches(epoch, self.epochs, self.settings.last_epoch_fraction, per_epoch)

    def steps(self, per_epoch: int) -> int:
        """Optimizer steps of the whole run (the one-cycle schedule's length)."""
        return schedule_steps(self.epochs, self.settings.last_epoch_fraction, per_epoch)

    def take_if_chosen(self, row: dict) -> bool:
        """Make this epoch the run's best where model.pth takes it, and return whether it
        does: its selection loss is the lowest so far (the validation loss; the report's rule
        without a split: the test loss), or the run keeps the last epoch."""
        chosen = self.settings.keep == "last" or selection_loss(row) < self.best_loss
        if chosen:
            self.best_epoch, self.best_loss = row["epoch"], selection_loss(row)
        return chosen

    def record(self, row: dict, seconds: float, saved: bool, lr: float) -> None:
        """Add a finished epoch's row, with its seconds, whether model.pth took it and the rate
        of its last step (a run begun before metrics.csv had the rate goes on without it)."""
        row.update(seconds=seconds, saved="yes" if saved else "-")
        if not self.history or LR.name in self.history[0]:
            row[LR.name] = lr
        self.history.append(row)

    @property
    def rule(self) -> str:
        """Which epoch model.pth holds, in words."""
        return "last epoch" if self.settings.keep == "last" else f"lowest {self.selection}"

    @property
    def selection(self) -> str:
        """The loss that chooses model.pth, in words."""
        return "validation loss" if self.settings.val_split else "test loss"

    def config(self) -> dict:
        """Settings a resumed run must share with the original one (they change the numbers)."""
        binding = {k: getattr(self.settings, k) for k in BINDING}
        return {"learning_rate": self.lr, "seed": self.seed, **binding}

    @property
    def weights(self) -> str:
        """Which weights model.pth holds, in words."""
        return (
            f"the weight average (EMA, decay {self.settings.ema:g})"
            if self.settings.ema
            else "the trained weights"
        )


def render_log(run: Run, footer: Sequence[str] = ()) -> str:
    """The whole model.log, derived from the run's state, so a resume rewrites it identically."""
    table = table_header(VAL_COLUMNS if run.settings.val_split else COLUMNS)
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
            f"{run.settings.patience} epochs"
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
    values = {**in_run(run.settings), **run.config()}
    lines = [header_line(line, values, run, sizes) for line in HEADER_LINES]
    return "\n".join(
        [
            "MNIST CNN training log",
            f"command: {run.command}",
            f"learning_rate: {run.lr:g}  batch_size: {run.settings.batch_size}  "
            f"epochs: {run.epochs}  seed: {run.seed}  "
            f"optimizer: {OPTIMIZER_NAMES[run.settings.optimizer]}  device: {device.type}  "
            f"amp: {s.amp}  channels_last: {s.channels_last}  compile: {s.compile}",
            f"recipe: {run.recipe}  {lines[0]}",
            *filter(None, lines[1:]),
            f"torch: {torch.__version__}  train images: {sizes['train']}  "
            f"test images: {sizes['test']}  threads: {torch.get_num_threads()}",
            code_line(run.code),
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
        **{k: v for k, v in in_run(run.settings).items() if k not in BINDING},
        "selection": run.rule,
        "model.pth": run.weights,
    }
    images = {f"{split}_images": sizes.get(split, 0) for split in ("train", "val", "test")}
    config = {
        **settings,
        **images,
        **machine(device),
        **run.code,
        "command": run.command,
        "started": round(time.time(), 3),  # the wall clock TensorBoard's events count from
        "resumes": [],
    }
    return config_text(config)


# what makes the same run give other floats: kernels, vector instructions, thread count
FLOAT_DECIDING = ("device", "device_name", "cpu_capability", "threads", "torch")


def provenance() -> dict:
    """The code a run was trained with: the clone's commit (the full hash), whether its
    working tree had changes, and the packages whose versions decide the numbers. Outside a
    git clone (or without git), commit and dirty are null."""
    from importlib.metadata import version  # not the packages: torchvision loads torch._dynamo

    root = Path(__file__).resolve().parents[2]
    commit, dirty = None, None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.returncode == 0:
            commit = head.stdout.strip()
            status = subprocess.run(
                [*git, "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
            )
            dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {
        "commit": commit,
        "dirty": dirty,
        "torchvision": version("torchvision"),
        "numpy": version("numpy"),
    }


def code_line(code: dict) -> str:
    """model.log's line for the code: `code: commit 80dc007… (clean)  torchvision: …  numpy: …`."""
    commit = "unknown (not a git clone)"
    if code.get("commit"):
        dirty = code.get("dirty")
        state = "state unknown" if dirty is None else "with changes" if dirty else "clean"
        commit = f"{code['commit']} ({state})"
    return (
        f"code: commit {commit}  torchvision: {code.get('torchvision')}  numpy: {code.get('numpy')}"
    )


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
    path = run.folder / CONFIG
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
    write_text(path, config_text(config))
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
    path = run.folder / CONFIG
    if path.is_file():
        config = load_config(path)
        config["diverged"] = {"epoch": run.diverged, "reason": reason}
        write_text(path, config_text(config))


def write_epoch_files(run: Run) -> None:
    """The files rewritten after every epoch: model.log and metrics.csv."""
    write_text(run.folder / LOG, render_log(run))
    write_text(run.folder / METRICS, metrics_csv(run.history))
    if sys.stderr.isatty():  # keep the progress bars intact
        tqdm.write(format_row(run.history[-1]))
    else:
        log.info("%s", format_row(run.history[-1]))


def write_run_files(run: Run, footer: Sequence[str]) -> None:
    """The files written when a run ends or stops: model.log with its footer, metrics.csv (a
    stop between the checkpoint and the epoch's files left it a row short) and figure.png (unless
    the run draws none)."""
    write_text(run.folder / LOG, render_log(run, footer))
    if run.history:
        write_text(run.folder / METRICS, metrics_csv(run.history))
    if run.history and run.settings.figure:
        from mnist_cnn.plots import Curve, plot_curves  # matplotlib costs startup time: only here

        chose = "val" if run.settings.val_split else "test"
        plot_curves(
            [
                Curve(label, [run.history], split, [run.best_epoch] if split == chose else [])
                for split, label in (("train", "train"), ("val", "validation"), ("test", "test"))
                if split != "val" or run.settings.val_split
            ],
            run.folder / FIGURE,
            f"{run.folder.name}: learning rate {run.lr:g}, batch {run.settings.batch_size}",
        )


def final_outputs_missing(run: Run) -> bool:
    """Whether a finished run's figure.png, the summary of its model.log or a row of its
    metrics.csv is missing."""
    log_path, csv_path = run.folder / LOG, run.folder / METRICS
    return (
        (run.settings.figure and not (run.folder / FIGURE).is_file())
        or not log_path.is_file()
        or "\nsummary\n" not in log_path.read_text(errors="replace")
        or not csv_path.is_file()
        or len(csv_path.read_text().splitlines()) != run.done + 1
    )
