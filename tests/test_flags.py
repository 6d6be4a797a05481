"""Bad flags: every one is refused in one line (argparse's usage block left out), exit 2, no
traceback, before any work and without making the output folder. The one table of them."""

from __future__ import annotations

from pathlib import Path

import pytest

import main

BAD_FLAGS = [
    (["--learning_rate", "0"], "must be greater than 0"),
    (["--learning_rate", "-0.001"], "must be greater than 0"),
    (["--learning_rate", "fast"], "'fast' is not a valid float"),
    (["--learning_rate", "nan"], "must be greater than 0"),
    (["--learning_rate", "1e-1:1e-5:3"], "'1e-1:1e-5:3': LOW must be below HIGH"),
    (["--learning_rate", "1e-5:1e-1:1"], "'1e-5:1e-1:1': '1' must be at least 2"),
    (["--learning_rate", "0:1:3"], "'0:1:3': '0' must be greater than 0"),
    (["--learning_rate", "a:b:c"], "'a:b:c': 'a' is not a valid float"),
    (["--learning_rate", "1e-3:1e-2"], "'1e-3:1e-2': not a rate nor LOW:HIGH:N"),
    (["--learning_rate", "1e-3", "0.001"], "a learning rate is given twice"),
    (["--seed", "0", "1", "0"], "a seed is given twice"),
    (["--seed", "0", "1", "--list_runs", "--run_index", "0"], "--list_runs lists every run"),
    (["--resume", "--overwrite"], "--overwrite starts a run afresh and --resume continues it"),
    (["--seed", "0", "1", "--run_index", "1", "--overwrite"], "and --run_index (which resumes"),
    (["--summarize", "x", "--learning_rate", "1e-3"], "--learning_rate would change nothing"),
    (["--summarize", "x", "--data_dir", "d", "--seed", "2"], "--seed, --data_dir would change"),
    (["--summarize", "x", "--limit", "5", "--amp", "true"], "--limit, --amp would change nothing"),
    (
        ["--learning_rate", "1e-3:1e-2:3", "1.0001e-3"],
        "the rates 0.001 and 0.0010001 would share the folder lr_1e-3",
    ),
    (["--batch_size", "0"], "must be at least 1"),
    (["--epoch", "-2"], "must be at least 1"),
    (["--epoch", "1.5"], "'1.5' is not a valid int"),
    (["--limit", "0"], "must be at least 1"),
    (["--seed", "1", "-3"], "must be at least 0"),
    (["--label_smoothing", "1"], "must be less than 1"),
    (["--recipe", "slow"], "invalid choice: 'slow'"),
    (["--lr_schedule", "cosine"], "invalid choice: 'cosine'"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--test", "maybe"], "expected true/false/yes/no/1/0"),
    (["--predict", "x.png", "--topk", "11"], "must be at most 10"),
    (["--test", "true", "--learning_rate", "1e-3", "1e-4"], "--test takes one model"),
    (["--test", "true", "--seed", "0", "1"], "--test takes one model"),
    (["--test", "true", "--predict", "x.png"], "not allowed with argument --test"),
    (["--predict", "x.png", "--summarize", "lr_1e-3"], "not allowed with argument --predict"),
    (["--topk", "3"], "--topk only works with --predict"),
    (
        ["--test", "true", "--output_csv", "a.csv", "--no_preprocess"],
        "--output_csv, --no_preprocess only work with --predict",
    ),
    (["--seed", "4294967296"], "must be at most 4,294,967,295"),
    (["--learning_rate", "1e39"], "must be at most 10"),
    (["--learning_rate", "inf"], "must be greater than 0"),
    (["--batch_size", "99999999999"], "must be at most"),
    (["--val_split", "-1"], "must be at least 0"),
    (["--patience", "0"], "must be at least 1"),
    (["--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
]


@pytest.mark.parametrize("argv, needle", BAD_FLAGS)
def test_bad_flags_are_refused_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture, tiny_data: Path, argv: list[str], needle: str
) -> None:
    out = tmp_path / "o"
    assert main.main([*argv, "--data_dir", str(tiny_data), "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("main.py: error:") and "usage:" not in err
    assert not out.exists()


def test_a_resume_hint_drops_the_overwrite_that_would_refuse_it() -> None:
    from mnist_cnn.training.workers import resume_command

    hint = resume_command(["--epoch", "3", "--overwrite", "--out_dir", "runs/x"])
    assert hint == "python main.py --epoch 3 --out_dir runs/x --resume"
    assert main.parse_args(hint.split()[2:]).resume
