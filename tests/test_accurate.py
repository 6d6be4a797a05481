"""The accurate recipe's parts: per-image distortions drawn from (seed, epoch), the weight average
that is evaluated and saved, an honest choice (the test set chooses nothing) and exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli import stopped_in_epoch
from mnist_files import replace_test_set, write_mnist
from runs import metrics, same_weights

import main
from mnist_cnn import runformat
from mnist_cnn.analysis import readback
from mnist_cnn.training.augment import Distortion

PARTS = ["--augment", "--ema", "0.9", "--val_split", "64", "--epoch", "3", "--batch_size", "32"]


def train(data: Path, out: Path, *extra: str) -> int:
    return main.main([*PARTS, "--data_dir", str(data), "--out_dir", str(out), *extra])


def test_distortions_repeat_for_a_seed_and_epoch_and_differ_otherwise() -> None:
    images = torch.rand(8, 1, 28, 28)
    d = Distortion()
    once, again = (d(images, d.generator(3, 2)) for _ in range(2))
    assert torch.equal(once, again) and once.shape == images.shape
    assert not torch.equal(once, d(images, d.generator(3, 3)))  # another epoch
    assert not torch.equal(once, d(images, d.generator(4, 2)))  # another seed
    # each image its own map: eight copies of one image come out different
    copies = d(images[:1].expand(8, -1, -1, -1).contiguous(), d.generator(0, 1))
    assert all(not torch.equal(copies[0], copies[i]) for i in range(1, 8))
    # no distortion at all is the identity
    none = Distortion(0, 0, 0, 0)
    assert torch.allclose(none(images, none.generator(0, 1)), images, atol=1e-5)


def test_a_distortion_moves_the_digit_by_the_shift_drawn() -> None:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10:14, 10:14] = 1.0
    shifted = Distortion(0, 0, 0, 3.0)(image, Distortion().generator(0, 1))
    ys, xs = torch.nonzero(shifted[0, 0] > 0.5, as_tuple=True)
    assert 0 < abs(xs.float().mean() - 11.5) + abs(ys.float().mean() - 11.5) <= 6.1


def test_the_test_set_chooses_nothing_with_augment_and_ema(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "data", n_train=320, n_test=96)
    assert train(data, tmp_path / "a") == 0
    replace_test_set(data, 7)
    assert train(data, tmp_path / "b") == 0
    assert same_weights(tmp_path / "a" / "model.pth", tmp_path / "b" / "model.pth")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["augment"] is True and config["ema"] == 0.9
    assert config["model.pth"] == "the weight average (EMA, decay 0.9)"
    assert (
        "model.pth holds the weight average (EMA, decay 0.9)"
        in (tmp_path / "a" / "model.log").read_text()
    )


# the second: stopped in the last epoch, one of the two clean ones, which the resume trains again
@pytest.mark.parametrize("extra, stop", [((), 2), (("--clean_epochs", "2"), 3)])
def test_model_pth_is_the_average_and_resume_is_exact(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    stop: int,
) -> None:
    assert train(tiny_data, tmp_path / "whole", *extra) == 0
    with stopped_in_epoch(monkeypatch, stop):
        assert train(tiny_data, tmp_path / "cut", *extra) == 143
    assert train(tiny_data, tmp_path / "cut", "--resume", *extra) == 0
    assert same_weights(tmp_path / "cut" / "model.pth", tmp_path / "whole" / "model.pth")
    rows = [runformat.read_metrics_csv(tmp_path / f / "metrics.csv") for f in ("cut", "whole")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows[0]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in rows[1]
    ]
    state = torch.load(tmp_path / "whole" / "checkpoint.pth", weights_only=True)
    average = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    best = state["best_epoch"]
    if best == len(state["history"]):  # the last epoch saved: model.pth is the average itself
        saved = torch.load(tmp_path / "whole" / "model.pth", weights_only=True)
        assert all(torch.equal(saved[k], average[k]) for k in saved)
    assert not all(torch.equal(state["model"][k], average[k]) for k in state["model"])


def test_without_the_parts_a_run_is_todays(tiny_data: Path, tmp_path: Path) -> None:
    args = ["--epoch", "2", "--data_dir", str(tiny_data)]
    assert main.main([*args, "--out_dir", str(tmp_path / "a")]) == 0
    assert (
        main.main([*args, "--augment", "false", "--ema", "0", "--out_dir", str(tmp_path / "b")])
        == 0
    )
    assert same_weights(tmp_path / "a" / "model.pth", tmp_path / "b" / "model.pth")
    assert "augment" not in (tmp_path / "a" / "model.log").read_text()


def test_keep_last_trains_on_every_image_and_the_test_set_chooses_nothing(tmp_path: Path) -> None:
    data = write_mnist(tmp_path / "data", n_train=320, n_test=96)
    last = ["--val_split", "0", "--keep", "last"]
    assert train(data, tmp_path / "a", *last) == 0
    state = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    average = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    saved = torch.load(tmp_path / "a" / "model.pth", weights_only=True)
    assert all(torch.equal(saved[k], average[k]) for k in saved)  # the last epoch's average
    rows = runformat.read_metrics_csv(tmp_path / "a" / "metrics.csv")
    assert [r["saved"] for r in rows] == ["yes"] * 3 and "val_loss" not in rows[0]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (config["selection"], config["keep"], config["train_images"]) == (
        "last epoch",
        "last",
        320,
    )
    log = (tmp_path / "a" / "model.log").read_text()
    assert (
        "model.pth: last epoch" in log and "best epoch (last epoch, saved as model.pth): 3" in log
    )
    assert readback.read_run(tmp_path / "a").best["epoch"] == 3
    # wrong test labels (each digit's neighbour): the test loss climbs as the network learns,
    # so its lowest epoch is an early one, yet model.pth is the same last epoch
    labels = data / "MNIST" / "raw" / main.SPLIT_FILES["test"][1]
    raw = labels.read_bytes()
    labels.write_bytes(raw[:8] + bytes((b + 1) % 10 for b in raw[8:]))
    assert train(data, tmp_path / "b", *last) == 0
    assert same_weights(tmp_path / "a" / "model.pth", tmp_path / "b" / "model.pth")
    wrong = runformat.read_metrics_csv(tmp_path / "b" / "metrics.csv")
    assert min(wrong, key=lambda r: r["test_loss"])["epoch"] < 3
    # a resume with the other rule is refused: model.pth would mix the two
    assert train(data, tmp_path / "a", "--val_split", "0", "--epoch", "4", "--resume") == 2


def test_keep_last_refuses_patience(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main.parse_args(["--keep", "last", "--patience", "3"])
    assert e.value.code == 2 and "--keep last keeps no such loss" in capsys.readouterr().err


def test_elastic_distortion_is_a_smooth_field_of_its_alpha_drawn_after_the_affine_one() -> None:
    images = torch.rand(8, 1, 28, 28)
    plain, elastic = Distortion(), Distortion(elastic=20)
    once, again = (elastic(images, elastic.generator(3, 2)) for _ in range(2))
    assert torch.equal(once, again)  # repeats for a (seed, epoch)
    assert not torch.equal(once, plain(images, plain.generator(3, 2)))
    field = elastic.displacement(images, elastic.generator(0, 1)) * 14  # grid units -> pixels
    assert field.shape == (8, 28, 28, 2)
    # uniform noise in [-1, 1] (sd 0.577) through a normalised 2-D Gaussian of 4 pixels (sum of
    # squared weights 1 / (4 pi 16)) times 20 pixels: sd about 0.81 pixels away from the edges
    assert 0.6 < field[:, 8:20, 8:20].std() < 1.0 and field.abs().max() < 4
    # smooth: neighbours one pixel apart correlate by exp(-1 / (4 sigma^2)) = 0.98, so their
    # difference is about 0.18 of the field (unsmoothed noise: about 1.4 of it)
    step = (field[:, 1:] - field[:, :-1]).abs().mean()
    assert step < 0.3 * field.abs().mean()
    # twice the alpha, twice the field (the same noise)
    double = Distortion(elastic=40).displacement(images, elastic.generator(0, 1)) * 14
    assert torch.allclose(double, 2 * field, atol=1e-5)


@pytest.mark.parametrize(
    "flag, value", [("--elastic", "20"), ("--distortion", "0.5"), ("--clean_epochs", "3")]
)
def test_distortion_flags_need_augment(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main.parse_args([flag, value])
    assert e.value.code == 2 and "give --augment true with it" in capsys.readouterr().err
    assert getattr(main.parse_args(["--augment", flag, value]), flag[2:]) == float(value)


def test_the_accurate_recipe_without_distortions_has_no_clean_epochs() -> None:
    # its clean_epochs shape nothing there: not refused, and recorded as the report's 0
    args = main.parse_args(["--recipe", "accurate", "--augment", "false"])
    assert (args.augment, args.clean_epochs, args.ema) == (False, 0, 0.999)
    assert main.parse_args(["--recipe", "accurate"]).clean_epochs == 6


def test_clean_epochs_train_on_undistorted_images_and_bind_the_resume(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # every epoch clean is a run without distortions, weight for weight; none clean is not
    assert train(tiny_data, tmp_path / "none", "--augment", "false") == 0
    assert train(tiny_data, tmp_path / "all", "--clean_epochs", "3") == 0
    assert same_weights(tmp_path / "none" / "model.pth", tmp_path / "all" / "model.pth")
    # one clean epoch: the first two as --augment's, the third on undistorted images
    assert train(tiny_data, tmp_path / "one", "--clean_epochs", "1") == 0
    assert train(tiny_data, tmp_path / "zero") == 0
    one, zero = (metrics(tmp_path / name) for name in ("one", "zero"))
    assert one[:2] == zero[:2] and one[2]["train_loss"] != zero[2]["train_loss"]
    assert json.loads((tmp_path / "one" / "config.json").read_text())["clean_epochs"] == 1
    assert (
        "augment: True  clean_epochs: 1  ema: 0.9" in (tmp_path / "one" / "model.log").read_text()
    )
    assert "augment: True  ema: 0.9" in (tmp_path / "zero" / "model.log").read_text()
    capsys.readouterr()
    assert train(tiny_data, tmp_path / "one", "--epoch", "4", "--resume") == 2
    assert "clean_epochs 1 (now 0)" in capsys.readouterr().err


def test_distortion_scales_every_affine_limit() -> None:
    # smooth images (a blob each), whose pixel change grows linearly with the displacement
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = torch.rand(64, 2, 1, 1) * 8 + 10
    images = torch.exp(-((x - centres[:, :1]) ** 2 + (y - centres[:, 1:]) ** 2) / 18)
    plain = Distortion()
    assert plain.scaled(1) == plain
    half = plain.scaled(0.5)
    assert (half.degrees, half.scale, half.shear, half.shift) == (5, 0.05, 0.05, 1)
    # the same draws, half the map's distance from the identity: about half the pixel change
    moved = (plain(images, plain.generator(0, 1)) - images).abs().mean()
    moved_half = (half(images, half.generator(0, 1)) - images).abs().mean()
    assert 0.3 < moved_half / moved < 0.7
    nothing = plain.scaled(0)
    assert torch.allclose(nothing(images, nothing.generator(0, 1)), images, atol=1e-5)


def test_weight_decay_and_distortion_change_the_run_and_bind_its_resume(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tiny_data, tmp_path / "plain", "--epoch", "1") == 0
    changed = ("--weight_decay", "0.5", "--distortion", "0.5")
    for name, flags in (("decay", changed[:2]), ("milder", changed[2:]), ("both", changed)):
        assert train(tiny_data, tmp_path / name, "--epoch", "1", *flags) == 0
        assert not same_weights(tmp_path / "plain" / "model.pth", tmp_path / name / "model.pth")
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    assert (config["weight_decay"], config["distortion"]) == (0.5, 0.5)
    log = (tmp_path / "both" / "model.log").read_text()
    assert "weight_decay: 0.5" in log and "distortion: 0.5" in log
    assert "label_smoothing: 0\n" in (tmp_path / "plain" / "model.log").read_text()  # no decay
    capsys.readouterr()
    assert train(tiny_data, tmp_path / "both", "--epoch", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert "weight_decay 0.5 (now 0.0), distortion 0.5 (now 1.0)" in err
