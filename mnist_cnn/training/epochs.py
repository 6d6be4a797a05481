"""The epoch loop's bookkeeping around main.py's train(): a run's start (header and config.json)
or its restore from a checkpoint, the progress bar, one epoch committed (commit_epoch: weights,
row, checkpoint, files, in the order that makes a kill safe), a diverged loss stopped, and the
run's outcome (finished, stopped by a signal, diverged) written into its files however the loop
ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
import torch.nn as nn
from tqdm import tqdm

from mnist_cnn.files import write_text
from mnist_cnn.interrupts import Interrupted
from mnist_cnn.runformat import CONFIG, EVENTS, FIGURE, MODEL, recorded_divergence
from mnist_cnn.training.checkpoints import (
    Trainable,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from mnist_cnn.training.runrecord import (
    Metrics,
    Run,
    closing_summary,
    final_outputs_missing,
    log_header,
    record_divergence,
    record_resume,
    render_log,
    run_config_json,
    write_epoch_files,
    write_run_files,
)

log = logging.getLogger("mnist_cnn")


class Tallied(Protocol):
    """A running tally of a pass (main's Tally): its Metrics so far."""

    def result(self) -> Metrics: ...


class Diverged(Exception):
    """A loss became infinite or NaN: training cannot recover."""

    def advice(self, run: Run) -> str:
        """What the user reads: what happened, what model.pth holds, what to try."""
        return (
            f"{self}. model.pth keeps the best epoch so far ({run.best_epoch or 'none'}). "
            "Try a lower --learning_rate."
        )


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
    if not run.settings.figure:  # an earlier run's figure (--overwrite) is not this one's
        (run.folder / FIGURE).unlink(missing_ok=True)
    if not run.settings.tensorboard:  # nor its TensorBoard events
        (run.folder / EVENTS).unlink(missing_ok=True)
    write_text(run.folder / CONFIG, run_config_json(run, device, sizes))
    log.info("%s", render_log(run).rstrip())


Refresh = Callable[[Run], None]  # what follows a run's files: its TensorBoard file (main's)


def restore_run(run: Run, t: Trainable, device: torch.device, refresh: Refresh) -> bool:
    """Restore a run from its checkpoint and return whether it had already finished (then its
    missing final outputs, if a stop during its last writes left any, are written now)."""
    restore_checkpoint(run, t)
    run.diverged = recorded_divergence(run.folder)
    if not run.finished:
        record_resume(run, device)
        log.info("%s: resuming after epoch %d of %d", run.folder, run.done, run.epochs)
        return False
    how = f" (stopped early: patience {run.settings.patience})" if run.stopped_early else ""
    if run.diverged:
        how = f" (stopped: diverged in epoch {run.diverged})"
    done = "nothing to do."
    if not run.diverged and final_outputs_missing(run):
        write_run_files(run, closing_summary(run))
        done = f"wrote its missing {'figure.png and ' if run.settings.figure else ''}log summary."
    refresh(run)  # a kill during its last epoch's writes may have left its event file behind
    log.info(
        "%s: already finished %d of %d epochs%s; %s", run.folder, run.done, run.epochs, how, done
    )
    return True


def commit_epoch(
    run: Run, t: Trainable, judged: nn.Module, row: dict, began: float, lr: float, refresh: Refresh
) -> None:
    """Make a finished epoch part of the run, in the order that keeps a kill harmless: a
    diverged loss stops the run (nothing of the epoch kept); model.pth where the epoch is
    chosen; its row; the checkpoint, before the epoch's files, so that a kill between them
    loses no epoch; model.log and metrics.csv; then what follows them (TensorBoard's file)."""
    check_finite(run, row)
    saved = run.take_if_chosen(row)
    if saved:
        save_weights(judged, run.folder / MODEL)
    run.record(row, time.perf_counter() - began, saved, lr)
    save_checkpoint(run, t)
    write_epoch_files(run)
    refresh(run)


def check_finite(run: Run, row: dict) -> None:
    """Stop a diverged run: a non-finite loss would never recover."""
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        loss = row.get(f"{split}_loss", 0.0)
        if not math.isfinite(loss):
            raise Diverged(
                f"The {name} loss became {loss} in epoch {row['epoch']} "
                f"at learning rate {run.lr:g}: training diverged"
            )


@contextlib.contextmanager
def outcome_recorded(run: Run, refresh: Refresh) -> Iterator[None]:
    """Around the epoch loop: however it ends (finished, stopped by a signal, diverged), the
    run's model.log says so, and metrics.csv and figure.png (if it draws one) are complete."""
    try:
        yield
    except Interrupted:
        write_run_files(
            run, [f"interrupted after epoch {run.done}; resume with: {run.resume_command}"]
        )
        refresh(run)  # metrics.csv may have got its last row just now
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
        run.folder / MODEL,
        " and figure.png" if run.settings.figure else " (no figure.png: --figure true draws it)",
    )
