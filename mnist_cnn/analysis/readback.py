"""Finished runs read back for --summarize, through the run folder's format (runformat): each
run's settings checked (config.json's, or model.log's header for folders older than it), its
rows, its test count, the run folders found inside grid folders, and two folders of one run
refused. Every damaged file is one paragraph naming it; no torch: a summary reads CSV and JSON.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from mnist_cnn.analysis.rules import RunResult
from mnist_cnn.flagtypes import MAX_LEARNING_RATE, MAX_SEED
from mnist_cnn.interrupts import UserError
from mnist_cnn.runformat import (
    CONFIG,
    LOG,
    METRICS,
    SEED_PREFIX,
    TEST_LOG,
    bad_config,
    grid_runs,
    load_config,
    parse_log,
    read_log,
    read_metrics_csv,
    recorded_divergence,
    selection_loss,
    value_text,
)
from mnist_cnn.settings import (
    AXIS_LEVELS,
    OPTIMIZER_NAMES,
    SETTINGS,
    record_key,
    recorded_settings,
    since_first,
)


def checked_number(
    raw: dict, key: str, kind: type, high: float, where: Path, optional: bool = False
) -> int | float | None:
    """raw[key] as a finite `kind` in (0, high] (seeds: [0, high]), else one line naming it."""
    value = raw.get(key)
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and kind is int and isinstance(value, (int, float)):
        ok = float(value).is_integer() if isinstance(value, float) else value.bit_length() < 64
    low = 0 if key == "seed" else math.ulp(0)
    number = value if ok and isinstance(value, (int, float)) else None
    if number is None or not (math.isfinite(number) and low <= number <= high):
        shown = repr(value)[:40]
        if isinstance(value, int) and value.bit_length() > 64:  # str() of it may fail
            shown = f"a {value.bit_length()}-bit integer"
        raise bad_config(where, f"{key} is {shown}, not {number_range(kind, key == 'seed', high)}")
    return kind(value)


def number_range(kind: type, zero: bool, high: float) -> str:
    """What a checked number may be, in words: "a whole number from 1 to 2,147,483,648"."""
    if kind is int:
        return f"a whole number from {0 if zero else 1} to {int(high):,}"
    return f"a number above 0 and at most {high:g}"


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


def checked_optimizer(value: object, where: Path) -> str:
    """The optimizer as config.json names it (older folders trained with Adam)."""
    if value not in OPTIMIZER_NAMES:
        raise bad_config(
            where, f"optimizer is {repr(value)[:40]}, not one of {', '.join(OPTIMIZER_NAMES)}"
        )
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
        "optimizer": checked_optimizer(raw.get("optimizer", "adam"), where),
        "diverged": checked_number(diverged, "epoch", int, 100_000, where)
        if isinstance(diverged, dict)
        else None,
    }


def header_settings(folder: Path) -> dict:
    """For folders written before config.json existed: the settings in model.log's header."""
    header = read_log(folder / LOG)
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
        raise bad_config(folder / LOG, e) from None
    return checked_settings({"seed": 0, **raw}, folder / LOG)


def read_config(folder: Path) -> dict:
    """A run folder's settings for --summarize: config.json's, checked; model.log's header for
    folders written before it existed."""
    path = folder / CONFIG
    if not path.is_file():
        return header_settings(folder)
    raw = load_config(path)
    settings = checked_settings(raw, path)
    missing = [key for key in since_first() if key not in raw]
    if missing:
        raise bad_config(path, f"no {', '.join(missing)}, which every config.json has held")
    return settings


def run_name(folder: Path) -> str:
    """How tables name a run: seed<k>/lr_<rate> inside a grid, else the folder's name."""
    seeded = folder.parent.name.startswith(SEED_PREFIX)
    return f"{folder.parent.name}/{folder.name}" if seeded else folder.name


def read_run(folder: Path) -> RunResult:
    """A run folder's settings (config.json) and its rows (metrics.csv); whether it finished
    follows from them: all epochs done, stopped by patience, or diverged."""
    folder = Path(folder)
    config = read_config(folder)
    csv_path = folder / METRICS
    rows = read_metrics_csv(csv_path) if csv_path.is_file() else parse_log(folder / LOG)
    if not rows:
        raise UserError(f"{folder} has no finished epochs yet.")
    finite = [row for row in rows if math.isfinite(selection_loss(row))]
    # model.pth's epoch: the last, or the lowest selection loss (the first on ties, as training)
    best = rows[-1] if config["keep"] == "last" else min(finite or rows, key=selection_loss)
    epochs, patience = config["epochs"], config["patience"]
    early = patience is not None and len(rows) - best["epoch"] >= patience
    finished = not epochs or len(rows) >= epochs or early or config["diverged"] is not None
    misclassified, tested = test_log_count(folder / TEST_LOG)
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
        optimizer=config["optimizer"],
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
        if (path / LOG).exists() or not path.is_dir():
            found = [path]
        else:
            found = grid_runs(path, AXIS_LEVELS)
        for folder in found or [path]:  # an empty folder gets the usual "cannot read" message
            folders.setdefault(folder.resolve(), (folder, path))
    return dict(folders.values())


def diverged_at_once(folder: Path) -> bool:
    """Whether a run diverged before its first epoch ended: nothing to read back."""
    return not (folder / METRICS).is_file() and recorded_divergence(folder) == 1


# the settings that shape a run's numbers, by config.json's key (the epochs as "epochs")
SHAPING = {
    record_key(s.name): s
    for s in SETTINGS
    if s.name not in ("learning_rate", "tensorboard", "figure")
}


def shaping_settings(folder: Path, r: RunResult) -> dict[str, object]:
    """The settings that shaped a run's numbers: config.json's, the whole record checked as
    --config checks it (a setting it predates trained with the report's value); a folder from
    before config.json, its header's epochs and the report's values."""
    path = folder / CONFIG
    if not path.is_file():
        return {key: r.epochs if key == "epochs" else s.report for key, s in SHAPING.items()}
    try:
        recorded = recorded_settings(load_config(path))
    except ValueError as e:
        raise bad_config(path, e) from None
    return {key: recorded[s.name] for key, s in SHAPING.items()}


def name_by_settings(found: list[tuple[Path, Path, RunResult]]) -> None:
    """Where runs of one rate differ in a setting, each group is named by the settings that
    differ ("batch_size 64, label_smoothing 0.1"): runs that trained otherwise are never pooled
    into one group."""
    values = {folder: shaping_settings(folder, r) for folder, _, r in found}
    per_rate: dict[float, set[tuple]] = {}
    for folder, _, r in found:
        per_rate.setdefault(r.lr, set()).add(tuple(map(repr, values[folder].values())))
    if all(len(kinds) == 1 for kinds in per_rate.values()):
        return
    differs = tuple(k for k in SHAPING if len({repr(v[k]) for v in values.values()}) > 1)
    several = len({given for _, given, _ in found}) > 1
    # run folders given one by one (a grid's own summary) are named from where they part
    alone = [Path(os.path.abspath(f)) for f, given, _ in found if f == given]
    base = Path(os.path.commonpath(alone)) if len(alone) > 1 else None
    for folder, given, r in found:
        r.differs = differs
        r.setting = ", ".join(f"{k} {value_text(values[folder][k])}" for k in differs)
        first = str(given) if given != folder else ""  # a grid's own summary: runs given
        r.order = (first, *((v is None, v) for v in map(values[folder].get, differs)))
        # a grid's levels tell its runs apart; the folder given, where several were
        inside = folder != given and folder.is_relative_to(given)
        name = str(folder.relative_to(given)) if inside else folder.name
        if folder == given and base is not None:
            name = str(Path(os.path.abspath(folder)).relative_to(base))
        r.name = f"{given.name}/{name}" if several and not (folder == given and base) else name


def read_runs(folders: Sequence[Path]) -> tuple[list[RunResult], list[str]]:
    """Every run folder read back; runs that diverged before their first epoch ended are
    skipped, with the reason. Runs of one rate that trained with other settings are named by
    those settings; where two of the paths given still hold a run of one (rate, settings,
    seed), each run is named by the path given that holds it, so that the summary compares
    those paths; two runs of one (rate, seed) under one path given are refused."""
    found, skipped = [], []
    for folder, given in run_folders(folders).items():
        if diverged_at_once(folder):
            skipped.append(f"{folder} (diverged in epoch 1: no finished epoch)")
            continue
        found.append((folder, given, read_run(folder)))
    name_by_settings(found)
    # named: some (rate, settings, seed) lies under more than one path given
    keys = {(r.lr, r.setting, r.seed, given) for _, given, r in found}
    named = len(keys) > len({key[:3] for key in keys})
    first: dict[tuple[float, str, int], tuple[Path, RunResult]] = {}
    seen: dict[tuple[float, str, int], Path] = {}
    for folder, given, r in found:
        twin, twin_run = first.setdefault((r.lr, r.setting, r.seed), (folder, r))
        # the same rows to the second (the seconds column too) are a copy, never another setting
        if named and twin_run is not r and twin_run.rows == r.rows:
            raise UserError(duplicate_run(twin, folder, r))
        if named:  # tables name the run by its folder too: two seed0/lr_4e-3 would read alike
            if not r.differs:
                r.name = f"{given.name}/{r.name}"
            r.setting = ", ".join(filter(None, (r.setting, str(given))))
            r.order = (str(given), *r.order[1:])
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
