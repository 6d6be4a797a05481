#!/usr/bin/env python3
"""Train, study, test and use the lab report's small MNIST CNN, from one script.

Modes, one per command (add --data_dir ../shared/mnist on machines without a network):
  train one rate   python main.py --learning_rate 1e-3          -> lr_1e-3/
  honest selection python main.py --val_split 10000 --patience 10   (model.pth chosen on the
                   last 10,000 training images; the test set chooses nothing)
  fast recipe      python main.py --recipe fast                 -> fast/ (the report's accuracy
                                                                   in seconds)
  accurate recipe  python main.py --recipe accurate   (99.5%: distortions, clean last epochs, EMA;
                   add --val_split 0 --keep last to train on all 60,000 and keep the last epoch)
  sweep and grid   python main.py --learning_rate 1e-3 5e-4 1e-4 --seed 0 1 2
                   -> seed<k>/lr_<rate>/ (lr_<rate>/ for one seed), results.md, compare.png;
                   torchrun --nproc_per_node N main.py ... spreads the runs over N workers
  test             python main.py --test true --model_path lr_1e-3/model.pth
                   -> test.log, errors.png, confusion.png beside the model
  predict          python main.py --predict my_digits/ --topk 3
  summarize        python main.py --summarize lr_1e-3 lr_5e-4 lr_1e-4   (or a grid folder)
  serve            python main.py --serve      -> a draw-a-digit page and POST /api/predict
  export           python main.py --export model.onnx    (or page.html: the page, no server)
A run folder holds model.pth (the weights of the epoch with the lowest validation loss, or test
loss without --val_split, or the last with --keep last), model.log, metrics.csv (one row per
epoch), config.json (every setting and the machine), figure.png, and checkpoint.pth for --resume.

Sections, in reading order: flags, data, model, train and evaluate (the epoch loop is train()),
plots, grid and results, test mode, the use modes, entry. The library beside it, the package
mnist_cnn/ (docs/code.md maps it), never imports this file.
"""

from __future__ import annotations

from mnist_cnn import interrupts

if __name__ == "__main__":  # first of all, so that no moment of the start is left unhandled
    interrupts.guard_start_up()

import argparse  # noqa: I001  (after the handlers above on purpose)
import contextlib
import dataclasses
import functools
import importlib.util
import io
import itertools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mnist_cnn.training.workers import Worker
from mnist_cnn.flagtypes import (
    MAX_SEED,
    ArgumentParser,
    HelpFormatter,
    bounded,
    str2bool,
)
from mnist_cnn.runformat import LOG, LR_FIND, SUMMARY, lr_folder
from mnist_cnn.settings import (
    REPORT,
    SETTINGS,
    GridError,
    grid_size,
    recorded_settings,
    take_axes,
)
from mnist_cnn.interrupts import (
    configure_logging,
    Interrupted,
    StopFlag,
    UserError,
    report_errors,
    signals_to,
    stop_at_once,
)

IMAGE_SIZE = 28
NUM_CLASSES = 10
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel mean and standard deviation, as in the report
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The named recipes: the report's (the default; its values are declared with the settings in
# mnist_cnn/settings.py), the fast and the accurate one, each the report's values with its
# changes. Flags given explicitly win.
RECIPES = {
    "report": REPORT,
    # the report's accuracy in seconds (experiments/fast/README.md)
    "fast": {
        **REPORT,
        "epoch": 2,
        "learning_rate": [3.2e-2],
        "batch_size": 256,
        "lr_schedule": "onecycle",
        "label_smoothing": 0.1,
        "amp": "auto",
        "last_epoch_fraction": 0.85,
        "figure": False,  # two points a curve, for a tenth of the run's time (experiments/bench/)
    },
    # the report's network at its accuracy limit; every setting chosen on validation
    # (experiments/search/README.md)
    "accurate": {
        **REPORT,
        "epoch": 30,
        "learning_rate": [4e-3],
        "lr_schedule": "onecycle",
        "label_smoothing": 0.1,
        "amp": "auto",
        "augment": True,
        "clean_epochs": 6,
        "ema": 0.999,
        "val_split": 10000,
    },
}
DEVICES = ("auto", "cpu", "cuda", "mps")

log = logging.getLogger("mnist_cnn")


# ---------------------------------------------------------------- flags


# The modes besides training, each one flag; main() runs each with its RUN_MODE function.
MODES: dict[str, dict[str, Any]] = {
    "test": {
        "type": str2bool,
        "default": False,
        "help": "evaluate --model_path on the test set instead of training",
    },
    "predict": {
        "nargs": "+",
        "metavar": "PATH",
        "help": "read the digit in these image files or folders with --model_path",
    },
    "summarize": {
        "nargs": "+",
        "metavar": "RUN_DIR",
        "help": "rebuild results.md and compare.png from run or grid folders",
    },
    "serve": {
        "action": "store_true",
        "default": None,
        "help": "serve a draw-a-digit page and a JSON API for --model_path",
    },
    "lr_find": {
        "action": "store_true",
        "default": None,
        "help": "the learning-rate range test: suggest a rate for the recipe, over --seed "
        "(writes lr_find.csv and lr_find.png into --out_dir, default runs/lr_find/)",
    },
    "export": {
        "metavar": "FILE",
        "help": "write --model_path as FILE.onnx (images N x 1 x 28 x 28 -> logits N x 10) or "
        "as FILE.html (the draw-a-digit page with the model inside, for any browser offline)",
    },
}


def active_mode(args: argparse.Namespace) -> str:
    """The mode the command line chose: one of MODES, or train."""
    return next((m for m in MODES if getattr(args, m) not in (None, False)), "train")


def by_recipe(key: str) -> str:
    """A flag's default in every recipe, for its help: "report 50, fast 2"."""
    values = {name: r[key][0] if key == "learning_rate" else r[key] for name, r in RECIPES.items()}
    shown = {
        k: ("on" if v else "off") if isinstance(v, bool) else v if isinstance(v, str) else f"{v:g}"
        for k, v in values.items()
    }
    return "the recipe's: " + ", ".join(f"{name} {value}" for name, value in shown.items())


MAX_RUNS = 100_000  # runs in one grid: its plan and summary stay in memory


def build_parser() -> tuple[ArgumentParser, dict[tuple[str, ...], argparse._ArgumentGroup]]:
    """The command line's flags, in one group per mode; the groups name which flags belong to
    which mode (flags of a mode's group are refused without it)."""
    p = ArgumentParser(
        prog="main.py",
        formatter_class=HelpFormatter,
        description="Train, test and use the lab report's MNIST CNN.",
    )
    exclusive = p.add_argument_group("modes (one at a time; none means: train)")
    mode = exclusive.add_mutually_exclusive_group()
    for name, spec in MODES.items():
        mode.add_argument(f"--{name}", **spec)
    common = p.add_argument_group("every mode: which run, data and device")
    common.add_argument(
        "--recipe",
        choices=RECIPES,
        default="report",
        help="named settings (their values are the defaults named below); flags "
        "given explicitly override them",
    )
    common.add_argument(
        "--seed",
        type=bounded(int, 0, False, MAX_SEED, True),
        nargs="+",
        default=None,
        help="one or more seeds; every (rate, seed) pair is one run (default 0; --lr_find: 0 1 2)",
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
        choices=DEVICES,
        help="auto picks cuda, then mps, then cpu",
    )
    common.add_argument(
        "--channels_last",
        type=str2bool,
        default=True,
        help="channels-last memory format (faster on CPU and GPU)",
    )
    training = p.add_argument_group("training and grids (no mode flag)")
    held_out = p.add_argument_group("training and --lr_find")
    events = p.add_argument_group("training and --summarize")
    groups = {"common": common, "training": training, "held_out": held_out, "events": events}
    for setting in SETTINGS:  # settings.py declares them; None: the recipe's value
        default = setting.default or by_recipe(setting.name)
        # several values make a grid's axis (take_axes); a switch alone means true
        flag = {k: v for k, v in setting.flag.items() if k not in ("nargs", "const")}
        flag["nargs"] = "*" if setting.flag.get("nargs") == "?" else "+"
        varies = " (several: a grid's axis)" if setting.axis else ""
        groups[setting.group].add_argument(
            f"--{setting.name}",
            **flag,
            default=None,
            help=f"{setting.help} (default: {default}){varies}",
        )
    training.add_argument(
        "--resume", action="store_true", help="continue the run(s) in the folder(s)"
    )
    training.add_argument(
        "--config",
        metavar="RUN/config.json",
        help="train a run again from its record: every setting, the seed and the recipe as "
        "config.json recorded them (a setting the record predates at the report's value); "
        "flags given beside it override",
    )
    training.add_argument(
        "--run_index",
        type=bounded(int, 0, False),
        default=None,
        metavar="K",
        help="train only run K of the grid the flags describe (a job array's task: "
        "$SLURM_ARRAY_TASK_ID); it starts, continues or, finished, says so",
    )
    training.add_argument(
        "--list_runs",
        action="store_true",
        help="print the grid's runs with their index and folder, and the array size; train none",
    )
    training.add_argument("--compile", action="store_true", help="torch.compile the model")
    training.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic GPU kernels (CPU runs are deterministic anyway)",
    )
    written = p.add_argument_group("training, --test, --summarize and --lr_find: where they write")
    written.add_argument(
        "--out_dir",
        default=None,
        help="training: the run folder, for a grid the parent (default: lr_<rate>/ for one "
        "rate or a sweep of rates, runs/ for a grid over seeds, runs/<recipe>/ for a recipe); "
        "--test: the report's folder (default: the model's); --summarize: results.md's "
        "(default runs/summary/); --lr_find: default runs/lr_find/",
    )
    replacing = p.add_argument_group("every mode that writes files")
    replacing.add_argument(
        "--overwrite",
        action="store_true",
        help="also replace files this tool did not write there, or that changed since it did "
        "(its own it replaces anyway; training: start the run afresh); never an input, a "
        "folder, a FIFO or a link inside a folder it writes",
    )
    predict = p.add_argument_group("predict")
    predict.add_argument(
        "--topk",
        type=bounded(int, 1, False, NUM_CLASSES, True),
        default=1,
        help="also list the k most likely digits (at most 10)",
    )
    predict.add_argument(
        "--output_csv",
        default=None,
        metavar="FILE",
        help="also write a CSV (- writes it alone to standard output; a FIFO or device is "
        "written to, a file replaced when all is done)",
    )
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
    finder = p.add_argument_group("lr_find (the rate rises exponentially, one batch per rate)")
    finder.add_argument(
        "--lr_min", type=bounded(float, 0, True), default=1e-7, help="the first rate"
    )
    finder.add_argument(
        "--lr_max", type=bounded(float, 0, True, 1e6, True), default=10.0, help="the last rate"
    )
    finder.add_argument(
        "--lr_steps", type=bounded(int, 10, False, 100_000, True), default=100, help="batches"
    )
    # which modes each group's flags serve (any other mode refuses them)
    return p, {
        ("train",): training,
        ("train", "lr_find"): held_out,
        ("train", "summarize"): events,
        ("train", "test", "summarize", "lr_find"): written,
        ("train", "test", "summarize", "lr_find", "export", "predict"): replacing,
        ("lr_find",): finder,
        ("predict",): predict,
        ("serve",): serve,
    }


def modes_named(modes: Sequence[str]) -> str:
    """Where a flag works, in words: "when training or with --test, --summarize or --lr_find"."""
    flags = [f"--{m}" for m in modes if m != "train"]
    ways = ["when training"] if "train" in modes else []
    if flags:
        listed = f"{', '.join(flags[:-1])} or {flags[-1]}" if flags[1:] else flags[0]
        ways.append(f"with {listed}")
    return " or ".join(ways)


# flags of every mode that a summary has no use for: it reads each folder's record instead
SUMMARY_IGNORES = (
    "learning_rate",
    "seed",
    "recipe",
    "model_path",
    "data_dir",
    "device",
    "limit",
    "batch_size",
    "amp",
    "channels_last",
)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Read the command line and fill in the recipe's values for the flags not given."""
    p, groups = build_parser()
    args = p.parse_args(argv)
    args.argv = list(argv)  # the run's own command line, for its log and its resume hint
    active = active_mode(args)
    for served, group in groups.items():
        given = [
            a.option_strings[0] for a in group._group_actions if getattr(args, a.dest) != a.default
        ]
        if given and active not in served:
            where = modes_named(served)
            p.error(f"{', '.join(given)} only {'works' if len(given) == 1 else 'work'} {where}")
    if active == "summarize":  # a summary reads what each run's folder records, nothing else
        ignored = [
            a.option_strings[0]
            for a in p._actions
            if a.dest in SUMMARY_IGNORES and getattr(args, a.dest) != a.default
        ]
        if ignored:
            p.error(
                f"--summarize reads each run's settings from its folder; {', '.join(ignored)} "
                "would change nothing: leave it out"
            )
    try:
        args.axes = take_axes(args)
    except GridError as e:
        p.error(str(e))
    if args.config:
        take_record(args, p)
    if args.seed is not None and len(set(args.seed)) < len(args.seed):
        p.error("a seed is given twice; give each seed once")
    if args.list_runs and args.run_index is not None:
        p.error("--list_runs lists every run of the grid; --run_index trains one: give one of them")
    if args.overwrite and (args.resume or args.run_index is not None):
        how = "--resume" if args.resume else "--run_index (which resumes its run)"
        p.error(
            f"--overwrite starts a run afresh and {how} continues it: give one of them "
            "(to train a job array's run afresh, remove its folder first)"
        )
    if args.overwrite and (
        args.list_runs
        or (active == "predict" and args.output_csv in (None, "-") and not args.save_preprocessed)
    ):
        p.error(
            "--overwrite replaces files this command would write, and it writes none: leave it "
            "out"
            + (
                ""
                if args.list_runs
                else " (--predict writes with --output_csv or --save_preprocessed)"
            )
        )
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        p.error("--tensorboard needs the tensorboard package: pip install tensorboard")
    if args.lr_find and args.lr_min >= args.lr_max:
        p.error(f"--lr_min {args.lr_min:g} must be below --lr_max {args.lr_max:g}")
    if args.seed is None:  # the finder is cheap: several seeds show how stable its answer is
        args.seed = [0, 1, 2] if active == "lr_find" else [0]
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

    def values(name: str) -> list:
        """A setting's values: an axis's, or its one value."""
        return args.axes.get(name, [getattr(args, name)])

    if "last" in values("keep") and any(values("patience")):  # in any run of a grid
        p.error("--patience stops when the selection loss stalls; --keep last keeps no such loss")
    for s in SETTINGS:  # a setting that needs a switch shapes nothing without it
        value, switch = getattr(args, s.name), values(s.needs) if s.needs else [True]
        if all(switch):
            continue
        if any(switch) and s.name in args.axes:  # each value again in the runs without it
            p.error(
                f"--{s.name} takes several values only where --{s.needs} is true in every "
                f"run: crossed with --{s.needs} false, the same run would train once per value"
            )
        if any(switch):
            continue  # the runs without the switch train with the report's value (plan_runs)
        if s.name in args.axes or value not in (s.report, RECIPES[args.recipe][s.name]):
            p.error(f"--{s.name} acts only with --{s.needs}; give --{s.needs} true with it")
        setattr(args, s.name, s.report)  # the recipe's value shapes nothing without the switch
    size = grid_size(args)  # the recipe's values filled in the rates
    if args.run_index is not None and size == 1:
        p.error("--run_index picks a run of a grid; give several values of a setting or --seed")
    if args.run_index is not None and args.run_index >= size:
        p.error(f"--run_index {args.run_index}: the grid has {size} runs, indices 0 to {size - 1}")
    if size > MAX_RUNS:
        p.error(
            f"a grid of {size:,} runs; at most {MAX_RUNS:,} "
            "(split it into several commands with their own --out_dir)"
        )
    if active in ("test", "predict", "export", "serve") and size > 1:
        p.error(
            f"--{active} takes one model; give one value of each setting and --seed, or "
            "--model_path"
        )
    return args


def take_record(args: argparse.Namespace, p: ArgumentParser) -> None:
    """--config: the settings, seed and recipe of a run's config.json, for every flag not given
    beside it; a record with unknown keys or a value out of bounds is refused in one line."""
    path = Path(args.config)
    try:
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not a run's record")
        recorded = recorded_settings(config)
        seed = bounded(int, 0, False, MAX_SEED, True)(str(config.get("seed", 0)))
        recipe = config.get("recipe", "report")
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ValueError(f"recipe is {recipe!r}, not one of {', '.join(RECIPES)}")
    except (OSError, ValueError, argparse.ArgumentTypeError) as e:
        p.error(f"--config {path}: {getattr(e, 'strerror', None) or e}")
    if any(a.startswith("--rec") for a in args.argv):  # --recipe (or a prefix of it)
        p.error(
            "--config trains with the recipe and settings its record names: leave --recipe "
            "out and give the settings to change as flags"
        )
    for name, value in recorded.items():
        if getattr(args, name) is None:  # a flag given beside it overrides
            setattr(args, name, [[value]] if name == "learning_rate" else value)
    if args.seed is None:
        args.seed = [seed]
    args.recipe = recipe


def run_summarize(args: argparse.Namespace) -> str:
    """results.md and compare.png from finished run or grid folders, without training (and
    without torch: mnist_cnn.analysis.summary reads CSV and JSON files: answered up here)."""
    from mnist_cnn.analysis.summary import summarize

    out = Path(args.out_dir) if args.out_dir else SUMMARY
    return summarize(args.summarize, out, args.overwrite, args.tensorboard)


def run_use_mode(run: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> int:
    """Run a mode other than training; a signal stops it at once (nothing these modes write can
    be left half done)."""
    with signals_to(stop_at_once):
        return report_errors(lambda: run(args))


def answer_early(argv: Sequence[str]) -> None:
    """--help and flag errors (argparse exits) and --summarize, before torch loads (seconds)."""
    args = parse_args(argv)
    if active_mode(args) == "summarize":
        configure_logging()
        interrupts.leave(run_use_mode(run_summarize, args))


if __name__ == "__main__":
    answer_early(sys.argv[1:])

# the heavy imports come after the early answer above on purpose
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_cnn.analysis import events, lrfind  # noqa: E402
from mnist_cnn.analysis.summary import summarize  # noqa: E402
from mnist_cnn.files import (  # noqa: E402
    close_gates,
    load_tensors,
    open_gate,
    prepare_out_dir,
    write_text,
)
from mnist_cnn.idxfile import read_idx  # noqa: E402
from mnist_cnn.plots import new_figure, save_figure  # noqa: E402
from mnist_cnn.runformat import (  # noqa: E402
    MODEL,
    TEST_LOG,
    batches_per_epoch,
    one_cycle,
)
from mnist_cnn.training import grid  # noqa: E402
from mnist_cnn.training.augment import Distortion  # noqa: E402
from mnist_cnn.training.checkpoints import (  # noqa: E402
    apply_weights,
)
from mnist_cnn.training.epochs import (  # noqa: E402
    Progress,
    begin_run,
    commit_epoch,
    outcome_recorded,
    restore_run,
)
from mnist_cnn.training.runrecord import (  # noqa: E402
    Metrics,
    Run,
    Speed,
    epoch_row,
)
from mnist_cnn.use import inference  # noqa: E402

if TYPE_CHECKING:  # imported for real only where used: they cost startup time
    from torch.optim.swa_utils import AveragedModel

    from mnist_cnn.training.optim import SGD, Adam


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


# ---------------------------------------------------------------- data


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
    # download only what is absent: a file that is there but broken is named by read_idx
    if not (os.path.lexists(images_path) and os.path.lexists(labels_path)):
        from torchvision.datasets import MNIST  # imported only here: it costs about a second

        try:
            with contextlib.redirect_stdout(sys.stderr):
                MNIST(root=data_dir, train=split == "train", download=True)
        except Exception:  # any network or disk failure means the same thing to the user
            raise UserError(missing_data_message(raw)) from None
    images, labels = read_idx(images_path, 3, IMAGE_SIZE), read_idx(labels_path, 1, IMAGE_SIZE)
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(
            f"The MNIST file {labels_path} holds labels outside 0-9 (the largest is "
            f"{labels.max()}): it is damaged or not MNIST's. Replace it with the original file."
        )
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
    augment: Distortion | None = None  # training batches only: distorted per image

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle order the next iteration uses."""
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This epoch's sample order, from a generator of its own (the global RNG is untouched)."""
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        return torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return batches_per_epoch(len(self.labels), self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self.images.device) if self.shuffle else None
        distort = self.augment if self.shuffle else None
        generator = distort.generator(self.seed, self.epoch) if distort else None
        for start in range(0, len(self.labels), self.batch_size):
            if order is None:
                yield (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                images = self.images[idx]
                if distort is not None and generator is not None:
                    images = distort(images, generator)
                yield images, self.labels[idx]


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
        for conv, norm, relu, pool in (self.conv1, self.conv2):
            # ReLU after the pool: they commute exactly (outputs and gradients bit for bit, tested)
            # and the ReLU touches a quarter of the values, a training step ~15% faster on a CPU
            x = relu(pool(norm(conv(x))))
        return self.out(x.flatten(1))


def load_model(path: Path) -> CNN:
    """The CNN with the weights of a model.pth (or of a checkpoint), in eval mode."""
    state = load_tensors(path, "model file")
    model = CNN()
    apply_weights(model, state["model"] if isinstance(state.get("model"), dict) else state, path)
    return model.eval()


def model_summary() -> str:
    """torchsummary's table of the CNN, captured as text."""
    from torchsummary import summary

    out = io.StringIO()
    with torch.random.fork_rng(), contextlib.redirect_stdout(out):  # summary draws random input
        summary(CNN(), (1, IMAGE_SIZE, IMAGE_SIZE), device="cpu")
    return out.getvalue().rstrip()


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device does it; float16 on GPUs without bfloat16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def prepare_model(model: nn.Module, device: torch.device, speed: Speed) -> nn.Module:
    """Move the model to the device and memory format, compiling it in place when asked."""
    layout = torch.channels_last if speed.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=layout)
    if speed.compile:
        model.compile()  # in place: state_dict keys stay those of a plain CNN
    return model


def make_scaler(device: torch.device, speed: Speed) -> torch.amp.GradScaler:
    """Loss scaling, active only for float16 autocast (bf16 has float32's range and needs none)."""
    fp16 = speed.amp and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=fp16)


# ---------------------------------------------------------------- train and evaluate


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
    optimizer: Adam | SGD
    speed: Speed
    scaler: torch.amp.GradScaler
    schedule: Callable[[int], tuple[float, float]] | None = None  # steps done -> lr, momentum
    label_smoothing: float = 0.0
    ema: AveragedModel | None = None  # of the weights and batch-norm buffers


def train_epoch(
    t: Trainer,
    loader: TensorBatches,
    stop: StopFlag | None = None,
    progress: Progress | None = None,
    batches: int | None = None,
) -> Metrics:
    """One pass of the optimizer over the training set (or its first `batches` batches); loss
    and accuracy of that pass."""
    t.model.train()
    tally = Tally(loader.images.device)
    for images, labels in itertools.islice(loader, batches):
        if stop is not None and stop.signum is not None:
            raise Interrupted(stop.signum)
        logits, loss = forward_loss(t.model, images, labels, t.speed, t.label_smoothing)
        t.optimizer.zero_grad()
        t.scaler.scale(loss).backward()
        if t.schedule is not None:
            t.optimizer.set_schedule(*t.schedule(t.optimizer.steps))
        t.scaler.step(cast(torch.optim.Optimizer, t.optimizer))  # duck-typed (optim.py)
        t.scaler.update()
        if t.ema is not None:
            t.ema.update_parameters(t.model)
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


def refresh_events(run: Run) -> None:
    """After a run's files change: its TensorBoard file, where it has one or asked for one
    (from its first finished epoch on: before it, metrics.csv may be an earlier run's)."""
    if run.history:
        events.refresh_events(run.folder, run.settings.tensorboard)


def train(
    run: Run,
    loaders: dict[str, TensorBatches],
    device: torch.device,
    stop: StopFlag,
    resume: bool = False,
    refresh: Callable[[Run], None] = refresh_events,
) -> Run:
    """Train one run into its folder, from scratch or from its checkpoint; the epoch loop is
    here. With a "val" loader its loss chooses model.pth and the test set only reports; after
    each epoch's files, `refresh` brings what derives from them up to date."""
    from mnist_cnn.training.optim import make_optimizer

    stop.deferred = True  # from here on a signal waits for a batch or a file to finish
    seed_everything(run.seed)
    model = prepare_model(CNN(), device, run.speed)
    distort = (
        Distortion(elastic=run.settings.elastic).scaled(run.settings.distortion)
        if run.settings.augment
        else None
    )
    # the grid's data read once, batched as this run asks (a batch size axis); the evaluation
    # batches too, as a run trained alone with its --batch_size evaluates
    batched = {
        split: dataclasses.replace(loader, batch_size=run.settings.batch_size)
        for split, loader in loaders.items()
    }
    train_loader = dataclasses.replace(batched["train"], seed=run.seed)  # distorted per epoch
    val_loader, test_loader = batched.get("val"), batched["test"]
    optimizer = make_optimizer(
        run.settings.optimizer, model.parameters(), run.lr, run.settings.weight_decay
    )
    scaler = make_scaler(device, run.speed)
    t = Trainer(model, optimizer, run.speed, scaler, label_smoothing=run.settings.label_smoothing)
    if run.settings.lr_schedule == "onecycle":
        t.schedule = functools.partial(one_cycle, total=run.steps(len(train_loader)), peak=run.lr)
    if run.settings.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        average = get_ema_multi_avg_fn(run.settings.ema)
        t.ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    # the weights evaluated, and saved as model.pth
    judged = cast(nn.Module, t.ema.module) if t.ema else model
    if not resume:
        sizes = {split: len(loader.labels) for split, loader in loaders.items()}
        begin_run(run, device, sizes, model_summary())
    elif restore_run(run, t, device, refresh):
        return run  # it had finished
    with outcome_recorded(run, refresh), Progress(run, len(train_loader)) as progress:
        for epoch in range(run.done + 1, run.epochs + 1):
            began = time.perf_counter()
            progress.epoch_started(epoch)
            train_loader.set_epoch(epoch)
            train_loader.augment = distort if run.distorted(epoch) else None
            batches = run.batches(epoch, len(train_loader))
            train_m = train_epoch(t, train_loader, stop, progress, batches)
            # evaluation losses with the training's smoothing: plain cross-entropy of a
            # smoothed model can be lowest at an earlier, less accurate epoch
            val_m = None
            if val_loader is not None:
                val_m = evaluate(judged, val_loader, run.speed, run.settings.label_smoothing)
            test_m = evaluate(judged, test_loader, run.speed, run.settings.label_smoothing)
            row = epoch_row(epoch, train_m, val_m, test_m)
            commit_epoch(run, t, judged, row, began, t.optimizer.lr, refresh)
            if run.stopped_early:
                break
    return run


# ---------------------------------------------------------------- the learning-rate range test


def finder_step(
    seed: int,
    batches: TensorBatches,
    device: torch.device,
    speed: Speed,
    smoothing: float,
    optimizer_name: str,
) -> Callable[[float], float]:
    """One training step at a given rate on a fresh network of this seed, batch after batch in
    the run's own shuffled order: what the range test calls for each rate. Returns the loss."""
    from mnist_cnn.training.optim import make_optimizer

    seed_everything(seed)
    model = prepare_model(CNN(), device, speed).train()
    optimizer = make_optimizer(optimizer_name, model.parameters(), 0.0)
    scaler = make_scaler(device, speed)
    loader = dataclasses.replace(batches, seed=seed)

    def every_batch() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for epoch in itertools.count(1):
            loader.set_epoch(epoch)
            yield from loader

    stream = every_batch()

    def step(lr: float) -> float:
        images, labels = next(stream)
        _, loss = forward_loss(model, images, labels, speed, smoothing)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        optimizer.lr = lr
        scaler.step(cast(torch.optim.Optimizer, optimizer))  # duck-typed (optim.py)
        scaler.update()
        return loss.item()

    return step


def run_lr_find(args: argparse.Namespace) -> lrfind.Suggestion:
    """The range test for every --seed: lr_find.csv, lr_find.png and the suggested rate. A
    process of its own: no run folder is touched and no model is saved."""
    device = resolve_device(args.device)
    speed = Speed(resolve_amp(args.amp, device), args.channels_last, False)
    configure_backends(device, False, speed.amp)
    batches = get_loader(
        "train", args.data_dir, args.batch_size, args.limit, device, val_split=args.val_split
    )
    out = Path(args.out_dir) if args.out_dir else LR_FIND
    if (out / LOG).exists():  # --summarize would then read the folder as a range test's
        raise UserError(
            f"{out} is a run's folder: the range test writes into a folder of its own; give "
            "another --out_dir."
        )
    open_gate(out, args.overwrite).claim(["lr_find.csv", "lr_find.png"])
    prepare_out_dir(out)
    schedule = lrfind.rates(args.lr_min, args.lr_max, args.lr_steps)
    curves = [
        lrfind.run(
            seed,
            schedule,
            finder_step(seed, batches, device, speed, args.label_smoothing, args.optimizer),
        )
        for seed in args.seed
    ]
    suggestion = lrfind.suggest(curves)
    write_text(out / "lr_find.csv", lrfind.csv_text(curves))
    title = (
        f"range test: {len(batches.labels):,} training images, batch {args.batch_size}, "
        f"{args.lr_min:g} to {args.lr_max:g} in {args.lr_steps} steps"
    )
    lrfind.plot(curves, suggestion, out / "lr_find.png", title)
    log.info("%s\nwrote %s and %s", suggestion.text(), out / "lr_find.csv", out / "lr_find.png")
    return suggestion


# ---------------------------------------------------------------- plots


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
                    str(n),
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


def load_splits(args: argparse.Namespace, device: torch.device) -> dict[str, TensorBatches]:
    """The training, validation (with --val_split) and test batches a training reads."""
    return {
        split: get_loader(
            split, args.data_dir, args.batch_size, args.limit, device, val_split=args.val_split
        )
        for split in ("train", "val", "test")
        if split != "val" or args.val_split
    }


def train_grid(args: argparse.Namespace) -> list[Run]:
    """Training: this worker's share of the runs the flags describe (one run, a grid, or with
    --run_index one task of a job array), each trained by train(); mnist_cnn.training.grid
    plans, locks and resumes them, and the grid's summary follows."""
    worker = Worker.from_env()
    grid.refuse_run_index_under_torchrun(args, worker)
    device = resolve_device(args.device, worker.local_rank)
    amp = resolve_amp(args.amp, device)
    configure_backends(device, args.deterministic, amp)
    return grid.run_grid(
        args,
        RECIPES[args.recipe],
        worker,
        device,
        amp,
        functools.partial(load_splits, args, device),
        train,
        functools.partial(summarize, overwrite=args.overwrite),
    )


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
    return grid.run_folder(args, args.seed[0], args.learning_rate[0]) / MODEL


TEST_REPORT = (TEST_LOG, "errors.png", "confusion.png")


def same_test(log: Path, model: Path, images: int) -> bool:
    """Whether test.log reports this model on this many images: rewriting it changes nothing
    (the same weights on the same images give the same numbers)."""
    if not log.is_file():
        return False
    recorded = dict(
        line.split(": ", 1)
        for line in log.read_text(errors="replace").splitlines()[:2]
        if ": " in line
    )
    named = Path(recorded.get("model", ""))
    # the path as it was given then, from where it was given; or beside this test.log
    candidates = [named, log.parent / named.name]
    return recorded.get("test images") == str(images) and any(
        c.is_file() and os.path.samefile(c, model) for c in candidates
    )


def same_report(log: Path, report: str) -> str:
    """The report as test.log keeps it for the same model: its first line, the model's path as
    first given, stays (the path given now may be written otherwise); a test of that model on
    as many images that reads otherwise (other data, --amp) replaces it only with --overwrite."""
    old = log.read_text().splitlines()
    new = [*old[:1], *report.splitlines()[1:]]
    if old != new:
        first = next((a, b) for a, b in itertools.zip_longest(old, new, fillvalue="") if a != b)
        raise UserError(
            f"{log} reports another test of this model ({first[0]!r} where this one gives "
            f"{first[1]!r}); --overwrite replaces it and its pictures, --out_dir NEW_FOLDER "
            "keeps both."
        )
    return "\n".join(new) + "\n"


def run_test(args: argparse.Namespace) -> Metrics:
    """Evaluate saved weights on the test set; write test.log, errors.png and confusion.png
    into --out_dir (default: beside the model), replacing another test's report only with
    --overwrite."""
    path = default_model_path(args)
    model = load_model(path)
    device = resolve_device(args.device)
    speed = Speed(resolve_amp(args.amp, device), args.channels_last, False)
    prepare_model(model, device, speed)
    loader = get_loader("test", args.data_dir, args.batch_size, args.limit, device)
    out = Path(args.out_dir) if args.out_dir else path.parent
    n = len(loader.labels)
    again = same_test(out / TEST_LOG, path, n)
    # a report is replaced only by the same report (nothing changes) or with --overwrite:
    # this tool's record vouches for no other (another test of the same model stays)
    gate = open_gate(out, args.overwrite, inputs=[path], trusts_record=False)
    gate.advice = (
        "It reports another test (another model, or another number of images): --overwrite "
        "replaces the report and its pictures, --out_dir NEW_FOLDER keeps both."
    )
    if again:
        gate.claim_in_place(TEST_REPORT)
    else:
        gate.claim(TEST_REPORT)
    prepare_out_dir(out)
    batches: list[torch.Tensor] = []
    m = evaluate(model, loader, speed, probabilities=batches)
    probabilities = torch.cat(batches)
    matrix = confusion_matrix(loader.labels, probabilities.argmax(1))
    wrong = int(matrix.sum()) - int(matrix.trace())
    report = (
        f"model: {path}\ntest images: {n}\ntest loss: {m.loss:.6f} (report's convention: "
        f"{m.loss_report:.8f})\ntest accuracy: {100 * m.acc:.2f}% ({m.acc:.4f})\n"
        f"misclassified: {wrong} of {n}\n{per_class_table(matrix)}\n"
    )
    if again and not args.overwrite:
        report = same_report(out / TEST_LOG, report)
    show_error_images(loader.images, loader.labels, probabilities, out / "errors.png")
    plot_confusion(matrix, out / "confusion.png")
    write_text(out / TEST_LOG, report)
    log.info("%swrote %s", report, ", ".join(str(out / f) for f in TEST_REPORT))
    return m


# ---------------------------------------------------------------- the use modes


def classify(model: nn.Module, pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """Digit probabilities (N x 10) for 28x28 pixel arrays in [0, 1]."""
    batch = normalise(torch.from_numpy(np.stack(pixels))).unsqueeze(1)
    with torch.inference_mode():
        return model(batch).softmax(1)


def run_predict(args: argparse.Namespace) -> None:
    """Read the digits in people's image files (inference.py does the reading and writing)."""
    path = default_model_path(args)
    inference.run_predict(args, functools.partial(classify, load_model(path)), path)


def run_serve(args: argparse.Namespace) -> None:
    """Serve the draw-a-digit page and its JSON API for the model."""
    path = default_model_path(args)
    inference.run_serve(args, functools.partial(classify, load_model(path)), path)


def run_export(args: argparse.Namespace) -> None:
    """Write the model as ONNX or as the self-contained page (the suffix says which)."""
    path = default_model_path(args)
    inference.run_export(Path(args.export), load_model(path), MEAN, STD, args.overwrite, path)


# ---------------------------------------------------------------- entry

# what runs each mode but training (MODES names their flags)
RUN_MODE: dict[str, Callable[[argparse.Namespace], object]] = {
    "test": run_test,
    "predict": run_predict,
    "summarize": run_summarize,
    "serve": run_serve,
    "lr_find": run_lr_find,
    "export": run_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse has printed its usage line; --help exits 0
        return int(e.code or 0)
    configure_logging()
    close_gates()  # this command writes through the gates it opens, none of an earlier one's
    mode = active_mode(args)
    if mode == "train":
        return report_errors(lambda: train_grid(args))
    return run_use_mode(RUN_MODE[mode], args)


if __name__ == "__main__":
    interrupts.leave(main())
