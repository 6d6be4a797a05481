"""TensorBoard's view of a run folder (--tensorboard): one event file per run, EVENT_FILE, derived
from the run's metrics.csv and config.json alone. Per epoch (the step): every column of
metrics.csv, the learning rate of the epoch's last step, and the results so far under each
selection rule; one HParams session per run: config.json's settings, ended once the run has
finished. Because the file is a function of those two files, it holds each epoch exactly once
however the run was stopped and resumed, and --summarize writes the same file for runs trained
without the flag. Its bytes for epochs 1..k are a prefix of those for 1..k+1, so an epoch is
appended (a running TensorBoard follows it); anything else replaces the file atomically.

Imports torch.utils.tensorboard (torch and the optional tensorboard package; only where
--tensorboard is given), readback, rules, runrecord, optim and files; never imports main.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import hparams, scalar

from mnist_cnn.analysis.readback import load_config, read_config, read_run
from mnist_cnn.analysis.rules import RunResult, highest_accuracy, lowest_loss
from mnist_cnn.files import atomic_write
from mnist_cnn.training.optim import one_cycle
from mnist_cnn.training.runrecord import EVENT_FILE, epoch_batches, schedule_steps

NOT_HPARAMS = ("command", "started")  # config.json's entries that are no setting of the run
RULES = {  # each rule's epoch over the epochs so far, as results.md's three rules pick them
    "lowest_loss": lowest_loss,
    "highest_accuracy": highest_accuracy,
    "last_epoch": lambda r: r.last,
}


def tag(column: str) -> str:
    """A metrics.csv column as a TensorBoard tag, grouped by measure: train_loss -> loss/train,
    test_loss_report -> loss_report/test, seconds -> seconds."""
    split, _, measure = column.partition("_")
    return f"{measure}/{split}" if measure else column


def recorded_settings(folder: Path) -> dict:
    """config.json as written (older folders: the settings model.log's header names)."""
    path = folder / "config.json"
    return load_config(path) if path.is_file() else read_config(folder)


def hparams_of(config: dict) -> dict:
    """The run's settings for HParams: config.json's single values."""
    # a yes/no setting as text: as a number HParams would show true as 1
    return {
        k: str(v).lower() if isinstance(v, bool) else v
        for k, v in config.items()
        if k not in NOT_HPARAMS and isinstance(v, (bool, int, float, str))
    }


def learning_rates(config: dict, epochs: int) -> list[float]:
    """The rate of each epoch's last optimizer step, from the settings: the one-cycle schedule
    steps as training stepped it (optim.one_cycle), else the constant rate."""
    lr = config["learning_rate"]
    if config.get("lr_schedule") != "onecycle":
        return [lr] * epochs
    per_epoch = -(-config["train_images"] // config["batch_size"])
    planned, fraction = config["epochs"], config["last_epoch_fraction"]
    total = schedule_steps(planned, fraction, per_epoch)
    done, rates = 0, []
    for e in range(1, epochs + 1):
        done += epoch_batches(e, planned, fraction, per_epoch)
        rates.append(one_cycle(done - 1, total, lr)[0])
    return rates


def epoch_summary(r: RunResult, epoch: int, lr: float) -> Summary:
    """Epoch `epoch`'s scalars: its metrics.csv row, its rate, each rule's pick so far."""
    row = r.rows[epoch - 1]
    so_far = dataclasses.replace(r, rows=r.rows[:epoch])
    values = {tag(k): v for k, v in row.items() if k not in ("epoch", "saved")}
    values["learning_rate"] = lr
    for name, pick in RULES.items():
        chosen = pick(so_far)
        if chosen is not None:
            values[f"rule/{name}/epoch"] = chosen["epoch"]
            values[f"rule/{name}/test_acc"] = chosen["test_acc"]
    # float32, as TensorBoard's fast loader reads scalars (it skips float64 ones): a value read
    # back is metrics.csv's rounded to float32
    summaries = [scalar(k, float(v)) for k, v in values.items()]
    return Summary(value=[value for s in summaries for value in s.value])


def event_bytes(folder: Path) -> bytes:
    """The whole event file of a run folder, from its metrics.csv and config.json."""
    r, config = read_run(folder), recorded_settings(folder)
    wall = config.get("started", 0.0)  # folders from before it was recorded count from 1970
    _, start_info, end_info = hparams(hparams_of(config), {})
    out = io.BytesIO()
    writer = RecordWriter(out)

    def record(step: int, **fields: object) -> None:
        writer.write(Event(wall_time=wall, step=step, **fields).SerializeToString())

    record(0, file_version="brain.Event:2")
    record(0, summary=start_info)
    rates = learning_rates(config, len(r.rows))
    for epoch, row in enumerate(r.rows, 1):
        wall += row["seconds"]
        record(epoch, summary=epoch_summary(r, epoch, rates[epoch - 1]))
    if r.finished and r.diverged is None:
        record(len(r.rows), summary=end_info)
    return out.getvalue()


def write_events(folder: Path) -> Path:
    """Bring the run's event file up to date with its metrics.csv and config.json: append what
    is new where the file holds a prefix of it, else replace it whole."""
    data, path = event_bytes(folder), folder / EVENT_FILE
    old = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    if old is not None and data.startswith(old):
        with open(path, "ab") as f:
            f.write(data[len(old) :])
            f.flush()
            os.fsync(f.fileno())
    elif old != data:
        atomic_write(path, data)
    return path
