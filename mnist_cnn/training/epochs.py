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

from mnist_cnn.files import gate_of, remove, write_text
from mnist_cnn.interrupts import Interrupted
from mnist_cnn.runformat import (
    CHECKPOINT,
    CONFIG,
    EVENTS,
    FIGURE,
    LOG,
    METRICS,
    MODEL,
    TRAINING_WRITES,
    recorded_divergence,
)
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
    provenance,
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
    """How far a run is, as people see it: in a terminal, tqdm's bar over the run's remaining
    batches (epoch k/N, the running loss and accuracy, the time left); elsewhere (nohup, CI
    logs) a line at a steady pace: at most every tenth of an epoch and never more often than
    every PACE seconds, `epoch 3/50  batch 188/469 (40%)  1.8 batch/s  2 min left`, with the
    run's place and the time left for this worker's runs in a grid."""

    EVERY = 50  # batches between refreshes of the bar's loss and accuracy: each costs a sync
    PACE = 5.0  # seconds at least between two progress lines in a log

    def __init__(
        self, run: Run, batches_per_epoch: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.run, self.count, self.clock = run, 0, clock
        self.per_epoch = batches_per_epoch
        self.left = sum(
            run.batches(e, batches_per_epoch) for e in range(run.done + 1, run.epochs + 1)
        )
        self.bar = tqdm(
            total=self.left,
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
        )
        self.epoch, self.in_epoch, self.began = 0, 0, clock()
        self.last_line, self.last_count = self.began, 0

    def epoch_started(self, epoch: int) -> None:
        """Show which epoch runs now."""
        self.bar.set_description(f"epoch {epoch}/{self.run.epochs}", refresh=False)
        self.epoch, self.in_epoch = epoch, 0

    def batch_done(self, tally: Tallied) -> None:
        """Advance the bar, refreshing loss and accuracy every EVERY batches; without a
        terminal, log a line where one is due."""
        self.bar.update()
        self.count += 1
        self.in_epoch += 1
        self.left -= 1
        if not self.bar.disable and self.count % self.EVERY == 0:
            m = tally.result()
            self.bar.set_postfix_str(f"loss {m.loss:.4f}  acc {100 * m.acc:.2f}%", refresh=False)
        if self.bar.disable:
            self.log_line_if_due()

    def log_line_if_due(self) -> None:
        """One progress line, once a tenth of an epoch and PACE seconds have passed."""
        now = self.clock()
        tenth = max(1, self.run.batches(self.epoch, self.per_epoch) // 10)
        if now - self.last_line < self.PACE or self.count - self.last_count < tenth:
            return
        self.last_line, self.last_count = now, self.count
        log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """`epoch 3/50  batch 188/469 (40%)  1.8 batch/s  2 min left`; in a grid the run's place
        first and the time left for this process's runs last. The rate counts evaluation too:
        it is what the time left needs."""
        rate = self.count / max(now - self.began, 1e-9)
        total = self.run.batches(self.epoch, self.per_epoch)
        k, n = self.run.place
        place = f"run {k}/{n}  " if n > 1 else ""
        text = (
            f"{place}epoch {self.epoch}/{self.run.epochs}  batch {self.in_epoch}/{total} "
            f"({100 * self.in_epoch // total}%)  {rate:.1f} batch/s  "
            f"{duration(self.left / rate)} left"
        )
        if n > k:  # the runs after this one train as many batches as it did
            later = (n - k) * sum(
                self.run.batches(e, self.per_epoch) for e in range(1, self.run.epochs + 1)
            )
            text += f" ({duration((self.left + later) / rate)} left for runs {k}-{n})"
        return text

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """Remove the bar from the terminal (before any closing message)."""
        self.bar.close()


def duration(seconds: float) -> str:
    """A time left as people say it: 40 s, 2 min, 1.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def begin_run(run: Run, device: torch.device, sizes: dict, model_table: str) -> None:
    """A fresh run: its log header and config.json, and the header on the console."""
    run.code = provenance()
    run.header = log_header(run, device, sizes, model_table)
    if not run.settings.figure:  # an earlier run's figure (--overwrite) is not this one's
        remove(run.folder / FIGURE)
    if not run.settings.tensorboard:  # nor its TensorBoard events
        remove(run.folder / EVENTS)
    write_text(run.folder / CONFIG, run_config_json(run, device, sizes))
    shown = render_log(run).rstrip()
    if run.table_shown:  # a grid's console shows the layer table once
        shown = shown.replace(model_table, "(layer table: in model.log)")
    log.info("%s", shown)


Refresh = Callable[[Run], None]  # what follows a run's files: its TensorBoard file (main's)


def restore_run(run: Run, t: Trainable, device: torch.device, refresh: Refresh) -> bool:
    """Restore a run from its checkpoint and return whether it had already finished (then its
    missing final outputs, if a stop during its last writes left any, are written now)."""
    restore_checkpoint(run, t)
    gate = gate_of(run.folder)  # what it may replace: its own files as it wrote them
    gate.adopt(TRAINING_WRITES)
    gate.advice = (
        "--resume replaces only the files it wrote: move that one out of the folder, and the "
        "run writes its own again."
    )
    run.diverged = recorded_divergence(run.folder)
    if not run.finished:
        gate.claim(TRAINING_WRITES)
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
    names = [MODEL, LOG, METRICS, CONFIG, CHECKPOINT]
    names += [FIGURE] if run.settings.figure else []
    names += [EVENTS] if (run.folder / EVENTS).is_file() else []
    log.info(
        "\n%s\nwrote %s: %s and %s%s",
        "\n".join(closing_summary(run)),
        run.folder,
        ", ".join(names[:-1]),
        names[-1],
        "" if run.settings.figure else " (no figure.png: --figure true draws it)",
    )
