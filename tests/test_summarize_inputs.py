"""--summarize trusts nothing it reads: each damaged folder gets one line naming the file (exit 2)
or is skipped with its reason; duplicates are refused; non-finite numbers never crash a plot."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from runs import config_record
from test_results import fake_run

import main
from mnist_cnn import runformat


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """Two rates x two seeds with a validation split and config.json files."""
    for seed in (0, 1):
        for lr, name in ((1e-3, "lr_1e-3"), (1e-4, "lr_1e-4")):
            folder = tmp_path / "grid" / f"seed{seed}" / name
            fake_run(folder, lr, [0.05, 0.03, 0.04], seed, val_losses=[0.06, 0.02, 0.05])
            config = config_record(lr, seed, 3, val_split=64)
            (folder / "config.json").write_text(json.dumps(config))
    return tmp_path / "grid"


def summarize(capsys: pytest.CaptureFixture, *folders: Path) -> tuple[int, str, str]:
    argv = ["--summarize", *map(str, folders), "--out_dir", str(folders[0]), "--overwrite"]
    code = main.main(argv)  # an earlier summary there is this test's own
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(capsys: pytest.CaptureFixture, *folders: Path) -> str:
    code, _, err = summarize(capsys, *folders)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_row_with_a_field_missing_is_refused_not_read_as_other_columns(
    grid: Path, capsys: pytest.CaptureFixture
) -> None:
    csv = grid / "seed0" / "lr_1e-3" / "metrics.csv"
    lines = csv.read_text().splitlines()
    lines[2] = ",".join(lines[2].split(",")[:-1])
    csv.write_text("\n".join(lines) + "\n")
    err = one_line(capsys, grid)
    assert f"{csv} line 3 has 10 fields, not the header's 11" in err


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda t: t.replace("0.030000", "zero point three", 1), "not a number"),
        (lambda t: t.replace(",0.9", ",5.0", 1), "not an accuracy from 0 to 1"),
        (lambda t: t.replace("0.030000", "x" * 200_000, 1), "cannot be read as CSV"),
        (lambda t: t.replace("\n2,", "\n7,", 1), "epochs do not count 1, 2, 3"),
    ],
)
def test_a_damaged_metrics_csv_is_one_line(
    grid: Path, capsys: pytest.CaptureFixture, damage, needle: str
) -> None:
    csv = grid / "seed1" / "lr_1e-4" / "metrics.csv"
    csv.write_text(damage(csv.read_text()))
    assert needle in one_line(capsys, grid) and str(csv) in one_line(capsys, grid)


def test_non_finite_losses_are_shown_left_out_and_never_crash_a_plot(
    grid: Path, capsys: pytest.CaptureFixture
) -> None:
    csv = grid / "seed0" / "lr_1e-3" / "metrics.csv"
    edit(csv, "0.050000", "nan")  # the last epoch's validation loss
    other = grid / "seed1" / "lr_1e-3" / "metrics.csv"
    lines = other.read_text().splitlines()
    other.write_text(
        "\n".join(
            [lines[0]]
            + [
                ",".join(
                    "inf" if "loss" in h else v
                    for h, v in zip(lines[0].split(","), line.split(","))
                )
                for line in lines[1:]
            ]
        )
        + "\n"
    )
    code, out, _ = summarize(capsys, grid)
    assert code == 0
    text = (grid / "results.md").read_text()
    assert "| seed0/lr_1e-3 | 0.001 | 0 | 3 |" in text and "nan" in text
    assert "Not a number, so left out of the statistics:" in text
    assert (grid / "compare.png").stat().st_size > 0


def test_a_model_log_that_is_not_text_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake_run(tmp_path / "lr_1e-3", 1e-3, [0.05, 0.03])
    (tmp_path / "lr_1e-3" / "metrics.csv").unlink()
    log = tmp_path / "lr_1e-3" / "model.log"
    log.write_bytes(log.read_bytes().replace(b"epoch", b"\xffpoch", 1))
    assert "is not text (byte" in one_line(capsys, tmp_path / "lr_1e-3")


@pytest.mark.parametrize(
    "config, needle",
    [
        ('{"learning_rate": 0.001, "seed": 0, "epochs": 1e999}', "epochs is inf"),
        ("[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ('{"learning_rate": 0.001, "seed": ' + "9" * 5000 + "}", "config.json cannot be read"),
        ('{"learning_rate": NaN, "seed": 0}', "learning_rate is nan"),
        ('{"learning_rate": -1, "seed": 0}', "learning_rate is -1"),
        ('{"learning_rate": true, "seed": 0}', "learning_rate is True"),
        ('{"learning_rate": 0.001, "seed": 1.5}', "seed is 1.5"),
        ('{"learning_rate": 0.001, "seed": 1e30}', "seed is 1e+30"),
        ('{"learning_rate": 0.001, "seed": ' + "9" * 100 + "}", "bit integer"),
    ],
)
def test_nonsense_in_config_json_is_one_line(
    grid: Path, capsys: pytest.CaptureFixture, config: str, needle: str
) -> None:
    path = grid / "seed0" / "lr_1e-3" / "config.json"
    path.write_text(config)
    err = one_line(capsys, grid)
    assert needle in err and str(path) in err


def test_two_folders_of_one_rate_and_seed_are_refused_naming_both(
    grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    edit(grid / "seed1" / "lr_1e-3" / "config.json", '"seed": 1', '"seed": 0')
    err = one_line(capsys, grid)
    assert (
        "seed0/lr_1e-3 and" in err
        and "seed1/lr_1e-3 are both the run of learning rate 0.001 and seed 0" in err
    )
    copy = tmp_path / "copy"
    shutil.copytree(grid, copy)
    edit(grid / "seed1" / "lr_1e-3" / "config.json", '"seed": 0', '"seed": 1')
    edit(copy / "seed1" / "lr_1e-3" / "config.json", '"seed": 0', '"seed": 1')
    assert "are both the run of learning rate" in one_line(capsys, grid, copy)


def test_the_same_folder_given_twice_counts_once(grid: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, _ = summarize(capsys, grid, grid / "seed0" / "lr_1e-3", grid)
    assert code == 0
    text = (grid / "results.md").read_text()
    assert text.count("| seed0/lr_1e-3 |") == 4  # three rules' tables and the dynamics table
    assert "over 2 seeds" in text


@pytest.mark.slow
def test_a_fuzz_of_damaged_files_never_gives_a_traceback(
    grid: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = random.Random(7)
    names = ("metrics.csv", "config.json", "model.log")
    originals = {n: (grid / "seed0" / "lr_1e-4" / n).read_bytes() for n in names}
    codes: dict[int, int] = {}
    for i in range(210):
        name = names[i % 3]
        data = bytearray(originals[name])
        for _ in range(rng.randrange(1, 6)):
            if not data:  # cut to nothing: an empty file is damage enough
                break
            kind, at = rng.randrange(4), rng.randrange(len(data))
            if kind == 0:
                data[at] = rng.randrange(256)
            elif kind == 1:
                del data[at : at + rng.randrange(1, 20)]
            elif kind == 2:
                data[at:at] = rng.choice([b",", b"\n", b"nan", b"1e999", b'"', b"{", b"-"])
            else:
                data = data[:at]
        (grid / "seed0" / "lr_1e-4" / name).write_bytes(bytes(data))
        code, _, err = summarize(capsys, grid)
        assert code in (0, 2) and (code == 0 or err.count("\n") == 1), err
        codes[code] = codes.get(code, 0) + 1
        (grid / "seed0" / "lr_1e-4" / name).write_bytes(originals[name])
    assert codes.get(2, 0) > 50 and codes.get(0, 0) > 10, codes


def test_two_folders_that_trained_one_rate_differently_are_named_by_their_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # "split" held out a validation split; "all" trained on everything and kept its last epoch,
    # each seed 0.1 points more accurate (with a little spread, so there is an interval)
    for seed in range(4):
        base = 0.99 + seed / 10000
        fake_run(
            tmp_path / "split" / f"seed{seed}" / "lr_4e-3",
            4e-3,
            [0.05, 0.04],
            seed,
            test_accs=[base - 0.001, base],
            val_losses=[0.06, 0.05],
        )
        fake_run(
            tmp_path / "all" / f"seed{seed}" / "lr_4e-3",
            4e-3,
            [0.05, 0.045],
            seed,
            test_accs=[base, base + 0.001 + seed % 2 / 10000],
            keep="last",
        )
    code, _, _ = summarize(capsys, tmp_path / "split", tmp_path / "all")
    assert code == 0
    text = (tmp_path / "split" / "results.md").read_text()
    # named by what config.json says set them apart, not by folder
    assert "**Settings**: runs of one learning rate trained with other keep, so each" in text
    assert "0.004 (keep last) beats 0.004 (keep lowest) by 0.11 points" in text
    assert "| all/seed0/lr_4e-3 | 0.004 | 0 |" in text and "| split/seed3/lr_4e-3 |" in text
    assert "## Claims" not in text and "## The rate curve" not in text
    # one folder alone: no folder names, as before
    code, _, _ = summarize(capsys, tmp_path / "all")
    text = (tmp_path / "all" / "results.md").read_text()
    assert code == 0 and "**Settings**" not in text and "| seed0/lr_4e-3 | 0.004 |" in text


@pytest.mark.parametrize("rate", ["nan", "inf", "-0.5", "0", "fast"])
def test_a_rate_column_that_is_no_rate_is_refused_in_one_line(tmp_path: Path, rate: str) -> None:
    path = tmp_path / "metrics.csv"
    header = ",".join(c.name for c in (*runformat.COLUMNS, runformat.LR))
    path.write_text(f"{header}\n1,0.5,0.9,0.4,0.9,0.004,0.003,1.0,yes,{rate}\n")
    with pytest.raises(main.UserError, match=f"holds lr '{rate}', not a positive rate"):
        runformat.read_metrics_csv(path)
    path.write_text(f"{header}\n1,0.5,0.9,0.4,0.9,0.004,0.003,1.0,yes,0.001\n")
    assert runformat.read_metrics_csv(path)[0]["lr"] == 0.001


def test_a_run_whose_every_loss_is_nan_is_summarized_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake_run(tmp_path / "lr_1e-3", 1e-3, [float("nan")] * 3)
    code, out, err = summarize(capsys, tmp_path / "lr_1e-3")
    assert code == 0 and "Traceback" not in err
    assert "no epoch of any run has a finite loss to be chosen by" in out
