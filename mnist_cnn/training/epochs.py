"""The epoch loop's bookkeeping around main.py's train(), which shows the order of an epoch: a
run's start (header and config.json) or its restore from a checkpoint, the progress bar, a
diverged loss stopped, and the run's outcome (finished, stopped by a signal, diverged) written
into its files however the loop ends.

Imports torch, tqdm, runrecord and checkpoints (of mnist_cnn.training); never imports main.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import sys
from collections.abc import Iterator
from typing import Protocol

import torch
from tqdm import tqdm

from mnist_cnn.analysis.readback import recorded_divergence
from mnist_cnn.files import write_text
from mnist_cnn.interrupts import Interrupted
from mnist_cnn.training.checkpoints import Trainable, restore_checkpoint
from mnist_cnn.training.runrecord import (
    EVENT_FILE,
    Metrics,
    Run,
    closing_summary,
    final_outputs_missing,
    log_header,
    record_divergence,
    record_resume,
    render_log,
    run_config_json,
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
    if not run.figure:  # an earlier run's figure (--overwrite) must not pass for this one's
        (run.folder / "figure.png").unlink(missing_ok=True)
    if not run.tensorboard:  # nor its TensorBoard events
        (run.folder / EVENT_FILE).unlink(missing_ok=True)
    write_text(run.folder / "config.json", run_config_json(run, device, sizes))
    log.info("%s", render_log(run).rstrip())


def resumed_finished(run: Run, t: Trainable, device: torch.device) -> bool:
    """Restore a run from its checkpoint; whether it had already finished (then its missing
    final outputs, if a stop during its last writes left any, are written now)."""
    restore_checkpoint(run, t)
    run.diverged = recorded_divergence(run.folder)
    if not run.finished:
        record_resume(run, device)
        log.info("%s: resuming after epoch %d of %d", run.folder, run.done, run.epochs)
        return False
    how = f" (stopped early: patience {run.patience})" if run.stopped_early else ""
    if run.diverged:
        how = f" (stopped: diverged in epoch {run.diverged})"
    done = "nothing to do."
    if not run.diverged and final_outputs_missing(run):
        write_run_files(run, closing_summary(run))
        done = f"wrote its missing {'figure.png and ' if run.figure else ''}log summary."
    refresh_events(run)  # a kill during its last epoch's writes may have left it behind
    log.info(
        "%s: already finished %d of %d epochs%s; %s", run.folder, run.done, run.epochs, how, done
    )
    return True


def refresh_events(run: Run) -> None:
    """Keep the run's event file equal to its metrics.csv and config.json: written with
    --tensorboard, and kept up to date wherever the folder holds one (a resume without the
    flag), or removed where TensorBoard is not installed to do so. mnist_cnn.analysis.events
    loads TensorBoard: imported only here."""
    path = run.folder / EVENT_FILE
    if not run.history or not (run.tensorboard or path.exists()):
        return
    if importlib.util.find_spec("tensorboard") is None:  # the flag itself is refused without it
        path.unlink()
        log.warning(
            "%s: removed %s, which TensorBoard is not installed here to bring up to date "
            "(pip install tensorboard; --summarize %s --tensorboard writes it again)",
            run.folder,
            EVENT_FILE,
            run.folder,
        )
        return
    from mnist_cnn.analysis.events import write_events

    write_events(run.folder)


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
def outcome_recorded(run: Run) -> Iterator[None]:
    """Around the epoch loop: however it ends (finished, stopped by a signal, diverged), the
    run's model.log says so, and metrics.csv and figure.png (if it draws one) are complete."""
    try:
        yield
    except Interrupted:
        write_run_files(
            run, [f"interrupted after epoch {run.done}; resume with: {run.resume_command}"]
        )
        refresh_events(run)  # metrics.csv may have got its last row just now
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
        run.folder / "model.pth",
        " and figure.png" if run.figure else " (no figure.png: --figure true draws it)",
    )
