"""Damaged checkpoints and models, odd values and special files: one clear line, nothing lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli import refused
from runs import before_records, metrics

import main


def resume(data: Path, folder: Path) -> list[str]:
    return ["--epoch", "3", "--data_dir", str(data), "--out_dir", str(folder), "--resume"]


@pytest.mark.parametrize("offset", [0.2, 0.4, 0.6, 0.8, 0.95])
def test_a_flipped_byte_in_the_checkpoint_is_refused_and_nothing_changes(
    tiny_data: Path, trained: Path, capsys: pytest.CaptureFixture, offset: float
) -> None:
    path = trained / "checkpoint.pth"
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset)
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    before = {
        name: (trained / name).read_bytes()
        for name in ("model.pth", "model.log", "metrics.csv", "checkpoint.pth")
    }
    refused(capsys, resume(tiny_data, trained), str(path))
    assert before == {name: (trained / name).read_bytes() for name in before}


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("history", [1, 2], "epoch history"),
        ("history", "rows", "epoch history"),
        ("header", 5, "log header is not text"),
        ("best_epoch", 7, "best epoch 7"),
        ("optimizer", {"state": {}}, "optimizer state"),
    ],
)
def test_wrong_typed_fields_are_refused_before_anything_is_written(
    tiny_data: Path,
    trained: Path,
    capsys: pytest.CaptureFixture,
    field: str,
    value: object,
    needle: str,
) -> None:
    path = trained / "checkpoint.pth"
    state = torch.load(path, weights_only=True)
    state[field] = value
    state.pop("sha256")  # as an older checkpoint (no checksum): the fields are still checked
    torch.save(state, path)
    model = (trained / "model.pth").read_bytes()
    refused(capsys, resume(tiny_data, trained), needle, "--overwrite")
    assert (trained / "model.pth").read_bytes() == model


def test_resume_writes_what_a_finished_run_left_undone(
    tiny_data: Path, trained: Path, capsys: pytest.CaptureFixture
) -> None:
    before_records(trained)  # a stop in its final writes, before records existed
    (trained / "figure.png").unlink()
    log = trained / "model.log"
    log.write_text(log.read_text().split("\nsummary\n")[0] + "\n")
    assert (
        main.main(
            ["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(trained), "--resume"]
        )
        == 0
    )
    assert "wrote its missing figure.png and log summary" in capsys.readouterr().out
    assert (trained / "figure.png").is_file() and "\nsummary\n" in log.read_text()
    assert len(metrics(trained)) == 2


def test_temp_files_left_by_a_kill_are_removed_at_the_next_start(
    tiny_data: Path, trained: Path
) -> None:
    (trained / ".model.log.abc123.tmp").write_text("half")
    assert main.main(resume(tiny_data, trained)) == 0
    assert not list(trained.glob(".*.tmp"))


@pytest.mark.parametrize(
    "mode", [["--test", "true"], ["--predict", "x.png"], ["--export", "m.onnx"]]
)
def test_a_path_too_long_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, mode: list[str]
) -> None:
    refused(capsys, [*mode, "--model_path", str(tmp_path / ("x" * 300))], "cannot be opened")


@pytest.mark.parametrize(
    "state, needle",
    [
        ({0: torch.zeros(3)}, "unexpected (0"),
        ("nan", "not finite"),
    ],
)
def test_int_keyed_and_nan_models_are_refused_by_every_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture, state: object, needle: str
) -> None:
    if state == "nan":
        state = main.CNN().state_dict()
        state["out.weight"][0, 0] = float("nan")
    path = tmp_path / "model.pth"
    torch.save(state, path)
    for mode in (["--test", "true"], ["--predict", str(path)], ["--export", str(tmp_path / "m")]):
        refused(capsys, [*mode, "--model_path", str(path)], needle)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_is_refused_never_waited_on(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    model = Path(__file__).resolve().parents[1] / "lr_1e-3" / "model.pth"
    assert main.main(["--predict", str(fifo), "--model_path", str(model)]) == 2
    err = capsys.readouterr().err
    assert "pipe.png: not a regular file" in err and "Traceback" not in err
    refused(capsys, ["--test", "true", "--model_path", str(fifo)], "not a regular file")
