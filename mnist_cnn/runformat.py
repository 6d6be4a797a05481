"""The run folder's format, which training writes and the analysis reads: the files a run folder
holds, how a run's and a grid member's folder is named, the epoch table's columns (model.log's
text and metrics.csv), config.json written and read, and the schedule's arithmetic (steps per
epoch, the one-cycle rate at a step, the rate each epoch ended at).

A leaf: the standard library and the project's one error type, nothing of training/, analysis/
or use/, so that both rooms can build on it without leaning on each other. Every damaged file is
one paragraph naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_cnn.interrupts import UserError

# ---------------------------------------------------------------- the files of a run folder

MODEL = "model.pth"  # the chosen epoch's weights
LOG = "model.log"  # header, epoch table, closing summary
METRICS = "metrics.csv"  # the epoch table
CONFIG = "config.json"  # every setting, where it ran, resumes and divergence
CHECKPOINT = "checkpoint.pth"  # what --resume continues from
FIGURE = "figure.png"  # loss and accuracy per epoch
EVENTS = "events.out.tfevents.mnist_cnn"  # TensorBoard's view of the run (analysis/events.py)
TEST_LOG = "test.log"  # test mode's report beside the model
TRAINING_WRITES = (MODEL, CHECKPOINT, LOG, METRICS, CONFIG, FIGURE, EVENTS)  # in a run folder
# what every config.json has held since the first besides the settings that say so (settings.py)
RECORDED_SINCE_FIRST = ("seed", "recipe", "train_images", "test_images")
# config.json's keys besides the settings' (the epochs are the setting epoch's): how and where
# the run ran, and what became of it
RECORD_KEYS = (
    "epochs", "seed", "recipe", "compile", "channels_last", "selection", "model.pth",
    "train_images", "val_images", "test_images", "device", "device_name", "cpu_capability",
    "threads", "torch", "python", "commit", "dirty", "torchvision", "numpy", "command",
    "started", "resumes", "diverged",
)  # fmt: skip
RESUME_SCRIPT = "resume.sh"  # a grid's resume command too long to print
# a summary's files (--summarize, and a grid's folder when it ends)
RESULTS, COMPARE, RATES = "results.md", "compare.png", "rates.png"

# ---------------------------------------------------------------- folder names

# where every default output but the card's own lr_<rate>/ folders goes (git-ignored): a grid
# over seeds, a recipe's run, a range test, a summary; the clone itself stays as committed
RUNS = Path("runs")
SUMMARY, LR_FIND = RUNS / "summary", RUNS / "lr_find"

LR_PREFIX, SEED_PREFIX = "lr_", "seed"  # a grid's folders: [<axis>_<v>/...][seed<k>/]lr_<rate>/


def lr_folder(lr: float) -> str:
    """Folder name for a learning rate: mantissa-exponent, three significant digits at most,
    no trailing zeros (5e-4, 3.16e-5)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{LR_PREFIX}{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def value_text(value: object) -> str:
    """A setting's value as a folder name and a group's name show it: 0.1, 64, true, sgd."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.15g}" if isinstance(value, float) else str(value)  # 0.1, 1e-05, 0.999


def axis_folder(name: str, value: object) -> str:
    """The folder level of one value of a grid's axis other than rate and seed: batch_size_64."""
    return f"{name}_{value_text(value)}"


def grid_runs(folder: Path, levels: Sequence[str]) -> list[Path]:
    """The run folders inside a grid's folder: each lr_<rate>/ holding a model.log, under any
    levels seed<k>/ and `levels` (patterns of the axes' <setting>_<value>/ folders)."""
    level = re.compile("|".join([rf"{SEED_PREFIX}\d+", *levels]))
    return sorted(
        log.parent
        for log in Path(folder).rglob(LOG)
        if log.parent.name.startswith(LR_PREFIX)
        and all(level.fullmatch(part) for part in log.relative_to(folder).parts[:-2])
    )


def grid_member(
    parent: Path, seed: int | None, lr: float, axes: dict[str, object] | None = None
) -> Path:
    """A grid's run folder: <parent>/[<setting>_<value>/...][seed<k>/]lr_<rate>/ (no seed part
    for a one-seed sweep; a level per further axis, in the settings' order)."""
    levels = [axis_folder(name, value) for name, value in (axes or {}).items()]
    seeded = f"{SEED_PREFIX}{seed}" if seed is not None else ""
    return parent.joinpath(*levels, seeded, lr_folder(lr))


# ---------------------------------------------------------------- the epoch table

LOSS_NOTE = (
    "loss = mean per-sample cross-entropy; loss_report = summed batch means / images, "
    "the lab report's column (about loss / batch_size)"
)


@dataclass(frozen=True)
class Column:
    """One column of the epoch table: model.log's text, metrics.csv and the results tables."""

    name: str
    width: int
    fmt: str
    parse: Callable[[str], Any]


def fraction(text: str) -> float:
    """An accuracy: a number from 0 to 1 (NaN where an epoch diverged), else ValueError."""
    value = float(text)
    if not 0 <= value <= 1 and not math.isnan(value):
        raise ValueError(f"{text!r} is not a fraction from 0 to 1")
    return value


COLUMNS = (
    Column("epoch", 5, "d", int),
    Column("train_loss", 10, ".6f", float),
    Column("train_acc", 9, ".4f", fraction),
    Column("test_loss", 9, ".6f", float),
    Column("test_acc", 8, ".4f", fraction),
    Column("train_loss_report", 17, ".8f", float),
    Column("test_loss_report", 16, ".8f", float),
    Column("seconds", 7, ".1f", float),
    Column("saved", 5, "", str),
)
# with a validation split, its two columns follow the training ones
VAL_COLUMNS = (
    *COLUMNS[:3],
    Column("val_loss", 9, ".6f", float),
    Column("val_acc", 8, ".4f", fraction),
    *COLUMNS[3:],
)


def positive_float(text: str) -> float:
    """A finite number above 0 (a learning rate), else ValueError."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


# the rate of the epoch's last optimizer step: metrics.csv's last column since it was added
# (model.log's table leaves it out; runs begun before it go on without it)
LR = Column("lr", 12, ".8g", positive_float)
TABLE_HEADERS = ([c.name for c in COLUMNS], [c.name for c in VAL_COLUMNS])
CSV_HEADERS = (*TABLE_HEADERS, *([*h, LR.name] for h in TABLE_HEADERS))


def columns_of(row: dict) -> tuple[Column, ...]:
    """model.log's columns for rows like this one (with or without validation)."""
    return VAL_COLUMNS if "val_loss" in row else COLUMNS


def csv_columns_of(row: dict) -> tuple[Column, ...]:
    """metrics.csv's columns for rows like this one: model.log's, and the rate where recorded."""
    return (*columns_of(row), LR) if LR.name in row else columns_of(row)


def selection_loss(row: dict) -> float:
    """The loss that chooses model.pth: validation loss, else the report's test loss."""
    return row["val_loss"] if "val_loss" in row else row["test_loss"]


def table_header(cols: Sequence[Column]) -> str:
    """The log table's header line."""
    return "  ".join(f"{c.name:>{c.width}}" for c in cols)


def format_row(row: dict) -> str:
    """One epoch's line of the log table."""
    return "  ".join(f"{row[c.name]:>{c.width}{c.fmt}}" for c in columns_of(row))


def metrics_csv(rows: Sequence[dict]) -> str:
    """metrics.csv: the epoch table as CSV, formatted as in model.log so the two agree."""
    cols = csv_columns_of(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.name for c in cols])
    writer.writerows([[f"{row[c.name]:{c.fmt}}" for c in cols] for row in rows])
    return buffer.getvalue()


def parse_row(fields: Sequence[str], cols: Sequence[Column], where: str) -> dict:
    """The inverse of format_row (and of a metrics.csv row): exactly the columns' fields, each
    of its column's type (NaN and inf are numbers here: a diverged epoch); else one line."""
    if len(fields) != len(cols):
        raise UserError(
            f"{where} has {len(fields)} fields, not the header's {len(cols)}: the file is "
            "damaged. Restore it (model.log holds the same table) or train the run again."
        )
    row = {}
    for c, v in zip(cols, fields):
        try:
            row[c.name] = c.parse(v)
        except ValueError:
            what = (
                "an accuracy from 0 to 1"
                if c.parse is fraction
                else "a positive rate"
                if c.parse is positive_float
                else "a number"
            )
            raise UserError(
                f"{where} holds {c.name} {v[:20]!r}, not {what}: the file is damaged. Restore "
                "it or train the run again."
            ) from None
    return row


def checked_rows(rows: list[dict], path: Path) -> list[dict]:
    """Rows whose epochs count 1, 2, 3, ...: anything else is not one run's table."""
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise UserError(f"{path}: its epochs do not count 1, 2, 3, ...: the file is damaged.")
    return rows


def read_metrics_csv(path: Path) -> list[dict]:
    """The rows of a metrics.csv, every field checked (one line naming the file otherwise)."""
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header not in CSV_HEADERS:
                raise UserError(f"{path} is not a metrics.csv written by this tool (other header).")
            cols = VAL_COLUMNS if "val_loss" in header else COLUMNS
            cols = (*cols, LR) if LR.name in header else cols
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


# ---------------------------------------------------------------- config.json


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


def config_text(config: dict) -> str:
    """config.json's text: the settings as an indented JSON object."""
    return json.dumps(config, indent=2) + "\n"


def recorded_divergence(folder: Path) -> int | None:
    """The epoch config.json says the run diverged in, if any."""
    path = folder / CONFIG
    diverged = load_config(path).get("diverged") if path.is_file() else None
    epoch = diverged.get("epoch") if isinstance(diverged, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


# ---------------------------------------------------------------- the schedule


def batches_per_epoch(images: int, batch_size: int) -> int:
    """Training batches in a full epoch: the last one may be short."""
    return math.ceil(images / batch_size)


def epoch_batches(epoch: int, epochs: int, fraction: float, per_epoch: int) -> int:
    """Training batches in one epoch of a run: all of them, the last epoch's share in the last."""
    return per_epoch if epoch < epochs else max(1, math.ceil(fraction * per_epoch))


def schedule_steps(epochs: int, fraction: float, per_epoch: int) -> int:
    """Optimizer steps of a run of `epochs` epochs whose last trains on `fraction` of them."""
    return sum(epoch_batches(e, epochs, fraction, per_epoch) for e in range(1, epochs + 1))


def one_cycle(step: int, total: int, peak: float) -> tuple[float, float]:
    """Learning rate and momentum (Adam's beta1, SGD's momentum) for the step after `step` steps
    of a `total`-step run: torch's OneCycleLR with its defaults, same arithmetic (warm up over
    30% from peak/25 while the momentum falls 0.95 -> 0.85, then cosine down to peak/25e4 while
    it climbs back)."""
    start, end = peak / 25, peak / 25 / 1e4
    warmup_end = float(0.3 * total) - 1
    if step <= warmup_end:
        pct, rates, betas = step / warmup_end, (start, peak), (0.95, 0.85)
    else:
        pct, rates, betas = (
            (step - warmup_end) / (total - 1 - warmup_end),
            (peak, end),
            (0.85, 0.95),
        )
    cos_out = math.cos(math.pi * pct) + 1
    lr, beta1 = (b + (a - b) / 2.0 * cos_out for a, b in (rates, betas))
    return lr, beta1


def epoch_rates(config: dict, epochs: int, where: Path) -> list[float]:
    """The rate of each epoch's last optimizer step, from config.json's settings (for runs whose
    metrics.csv predates its lr column): the one-cycle schedule as training stepped it, else
    the constant rate. Settings that cannot make a schedule are one line naming `where`."""
    lr = config["learning_rate"]
    if config.get("lr_schedule") != "onecycle":
        return [lr] * epochs
    try:
        per_epoch = batches_per_epoch(config["train_images"], config["batch_size"])
        planned, fraction = config["epochs"], config["last_epoch_fraction"]
        total = schedule_steps(planned, fraction, per_epoch)
        done, rates = 0, []
        for e in range(1, epochs + 1):
            done += epoch_batches(e, planned, fraction, per_epoch)
            rates.append(one_cycle(done - 1, total, lr)[0])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        missing = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise bad_config(where, f"its one-cycle schedule cannot be rebuilt: {missing}") from None
    return rates
