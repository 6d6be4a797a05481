"""Interruptions, resume, atomic outputs, safe loading and bad input: clear errors, nothing lost."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli import refused, run_cli, start_cli, stopped_in_epoch, wait_for_epochs
from mnist_files import write_mnist
from paths import ROOT
from runs import before_records, metrics, same_weights

import main
from mnist_cnn import files, runformat


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in a folder but the lock file (it names the last process there)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != ".lock"
    }


def start_training(out: Path, data: Path, epochs: int) -> subprocess.Popen:
    """Start main.py training in a subprocess."""
    return start_cli(
        "--epoch", str(epochs), "--batch_size", "64", "--data_dir", str(data), "--out_dir", str(out)
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(
    medium_data: Path, tmp_path: Path
) -> None:
    args = ["--epoch", "6", "--batch_size", "64", "--data_dir", str(medium_data)]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    proc = start_training(tmp_path / "killed", medium_data, 6)
    wait_for_epochs(tmp_path / "killed", 2, proc)
    time.sleep(random.uniform(0.0, 0.3))  # at a random batch of epoch 3 or a little later
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(runformat.parse_log(tmp_path / "killed" / "model.log"))
    assert 2 <= done < 6
    assert main.main([*args, "--out_dir", str(tmp_path / "killed"), "--resume"]) == 0
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    assert same_weights(tmp_path / "killed" / "model.pth", tmp_path / "whole" / "model.pth")
    assert not list((tmp_path / "killed").glob(".*.tmp"))


@pytest.mark.slow
def test_sgd_killed_in_epoch_2_resumes_to_the_uninterrupted_weights(
    medium_data: Path, tmp_path: Path
) -> None:
    """SGD's momentum buffers and its one-cycle position are in the checkpoint."""
    args = [
        *("--optimizer", "sgd", "--learning_rate", "0.05", "--lr_schedule", "onecycle"),
        *("--epoch", "3", "--batch_size", "16", "--data_dir", str(medium_data)),
    ]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    proc = start_cli(*args, "--out_dir", str(tmp_path / "killed"))
    wait_for_epochs(tmp_path / "killed", 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(runformat.parse_log(tmp_path / "killed" / "model.log")) == 1
    assert main.main([*args, "--out_dir", str(tmp_path / "killed"), "--resume"]) == 0
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "whole")
    for name in ("model.pth", "checkpoint.pth"):
        assert same_weights(tmp_path / "killed" / name, tmp_path / "whole" / name)
    moments = [
        torch.load(tmp_path / run / "checkpoint.pth", weights_only=True)["optimizer"]["state"]
        for run in ("killed", "whole")
    ]
    assert all(
        torch.equal(a["momentum_buffer"], b["momentum_buffer"]) and a["step"] == b["step"] == 192
        for a, b in zip(moments[0].values(), moments[1].values())
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_keeps_epochs_and_says_how_to_resume(
    medium_data: Path, tmp_path: Path, signum: int, code: int
) -> None:
    out = tmp_path / "run"
    proc = start_training(out, medium_data, 200)
    wait_for_epochs(out, 1, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    done = len(runformat.parse_log(out / "model.log"))
    assert f"interrupted after epoch {done}; resume with:" in (out / "model.log").read_text()
    assert (out / "figure.png").stat().st_size > 0
    assert len(torch.load(out / "checkpoint.pth", weights_only=True)["history"]) == done
    assert (
        main.main(
            [
                "--epoch",
                str(done + 1),
                "--batch_size",
                "64",
                "--data_dir",
                str(medium_data),
                "--out_dir",
                str(out),
                "--resume",
            ]
        )
        == 0
    )
    assert len(runformat.parse_log(out / "model.log")) == done + 1


def test_resume_of_finished_run_does_nothing(
    trained: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    before = digests(trained)
    assert (
        main.main(
            ["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(trained), "--resume"]
        )
        == 0
    )
    assert "already finished 2 of 2 epochs; nothing to do" in capsys.readouterr().out
    assert digests(trained) == before


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--learning_rate", "0.01", "learning_rate 0.001 (now 0.01)"),
        ("--batch_size", "64", "batch_size 128 (now 64)"),
    ],
)
def test_resume_with_other_settings_is_refused(
    trained: Path,
    tiny_data: Path,
    capsys: pytest.CaptureFixture,
    flag: str,
    value: str,
    needle: str,
) -> None:
    before = digests(trained)
    refused(
        capsys,
        [
            "--epoch",
            "3",
            flag,
            value,
            "--data_dir",
            str(tiny_data),
            "--out_dir",
            str(trained),
            "--resume",
        ],
        needle,
    )
    assert digests(trained) == before


def test_resume_of_an_empty_folder_starts_from_epoch_one(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r"
    args = ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(out), "--resume"]
    assert main.main(args) == 0
    assert "no epoch had finished there; starting from epoch 1" in capsys.readouterr().out
    assert [r["epoch"] for r in runformat.parse_log(out / "model.log")] == [1]


def test_resume_of_a_finished_run_without_checkpoint_is_refused(
    tiny_data: Path, trained: Path, capsys: pytest.CaptureFixture
) -> None:
    (trained / "checkpoint.pth").unlink()
    before = (trained / "model.pth").read_bytes()
    refused(
        capsys,
        ["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(trained), "--resume"],
        "Nothing to resume",
    )
    assert (trained / "model.pth").read_bytes() == before


@pytest.mark.parametrize("how", [["--resume"], ["--seed", "0", "1", "--run_index", "0"]])
def test_a_finished_run_kept_without_weights_is_never_trained_over(
    tiny_data: Path, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, how: list
) -> None:
    """As experiments/search/ commits its runs (no model.pth, no checkpoint.pth), or a cluster
    user who deleted the weights: --resume and a job array's --run_index refuse to retrain."""
    run = trained
    if "--run_index" in how:  # the grid's first run, seed0/lr_1e-3
        run = tmp_path / "grid" / "seed0" / "lr_1e-3"
        run.parent.mkdir(parents=True)
        trained.rename(run)
    for name in ("checkpoint.pth", "model.pth"):
        (run / name).unlink()
    before = digests(run)
    out = tmp_path / "grid" if "--run_index" in how else run
    refused(
        capsys,
        ["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(out), *how],
        "Nothing to resume",
    )
    assert digests(run) == before


def test_a_run_stopped_in_its_first_epoch_resumes_from_the_start(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    args = ["--epoch", "2", "--data_dir", str(tiny_data)]
    assert main.main([*args, "--out_dir", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    with stopped_in_epoch(monkeypatch, 1):
        assert main.main([*args, "--out_dir", str(cut)]) == 143
    assert "interrupted after epoch 0; resume with:" in (cut / "model.log").read_text()
    assert not (cut / "checkpoint.pth").exists() and not (cut / "model.pth").exists()
    capsys.readouterr()
    assert main.main([*args, "--out_dir", str(cut), "--resume"]) == 0  # as the hint says
    assert "no epoch had finished there; starting from epoch 1" in capsys.readouterr().out
    assert metrics(cut) == metrics(tmp_path / "whole")
    assert same_weights(cut / "model.pth", tmp_path / "whole" / "model.pth")
    assert "interrupted" not in (cut / "model.log").read_text()


def test_fresh_run_over_an_earlier_one_is_refused_without_overwrite(
    trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    before = digests(trained)
    refused(
        capsys,
        ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(trained)],
        "already holds an earlier run",
        "--overwrite",
        "--resume",
    )
    assert digests(trained) == before
    committed = (
        tmp_path / "committed"
    )  # a run as the repository holds it: no checkpoint to resume from
    committed.mkdir()
    for name in ("model.pth", "model.log"):
        (committed / name).write_bytes((trained / name).read_bytes())
    err = refused(
        capsys,
        ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(committed)],
        "(model.pth, model.log)",
        "--overwrite",
        "--out_dir NEW_FOLDER",
    )
    assert "--resume" not in err
    assert (
        main.main(
            [
                "--epoch",
                "1",
                "--data_dir",
                str(tiny_data),
                "--out_dir",
                str(committed),
                "--overwrite",
            ]
        )
        == 0
    )
    assert len(runformat.parse_log(committed / "model.log")) == 1


def test_diverging_loss_stops_and_keeps_best_model(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = main.train_epoch
    calls = []

    def diverge_second_time(*args, **kwargs):
        calls.append(1)
        result = real(*args, **kwargs)
        return dataclasses.replace(result, loss=float("nan")) if len(calls) == 2 else result

    monkeypatch.setattr(main, "train_epoch", diverge_second_time)
    assert (
        main.main(["--epoch", "3", "--data_dir", str(tiny_data), "--out_dir", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert "became nan in epoch 2" in err and "lower --learning_rate" in err
    assert len(runformat.parse_log(tmp_path / "r" / "model.log")) == 1
    assert "stopped: The training loss became nan" in (tmp_path / "r" / "model.log").read_text()
    monkeypatch.setattr(main, "train_epoch", real)
    assert (
        main.main(
            ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(tmp_path / "one")]
        )
        == 0
    )
    assert same_weights(tmp_path / "r" / "model.pth", tmp_path / "one" / "model.pth")


def test_a_diverged_run_of_a_sweep_is_recorded_and_the_others_go_on(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = main.train_epoch
    calls = []

    def diverge_at_high_rate(t, *args, **kwargs):
        calls.append(t.optimizer.lr)
        result = real(t, *args, **kwargs)
        high = t.optimizer.lr == 1e-2 and calls.count(1e-2) == 2
        return dataclasses.replace(result, loss=float("inf")) if high else result

    monkeypatch.setattr(main, "train_epoch", diverge_at_high_rate)
    sweep = ["--learning_rate", "1e-3:1e-2:2", "--epoch", "3", "--data_dir", str(tiny_data)]
    out = tmp_path / "sweep"
    assert main.main([*sweep, "--out_dir", str(out)]) == 0
    assert "lr_1e-2: The training loss became inf in epoch 2" in capsys.readouterr().out
    config = json.loads((out / "lr_1e-2" / "config.json").read_text())
    assert config["diverged"]["epoch"] == 2 and "became inf" in config["diverged"]["reason"]
    assert len(runformat.read_metrics_csv(out / "lr_1e-2" / "metrics.csv")) == 1
    assert len(runformat.read_metrics_csv(out / "lr_1e-3" / "metrics.csv")) == 3
    assert calls == [1e-3] * 3 + [1e-2] * 2
    # a resume leaves the diverged run as it is instead of diverging again
    assert main.main([*sweep, "--out_dir", str(out), "--resume"]) == 0
    assert "lr_1e-2: already finished 1 of 3 epochs (stopped: diverged in epoch 2)" in (
        capsys.readouterr().out
    )
    assert calls == [1e-3] * 3 + [1e-2] * 2


@pytest.mark.slow
def test_a_huge_learning_rate_is_refused_before_any_work(tiny_data: Path, tmp_path: Path) -> None:
    # 1e30 used to train until the loss became NaN; it is refused at once now (rates above 10
    # are typos), and divergence itself is tested with a NaN loss above
    out = tmp_path / "o"
    result = run_cli(
        "--epoch",
        "3",
        "--learning_rate",
        "1e30",
        "--data_dir",
        str(tiny_data),
        "--out_dir",
        str(out),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'1e30' must be at most 10" in result.stderr and result.stderr.count("\n") == 1
    assert not out.exists()


def test_bad_arguments_from_the_command_line_exit_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("--test", "true", "--predict", "x.png", cwd=tmp_path)
    assert result.returncode == 2 and "not allowed with argument --test" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_output_folder_is_refused_before_training(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    refused(
        capsys,
        ["--data_dir", str(tiny_data), "--out_dir", str(blocker / "run")],
        "Cannot write to the output folder",
        "--out_dir",
    )


def test_unavailable_device_is_refused(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    refused(
        capsys,
        ["--device", "cuda", "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)],
        "--device cuda",
        "no cuda device",
    )


def damaged_copy(tiny_data: Path, tmp_path: Path, name: str, mutate) -> Path:
    """A copy of the tiny dataset with one file changed by `mutate(bytes) -> bytes`."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    path = data / "MNIST" / "raw" / name
    path.write_bytes(mutate(path.read_bytes()))
    return data


@pytest.mark.parametrize(
    "name, mutate, needle",
    [
        (
            "train-images-idx3-ubyte",
            lambda b: b"\x00\x00\x08\x01" + b[4:],
            "magic number 0x00000801, expected 0x00000803",
        ),
        ("t10k-labels-idx1-ubyte", lambda b: b[:-10], "is truncated or damaged"),
        ("train-images-idx3-ubyte", lambda b: b[:10], "shorter than its 16-byte header"),
        ("t10k-images-idx3-ubyte", lambda b: b + b"\x00" * 784, "header announces"),
        (
            "train-labels-idx1-ubyte",
            lambda b: b[:4] + (255).to_bytes(4, "big") + b[8:263],
            "do not match",
        ),
        (
            "train-images-idx3-ubyte",
            lambda b: b[:8] + (32).to_bytes(4, "big") + b[12:],
            "holds 32x28 images",
        ),
    ],
)
def test_bad_idx_files_are_named_and_nothing_is_trained(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, name: str, mutate, needle: str
) -> None:
    data = damaged_copy(tiny_data, tmp_path, name, mutate)
    refused(
        capsys, ["--epoch", "1", "--data_dir", str(data), "--out_dir", str(tmp_path / "o")], needle
    )
    assert not (tmp_path / "o" / "model.pth").exists()


@pytest.mark.parametrize("kind", ["directory", "device"])
def test_a_data_file_that_is_not_a_file_is_named_without_a_download(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    data = Path(shutil.copytree(tiny_data, tmp_path / "data"))
    path = data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.unlink()
    path.mkdir() if kind == "directory" else path.symlink_to("/dev/zero")
    err = refused(
        capsys,
        ["--epoch", "1", "--data_dir", str(data), "--out_dir", str(tmp_path / "o")],
        f"The MNIST file {path} is not a regular file",
    )
    assert "download" not in err  # tried, a download would end in the missing-files message
    assert not (tmp_path / "o").exists()


def test_bad_data_does_not_touch_an_earlier_run(
    trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = damaged_copy(tiny_data, tmp_path, "t10k-labels-idx1-ubyte", lambda b: b[:20])
    before = digests(trained)
    refused(
        capsys,
        ["--epoch", "1", "--data_dir", str(data), "--out_dir", str(trained), "--overwrite"],
        "t10k-labels-idx1-ubyte",
    )
    assert digests(trained) == before


class Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize(
    "kind", ["missing", "empty", "truncated", "text", "directory", "exploit", "list"]
)
def test_bad_model_files_get_their_own_message(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, kind: str
) -> None:
    path = tmp_path / "model.pth"
    needle = {
        "missing": "does not exist",
        "empty": "is empty (0 bytes)",
        "truncated": "cannot be read as PyTorch",
        "text": "cannot be read as PyTorch",
        "directory": "is a directory",
        "exploit": "holds more than tensors",
        "list": "holds a list",
    }[kind]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes((trained / "model.pth").read_bytes()[:5000])
    elif kind == "text":
        path.write_text("hello, I am not a model\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "exploit":
        torch.save({"w": Exploit(tmp_path / "pwned")}, path)
    elif kind == "list":
        torch.save([torch.zeros(1)], path)
    refused(capsys, ["--test", "true", "--model_path", str(path)], str(path), needle)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_another_architecture_lists_mismatches(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.Linear(4, 2))
    torch.save(other.state_dict(), tmp_path / "other.pth")
    wide = main.CNN().state_dict()
    wide["out.weight"] = torch.zeros(10, 100)
    torch.save(wide, tmp_path / "wide.pth")
    refused(
        capsys,
        ["--test", "1", "--model_path", str(tmp_path / "other.pth")],
        "not a usable checkpoint of this CNN",
        "16 missing (conv1.0.weight (16, 1, 5, 5), ",
        "4 unexpected (0.weight, ",
    )
    refused(
        capsys,
        ["--test", "1", "--model_path", str(tmp_path / "wide.pth")],
        "1 wrong shape or type (out.weight is (10, 100), expected (10, 1568))",
    )


@pytest.mark.parametrize(
    "mode", [["--test", "1"], ["--predict", "docs/digits"], ["--export", "x.onnx"]]
)
def test_a_model_of_meta_tensors_is_refused_by_every_mode_that_loads_one(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, mode: list
) -> None:
    """Weights saved from a model built on the meta device have shapes but no values."""
    monkeypatch.chdir(ROOT)
    with torch.device("meta"):
        hollow = main.CNN()
    torch.save(hollow.state_dict(), tmp_path / "meta.pth")
    if mode[0] == "--export":
        mode = ["--export", str(tmp_path / "x.onnx")]
    refused(
        capsys,
        [*mode, "--model_path", str(tmp_path / "meta.pth")],
        "16 without values (meta tensors) (conv1.0.weight, ",
    )
    assert not (tmp_path / "x.onnx").exists()


def test_test_mode_reads_a_checkpoint_too(
    trained: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        main.main(
            [
                "--test",
                "yes",
                "--model_path",
                str(trained / "checkpoint.pth"),
                "--data_dir",
                str(tiny_data),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # the checkpoint's weights are the last epoch's; model.pth holds the best epoch's
    last = runformat.read_metrics_csv(trained / "metrics.csv")[-1]
    assert f"test accuracy: {100 * last['test_acc']:.2f}% ({last['test_acc']:.4f})" in out
    assert f"test loss: {last['test_loss']:.6f}" in out


def test_atomic_write_keeps_the_old_file_when_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.log"
    path.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(main.UserError, match=f"Cannot write {path}: the disk is full") as e:
        files.atomic_write(path, b"new")
    assert e.value.code == 1
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.log"]


def test_disk_full_during_training_is_one_message_and_earlier_files_stay_loadable(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_fsync, written = os.fsync, []

    def fill_up_after_epoch_one(fd: int) -> None:
        written.append(os.readlink(f"/proc/self/fd/{fd}"))
        if any("metrics.csv" in w for w in written):  # epoch 1's files are all written by then
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fill_up_after_epoch_one)
    code = main.main(["--epoch", "3", "--data_dir", str(tiny_data), "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: Cannot write ") and "the disk is full" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not list(out.glob(".*.tmp"))
    main.load_model(out / "model.pth")
    assert len(torch.load(out / "checkpoint.pth", weights_only=True)["history"]) == 1
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert (
        main.main(["--epoch", "3", "--data_dir", str(tiny_data), "--out_dir", str(out), "--resume"])
        == 0
    )
    assert [r["epoch"] for r in runformat.parse_log(out / "model.log")] == [1, 2, 3]


def test_a_second_process_on_a_folder_in_use_is_refused_at_once(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({str(out / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.write(fd, str(os.getpid()).encode())\n"
                "print('locked', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--overwrite"], ["--resume"]):
            started = time.perf_counter()
            refused(
                capsys,
                ["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(out), *extra],
                f"{out} is in use: process {holder.pid} is training there",
            )
            assert time.perf_counter() - started < 5
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert main.main(["--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0


def mutations(seed_bytes: bytes, count: int, rng: random.Random) -> list[bytes]:
    """Random byte strings and mutated copies of a valid file (flips, cuts, splices)."""
    out = []
    for i in range(count):
        if i % 4 == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))))
            continue
        b = bytearray(seed_bytes)
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if i % 4 == 2:
            b = b[: rng.randrange(len(b))]
        if i % 4 == 3:
            cut = rng.randrange(len(b))
            b = b[:cut] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b[cut:]
        out.append(bytes(b))
    return out


@pytest.mark.slow
def test_fuzzed_model_files_always_give_a_clean_error(trained: Path, tmp_path: Path) -> None:
    rng = random.Random(1234)
    path = tmp_path / "model.pth"
    seed = (trained / "model.pth").read_bytes()
    outcomes = {"error": 0, "loaded": 0}
    for blob in mutations(seed, 200, rng):
        path.write_bytes(blob)
        try:
            main.load_model(path)
            outcomes["loaded"] += 1
        except main.UserError as e:
            assert str(path) in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] >= 150


def idx_mutation(original: bytes, kind: str, rng: random.Random) -> bytes:
    """A damaged copy of an IDX file: its magic number, item count, image size, length or body
    changed, so that each check behind the magic number is reached."""
    ndim = original[3]
    header, body = original[: 4 + 4 * ndim], original[4 + 4 * ndim :]
    count = struct.unpack(">I", header[4:8])[0]
    if kind == "magic":
        return (
            struct.pack(">I", rng.choice([0x801 if ndim == 3 else 0x803, 0, 0x0D03])) + original[4:]
        )
    if kind == "count":
        other = rng.choice([count + 1, count + rng.randrange(2, 1000), 2**32 - 1])
        return original[:4] + struct.pack(">I", other) + original[8:]
    if kind == "size":
        side = rng.choice([27, 29, 0, 2**31])
        return original[:8] + struct.pack(">II", side, 28) + original[16:]
    if kind == "short header":
        return original[: rng.randrange(0, len(header))]
    if kind == "short body":
        return original[: len(header) + rng.randrange(0, len(body))]
    if kind == "long body":
        return original + bytes(rng.randrange(1, 800))
    if kind == "label":
        damaged = bytearray(original)
        damaged[len(header) + rng.randrange(len(body))] = rng.randrange(10, 256)
        return bytes(damaged)
    damaged = bytearray(original)  # pixels: any byte value is an image, so it reads
    for _ in range(rng.randrange(1, 50)):
        damaged[len(header) + rng.randrange(len(body))] = rng.randrange(256)
    return bytes(damaged)


IDX_DAMAGE = {  # what each damage is called in the error
    "magic": "magic number",
    "count": "header announces",
    "size": "images; this model needs 28x28",
    "short header": "shorter than its",
    "short body": "header announces",
    "long body": "header announces",
    "label": "labels outside 0-9",
}


def test_fuzzed_idx_files_always_give_a_clean_error(tmp_path: Path) -> None:
    rng = random.Random(99)
    data = write_mnist(tmp_path / "data", n_train=3, n_test=3)
    raw = data / "MNIST" / "raw"
    images, labels = main.SPLIT_FILES["test"]
    originals = {name: (raw / name).read_bytes() for name in (images, labels)}
    refused: dict[str, int] = {}
    for i in range(240):
        kind = [*IDX_DAMAGE, "pixels"][i % (len(IDX_DAMAGE) + 1)]
        name = labels if kind == "label" or (kind != "pixels" and i % 2) else images
        (raw / name).write_bytes(idx_mutation(originals[name], kind, rng))
        try:
            loader = main.get_loader("test", str(data), 16)
            assert kind == "pixels", kind  # only changed pixels still make a data set
            assert loader.images.shape == (3, 1, 28, 28)
        except main.UserError as e:
            assert kind != "pixels" and name in str(e) and IDX_DAMAGE[kind] in str(e), (kind, e)
            refused[kind] = refused.get(kind, 0) + 1
        (raw / name).write_bytes(originals[name])
    assert refused == {kind: 30 for kind in IDX_DAMAGE}


def test_a_signal_after_the_last_check_still_exits_with_its_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mnist_cnn import interrupts

    def finish_then_signalled() -> None:
        with interrupts.stop_on_signals() as stop:
            stop.deferred = True
            stop.check("resume")  # the last check: nothing came yet
            os.kill(os.getpid(), signal.SIGTERM)  # lands before the handlers are restored
        raise AssertionError("the block's end must stop the process")

    before = signal.getsignal(signal.SIGTERM)
    assert interrupts.report_errors(finish_then_signalled) == 143
    assert "SIGTERM received after the last file was written" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers were restored first


def test_the_open_file_limit_is_named_as_such() -> None:
    from mnist_cnn.interrupts import os_refusal

    said = os_refusal(OSError(errno.EMFILE, "Too many open files"))
    assert "open-file limit (ulimit -n)" in said and "Check the path" not in said
    assert "Check the path" in os_refusal(OSError(errno.ENAMETOOLONG, "File name too long", "x"))


def test_a_run_begun_before_the_rate_column_resumes_without_it(
    tiny_data: Path, tmp_path: Path
) -> None:
    """A checkpoint and metrics.csv from before metrics.csv had its lr column: the run goes on
    in its own format, and the readers take it as it is."""
    from mnist_cnn.training import checkpoints

    flags = ["--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]
    assert main.main([*flags, "--epoch", "2"]) == 0
    state = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    for row in state["history"]:
        del row["lr"]
    state["sha256"] = checkpoints.digest({k: v for k, v in state.items() if k != "sha256"})
    torch.save(state, before_records(tmp_path) / "checkpoint.pth")
    old = re.sub(r",(lr|0\.001)\n", "\n", (tmp_path / "metrics.csv").read_text())
    (tmp_path / "metrics.csv").write_text(old)
    assert main.main([*flags, "--epoch", "3", "--resume"]) == 0
    text = (tmp_path / "metrics.csv").read_text()
    assert text.startswith(old) and text.splitlines()[0].endswith(",saved")
    assert len(runformat.read_metrics_csv(tmp_path / "metrics.csv")) == 3
