"""Any setting as an axis (#42): a batch size x label smoothing x seed grid, trained in one
process, task by task and by torchrun workers, equals the same runs trained alone; --summarize
names its groups by their settings, whether the runs lie in one grid or in folders of their own;
bad grids are refused before any folder is made."""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import signal
from pathlib import Path

import pytest
import scipy.stats
import torch
from cli import refused, start_cli, wait_for_epochs
from paths import ROOT
from runs import same_weights
from test_grid import torchrun

import main
from mnist_cnn import runformat, settings
from mnist_cnn.training import grid as grids

AXES = ["--batch_size", "32", "64", "--label_smoothing", "0", "0.1", "--seed", "0", "1"]
SHORT = ["--epoch", "1", "--amp", "false"]
COMBINATIONS = list(itertools.product(("32", "64"), ("0", "0.1"), ("0", "1")))


def member(grid: Path, batch: str, smoothing: str, seed: str) -> Path:
    return grid / f"batch_size_{batch}" / f"label_smoothing_{smoothing}" / f"seed{seed}" / "lr_1e-3"


def train_alone(out: Path, data: Path) -> Path:
    """Each run of the grid trained alone, with scalar flags, into a folder of its own."""
    for batch, smoothing, seed in COMBINATIONS:
        argv = [*SHORT, "--batch_size", batch, "--label_smoothing", smoothing, "--seed", seed]
        folder = out / f"b{batch}_s{smoothing}_{seed}"
        assert main.main([*argv, "--data_dir", str(data), "--out_dir", str(folder)]) == 0
    return out


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """The grid's runs trained alone."""
    return train_alone(tmp_path_factory.mktemp("solo"), tiny_data)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """The 2 x 2 x 2 grid trained in one process."""
    out = tmp_path_factory.mktemp("grid") / "g"
    assert main.main([*AXES, *SHORT, "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0
    return out


def assert_equal_to_solo(grid: Path, solo: Path) -> None:
    for batch, smoothing, seed in COMBINATIONS:
        alone = solo / f"b{batch}_s{smoothing}_{seed}" / runformat.MODEL
        assert same_weights(member(grid, batch, smoothing, seed) / runformat.MODEL, alone)


def test_a_grid_over_three_axes_in_one_process_equals_each_run_alone(
    grid: Path, solo: Path
) -> None:
    assert len(runformat.grid_runs(grid, settings.AXIS_LEVELS)) == 8
    (grid / "batch_size_notes" / "lr_1e-3").mkdir(parents=True)  # a person's, not a level
    (grid / "batch_size_notes" / "lr_1e-3" / runformat.LOG).write_text("notes\n")
    assert len(runformat.grid_runs(grid, settings.AXIS_LEVELS)) == 8
    shutil.rmtree(grid / "batch_size_notes")
    assert_equal_to_solo(grid, solo)
    config = (member(grid, "64", "0.1", "1") / runformat.CONFIG).read_text()
    assert '"batch_size": 64' in config and '"label_smoothing": 0.1' in config


def test_job_array_tasks_in_a_shuffled_order_equal_each_run_alone(
    tiny_data: Path, tmp_path: Path, solo: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "array"
    flags = [*AXES, *SHORT, "--data_dir", str(tiny_data), "--out_dir", str(out)]
    assert main.main([*flags, "--list_runs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[7] == (
        f"7  {member(out, '64', '0.1', '1')}  batch_size 64, label_smoothing 0.1, seed 1"
    )
    assert listed[8] == "8 runs: a job array of indices 0-7 (sbatch --array=0-7)"
    order = list(range(8))
    random.Random(4).shuffle(order)
    for k in order:
        assert main.main([*flags, "--run_index", str(k)]) == 0
    assert_equal_to_solo(out, solo)


@pytest.mark.slow
def test_two_torchrun_workers_train_the_grid_equal_to_each_run_alone(
    tiny_data: Path, tmp_path: Path
) -> None:
    """torchrun's workers run one thread each: the runs alone do too (floats depend on it)."""
    out = tmp_path / "workers"
    proc = torchrun(*AXES, *SHORT, "--data_dir", str(tiny_data), "--out_dir", str(out))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert_equal_to_solo(out, train_alone(tmp_path / "solo", tiny_data))
    finally:
        torch.set_num_threads(threads)


def comparison(text: str, first: str, second: str) -> tuple[float, float]:
    """The 95% interval of rule (a)'s test accuracy row comparing two groups."""
    section = text.split("Paired by seed, lowest test loss")[1].split("\n\n", 2)[1]
    row = next(
        line for line in section.splitlines() if f"| 0.001 ({first}) − 0.001 ({second}) |" in line
    )
    low, high = re.search(r"\[([-+][\d.]+), ([-+][\d.]+)\]", row).groups()
    return float(low), float(high)


@pytest.mark.parametrize("where", ["grid", "solo"])
def test_summarize_names_groups_by_their_settings_and_compares_them(
    where: str, grid: Path, solo: Path, tmp_path: Path
) -> None:
    """The groups come from config.json, so folders trained apart compare as one grid does;
    one comparison's interval is Student's t over the runs' own paired accuracies."""
    folders = [grid] if where == "grid" else sorted(solo.iterdir())
    text = main.summarize(folders, tmp_path / "s")
    assert "0.001 (batch_size 32, label_smoothing 0)" in text
    assert "the highest mean is 0.001 (batch_size" in text
    assert "runs of one learning rate trained with other batch_size, label_smoothing" in text
    accuracy = {
        (batch, smoothing, seed): 100
        * runformat.read_metrics_csv(member(grid, batch, smoothing, seed) / runformat.METRICS)[0][
            "test_acc"
        ]
        for batch, smoothing, seed in COMBINATIONS
    }
    checked = 0
    for one, other in [(("32", "0"), ("32", "0.1")), (("32", "0"), ("64", "0"))]:
        d = [accuracy[(*one, s)] - accuracy[(*other, s)] for s in ("0", "1")]
        if d[0] == d[1]:
            continue  # no spread, no interval (the tiny data can give equal differences)
        t = scipy.stats.ttest_1samp(d, 0).confidence_interval(0.95)
        a, b = (f"batch_size {x}, label_smoothing {y}" for x, y in (one, other))
        assert comparison(text, a, b) == (round(t.low, 3), round(t.high, 3))
        checked += 1
    assert checked


def test_runs_that_differ_in_a_setting_are_never_pooled(tiny_data: Path, tmp_path: Path) -> None:
    """Two runs of 1 epoch and two of 2, at one rate: two groups, named by their epochs."""
    for epochs, seeds in (("1", ["0", "1"]), ("2", ["0", "1"])):
        argv = ["--epoch", epochs, "--seed", *seeds, "--data_dir", str(tiny_data)]
        assert main.main([*argv, "--out_dir", str(tmp_path / f"e{epochs}")]) == 0
    text = main.summarize([tmp_path / "e1", tmp_path / "e2"], tmp_path / "s")
    assert "0.001 (epochs 1)" in text and "0.001 (epochs 2)" in text


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--batch_size", "64", "0"], "argument --batch_size"),
        (["--batch_size", "64", "64"], "a value of --batch_size is given twice"),
        (["--limit", "100", "200"], "--limit takes one value: a grid varies --learning_rate"),
        (
            ["--label_smoothing", "0.1", "0.1000000000000001"],
            "would share the folder label_smoothing_0.1",
        ),
        (["--keep", "lowest", "last", "--patience", "2"], "--keep last keeps no such loss"),
        (
            ["--augment", "false", "true", "--distortion", "0.5", "1"],
            "--distortion takes several values only where --augment is true in every run",
        ),
        (
            ["--learning_rate", "1e-5:1e-1:100", "--seed", *map(str, range(10)),
             "--batch_size", *map(str, range(1, 102))],
            "a grid of 101,000 runs; at most 100,000",
        ),
        (["--batch_size", "32", "64", "--test", "true"], "--test takes one model"),
    ],
)  # fmt: skip
def test_a_bad_grid_is_refused_in_one_line_before_any_folder_is_made(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "g"
    assert main.main([*argv, "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_grid_folder_holding_another_grid_is_refused_unless_resumed(
    grid: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = Path(shutil.copytree(grid, tmp_path / "g"))
    flags = [*SHORT, "--data_dir", str(tiny_data), "--out_dir", str(out)]
    other = ["--batch_size", "16", "--label_smoothing", "0", "0.2", "--seed", "0", "1"]
    refused(capsys, [*other, *flags], "holds runs of another grid", "--resume")
    assert not (out / "batch_size_16").exists()


def test_a_run_trains_again_from_its_record_tensor_equal(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--config RUN/config.json: every setting, the seed and the recipe as recorded; a flag
    beside it overrides; a record older than a setting trains with the report's value."""
    data = ["--data_dir", str(tiny_data)]
    settings = ["--epoch", "2", "--batch_size", "64", "--label_smoothing", "0.1", "--seed", "3"]
    assert (
        main.main([*settings, "--weight_decay", "0.01", *data, "--out_dir", str(tmp_path / "a")])
        == 0
    )
    record = tmp_path / "a" / runformat.CONFIG
    assert main.main(["--config", str(record), *data, "--out_dir", str(tmp_path / "b")]) == 0
    assert same_weights(tmp_path / "a" / runformat.MODEL, tmp_path / "b" / runformat.MODEL)
    again = json.loads((tmp_path / "b" / runformat.CONFIG).read_text())
    first = json.loads(record.read_text())
    same = ("batch_size", "label_smoothing", "weight_decay", "seed", "epochs", "recipe")
    assert {k: again[k] for k in same} == {k: first[k] for k in same}
    argv = ["--config", str(record), "--epoch", "1", *data, "--out_dir", str(tmp_path / "c")]
    assert main.main(argv) == 0
    assert json.loads((tmp_path / "c" / runformat.CONFIG).read_text())["epochs"] == 1
    # a record from before --weight_decay and --optimizer existed: the report's values
    older = {k: v for k, v in first.items() if k not in ("weight_decay", "optimizer")}
    (tmp_path / "older.json").write_text(json.dumps(older))
    argv = ["--config", str(tmp_path / "older.json"), *data, "--out_dir", str(tmp_path / "d")]
    assert main.main(argv) == 0
    alone = [*settings, *data, "--out_dir", str(tmp_path / "e")]
    assert main.main(alone) == 0  # weight decay 0, Adam
    assert same_weights(tmp_path / "d" / runformat.MODEL, tmp_path / "e" / runformat.MODEL)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": "red"}, "unknown keys 'colour'"),
        ({"batch_size": 0}, "batch_size is 0, not a value of --batch_size"),
        ({"optimizer": "lion"}, "optimizer is 'lion', not a value of --optimizer"),
        ({"seed": -1}, "--config"),
        ({"recipe": "magic"}, "recipe is 'magic'"),
    ],
)
def test_a_record_with_unknown_keys_or_values_out_of_bounds_is_refused(
    change: dict, needle: str, trained_once: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = json.loads((trained_once / runformat.CONFIG).read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    assert main.main(["--config", str(tmp_path / "config.json"), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_committed_run_trains_again_from_its_record(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study's records predate several settings; shortened here, the rest as recorded."""
    monkeypatch.chdir(ROOT)
    record = ROOT / "experiments" / "study" / "seed2" / "lr_5e-4" / runformat.CONFIG
    out = tmp_path / "again"
    argv = ["--config", str(record), "--epoch", "1", "--val_split", "64"]
    assert main.main([*argv, "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0
    config = json.loads((out / runformat.CONFIG).read_text())
    assert (config["seed"], config["learning_rate"], config["optimizer"]) == (2, 5e-4, "adam")


def test_runs_without_a_switch_train_its_settings_at_the_reports_value(
    tiny_data: Path, tmp_path: Path
) -> None:
    """--augment false true --distortion 0.5: the run without augmentation records (and
    trains with) the report's distortion, as a run alone would; its record trains again."""
    out = tmp_path / "g"
    argv = ["--augment", "false", "true", "--distortion", "0.5", *SHORT]
    assert main.main([*argv, "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 0
    off = json.loads((out / "augment_false" / "lr_1e-3" / runformat.CONFIG).read_text())
    on = json.loads((out / "augment_true" / "lr_1e-3" / runformat.CONFIG).read_text())
    assert (off["distortion"], on["distortion"]) == (1.0, 0.5)
    record = out / "augment_false" / "lr_1e-3" / runformat.CONFIG
    again = [
        "--config",
        str(record),
        "--data_dir",
        str(tiny_data),
        "--out_dir",
        str(tmp_path / "a"),
    ]
    assert main.main(again) == 0


def test_the_short_schedule_warning_reads_every_run_of_the_grid() -> None:
    """A grid over --epoch warns about its shortened run whatever the values' order."""
    for epochs in (["2", "1"], ["1", "2"]):
        args = main.parse_args(["--recipe", "fast", "--epoch", *epochs])
        said = {
            grids.short_schedule(grids.with_settings(args, run), main.RECIPES["fast"], 235)
            for run in grids.plan_runs(args, False)
        }
        assert len(said - {None}) == 1, said


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"recipe": ["fast"]}, "recipe is ['fast'], not one of"),
        ({"epochs": None}, "no epochs, which every config.json has held"),
        ({"learning_rate": None}, "no learning_rate, which every config.json has held"),
    ],
)
def test_a_damaged_record_is_refused_by_config(
    change: dict, needle: str, trained_once: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = json.loads((trained_once / runformat.CONFIG).read_text()) | change
    config = {k: v for k, v in config.items() if v is not None or k not in change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main.main(["--config", str(tmp_path / "config.json"), "--list_runs"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_config_takes_its_records_recipe_and_amp_auto_beside_it(
    trained_once: Path, capsys: pytest.CaptureFixture
) -> None:
    record = str(trained_once / runformat.CONFIG)
    assert main.main(["--config", record, "--recipe", "fast", "--list_runs"]) == 2
    assert "leave --recipe out" in capsys.readouterr().err
    args = main.parse_args(["--config", record, "--amp", "auto"])
    assert args.amp == "auto" and args.recipe == "report"


def test_a_grid_never_writes_through_a_linked_level(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, elsewhere = tmp_path / "g", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "batch_size_64").symlink_to(elsewhere)
    argv = [
        "--batch_size",
        "64",
        "128",
        *SHORT,
        "--data_dir",
        str(tiny_data),
        "--out_dir",
        str(out),
    ]
    refused(capsys, argv, "batch_size_64 is a symbolic link")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_a_grid_over_axes_killed_and_resumed_equals_each_run_alone(
    medium_data: Path, tmp_path: Path
) -> None:
    """kill -9 in the second epoch of the grid's first run, then --resume: every run equals
    the same run trained alone."""
    out = tmp_path / "g"
    flags = ["--batch_size", "32", "64", "--seed", "0", "1", "--epoch", "2", "--amp", "false"]
    flags += ["--data_dir", str(medium_data)]
    proc = start_cli(*flags, "--out_dir", str(out))
    wait_for_epochs(out / "batch_size_32" / "seed0" / "lr_1e-3", 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main.main([*flags, "--out_dir", str(out), "--resume"]) == 0
    for batch, seed in itertools.product(("32", "64"), ("0", "1")):
        alone = tmp_path / f"alone{batch}_{seed}"
        argv = ["--batch_size", batch, "--seed", seed, "--epoch", "2", "--amp", "false"]
        assert main.main([*argv, "--data_dir", str(medium_data), "--out_dir", str(alone)]) == 0
        member = out / f"batch_size_{batch}" / f"seed{seed}" / "lr_1e-3"
        assert same_weights(member / runformat.MODEL, alone / runformat.MODEL), member


def test_summarize_checks_each_record_whole_as_config_does(
    grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A key the format never had, or a setting's value its flag would refuse, is one line."""
    copy = Path(shutil.copytree(grid, tmp_path / "g"))
    path = member(copy, "64", "0.1", "1") / runformat.CONFIG
    record = json.loads(path.read_text())
    for change, needle in (({"colour": "red"}, "unknown keys 'colour'"), ({"ema": 2}, "ema is 2")):
        path.write_text(json.dumps(record | change))
        assert main.main(["--summarize", str(copy), "--out_dir", str(tmp_path / "s")]) == 2
        err = capsys.readouterr().err
        assert needle in err and str(path) in err and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()
