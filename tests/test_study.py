"""The honest study's mechanics: a validation split that alone chooses model.pth, patience,
config.json, and refusals of bad values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli import stopped_in_epoch
from mnist_files import replace_test_set, write_mnist
from paths import EXPERIMENTS
from runs import before_records, same_weights

import main
from mnist_cnn import runformat


def train(data: Path, out: Path, *extra: str) -> int:
    """A tiny run with a 64-image validation split."""
    return main.main(
        [
            "--epoch",
            "3",
            "--batch_size",
            "32",
            "--val_split",
            "64",
            "--data_dir",
            str(data),
            "--out_dir",
            str(out),
            *extra,
        ]
    )


def test_the_test_set_chooses_nothing(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "data", n_train=320, n_test=96)
    assert train(data, tmp_path / "a") == 0
    replace_test_set(data, 7)  # other test images and labels: the metrics change, the model not
    assert train(data, tmp_path / "b") == 0
    assert same_weights(tmp_path / "a" / "model.pth", tmp_path / "b" / "model.pth")
    rows_a = runformat.read_metrics_csv(tmp_path / "a" / "metrics.csv")
    rows_b = runformat.read_metrics_csv(tmp_path / "b" / "metrics.csv")
    assert [r["val_loss"] for r in rows_a] == [r["val_loss"] for r in rows_b]
    assert [r["test_loss"] for r in rows_a] != [r["test_loss"] for r in rows_b]


def test_the_saved_epoch_is_the_lowest_validation_loss(tiny_data: Path, tmp_path: Path) -> None:
    assert train(tiny_data, tmp_path / "r", "--epoch", "4") == 0
    rows = runformat.read_metrics_csv(tmp_path / "r" / "metrics.csv")
    header = (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]
    assert header == (
        "epoch,train_loss,train_acc,val_loss,val_acc,test_loss,test_acc,"
        "train_loss_report,test_loss_report,seconds,saved,lr"
    )
    best = min(rows, key=lambda r: r["val_loss"])
    saved = [r["epoch"] for r in rows if r["saved"] == "yes"]
    assert saved[-1] == best["epoch"]
    checkpoint = torch.load(tmp_path / "r" / "checkpoint.pth", weights_only=True)
    assert checkpoint["best_epoch"] == best["epoch"]
    log = (tmp_path / "r" / "model.log").read_text()
    assert f"best epoch (lowest validation loss, saved as model.pth): {best['epoch']}" in log


def test_without_a_split_the_header_stays_the_reports(trained: Path) -> None:
    assert (trained / "metrics.csv").read_text().splitlines()[0] == (
        "epoch,train_loss,train_acc,test_loss,test_acc,train_loss_report,test_loss_report,"
        "seconds,saved,lr"
    )
    assert "val_split" not in (trained / "model.log").read_text()


def test_patience_stops_and_resume_says_finished(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    real = main.evaluate
    calls = []

    def worse_after_epoch_one(model, loader, *args, **kwargs):  # val then test, per epoch
        calls.append(1)
        m = real(model, loader, *args, **kwargs)
        epoch = (len(calls) + 1) // 2
        return m if epoch == 1 else main.Metrics(m.loss + epoch, m.loss_report, m.acc)

    monkeypatch.setattr(main, "evaluate", worse_after_epoch_one)
    assert train(tiny_data, tmp_path / "r", "--epoch", "10", "--patience", "2") == 0
    out = capsys.readouterr().out
    rows = runformat.read_metrics_csv(tmp_path / "r" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert "stopped early after epoch 3: the validation loss had not improved for 2 epochs" in out
    assert "stopped early after epoch 3" in (tmp_path / "r" / "model.log").read_text()
    monkeypatch.setattr(main, "evaluate", real)
    assert train(tiny_data, tmp_path / "r", "--epoch", "10", "--patience", "2", "--resume") == 0
    assert "already finished 3 of 10 epochs (stopped early: patience 2)" in capsys.readouterr().out
    assert len(runformat.read_metrics_csv(tmp_path / "r" / "metrics.csv")) == 3


def test_config_json_round_trips_through_summarize(tiny_data: Path, tmp_path: Path) -> None:
    assert train(tiny_data, tmp_path / "r", "--learning_rate", "5e-4", "--seed", "3") == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["learning_rate"] == 5e-4 and config["seed"] == 3 and config["val_split"] == 64
    assert config["epochs"] == 3 and config["batch_size"] == 32 and config["patience"] is None
    assert config["selection"] == "lowest validation loss" and config["val_images"] == 64
    assert {"device", "device_name", "threads", "torch", "command"} <= set(config)
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # floats vary by it
    # --summarize takes the rate and seed from config.json, not from model.log's text
    log = tmp_path / "r" / "model.log"
    log.write_text(log.read_text().replace("learning_rate: 0.0005", "learning_rate: 9"))
    text = main.summarize([tmp_path / "r"], tmp_path)
    assert "| r | 0.0005 | 3 |" in text


def test_config_json_records_each_resume_and_a_broken_one_is_refused(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    with stopped_in_epoch(monkeypatch, 2):
        assert train(tiny_data, tmp_path / "r") == 143
    path = tmp_path / "r" / "config.json"
    started = json.loads(path.read_text())
    assert started.pop("resumes") == []
    assert train(tiny_data, tmp_path / "r", "--resume") == 0
    config = json.loads(path.read_text())
    (resumed,) = config.pop("resumes")
    assert config == started  # every setting and the first machine stay as they were
    assert resumed["after_epoch"] == 1 and "--resume" in resumed["command"]
    assert resumed["threads"] == torch.get_num_threads() and resumed["torch"] == torch.__version__
    assert {"device", "device_name", "python"} <= set(resumed)
    assert "another kind of machine" not in capsys.readouterr().out
    # a run started with another thread count (or CPU) says so when carried on here
    with stopped_in_epoch(monkeypatch, 2):
        assert train(tiny_data, tmp_path / "t") == 143
    other = json.loads((tmp_path / "t" / "config.json").read_text()) | {"threads": 64}
    del other["cpu_capability"]  # as in config.json files older than that field: not a change
    (before_records(tmp_path / "t") / "config.json").write_text(json.dumps(other))
    capsys.readouterr()
    assert train(tiny_data, tmp_path / "t", "--resume") == 0
    out, threads = capsys.readouterr().out, torch.get_num_threads()
    assert f"resuming on another kind of machine (threads 64 -> {threads})" in out
    # a config.json that is not a run's settings: one paragraph, exit 2, nothing changed
    with stopped_in_epoch(monkeypatch, 2):
        assert train(tiny_data, tmp_path / "s") == 143
    (tmp_path / "s" / "config.json").write_text("[1, 2]")
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    capsys.readouterr()
    assert train(tiny_data, tmp_path / "s", "--resume") == 2
    err = capsys.readouterr().err
    assert "config.json cannot be read as a run's settings" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--val_split", "320"], "--val_split 320 leaves no training images"),
        (["--val_split", "5000"], "the training file holds 320"),
    ],
)
def test_bad_split_and_patience_are_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], needle: str
) -> None:
    data = write_mnist(tmp_path / "data", n_train=320, n_test=32)
    out = tmp_path / "o"
    assert main.main([*argv, "--data_dir", str(data), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_committed_study_chose_every_model_on_validation() -> None:
    runs = sorted((EXPERIMENTS / "study").glob("seed*/lr_*"))
    assert len(runs) == 15
    for folder in runs:
        config = json.loads((folder / "config.json").read_text())
        assert (
            config["val_split"] == 10000 and config["epochs"] == 50 and config["patience"] is None
        )
        rows = runformat.read_metrics_csv(folder / "metrics.csv")
        assert "val_loss" in rows[0] and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        saved = [r["epoch"] for r in rows if r["saved"] == "yes"]
        assert saved[-1] == min(rows, key=lambda r: r["val_loss"])["epoch"]
