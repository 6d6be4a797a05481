"""No command replaces what it did not make: every mode that writes refuses an earlier output
without --overwrite and any output that is one of its inputs; links are written through; a flag
a mode does not honour is refused. Each case runs on a scratch copy of committed files, and what
must not change is compared byte for byte afterwards."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cli import refused
from paths import ROOT

import main
from mnist_cnn import runformat
from mnist_cnn.use import inference

COMMITTED = ROOT / "lr_1e-3"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """A scratch copy of the committed seed-0 run at 1e-3, its full-test report included."""
    return Path(shutil.copytree(COMMITTED, tmp_path / "lr_1e-3"))


def test_a_partial_test_never_replaces_the_full_report(
    committed: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(committed)
    model = ["--test", "true", "--model_path", str(committed / "model.pth")]
    refused(
        capsys, [*model, "--data_dir", str(tiny_data)], "test.log already exists", "--overwrite"
    )
    assert snapshot(committed) == before
    elsewhere = committed.parent / "partial"
    assert main.main([*model, "--data_dir", str(tiny_data), "--out_dir", str(elsewhere)]) == 0
    assert "test images: 128" in (elsewhere / "test.log").read_text()
    assert snapshot(committed) == before  # --out_dir honoured: the report went there
    assert main.main([*model, "--data_dir", str(tiny_data), "--overwrite"]) == 0
    assert "test images: 128" in (committed / "test.log").read_text()


def test_test_mode_rewrites_its_own_report(trained: Path, tiny_data: Path) -> None:
    argv = ["--test", "true", "--model_path", str(trained / "model.pth"), "--data_dir"]
    assert main.main([*argv, str(tiny_data)]) == 0
    first = (trained / "test.log").read_text()
    assert main.main([*argv, str(tiny_data)]) == 0  # the same model on the same images
    assert (trained / "test.log").read_text() == first


def test_test_mode_keeps_another_tests_report_of_the_same_model(
    trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same model on as many images whose labels differ: another report, kept."""
    argv = ["--test", "true", "--model_path", str(trained / "model.pth"), "--data_dir"]
    assert main.main([*argv, str(tiny_data)]) == 0
    before = {f: (trained / f).read_bytes() for f in main.TEST_REPORT}
    other = Path(shutil.copytree(tiny_data, tmp_path / "other"))
    labels = other / "MNIST" / "raw" / main.SPLIT_FILES["test"][1]
    data = bytearray(labels.read_bytes())
    data[8] = (data[8] + 1) % 10  # the first test image's label
    labels.write_bytes(bytes(data))
    refused(capsys, [*argv, str(other)], "reports another test of this model", "--overwrite")
    assert {f: (trained / f).read_bytes() for f in main.TEST_REPORT} == before
    assert main.main([*argv, str(other), "--overwrite"]) == 0
    assert (trained / "test.log").read_bytes() != before["test.log"]


def test_summarize_keeps_an_earlier_summary_without_overwrite(
    committed: Path, capsys: pytest.CaptureFixture
) -> None:
    out = committed.parent / "summary"
    assert main.main(["--summarize", str(committed), "--out_dir", str(out)]) == 0
    (out / "results.md").write_text("kept")
    refused(capsys, ["--summarize", str(committed), "--out_dir", str(out)], "results.md")
    assert (out / "results.md").read_text() == "kept"
    assert main.main(["--summarize", str(committed), "--out_dir", str(out), "--overwrite"]) == 0
    assert (out / "results.md").read_text().startswith("# Results")


def test_lr_find_keeps_an_earlier_range_test(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "finder"
    out.mkdir()
    (out / "lr_find.csv").write_text("kept")
    argv = ["--lr_find", "--seed", "0", "--data_dir", str(tiny_data), "--out_dir", str(out)]
    refused(capsys, [*argv, "--lr_steps", "10"], "lr_find.csv already exists", "--overwrite")
    assert (out / "lr_find.csv").read_text() == "kept"


def test_export_never_replaces_the_template_or_the_model(
    committed: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "template.html"  # a copy: a regression must not hit the real one
    template.write_bytes(inference.PAGE.read_bytes())
    monkeypatch.setattr(inference, "PAGE", template)
    model = ["--model_path", str(committed / "model.pth")]
    refused(capsys, ["--export", str(template), *model, "--overwrite"], "inputs")
    assert template.read_bytes() == (ROOT / "mnist_cnn" / "use" / "page.html").read_bytes()
    link = committed / "model.onnx"
    link.symlink_to(committed / "model.pth")
    refused(capsys, ["--export", str(link), *model, "--overwrite"], "the same file as")
    assert snapshot(committed)["model.pth"] == (COMMITTED / "model.pth").read_bytes()


def test_export_keeps_an_earlier_file_and_writes_through_links(
    committed: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = ["--model_path", str(committed / "model.pth")]
    page = tmp_path / "page.html"
    page.write_text("kept")
    refused(capsys, ["--export", str(page), *model], "page.html already exists", "--export")
    assert page.read_text() == "kept"
    link = tmp_path / "link.html"
    link.symlink_to(page)
    assert main.main(["--export", str(link), *model, "--overwrite"]) == 0
    assert link.is_symlink() and page.read_text().startswith("<!doctype html")
    device = tmp_path / "full.onnx"
    device.symlink_to("/dev/full")
    refused(capsys, ["--export", str(device), *model, "--overwrite"], "not a regular file")
    assert device.is_symlink()


def test_predict_never_writes_over_its_images_or_an_earlier_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = Path(shutil.copytree(ROOT / "docs" / "digits", tmp_path / "digits"))
    before = snapshot(images)
    model = ["--model_path", str(COMMITTED / "model.pth")]
    one = images / "one.png"
    refused(capsys, ["--predict", str(images), "--output_csv", str(one), *model, "--overwrite"])
    refused(capsys, ["--predict", str(images), "--save_preprocessed", str(images), *model])
    assert snapshot(images) == before
    csv = tmp_path / "rows.csv"
    csv.write_text("kept")
    refused(capsys, ["--predict", str(images), "--output_csv", str(csv), *model], "--overwrite")
    assert csv.read_text() == "kept"
    seen = tmp_path / "seen"
    assert main.main(["--predict", str(images), "--save_preprocessed", str(seen), *model]) == 0
    written = snapshot(seen)
    assert sorted(written) == [".written.json", "one.png", "seven.png", "zero.png"]
    # its own pictures again: the same bytes, nothing replaced; a person's picture stays
    assert main.main(["--predict", str(images), "--save_preprocessed", str(seen), *model]) == 0
    assert snapshot(seen) == written
    (seen / "one.png").write_bytes(b"mine")
    refused(capsys, ["--predict", str(images), "--save_preprocessed", str(seen), *model])
    assert (seen / "one.png").read_bytes() == b"mine"
    # images named as files beside the folder written into: read, never written over
    files = [str(images / "one.png"), str(images / "seven.png")]
    argv = ["--predict", *files, "--save_preprocessed", str(images), *model, "--overwrite"]
    assert main.main(argv) == 0
    assert {k: v for k, v in snapshot(images).items() if k in before} == before
    assert sorted(os.listdir(images)) == [
        ".written.json",
        "one.png",
        "one_.png",
        "seven.png",
        "seven_.png",
        "zero.png",
    ]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--export", "x.onnx", "--out_dir", "o"], "--out_dir only works when training or with"),
        (["--predict", "x.png", "--out_dir", "o"], "--out_dir only works"),
        (["--serve", "--overwrite"], "--overwrite only works"),
        (["--summarize", "x", "--resume"], "--resume only works when training"),
    ],
)
def test_a_mode_refuses_an_output_flag_it_does_not_honour(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_default_outputs_go_under_runs_and_a_grid_prints_its_layer_table_once(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A grid over seeds, a range test and a summary given no --out_dir write under runs/; the
    grid's console shows the layer table once and of its summary the Answer and the paths."""
    monkeypatch.chdir(tmp_path)
    data = ["--data_dir", str(tiny_data)]
    grid = ["--seed", "0", "1", "--epoch", "1", "--limit", "200", "--amp", "false", *data]
    assert main.main(grid) == 0
    out = capsys.readouterr().out
    assert out.count("Conv2d-1") == 1 and out.count("(layer table: in model.log)") == 1
    assert "Answer\n" in out and "## Per run" not in out
    assert out.rstrip().endswith("wrote runs/results.md, runs/compare.png")
    assert (tmp_path / "runs" / "seed1" / "lr_1e-3" / "model.pth").is_file()
    assert main.main(["--summarize", "runs"]) == 0
    assert "wrote runs/summary/results.md" in capsys.readouterr().out
    assert main.main(["--lr_find", "--seed", "0", "--lr_steps", "10", *data]) == 0
    assert "wrote runs/lr_find/lr_find.csv and runs/lr_find/lr_find.png" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_a_fresh_run_keeps_a_persons_own_config_and_figure(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder without the run files but with a config.json and a figure.png someone made."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    (out / "figure.png").write_bytes(b"my figure")
    before = snapshot(out)
    argv = ["--epoch", "1", "--limit", "200", "--data_dir", str(tiny_data), "--out_dir", str(out)]
    refused(capsys, argv, "already holds an earlier run (config.json, figure.png)", "--overwrite")
    assert snapshot(out) == before


def test_a_grid_never_writes_over_a_persons_resume_script(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A grid whose resume command is kept in resume.sh (shortened here to any length) writes
    it only once nothing refuses, and never over one it did not make."""
    from mnist_cnn.training import grid

    monkeypatch.setattr(grid, "LONGEST_HINT", 10)
    out = tmp_path / "grid"
    out.mkdir()
    (out / "resume.sh").write_text("mine\n")
    argv = ["--seed", "0", "1", "--epoch", "1", "--limit", "200", "--amp", "false"]
    argv += ["--data_dir", str(tiny_data), "--out_dir", str(out)]
    refused(capsys, argv, f"{out / 'resume.sh'} already exists", "--overwrite")
    assert sorted(os.listdir(out)) == ["resume.sh"] and (out / "resume.sh").read_text() == "mine\n"
    (out / "resume.sh").unlink()
    assert main.main(argv) == 0
    assert (out / "resume.sh").read_text().endswith("--resume\n")
    (out / "resume.sh").write_text("mine\n")
    refused(capsys, argv, "already holds an earlier run")  # the runs refuse first
    refused(capsys, [*argv, "--resume"], f"{out / 'resume.sh'} already exists")
    assert (out / "resume.sh").read_text() == "mine\n"


def test_a_link_in_a_run_folder_is_never_written_through(
    trained: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An event file that links to another run's model.log, and a dangling model.log link:
    resume, training and --summarize --tensorboard refuse them and write nothing."""
    other = tmp_path / "other.log"
    other.write_text("someone's log\n")
    events = trained / runformat.EVENTS
    events.symlink_to(other)
    data = ["--data_dir", str(tiny_data), "--out_dir", str(trained)]
    refused(capsys, ["--epoch", "2", *data, "--resume"], "is a symbolic link", "Remove the link")
    summary = ["--summarize", str(trained), "--out_dir", str(tmp_path / "s"), "--tensorboard"]
    refused(capsys, summary, f"{events} is a symbolic link")
    assert other.read_text() == "someone's log\n" and not (tmp_path / "s").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "model.log").symlink_to(tmp_path / "elsewhere.log")  # dangling
    argv = ["--epoch", "1", "--limit", "200", "--data_dir", str(tiny_data), "--out_dir", str(fresh)]
    refused(capsys, argv, "model.log is a symbolic link")
    assert not (tmp_path / "elsewhere.log").exists()
    assert sorted(p.name for p in fresh.iterdir()) == ["model.log"]


def test_resume_keeps_a_config_json_this_tool_did_not_write(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "F"
    out.mkdir()
    for text in ("stranger\n", '{"mine": 1}\n'):
        (out / "config.json").write_text(text)
        argv = ["--resume", "--epoch", "1", "--limit", "200", "--data_dir", str(tiny_data)]
        refused(capsys, [*argv, "--out_dir", str(out)], "cannot be read as a run's settings")
        assert (out / "config.json").read_text() == text


def test_test_mode_knows_its_model_by_any_path(
    trained: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same model named by another path (absolute, with .., from inside its folder)
    rewrites the same report, keeping the path first given."""
    monkeypatch.chdir(trained.parent)
    argv = ["--test", "true", "--data_dir", str(tiny_data), "--model_path"]
    assert main.main([*argv, "trained/model.pth"]) == 0
    first = (trained / "test.log").read_text()
    for path in (str(trained / "model.pth"), "./trained/../trained/model.pth"):
        assert main.main([*argv, path]) == 0
        assert (trained / "test.log").read_text() == first
    monkeypatch.chdir(trained)
    assert main.main([*argv, "model.pth"]) == 0
    assert (trained / "test.log").read_text() == first
