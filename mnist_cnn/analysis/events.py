"""TensorBoard's view of a run folder (--tensorboard): one event file per run, runformat.EVENTS,
derived from the run's metrics.csv and config.json alone. Per epoch (the step): every column of
metrics.csv, the learning rate of the epoch's last step (metrics.csv's lr column; computed from
config.json for runs that predate it) and the results so far under each selection rule; one
HParams session per run: config.json's settings, ended once the run has finished. Because the
file is a function of those two files, it holds each epoch exactly once however the run was
stopped and resumed, and --summarize writes the same file for runs trained without the flag.
Its bytes for epochs 1..k are a prefix of those for 1..k+1, so an epoch is appended (a running
TensorBoard follows it); anything else replaces the file atomically.

TensorBoard (torch.utils.tensorboard and the optional tensorboard package) loads only where an
event file is written: training hands refresh_events to its epochs as a callable.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_cnn.analysis.readback import checked_number, read_config, read_run
from mnist_cnn.analysis.rules import RunResult, highest_accuracy, lowest_loss
from mnist_cnn.files import gate_of
from mnist_cnn.runformat import CONFIG, EVENTS, LR, METRICS, epoch_rates, load_config
from mnist_cnn.settings import REPORT

if TYPE_CHECKING:
    from tensorboard.compat.proto.summary_pb2 import Summary

log = logging.getLogger("mnist_cnn")

# config.json's entries that are no setting of the run
NOT_HPARAMS = ("command", "started", "commit", "dirty", "torchvision", "numpy")
RULES = {  # each rule's epoch over the epochs so far, as results.md's three rules pick them
    "lowest_loss": lowest_loss,
    "highest_accuracy": highest_accuracy,
    "last_epoch": lambda r: r.last,
}


def tag(column: str) -> str:
    """A metrics.csv column as a TensorBoard tag, grouped by measure: train_loss -> loss/train,
    test_loss_report -> loss_report/test, seconds -> seconds, lr -> learning_rate."""
    if column == LR.name:
        return "learning_rate"
    split, _, measure = column.partition("_")
    return f"{measure}/{split}" if measure else column


def recorded_settings(folder: Path) -> dict:
    """config.json as written (older folders: the settings model.log's header names)."""
    path = folder / CONFIG
    return load_config(path) if path.is_file() else read_config(folder)


def hparams_of(config: dict) -> dict:
    """The run's settings for HParams: config.json's single values."""
    # a yes/no setting as text: as a number HParams would show true as 1
    return {
        k: str(v).lower() if isinstance(v, bool) else v
        for k, v in config.items()
        if k not in NOT_HPARAMS and isinstance(v, (bool, int, float, str))
    }


def learning_rates(r: RunResult, config: dict, folder: Path) -> list[float]:
    """The rate of each epoch's last optimizer step: metrics.csv's lr column, or for runs that
    predate it, computed from config.json (its schedule's settings checked first)."""
    if r.rows and LR.name in r.rows[0]:
        return [row[LR.name] for row in r.rows]
    # a setting the folder's config.json predates trained with the report's value
    return epoch_rates({**REPORT, **config}, len(r.rows), folder / CONFIG)


def epoch_summary(r: RunResult, epoch: int, lr: float) -> Summary:
    """Epoch `epoch`'s scalars: its metrics.csv row, its rate, each rule's pick so far."""
    row = r.rows[epoch - 1]
    so_far = dataclasses.replace(r, rows=r.rows[:epoch])
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard.summary import scalar

    values = {tag(k): v for k, v in row.items() if k not in ("epoch", "saved", LR.name)}
    values[tag(LR.name)] = lr
    for name, pick in RULES.items():
        chosen = pick(so_far)
        if chosen is not None:
            values[f"rule/{name}/epoch"] = chosen["epoch"]
            values[f"rule/{name}/test_acc"] = chosen["test_acc"]
    # float32, as TensorBoard's fast loader reads scalars (it skips float64 ones): a value read
    # back is metrics.csv's rounded to float32
    summaries = [scalar(k, float(v)) for k, v in values.items()]
    return Summary(value=[value for s in summaries for value in s.value])


def in_fixed_order(summary: Summary) -> Summary:
    """An HParams summary whose settings are serialized in one order: protobuf writes a map in
    its hash table's order, which differs from process to process, so each resume would find
    a file that is no prefix of its own and replace it instead of appending."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    for value in summary.value:
        data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
        value.metadata.plugin_data.content = data.SerializeToString(deterministic=True)
    return summary


def event_bytes(folder: Path) -> bytes:
    """The whole event file of a run folder, from its metrics.csv and config.json."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    from torch.utils.tensorboard.summary import hparams

    r, config = read_run(folder), recorded_settings(folder)
    started = config.get("started")  # folders from before it was recorded count from 1970
    wall = (
        0.0 if started is None else checked_number(config, "started", float, 1e11, folder / CONFIG)
    )
    _, start_info, end_info = map(in_fixed_order, hparams(hparams_of(config), {}))
    out = io.BytesIO()
    writer = RecordWriter(out)

    def record(step: int, **fields: object) -> None:
        event = Event(wall_time=wall, step=step, **fields)
        writer.write(event.SerializeToString(deterministic=True))

    record(0, file_version="brain.Event:2")
    record(0, summary=start_info)
    rates = learning_rates(r, config, folder)
    for epoch, row in enumerate(r.rows, 1):
        wall += row["seconds"]
        record(epoch, summary=epoch_summary(r, epoch, rates[epoch - 1]))
    if r.finished and r.diverged is None:
        record(len(r.rows), summary=end_info)
    return out.getvalue()


def write_events(folder: Path, data: bytes | None = None) -> Path:
    """Bring the run's event file up to date with its metrics.csv and config.json (`data`, where
    its bytes were made beforehand): append what is new where the file holds a prefix of it,
    else replace it whole."""
    gate, path = gate_of(folder), folder / EVENTS
    gate.check(EVENTS, replaces=False)
    data = event_bytes(folder) if data is None else data
    old = gate.read(EVENTS)
    if old is not None and data.startswith(old) and data != old:
        gate.append(EVENTS, data[len(old) :])
    else:
        gate.write(EVENTS, data)
    return path


def refresh_events(folder: Path, wanted: bool) -> None:
    """Keep a run's event file equal to its metrics.csv and config.json: written where wanted
    (--tensorboard), and kept up to date wherever the folder holds one (a resume without the
    flag), or removed where TensorBoard is not installed to do so."""
    path = folder / EVENTS
    if not (wanted or path.exists()) or not (folder / METRICS).is_file():
        return
    if importlib.util.find_spec("tensorboard") is None:  # the flag itself is refused without it
        gate_of(folder).remove(EVENTS)
        log.warning(
            "%s: removed %s, which TensorBoard is not installed here to bring up to date "
            "(pip install tensorboard; --summarize %s --tensorboard writes it again)",
            folder,
            EVENTS,
            folder,
        )
        return
    write_events(folder)
