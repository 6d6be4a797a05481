"""The speed options train and save weights that load into a plain CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import main
from mnist_cnn import runformat


@pytest.mark.parametrize(
    "flags",
    [["--amp"], pytest.param(["--compile"], marks=pytest.mark.slow), ["--channels_last", "false"]],
)
def test_speed_option_trains_and_saves_loadable_weights(
    tiny_data: Path, tmp_path: Path, flags: list[str]
) -> None:
    assert (
        main.main(
            ["--epoch", "2", *flags, "--data_dir", str(tiny_data), "--out_dir", str(tmp_path)]
        )
        == 0
    )
    model = main.CNN()
    model.load_state_dict(torch.load(tmp_path / "model.pth", weights_only=True))
    rows = runformat.parse_log(tmp_path / "model.log")
    assert len(rows) == 2 and all(r["train_loss"] > 0 for r in rows)
    best = min(rows, key=lambda r: r["test_loss"])
    ev = main.evaluate(
        model,
        main.get_loader("test", str(tiny_data), 128),
        main.Speed(amp="--amp" in flags, channels_last=False),
    )
    assert round(ev.acc, 4) == best["test_acc"]
    header = (tmp_path / "model.log").read_text()
    assert f"amp: {'--amp' in flags}" in header and f"compile: {'--compile' in flags}" in header


def test_channels_last_changes_speed_not_results(tiny_data: Path, tmp_path: Path) -> None:
    for name, value in (("nhwc", "true"), ("nchw", "false")):
        assert (
            main.main(
                [
                    "--epoch",
                    "2",
                    "--channels_last",
                    value,
                    "--data_dir",
                    str(tiny_data),
                    "--out_dir",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    a, b = (runformat.parse_log(tmp_path / n / "model.log") for n in ("nhwc", "nchw"))
    for ra, rb in zip(a, b):
        assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=0.02)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=0.05)
