"""The learning-rate study: results.md and compare.png from run folders, and the sweep command."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

import main


def fake_log(folder: Path, lr: float, test_losses: list[float]) -> None:
    """A model.log in the tool's format whose epoch e has known numbers."""
    folder.mkdir(parents=True)
    rows = []
    for e, test_loss in enumerate(test_losses, start=1):
        rows.append({"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.9 + e / 1000, "test_loss": test_loss,
                     "test_acc": 0.98 + e / 10000, "train_loss_report": 1.0 / e / 128,
                     "test_loss_report": test_loss / 128, "seconds": 1.5, "saved": "-"})
    run = main.Run(lr, folder, None, history=rows, header=f"MNIST CNN training log\nlearning_rate: {lr:g}  batch_size: 128")
    (folder / "model.log").write_text(main.render_log(run, ["summary", "stuff that is not a row"]))


def test_summary_tables_pick_lowest_test_loss_and_last_epoch(tmp_path: Path) -> None:
    fake_log(tmp_path / "lr_1e-3", 0.001, [0.05, 0.03, 0.02, 0.04])
    fake_log(tmp_path / "lr_1e-4", 0.0001, [0.09, 0.07, 0.06, 0.05, 0.05, 0.055])
    text = main.summarize([tmp_path / "lr_1e-3", tmp_path / "lr_1e-4"], tmp_path)
    assert (tmp_path / "results.md").read_text() == text
    best_part, last_part = text.split("## Last epoch")
    assert "| lr_1e-3 | 0.001 | 3 | 0.333333 | 0.9030 | 0.020000 | 0.9803 | 0.00260417 | 0.00015625 |" in best_part
    assert "| lr_1e-4 | 0.0001 | 4 | 0.250000 | 0.9040 | 0.050000 | 0.9804 | 0.00195312 | 0.00039063 |" in best_part
    assert "| lr_1e-3 | 0.001 | 4 | 0.250000 | 0.9040 | 0.040000 | 0.9804 |" in last_part
    assert "| lr_1e-4 | 0.0001 | 6 | 0.166667 | 0.9060 | 0.055000 | 0.9806 |" in last_part
    with Image.open(tmp_path / "compare.png") as im:
        assert im.format == "PNG" and im.width > 800


def test_summarize_flag_rebuilds_without_training(tmp_path: Path, capsys) -> None:
    fake_log(tmp_path / "runs" / "lr_5e-4", 0.0005, [0.3, 0.2])
    assert main.main(["--summarize", str(tmp_path / "runs" / "lr_5e-4"), "--out_dir", str(tmp_path / "out")]) == 0
    assert "| lr_5e-4 | 0.0005 | 2 |" in (tmp_path / "out" / "results.md").read_text()
    assert str(tmp_path / "out" / "compare.png") in capsys.readouterr().out


def test_summarize_of_a_folder_without_log_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main.main(["--summarize", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "Cannot read" in err and "model.log" in err


def test_sweep_trains_each_rate_into_its_folder_and_summarises(tiny_data: Path, tmp_path: Path) -> None:
    assert main.main(["--epoch", "2", "--learning_rate", "1e-3", "5e-4", "--data_dir", str(tiny_data),
                      "--out_dir", str(tmp_path)]) == 0
    for name in ("lr_1e-3", "lr_5e-4"):
        assert {"model.pth", "model.log", "figure.png"} <= {p.name for p in (tmp_path / name).iterdir()}
    assert "learning_rate: 0.0005" in (tmp_path / "lr_5e-4" / "model.log").read_text()
    results = (tmp_path / "results.md").read_text()
    assert "| lr_1e-3 | 0.001 |" in results and "| lr_5e-4 | 0.0005 |" in results
    assert (tmp_path / "compare.png").stat().st_size > 0
