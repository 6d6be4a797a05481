"""A grid's orchestration, around the one run that main.py's train() trains: every (seed, rate)
planned as a Run with its folder, the runs listed for a job array, this worker's share, each
folder checked before anything trains and then made and locked in its turn, the resume command
(kept in a script when too long to print), the short-schedule warning, diverged runs recorded as
results, and the grid's summary handed to the caller's function at the end. What trains a run,
reads the data and summarizes comes in as callables: this module knows no model.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from mnist_cnn.files import RECORD, folder_lock, open_gate, prepare_out_dir, write_text
from mnist_cnn.interrupts import StopFlag, UserError, stop_on_signals
from mnist_cnn.runformat import (
    COMPARE,
    RATES,
    RESULTS,
    RESUME_SCRIPT,
    RUNS,
    TRAINING_WRITES,
    batches_per_epoch,
    grid_member,
    grid_runs,
    lr_folder,
    schedule_steps,
    value_text,
)
from mnist_cnn.settings import AXIS_LEVELS, SETTINGS, Settings, grid_size, idle_at_report
from mnist_cnn.training.checkpoints import Start, start_mode
from mnist_cnn.training.epochs import Diverged
from mnist_cnn.training.runrecord import Run, Speed
from mnist_cnn.training.workers import Worker, command_line, resume_command

if TYPE_CHECKING:
    import torch

log = logging.getLogger("mnist_cnn")

LONGEST_HINT = 1000  # characters of a resume command printed as it is; a longer one goes to a file
TRAIN_IMAGES = 60_000  # MNIST's training file, which the recipes were tuned on


class TrainOne(Protocol):
    """main.py's train(): one run into its folder, from scratch or from its checkpoint."""

    def __call__(
        self, run: Run, loaders: dict, device: torch.device, stop: StopFlag, resume: bool = ...
    ) -> Run: ...


def combinations(args: argparse.Namespace) -> list[dict[str, object]]:
    """Every combination of the further axes' values (one empty one without axes)."""
    names = list(args.axes)
    return [dict(zip(names, values)) for values in itertools.product(*args.axes.values())]


def named_folder(args: argparse.Namespace) -> Path | None:
    """The folder the command names with --out_dir; else runs/<recipe>/ for a recipe other than
    the report's and runs/ for a grid over seeds or another setting. None: the card's own
    layout, lr_<rate>/ in the working folder (one rate, or a sweep of rates with one seed)."""
    if args.out_dir:
        return Path(args.out_dir)
    if args.recipe != "report":
        return RUNS / args.recipe
    return RUNS if len(args.seed) > 1 or args.axes else None


def run_folder(
    args: argparse.Namespace, seed: int, lr: float, combination: dict[str, object] | None = None
) -> Path:
    """A run's folder: the named one (else lr_<rate>/) for a single run, and
    <named>/[<setting>_<value>/...][seed<k>/]lr_<rate>/ in a grid. The other modes read their
    model.pth there."""
    if grid_size(args) == 1:
        return named_folder(args) or Path(lr_folder(lr))
    seeded = seed if len(args.seed) > 1 else None
    return grid_member(named_folder(args) or Path("."), seeded, lr, combination)


def summary_folder(args: argparse.Namespace) -> Path:
    """Where a grid's summary and its resume script go: the named folder; for the card's sweep
    of rates, runs/sweep/ (its lr_<rate>/ folders are the card's; results.md is not, and a grid
    over seeds keeps its own in runs/)."""
    return named_folder(args) or RUNS / "sweep"


def resume_script(args: argparse.Namespace) -> Path:
    """Where a grid keeps a resume command too long to print (10,000 seeds: 49 KB)."""
    return summary_folder(args) / RESUME_SCRIPT


def resume_hint(args: argparse.Namespace) -> str:
    """What a stopped run or grid tells people to type: the resume command, or for a long one
    the script that holds it (written by run_grid once the data has been read)."""
    command = resume_command(args.argv)
    if len(command) <= LONGEST_HINT:
        return command
    return f"bash {shlex.quote(str(resume_script(args)))}"


def plan_runs(args: argparse.Namespace, amp: bool) -> list[Run]:
    """Every combination of the axes' values, seed and learning rate as a Run with its folder
    (the further axes outermost, as their folder levels)."""
    speed = Speed(amp, args.channels_last, args.compile)
    command, hint = command_line(args.argv), resume_hint(args)  # one string for all the runs
    given = {s.name: getattr(args, s.name) for s in SETTINGS if s.name != "learning_rate"}
    return [
        Run(
            settings=Settings(**idle_at_report({**given, **combination, "learning_rate": lr})),
            folder=run_folder(args, seed, lr, combination),
            seed=seed,
            speed=speed,
            recipe=args.recipe,
            command=command,
            resume_command=hint,
        )
        for combination in combinations(args)
        for seed in args.seed
        for lr in args.learning_rate
    ]


def with_settings(args: argparse.Namespace, run: Run) -> argparse.Namespace:
    """The flags as one run of the grid has them (its value of each axis)."""
    return argparse.Namespace(**{**vars(args), **dataclasses.asdict(run.settings)})


def short_schedule(args: argparse.Namespace, recipe: dict, per_epoch: int) -> str | None:
    """A warning where a recipe's one-cycle schedule gets fewer optimizer steps than the recipe
    was tuned for (it warms up and anneals within them; the accuracy may fall far short)."""
    if args.lr_schedule != "onecycle" or recipe["lr_schedule"] != "onecycle":
        return None
    tuned_per_epoch = batches_per_epoch(TRAIN_IMAGES - recipe["val_split"], recipe["batch_size"])
    tuned = schedule_steps(recipe["epoch"], recipe["last_epoch_fraction"], tuned_per_epoch)
    steps = schedule_steps(args.epoch, args.last_epoch_fraction, per_epoch)
    if steps >= tuned:
        return None
    flags = [
        f"--{s.name}"
        for s in SETTINGS
        if s.shortens and s.shortens(getattr(args, s.name), recipe[s.name])
    ]
    why = f"{', '.join(flags)} made it shorter" if flags else "fewer training images than MNIST's"
    return (
        f"--recipe {args.recipe}'s one-cycle schedule was tuned for {tuned:,} optimizer steps; "
        f"this run has {steps:,} ({why}), so it may end far below the recipe's accuracy."
    )


def varying(run: Run, args: argparse.Namespace) -> str:
    """The settings of a run that vary in its grid, as name value pairs: batch_size 64, seed 1."""
    pairs = [(name, getattr(run.settings, name)) for name in args.axes]
    pairs += [("seed", run.seed)] * (len(args.seed) > 1)
    pairs += [("learning_rate", run.lr)] * (len(args.learning_rate) > 1)
    return ", ".join(f"{name} {value_text(value)}" for name, value in pairs)


def list_runs(runs: Sequence[Run], args: argparse.Namespace) -> None:
    """--list_runs: each run's index (for --run_index), folder and the settings that vary in
    the grid, and the array to ask for."""
    for k, run in enumerate(runs):
        print(f"{k}  {run.folder}  {varying(run, args)}".rstrip())
    last = len(runs) - 1
    if not last:
        print("1 run: no job array needed; the same command without --list_runs trains it")
        return
    print(f"{len(runs)} runs: a job array of indices 0-{last} (sbatch --array=0-{last})")


def refuse_another_grid(runs: Sequence[Run], folder: Path, allowed: bool) -> None:
    """A grid's folder holds its own runs: one holding runs of another grid (other values of
    an axis) is refused unless resumed or overwritten, so that no summary mixes two grids."""
    ours = {run.folder.resolve() for run in runs}
    others = [f for f in grid_runs(folder, AXIS_LEVELS) if f.resolve() not in ours]
    if others and not allowed:
        raise UserError(
            f"{folder} holds runs of another grid ({others[0]}"
            + (f" and {len(others) - 1} more" if len(others) > 1 else "")
            + "): train this one into another --out_dir, or add --resume to go on with that "
            "grid's runs beside it."
        )


def refuse_linked_levels(folder: Path, top: Path) -> None:
    """A grid writes its runs in place: no level between its folder and a run's (an axis's,
    seed<k>/, lr_<rate>/) may be a symbolic link out of it."""
    for level in [folder, *folder.parents]:
        if level == top or not level.is_relative_to(top):
            return
        if level.is_symlink():
            raise UserError(
                f"{level} is a symbolic link (to {os.readlink(level)}): a grid writes its runs "
                "in place, never through a link. Remove the link, or train elsewhere with "
                "--out_dir."
            )


def refuse_run_index_under_torchrun(args: argparse.Namespace, worker: Worker) -> None:
    """--run_index is one job array task: one process, never torchrun's workers."""
    if args.run_index is not None and worker.world > 1:
        raise UserError("--run_index trains one run: start it without torchrun (one task each).")


def run_grid(
    args: argparse.Namespace,
    recipe: dict,
    worker: Worker,
    device: torch.device,
    amp: bool,
    load: Callable[[], dict],
    train: TrainOne,
    summarize: Callable[[list[Path], Path], object],
) -> list[Run]:
    """Train this worker's share of the grid with `train`, the data read by `load` first; rank
    0 then summarizes the whole grid. With --run_index, one run of it, as a job array's task
    (--summarize collects the grid)."""
    runs = plan_runs(args, amp)
    if args.list_runs:
        if worker.rank == 0:
            list_runs(runs, args)
        return []
    task = args.run_index is not None  # one run of a job array; --summarize collects them
    chosen = [runs[args.run_index]] if task else runs
    mine = chosen[worker.rank :: worker.world]  # a fixed share: the same runs after a restart
    resume = args.resume or task  # a task may run again (a requeue): it goes on, or says done
    summary_dir = summary_folder(args)
    summarizes = len(runs) > 1 and not task
    # the grid's folder: its summary and resume.sh, each replaced only where this tool wrote
    # it (a resumed grid's own) or with --overwrite; refused before hours of training, not after
    grid_gate = open_gate(summary_dir, args.overwrite)
    if resume:
        grid_gate.advice = (
            "--resume replaces only the summary files it wrote: move that one out of the "
            "folder, and the grid writes its own again."
        )
    if summarizes:
        grid_gate.claim([RESULTS, COMPARE, RATES])
        refuse_another_grid(runs, summary_dir, args.resume or args.overwrite or task)
    worker.join(device)
    restarted = worker.restarts > 0
    with stop_on_signals() as stop:
        loaders = load()  # the data first: a bad --data_dir or --val_split leaves no folder
        if worker.rank == 0:  # each schedule of the grid's once (an axis may shorten some)
            images = len(loaders["train"].labels)
            warnings = {
                short_schedule(
                    with_settings(args, run),
                    recipe,
                    batches_per_epoch(images, run.settings.batch_size),
                )
                for run in runs
            }
            for warning in sorted(filter(None, warnings)):
                log.warning(warning)
        for run in mine:  # refuse what could not start before anything trains; make nothing
            refuse_linked_levels(run.folder, summary_dir)
            gate = open_gate(run.folder, args.overwrite)
            if run.folder.is_dir():
                gate.claim_in_place(TRAINING_WRITES)
                if start_mode(run.folder, resume, args.overwrite, restarted) is Start.FRESH:
                    gate.claim(TRAINING_WRITES)
        if runs[0].resume_command != resume_command(args.argv) and worker.rank == 0:
            script = resume_script(args)
            grid_gate.claim([RESUME_SCRIPT])
            prepare_out_dir(script.parent)
            write_text(script, f"#!/bin/sh\n{resume_command(args.argv)}\n")
        table_shown = worker.rank > 0  # the first worker's console shows the layer table
        for k, run in enumerate(mine, 1):  # each run's folder made and locked in its turn
            run.place = (k, len(mine))
            stop.check(run.resume_command)  # a signal during the last run's final writes
            prepare_out_dir(run.folder)
            with folder_lock(run.folder):
                for name in (*TRAINING_WRITES, RECORD):  # a kill during a write left it
                    for leftover in run.folder.glob(f".{name}.*.tmp"):
                        if leftover.is_file() and not leftover.is_symlink():
                            leftover.unlink()
                start = start_mode(run.folder, resume, args.overwrite, restarted)
                run.table_shown, table_shown = table_shown, table_shown or start is Start.FRESH
                try:
                    train(run, loaders, device, stop, resume=start is Start.RESUME)
                except Diverged as e:
                    if len(runs) == 1:
                        raise UserError(e.advice(run)) from None
                    # in a grid a diverged run is a result (the rate is too high): record, go on
                    log.warning("%s: %s; the grid goes on with its other runs", run.folder, e)
        stop.check(runs[0].resume_command)
    worker.wait_for_all()
    if summarizes and worker.rank == 0:
        with stop_on_signals() as stop:
            stop.deferred = True  # results.md and compare.png are finished before stopping
            summarize([run.folder for run in runs], summary_dir)
            stop.check(runs[0].resume_command)
    return mine
