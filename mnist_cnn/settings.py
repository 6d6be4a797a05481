"""The training settings, each declared once as a typed field of Settings: its flag (type,
bounds, help), the report's value, whether it binds a resume, how model.log's header shows it,
which setting it needs, and whether a value of it shortens a recipe's schedule. Everything else
derives from SETTINGS: the flags and their help, the report's recipe (main.py writes the other
recipes as its changes), a run's settings, config.json, model.log's header, the resume check,
and the values of checkpoints older than a setting (they trained with the report's value).
Training and the analysis both read them, so they live beside the run folder's format, in
neither room; the standard library and the run folder's format only, because main.py reads
them before torch loads. A setting declared an axis takes several values: take_axes makes them a
grid's axes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mnist_cnn.flagtypes import bounded, learning_rates, str2bool, switch_or_auto
from mnist_cnn.runformat import RECORD_KEYS, RECORDED_SINCE_FIRST, axis_folder

OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD"}  # --optimizer's choices, as model.log names them
# a yes/no flag whose value may be left out (--augment means --augment true); None: the recipe's
SWITCH = {"type": str2bool, "nargs": "?", "const": True}


@dataclass(frozen=True)
class Shown:
    """How model.log's header shows a setting: on which line, when, and its value as text
    (called with the value, the Run and the data sizes; None: it opens its line but is not
    shown). when: "line", whenever its line is shown; "opens", the same, and a value other than
    the report's shows the line; "changed", only a value other than the report's."""

    line: str
    when: str = "changed"
    text: Callable[[Any, Any, dict], str] | None = lambda value, run, sizes: f"{value}"


def number(value: float, run: Any, sizes: dict) -> str:
    """A float as the header shows it: %g."""
    return f"{value:g}"


@dataclass(frozen=True)
class Setting:
    """One training setting. flag: argparse's keywords besides the default (always None: the
    recipe's); group: the flags' group; binds: a resume must use the value the run began with;
    in_run: a field of Run (the learning rate, epochs and amp reach it in other forms); needs:
    the switch without which its value shapes nothing; shortens(given, recipe's): whether a
    value cuts a recipe's one-cycle schedule; default: the help's words for its default when
    the recipes do not set it; first_record: config.json has recorded it from its first
    version on (a record without it is damaged); axis: a grid may take several values of it
    (each run one), a folder level <name>_<value> apiece (the data it reads, its speed and its
    outputs may not)."""

    report: Any
    help: str
    flag: dict = field(default_factory=dict)
    group: str = "training"
    binds: bool = True
    in_run: bool = True
    shown: Shown | None = None
    needs: str | None = None
    shortens: Callable[[Any, Any], bool] | None = None
    default: str | None = None
    axis: bool = True
    first_record: bool = False  # every config.json has held it, since the first
    name: str = ""  # the field's: SETTINGS fills it in


def declare(report: Any, help: str, flag: dict | None = None, **how: Any) -> Any:
    """A field of Settings with its declaration (the arguments of Setting, but its name)."""
    return field(metadata={"setting": Setting(report, help, flag or {}, **how)})


@dataclass(frozen=True, kw_only=True)
class Settings:
    """One run's settings, each a typed attribute declared once here: its field's metadata is
    the Setting (flag, help, the report's value, ...) that everything else derives from. In a
    run, learning_rate is the run's one rate; amp is as given (auto or a switch)."""

    epoch: int = declare(
        50,
        "epochs to train",
        {"type": bounded(int, 1, False, 100_000, True)},
        in_run=False,  # Run.epochs: a checkpoint binds it only under one-cycle (see checkpoints)
        shortens=lambda given, recipe: given < recipe,
        first_record=True,
    )
    learning_rate: float = declare(
        [1e-3],
        "one or more learning rates (the peak rate with one-cycle), or LOW:HIGH:N for N "
        "rates log-spaced from LOW to HIGH (1e-5:1e-1:9)",
        {"type": learning_rates, "nargs": "+"},
        group="common",
        in_run=False,  # a grid's axis: each Run has one, Run.lr
        axis=False,  # an axis of its own, lr_<rate>/ (its list type reads LOW:HIGH:N)
        first_record=True,
    )
    batch_size: int = declare(
        128,
        "images per batch",
        {"type": bounded(int, 1, False, 2**20, True)},
        group="common",
        shortens=lambda given, recipe: given > recipe,
        first_record=True,
    )
    limit: int | None = declare(
        None,
        "use only the first N training and test images",
        {"type": bounded(int, 1, False)},
        group="common",
        shortens=lambda given, recipe: given is not None,
        default="all",
        axis=False,  # the data read once for the grid
        first_record=True,
    )
    optimizer: str = declare(
        "adam",
        "adam, the report's, adapts each weight's step to its gradients' history; sgd is the "
        "control that does not: SGD with heavy-ball momentum 0.9 (the momentum of most SGD "
        "baselines; one-cycle cycles it 0.95-0.85 as it cycles Adam's beta1), no Nesterov, the "
        "weight decay decoupled as Adam's",
        {"choices": tuple(OPTIMIZER_NAMES)},  # optim.OPTIMIZERS makes them
        group="held_out",
    )
    lr_schedule: str = declare(
        "constant",
        "learning rate per batch",
        {"choices": ("constant", "onecycle")},
        shown=Shown("schedule", "line"),
        first_record=True,
    )
    label_smoothing: float = declare(
        0.0,
        "label smoothing of the training loss",
        {"type": bounded(float, 0, False, 1)},
        shown=Shown("schedule", "line", number),
        first_record=True,
    )
    weight_decay: float = declare(
        0.0,
        "decoupled weight decay (AdamW's): each step also shrinks every weight by lr*WD of itself",
        {"type": bounded(float, 0, False, 1), "metavar": "WD"},
        shown=Shown("schedule", "changed", number),
    )
    val_split: int = declare(
        0,
        "hold out the last N training images for validation: model.pth is then the epoch with "
        "the lowest validation loss and the test set chooses nothing (10000: the classic "
        "50,000/10,000 split); 0 keeps the report's rule, the lowest test loss; --lr_find "
        "leaves them out",
        {"type": bounded(int, 0, False)},
        group="held_out",
        axis=False,  # the data read once for the grid
        shown=Shown(
            "selection",
            "opens",
            lambda value, run, sizes: (
                f"{value}  validation images: {sizes.get('val', 0)}  model.pth: {run.rule}"
            ),
        ),
        shortens=lambda given, recipe: given > recipe,
        first_record=True,
    )
    augment: bool = declare(
        False,
        "distort each training image by a small random rotation, scale, shear and shift "
        "(augment.py), drawn from (seed, epoch)",
        SWITCH,
        shown=Shown("augment", "opens"),
    )
    distortion: float = declare(
        1.0,
        "with --augment, S times its largest distortions (1: rotation 10 degrees, scale 10%%, "
        "shear 0.1, shift 2 pixels)",
        {"type": bounded(float, 0, True, 4, True), "metavar": "S"},
        shown=Shown("augment", "changed", number),
        needs="augment",
    )
    elastic: float = declare(
        0.0,
        "with --augment, also displace each training image's pixels by a smooth random field "
        "(Simard et al. 2003: uniform noise smoothed by a Gaussian of 4 pixels, times ALPHA "
        "pixels); 0 is off",
        {"type": bounded(float, 0, False, 100, True), "metavar": "ALPHA"},
        shown=Shown("augment", "changed", number),
        needs="augment",
    )
    clean_epochs: int = declare(
        0,
        "with --augment, the last K epochs train on undistorted images, as the test's are",
        {"type": bounded(int, 0, False, 100_000, True), "metavar": "K"},
        shown=Shown("augment"),
        needs="augment",
    )
    ema: float = declare(
        0.0,
        "evaluate and save an exponential moving average of the weights and batch-norm buffers "
        "with this decay per step; 0 is off",
        {"type": bounded(float, 0, False, 1), "metavar": "DECAY"},
        shown=Shown(
            "augment",
            "opens",
            lambda value, run, sizes: f"{value:g}  model.pth holds {run.weights}",
        ),
    )
    last_epoch_fraction: float = declare(
        1.0,
        "the last epoch trains on this share of its shuffled batches (the schedule ends with it)",
        {"type": bounded(float, 0, True, 1, True), "metavar": "F"},
        shown=Shown(
            "fraction",
            "opens",
            lambda value, run, sizes: (
                f"{value:g} (the last epoch trains on that share of its shuffled batches)"
            ),
        ),
        shortens=lambda given, recipe: given < recipe,
    )
    keep: str = declare(
        "lowest",
        "which epoch model.pth holds: lowest, the epoch of the lowest selection loss (validation "
        "with --val_split, else the test loss: the report's rule), or last, the last epoch (the "
        "test set then chooses nothing, even without a split; with --val_split 0 every training "
        "image trains)",
        {"choices": ("lowest", "last")},
        shown=Shown("selection", "opens", None),  # the line's model.pth names the rule
    )
    patience: int | None = declare(
        None,
        "stop a run once its selection loss (validation, or test without --val_split) has not "
        "improved for K epochs",
        {"type": bounded(int, 1, False)},
        binds=False,  # a resumed run may stop earlier or later
        shown=Shown("selection", "opens", lambda value, run, sizes: f"{value or 'off'}"),
        default="never",
        first_record=True,
    )
    amp: bool | str = declare(
        False,
        "bfloat16 autocast (fp16 on older GPUs; auto, the recipes': where the CPU or GPU does "
        "it natively)",
        {**SWITCH, "type": switch_or_auto},
        group="common",
        binds=False,
        in_run=False,  # resolved per device into Run.speed
        axis=False,
        first_record=True,
    )
    tensorboard: bool = declare(
        False,
        "write TensorBoard's event file into each run folder, derived from its metrics.csv "
        "and config.json: the epoch's scalars, and one HParams session of the settings against "
        "the results under each selection rule (with --summarize: for finished runs; needs the "
        "tensorboard package)",
        SWITCH,
        group="events",
        binds=False,  # no number depends on it: a resume may add or drop it
        default="off",
        axis=False,
    )
    figure: bool = declare(
        True,
        "draw figure.png, loss and accuracy per epoch, when a run ends (about a second: "
        "matplotlib)",
        SWITCH,
        binds=False,  # no number depends on it
        axis=False,
    )


SETTINGS = tuple(
    dataclasses.replace(f.metadata["setting"], name=f.name) for f in dataclasses.fields(Settings)
)
BY_NAME = {s.name: s for s in SETTINGS}
REPORT = {s.name: s.report for s in SETTINGS}  # the report's recipe
IN_RUN = tuple(s.name for s in SETTINGS if s.in_run)
AXES = tuple(s.name for s in SETTINGS if s.axis)  # settings a grid may vary besides rate, seed


def level_pattern(s: Setting) -> str:
    """The folder names of an axis's values, as a pattern: optimizer_(adam|sgd), ema_0.999."""
    if "choices" in s.flag:
        return f"{s.name}_(?:{'|'.join(map(re.escape, s.flag['choices']))})"
    if s.flag.get("type") is str2bool:
        return f"{s.name}_(?:true|false)"
    return rf"{s.name}_[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"


AXIS_LEVELS = tuple(level_pattern(s) for s in SETTINGS if s.axis)
BINDING = tuple(s.name for s in SETTINGS if s.in_run and s.binds)


def in_run(settings: Settings) -> dict:
    """The settings a run records under their own names (IN_RUN), in declaration order."""
    return {name: getattr(settings, name) for name in IN_RUN}


HEADER_LINES = ("schedule", "selection", "augment", "fraction")  # model.log's, in this order


def header_line(line: str, values: dict, run: Any, sizes: dict) -> str | None:
    """One of model.log's setting lines, from the settings declared on it; None when it is not
    shown (none of the settings that open it differs from the report's value)."""
    members = [s for s in SETTINGS if s.shown and s.shown.line == line]
    changed = {s.name for s in members if values[s.name] != s.report}
    if not any(s.shown.when == "line" for s in members) and not any(
        s.shown.when == "opens" for s in members if s.name in changed
    ):
        return None
    parts = [
        f"{s.name}: {s.shown.text(values[s.name], run, sizes)}"
        for s in members
        if s.shown.text is not None and (s.shown.when != "changed" or s.name in changed)
    ]
    return "  ".join(parts)


# ---------------------------------------------------------------- a grid's axes


class GridError(ValueError):
    """A grid the flags describe that cannot be trained (parse_args says so as a usage error)."""


def take_axes(args: argparse.Namespace) -> dict[str, list]:
    """Each setting given several values is an axis of the grid (rate and seed have their own);
    its first value stays the one the other modes read. Refused: a setting that cannot vary, a
    value given twice, two values that would share a folder."""
    axes = {}
    for s in SETTINGS:
        values = getattr(args, s.name)
        if s.name == "learning_rate" or not isinstance(values, list):
            continue
        values = values or [True]  # a switch given alone: --augment
        if len(values) > 1:
            if not s.axis:
                others = ", ".join(f"--{a}" for a in AXES)
                raise GridError(
                    f"--{s.name} takes one value: a grid varies --learning_rate, --seed and "
                    f"{others}"
                )
            if len(set(values)) < len(values):
                raise GridError(f"a value of --{s.name} is given twice; give each value once")
            named: dict[str, object] = {}
            for value in values:
                other = named.setdefault(axis_folder(s.name, value), value)
                if other != value:
                    raise GridError(
                        f"--{s.name} {other} and {value} would share the folder "
                        f"{axis_folder(s.name, value)}; give values that differ there"
                    )
            axes[s.name] = values
        setattr(args, s.name, values[0])
    return axes


def grid_size(args: argparse.Namespace) -> int:
    """The runs the flags describe: rates x seeds x every further axis's values."""
    return len(args.learning_rate) * len(args.seed) * math.prod(map(len, args.axes.values()))


# ---------------------------------------------------------------- as config.json records them


def since_first() -> list[str]:
    """The keys every config.json has held since its first version."""
    return [*(record_key(s.name) for s in SETTINGS if s.first_record), *RECORDED_SINCE_FIRST]


def idle_at_report(values: dict) -> dict:
    """A run's settings with those whose switch is off at the report's value: they shape
    nothing there (a grid crossing --augment false and true: its runs without it)."""
    return {
        name: BY_NAME[name].report
        if BY_NAME[name].needs and not values[BY_NAME[name].needs]
        else value
        for name, value in values.items()
    }


def record_key(name: str) -> str:
    """A setting's key in config.json (the epochs count is recorded as "epochs")."""
    return "epochs" if name == "epoch" else name


def accepts(s: Setting, value: object) -> bool:
    """Whether a value, as config.json records it, is one the setting's flag would take."""
    if value is None:
        return s.report is None
    if isinstance(value, (list, dict)):
        return False
    choices, parse = s.flag.get("choices"), s.flag.get("type")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        if choices:
            return value in choices
        parsed = parse(text) if parse else value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return parsed == ([value] if s.name == "learning_rate" else value)


def recorded_settings(config: dict) -> dict[str, object]:
    """The settings a config.json records, by name (a setting it predates at the report's
    value, as the run trained then); ValueError naming its unknown keys or a value out of
    bounds."""
    known = {record_key(s.name) for s in SETTINGS} | set(RECORD_KEYS)
    unknown = [key for key in config if key not in known]
    if unknown:
        raise ValueError(f"unknown keys {', '.join(map(repr, unknown))}")
    missing = [key for key in since_first() if key not in config]
    if missing:
        raise ValueError(f"no {', '.join(missing)}, which every config.json has held")
    settings = {s.name: config.get(record_key(s.name), s.report) for s in SETTINGS}
    for s in SETTINGS:
        if not accepts(s, settings[s.name]):
            value = repr(settings[s.name])[:40]
            raise ValueError(f"{record_key(s.name)} is {value}, not a value of --{s.name}")
    return settings
