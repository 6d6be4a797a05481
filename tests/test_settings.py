"""Each training setting is declared once (mnist_cnn/settings.py): the flags, the recipes,
config.json, model.log's header, the resume check and the values of older checkpoints derive
from the declaration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli import refused
from paths import ROOT
from runs import before_records, report_settings

import main
from mnist_cnn import settings
from mnist_cnn.training import checkpoints

SOURCES = [ROOT / "main.py", *(ROOT / "mnist_cnn").rglob("*.py"), *(ROOT / "tools").glob("*.py")]


def lines_naming(name: str) -> list[str]:
    """The lines of non-test code that name a setting."""
    pattern = re.compile(rf"\b{name}\b")
    return [
        f"{path.name}:{n}"
        for path in SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]


@pytest.mark.parametrize(
    "name, most",
    [("clean_epochs", 4), ("lr_schedule", 7), ("last_epoch_fraction", 7)],
)
def test_a_setting_is_named_in_its_declaration_recipe_and_use_only(name: str, most: int) -> None:
    # clean_epochs: the declaration, the accurate recipe, Run.distorted (3 lines); lr_schedule:
    # also the two recipes that change it, train()'s schedule, the one-cycle check of a resume,
    # short_schedule's two and the rate per epoch of folders older than metrics.csv's lr column;
    # last_epoch_fraction: the fast recipe, Run.batches and Run.steps, short_schedule's two,
    # that rate per epoch
    assert len(lines_naming(name)) <= most, lines_naming(name)


def test_every_setting_has_a_flag_a_help_and_a_value_in_every_recipe() -> None:
    text = main.build_parser()[0].format_help()
    for s in settings.SETTINGS:
        assert f"--{s.name}" in text
        for recipe in main.RECIPES.values():
            assert s.name in recipe
    assert main.RECIPES["report"] == settings.REPORT
    assert "(default: the recipe's: report 0, fast 0, accurate 6)" in " ".join(text.split())


def test_a_run_records_every_setting_it_was_given(trained: Path) -> None:
    config = json.loads((trained / "config.json").read_text())
    for name in settings.IN_RUN:
        assert name in config, name
    assert config["clean_epochs"] == 0 and config["patience"] is None and config["figure"] is True


def header(**changed: object) -> list[str]:
    """model.log's setting lines for the report's values with some changed."""
    values = {**settings.REPORT, **changed}
    run = main.Run(
        settings=report_settings(**{**changed, "epoch": 5}),
        folder=Path("x"),
        seed=0,
        speed=main.Speed(),
        recipe="report",
    )
    sizes = {"val": values["val_split"], "train": 1, "test": 1}
    lines = [settings.header_line(line, values, run, sizes) for line in settings.HEADER_LINES]
    return [line for line in lines if line is not None]


def test_model_logs_header_shows_the_settings_as_it_always_did() -> None:
    assert header() == ["lr_schedule: constant  label_smoothing: 0"]
    assert header(weight_decay=0.01, label_smoothing=0.1, lr_schedule="onecycle") == [
        "lr_schedule: onecycle  label_smoothing: 0.1  weight_decay: 0.01"
    ]
    assert header(keep="last")[1] == (
        "val_split: 0  validation images: 0  model.pth: last epoch  patience: off"
    )
    assert header(val_split=100, patience=3)[1] == (
        "val_split: 100  validation images: 100  model.pth: lowest validation loss  patience: 3"
    )
    assert header(augment=True, elastic=2.0, clean_epochs=3, distortion=1.5)[1] == (
        "augment: True  distortion: 1.5  elastic: 2  clean_epochs: 3  ema: 0  "
        "model.pth holds the trained weights"
    )
    assert header(ema=0.999)[1] == (
        "augment: False  ema: 0.999  model.pth holds the weight average (EMA, decay 0.999)"
    )
    assert header(last_epoch_fraction=0.85)[1] == (
        "last_epoch_fraction: 0.85 (the last epoch trains on that share of its shuffled batches)"
    )


def test_a_setting_that_needs_a_switch_is_refused_without_it(
    capsys: pytest.CaptureFixture,
) -> None:
    assert main.main(["--clean_epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "main.py: error: --clean_epochs acts only with --augment; give --augment true with it "
        "(see --help)\n"
    )


def rewrite_checkpoint(path: Path, **config: object) -> None:
    """Change the settings a checkpoint records (None: drop one, as in a checkpoint older than
    the setting), with its checksum made to match."""
    state = torch.load(path, weights_only=False)
    del state["sha256"]
    for key, value in config.items():
        if value is None:
            del state["config"][key]
        else:
            state["config"][key] = value
    state["sha256"] = checkpoints.digest(state)
    torch.save(state, path)


def test_a_checkpoint_older_than_a_setting_resumes_with_the_reports_value(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    flags = ["--epoch", "2", "--data_dir", str(tiny_data), "--out_dir", str(out)]
    assert main.main([*flags, "--epoch", "1"]) == 0
    before_records(out)
    rewrite_checkpoint(out / "checkpoint.pth", clean_epochs=None, elastic=None, weight_decay=None)
    refused(capsys, [*flags, "--resume", "--weight_decay", "0.01"], "weight_decay 0.0 (now 0.01)")
    rewrite_checkpoint(out / "checkpoint.pth", label_smoothing=0.2)
    refused(capsys, [*flags, "--resume"], "label_smoothing 0.2 (now 0.0)")
    rewrite_checkpoint(out / "checkpoint.pth", label_smoothing=0.0)
    assert main.main([*flags, "--resume"]) == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def test_a_run_records_the_code_it_was_trained_with(trained: Path) -> None:
    """config.json's commit (the full hash), dirty, and the versions that decide the numbers;
    model.log's header shows them."""
    import subprocess
    from importlib.metadata import version

    from paths import ROOT

    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    status = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout
    config = json.loads((trained / "config.json").read_text())
    assert config["commit"] == head.strip() and len(config["commit"]) == 40
    assert config["dirty"] is bool(status.strip())
    assert (config["torchvision"], config["numpy"]) == (version("torchvision"), version("numpy"))
    state = "with changes" if config["dirty"] else "clean"
    assert (
        f"code: commit {head.strip()} ({state})  torchvision: {version('torchvision')}  "
        f"numpy: {version('numpy')}"
    ) in (trained / "model.log").read_text()
