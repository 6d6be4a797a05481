"""--tensorboard: each run's event file, read back with TensorBoard's own reader and server, holds
every metrics.csv value once per epoch and one HParams session per run, however the run was
stopped and resumed; --summarize writes the same file for runs trained without the flag."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, cast

import numpy as np
import pytest
from browser import free_port
from cli import modules_after, run_python, start_cli, stopped_in_epoch, wait_for_epochs
from paths import EXPERIMENTS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

import main
from mnist_cnn import files, runformat
from mnist_cnn.analysis import events, readback

GRID = ["--learning_rate", "1e-3", "5e-4", "--seed", "0", "1", "--epoch", "3"]
RUNS = ["seed0/lr_1e-3", "seed0/lr_5e-4", "seed1/lr_1e-3", "seed1/lr_5e-4"]


def read_events(folder: Path) -> EventAccumulator:
    """A run folder's events as TensorBoard's reader loads them, every value kept."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_session(acc: EventAccumulator) -> tuple[dict, int | None]:
    """The run's HParams settings, and its end status (None: not ended)."""
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    settings = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.hparams.items()
    }
    end = content.get(hparams_metadata.SESSION_END_INFO_TAG)
    status = hparams_metadata.parse_session_end_info_plugin_data(end).status if end else None
    return settings, status


def assert_events_equal_metrics(folder: Path) -> EventAccumulator:
    """Every metrics.csv column is a scalar with one value per epoch, equal to the file's value
    at float32 (TensorBoard's precision)."""
    acc = read_events(folder)
    rows = runformat.read_metrics_csv(folder / "metrics.csv")
    for column in rows[0]:
        if column in ("epoch", "saved"):
            continue
        found = acc.Scalars(events.tag(column))
        assert [e.step for e in found] == [row["epoch"] for row in rows], column
        assert [e.value for e in found] == [float(np.float32(row[column])) for row in rows], column
    return acc


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A 2-rate x 2-seed grid trained with --tensorboard."""
    out = tmp_path_factory.mktemp("tb") / "grid"
    assert (
        main.main([*GRID, "--data_dir", str(tiny_data), "--out_dir", str(out), "--tensorboard"])
        == 0
    )
    return out


def test_every_run_of_a_grid_has_its_epochs_and_its_hparams_session(grid: Path) -> None:
    for name in RUNS:
        folder = grid / name
        acc = assert_events_equal_metrics(folder)
        config = json.loads((folder / "config.json").read_text())
        assert [e.value for e in acc.Scalars("learning_rate")] == [
            float(np.float32(config["learning_rate"]))
        ] * 3
        settings, status = hparams_session(acc)
        assert settings["learning_rate"] == config["learning_rate"]
        assert settings["seed"] == config["seed"] and settings["recipe"] == "report"
        assert settings["batch_size"] == 128 and settings["augment"] == "false"
        assert "command" not in settings and status == api_pb2.STATUS_SUCCESS
        run = readback.read_run(folder)
        lowest = acc.Scalars("rule/lowest_loss/epoch")[-1]
        assert (lowest.step, lowest.value) == (3, run.best["epoch"])
        last = acc.Scalars("rule/last_epoch/test_acc")[-1].value
        assert last == float(np.float32(run.last["test_acc"]))


def test_summarize_writes_the_same_event_files_and_changes_nothing_else(
    grid: Path, tmp_path: Path
) -> None:
    written = {name: (grid / name / runformat.EVENTS).read_bytes() for name in RUNS}
    copy = tmp_path / "grid"
    subprocess.run(["cp", "-r", str(grid), str(copy)], check=True)
    for name in RUNS:
        (copy / name / runformat.EVENTS).unlink()
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.rglob("*") if p.is_file()}
    argv = ["--summarize", str(copy), "--out_dir", str(tmp_path / "summary"), "--tensorboard"]
    assert main.main(argv) == 0
    for name in RUNS:
        assert (copy / name / runformat.EVENTS).read_bytes() == written[name]
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.rglob("*") if p.is_file()}
    assert {p: d for p, d in after.items() if p.name != runformat.EVENTS} == before


class Killed(BaseException):
    """A kill -9 in-process: no handler of main's catches it."""


@pytest.mark.parametrize("epoch", [2, 3])
def test_a_stop_between_the_checkpoint_and_the_event_file_leaves_no_gap_and_no_twin(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch: int
) -> None:
    # the worst moment of a kill -9: the epoch is checkpointed and in metrics.csv, not yet in
    # the events; the resumed run does not train it again (after the last: trains nothing),
    # yet the events hold it, once
    out = tmp_path / "run"
    flags = ["--epoch", "3", "--data_dir", str(tiny_data), "--out_dir", str(out), "--tensorboard"]
    real = events.refresh_events

    def killed_in_epoch_2(folder: Path, wanted: bool) -> None:
        if len(runformat.read_metrics_csv(folder / "metrics.csv")) == epoch:
            raise Killed  # nothing catches it: the files stay as a kill leaves them
        real(folder, wanted)

    monkeypatch.setattr(events, "refresh_events", killed_in_epoch_2)
    with pytest.raises(Killed):
        main.main(flags)
    assert len(read_events(out).Scalars("loss/train")) == epoch - 1
    assert len(runformat.read_metrics_csv(out / "metrics.csv")) == epoch
    monkeypatch.setattr(events, "refresh_events", real)
    assert main.main([*flags, "--resume"]) == 0
    acc = assert_events_equal_metrics(out)
    assert [e.step for e in acc.Scalars("loss/test")] == [1, 2, 3]
    assert hparams_session(acc)[1] == api_pb2.STATUS_SUCCESS


def test_an_event_file_ahead_of_metrics_csv_is_replaced(grid: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    subprocess.run(["cp", "-r", str(grid / RUNS[0]), str(folder)], check=True)
    rows = (folder / "metrics.csv").read_text().splitlines()
    (folder / "metrics.csv").write_text("\n".join(rows[:-1]) + "\n")  # as if epoch 3 was lost
    files.open_gate(folder, overwrite=False)  # the event file is this tool's (its record says)
    events.write_events(folder)
    acc = assert_events_equal_metrics(folder)
    assert [e.step for e in acc.Scalars("acc/test")] == [1, 2]


def test_a_sigterm_and_a_resume_give_each_epoch_once(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    flags = ["--epoch", "3", "--data_dir", str(tiny_data), "--out_dir", str(out), "--tensorboard"]
    with stopped_in_epoch(monkeypatch, 3):
        assert main.main(flags) == 143
    assert hparams_session(read_events(out))[1] is None  # not ended: it goes on
    assert main.main([*flags, "--resume"]) == 0
    acc = assert_events_equal_metrics(out)
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3]
    assert hparams_session(acc)[1] == api_pb2.STATUS_SUCCESS


def killed_in_epoch_2(flags: list[str], out: Path) -> None:
    """Train with --tensorboard and kill -9 in epoch 2, once epoch 1's files (its event file
    last) are written."""
    proc = start_cli(*flags, "--out_dir", str(out), "--tensorboard")
    wait_for_epochs(out, 1, proc)
    deadline = time.time() + 30
    while not (out / runformat.EVENTS).is_file() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # 256 batches an epoch: epoch 2 has begun, not ended
    proc.wait()


@pytest.mark.slow
def test_kill_9_in_epoch_2_of_3_then_resume_holds_each_epoch_once(
    medium_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    flags = ["--epoch", "3", "--batch_size", "4", "--data_dir", str(medium_data)]
    killed_in_epoch_2(flags, out)
    assert len(runformat.read_metrics_csv(out / "metrics.csv")) == 1
    assert main.main([*flags, "--out_dir", str(out), "--resume", "--tensorboard"]) == 0
    acc = assert_events_equal_metrics(out)
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3]


@pytest.fixture
def with_events(tiny_data: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A 2-epoch run trained with --tensorboard, and the flags that name its data and folder."""
    out = tmp_path / "run"
    flags = ["--data_dir", str(tiny_data), "--out_dir", str(out)]
    assert main.main([*flags, "--epoch", "2", "--tensorboard"]) == 0
    return out, flags


def without_tensorboard(argv: list[str]) -> subprocess.CompletedProcess:
    """main.py as a script in a fresh interpreter where the tensorboard package cannot load."""
    return run_python(
        "import sys, runpy; sys.modules['tensorboard'] = None; "
        f"sys.argv = ['main.py', *{argv!r}]; runpy.run_path('main.py', run_name='__main__')"
    )


def test_a_resume_without_the_flag_keeps_the_event_file_up_to_date(
    with_events: tuple[Path, list[str]],
) -> None:
    out, flags = with_events
    assert main.main([*flags, "--epoch", "3", "--resume"]) == 0
    acc = assert_events_equal_metrics(out)
    assert [e.step for e in acc.Scalars("loss/train")] == [1, 2, 3]


def test_a_run_started_afresh_without_the_flag_leaves_no_earlier_event_file(
    with_events: tuple[Path, list[str]],
) -> None:
    out, flags = with_events
    assert main.main([*flags, "--epoch", "1", "--overwrite"]) == 0
    assert not (out / runformat.EVENTS).exists()


def test_without_the_package_a_resume_removes_the_event_file_it_cannot_update(
    with_events: tuple[Path, list[str]],
) -> None:
    out, flags = with_events
    result = without_tensorboard([*flags, "--epoch", "3", "--resume"])
    assert result.returncode == 0, result.stderr
    assert f"removed {runformat.EVENTS}, which TensorBoard is not installed here" in result.stdout
    assert not (out / runformat.EVENTS).exists()
    assert len(runformat.read_metrics_csv(out / "metrics.csv")) == 3


def test_without_the_tensorboard_package_the_flag_is_refused_in_one_line(tmp_path: Path) -> None:
    result = without_tensorboard(["--tensorboard", "--out_dir", str(tmp_path)])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.endswith(
        "error: --tensorboard needs the tensorboard package: pip install tensorboard (see --help)\n"
    )
    assert result.stderr.count("\n") == 1 and not list(tmp_path.iterdir())


def test_a_run_without_the_flag_never_loads_tensorboard(tiny_data: Path, tmp_path: Path) -> None:
    code, loaded = modules_after(
        ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]
    )
    assert code == 0 and "torch" in loaded
    assert not {m for m in loaded if "tensorboard" in m}
    assert not (tmp_path / runformat.EVENTS).exists()


def test_other_modes_refuse_the_flag(capsys: pytest.CaptureFixture) -> None:
    argv = ["--test", "true", "--tensorboard"]
    assert main.main(argv) == 2
    assert "--tensorboard only works when training or with --summarize" in capsys.readouterr().err


def get_json(url: str, body: dict | None = None) -> object:
    """A TensorBoard API answer (a POST with a JSON body where one is given)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_the_real_tensorboard_server_lists_the_runs_their_scalars_and_hparams(grid: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(grid), "--host", "127.0.0.1"]
        + ["--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline, runs = time.time() + 90, []
        while time.time() < deadline and sorted(runs) != RUNS:
            time.sleep(0.5)
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                runs = get_json(f"{base}/runs")
                series = get_json(f"{base}/plugin/scalars/scalars?run={RUNS[0]}&tag=loss/test")
                runs = runs if len(series) == 3 else []
            except OSError:
                runs = []
        assert sorted(runs) == RUNS
        rows = runformat.read_metrics_csv(grid / RUNS[0] / "metrics.csv")
        assert [(step, value) for _, step, value in series] == [
            (row["epoch"], float(np.float32(row["test_loss"]))) for row in rows
        ]
        statuses = ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"]
        body = {"allowedStatuses": statuses, "startIndex": 0, "sliceSize": 100}
        groups = get_json(f"{base}/plugin/hparams/session_groups", body)
        assert groups["totalSize"] == 4
        by_name = {g["name"]: g for g in groups["sessionGroups"]}
        assert sorted(by_name) == RUNS
        group = by_name["seed1/lr_5e-4"]
        assert group["hparams"]["learning_rate"] == 5e-4 and group["hparams"]["seed"] == 1
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        last = readback.read_run(grid / "seed1/lr_5e-4").last
        assert metrics["acc/test"] == float(np.float32(last["test_acc"]))
        experiment = get_json(f"{base}/plugin/hparams/experiment", {"experimentName": ""})
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"learning_rate", "seed", "recipe", "batch_size", "lr_schedule"} <= names
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_fresh_run_stopped_before_its_first_epoch_writes_no_event_file_from_an_earlier_run(
    trained: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the folder's metrics.csv is the earlier run's until this one finishes an epoch
    flags = ["--data_dir", str(tiny_data), "--out_dir", str(trained), "--learning_rate", "5e-4"]
    with stopped_in_epoch(monkeypatch, 1):
        assert main.main([*flags, "--overwrite", "--tensorboard"]) == 143
    assert not (trained / runformat.EVENTS).exists()


def test_a_committed_run_older_than_last_epoch_fraction_gets_its_rates_from_the_schedule(
    tmp_path: Path,
) -> None:
    folder = Path(shutil.copytree(EXPERIMENTS / "search" / "A" / "seed0", tmp_path / "A0"))
    config = json.loads((folder / "config.json").read_text())
    assert "last_epoch_fraction" not in config and config["lr_schedule"] == "onecycle"
    assert main.main(["--summarize", str(folder), "--tensorboard", "--out_dir", str(tmp_path)]) == 0
    rates = [e.value for e in read_events(folder).Scalars("learning_rate")]
    expected = runformat.epoch_rates(
        {**config, "last_epoch_fraction": 1.0}, config["epochs"], Path("config.json")
    )
    assert rates == [float(np.float32(lr)) for lr in expected]


def test_an_event_file_has_the_same_bytes_in_every_process() -> None:
    """HParams' settings are a protobuf map, written in hash order unless asked otherwise: each
    process wrote other bytes, so a resume replaced the file instead of appending to it."""
    folder = EXPERIMENTS / "study" / "seed0" / "lr_1e-3"
    probe = (
        "import hashlib, sys; from pathlib import Path; from mnist_cnn.analysis import events; "
        "print(hashlib.sha256(events.event_bytes(Path(sys.argv[1]))).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", probe, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            cwd=EXPERIMENTS.parent,
        ).stdout
        for _ in range(4)
    }
    assert len(digests) == 1
    assert digests == {hashlib.sha256(events.event_bytes(folder)).hexdigest() + "\n"}


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda c: c.update(batch_size=0), "batch_size is 0, not a value of --batch_size"),
        (lambda c: c.update(batch_size="big"), "batch_size is 'big', not a value of --batch_size"),
        (lambda c: c.pop("train_images"), "no train_images, which every config.json has held"),
        (lambda c: c.pop("epochs"), "no epochs, which every config.json has held"),
        (lambda c: c.update(started="noon"), "started is 'noon', not a number above 0"),
    ],
)
def test_summarize_tensorboard_refuses_a_damaged_record_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture, damage, said: str
) -> None:
    """An older one-cycle run (no lr column: its rates come from config.json's schedule)."""
    run = tmp_path / "run"
    shutil.copytree(EXPERIMENTS / "search" / "A" / "seed0", run)
    config = json.loads((run / "config.json").read_text())
    damage(config)
    (run / "config.json").write_text(json.dumps(config))
    argv = ["--summarize", str(run), "--out_dir", str(tmp_path / "s"), "--tensorboard"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and f"{run / 'config.json'}" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists() and not (run / runformat.EVENTS).exists()


def scalar_steps(base: str, run: str, tag: str) -> list[int]:
    """The steps a running TensorBoard shows for one run's tag (none while it has not loaded)."""
    try:
        series = get_json(f"{base}/plugin/scalars/scalars?run={run}&tag={tag}")
    except OSError:  # not up yet, or the run not loaded yet (400)
        return []
    return [step for _, step, _ in cast(list, series)]


def wait_for_steps(server: subprocess.Popen, base: str, wanted: list[int]) -> None:
    """Poll the server until it shows `wanted` as the run's epochs (60 s at most)."""
    deadline, shown = time.time() + 60, []
    while time.time() < deadline and shown != wanted:
        time.sleep(0.5)
        assert server.poll() is None, cast(IO[bytes], server.stderr).read().decode()[-2000:]
        shown = scalar_steps(base, ".", "loss/test")
    assert shown == wanted


@pytest.mark.slow
def test_a_running_tensorboard_follows_a_run_across_a_kill_9_and_a_resume(
    medium_data: Path, tmp_path: Path
) -> None:
    """The event file grows by appending, so TensorBoard, never restarted, shows each epoch once."""
    out = tmp_path / "run"
    flags = ["--epoch", "3", "--batch_size", "4", "--data_dir", str(medium_data)]
    killed_in_epoch_2(flags, out)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(out), "--host", "127.0.0.1"]
        + ["--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data"
    try:
        wait_for_steps(server, base, [1])
        assert main.main([*flags, "--out_dir", str(out), "--resume"]) == 0  # without the flag
        wait_for_steps(server, base, [1, 2, 3])
    finally:
        server.terminate()
        server.wait(timeout=30)
