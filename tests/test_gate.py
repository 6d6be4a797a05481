"""The write harness (#45): every mode that writes, against every kind of thing already at one of
its outputs, with and without --overwrite. By content hash, nothing but what the mode may write
changes; a refusal is one line, exit 2, and changes nothing at all."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from paths import ROOT, git_status

import main
from mnist_cnn import files, runformat


@dataclass(frozen=True)
class Mode:
    """A command that writes, seen from the harness's folder `ws`."""

    argv: Callable[[Path, Path], list[str]]  # (ws, data) -> the command line
    target: str  # the output the kinds are put at, relative to ws
    writes: tuple[str, ...]  # what it may change when it runs, relative to ws (a folder: "x/")
    named: bool = False  # the target is a path given on the command line: no record, links followed
    fresh: bool = False  # a training refuses an earlier run of its own without --overwrite
    resumes: bool = False  # --resume: --overwrite is refused with it
    inputs: bool = False  # an input of the mode can be put at the target


RUN, IMAGES = "run", "images"
TRAINING = (*runformat.TRAINING_WRITES, files.RECORD, ".lock")
MODEL = ["--model_path", f"{RUN}/model.pth"]


def training(out: str, *more: str) -> Callable[[Path, Path], list[str]]:
    return lambda ws, data: ["--epoch", "3", "--data_dir", str(data), "--out_dir", out, *more]


MODES = {
    "train": Mode(
        training("new"), "new/model.log", tuple(f"new/{n}" for n in TRAINING), fresh=True
    ),
    "resume": Mode(
        training(RUN, "--resume"),
        f"{RUN}/model.log",
        tuple(f"{RUN}/{n}" for n in TRAINING),
        resumes=True,
    ),
    "grid": Mode(
        lambda ws, data: [
            "--seed",
            "0",
            "1",
            "--epoch",
            "1",
            "--data_dir",
            str(data),
            "--out_dir",
            "grid",
        ],
        "grid/results.md",
        ("grid/",),
        fresh=True,
    ),
    "summarize": Mode(
        lambda ws, data: ["--summarize", RUN, "--out_dir", "sum"],
        "sum/results.md",
        ("sum/results.md", "sum/compare.png", f"sum/{files.RECORD}"),
    ),
    "summarize --tensorboard": Mode(
        lambda ws, data: ["--summarize", RUN, "--out_dir", "sum", "--tensorboard"],
        f"{RUN}/{runformat.EVENTS}",
        (
            "sum/results.md",
            "sum/compare.png",
            f"sum/{files.RECORD}",
            f"{RUN}/{runformat.EVENTS}",
            f"{RUN}/{files.RECORD}",
        ),
    ),
    "test": Mode(
        lambda ws, data: ["--test", "true", *MODEL, "--data_dir", str(data)],
        f"{RUN}/test.log",
        tuple(f"{RUN}/{n}" for n in (*main.TEST_REPORT, files.RECORD)),
        inputs=True,
    ),
    "lr_find": Mode(
        lambda ws, data: [
            "--lr_find",
            "--lr_steps",
            "10",
            "--data_dir",
            str(data),
            "--out_dir",
            "lf",
        ],
        "lf/lr_find.csv",
        ("lf/lr_find.csv", "lf/lr_find.png", f"lf/{files.RECORD}"),
    ),
    "predict --output_csv": Mode(
        lambda ws, data: ["--predict", IMAGES, *MODEL, "--output_csv", "out/rows.csv"],
        "out/rows.csv",
        ("out/rows.csv",),
        named=True,
        inputs=True,
    ),
    "predict --save_preprocessed": Mode(
        lambda ws, data: ["--predict", IMAGES, *MODEL, "--save_preprocessed", "seen"],
        "seen/one.png",
        ("seen/one.png", "seen/seven.png", "seen/zero.png", f"seen/{files.RECORD}"),
    ),
    "export": Mode(
        lambda ws, data: ["--export", "out/page.html", *MODEL],
        "out/page.html",
        ("out/page.html",),
        named=True,
        inputs=True,
    ),
}
KINDS = (
    "absent", "own", "stranger", "changed", "link", "dangling", "folder", "fifo", "input",
)  # fmt: skip
VICTIM, MISSING = "outside/victim.txt", "outside/missing.txt"


def allowed(mode: Mode, kind: str, overwrite: bool) -> bool:
    """The gate's rule: what may be replaced, by kind of target."""
    if overwrite and mode.resumes:
        return False  # refused as meaningless: a resume continues, --overwrite starts anew
    if kind == "absent":
        return True
    if kind in ("folder", "fifo", "input"):
        return False
    if kind in ("link", "dangling"):  # a named link is written through, as people expect
        return mode.named and (kind == "dangling" or overwrite)
    if kind == "own":  # the record vouches; a named file has none; a training starts anew
        return overwrite or not (mode.named or mode.fresh)
    return overwrite  # a stranger's file, or the tool's own changed since


def snapshot(ws: Path) -> dict[str, str]:
    """Every entry under ws by relative path: a file's sha256, a link's target, or its kind."""
    seen = {}
    for folder, dirs, names in os.walk(ws):
        for name in [*dirs, *names]:
            path = Path(folder, name)
            kind = path.lstat().st_mode
            if stat.S_ISLNK(kind):
                seen[str(path.relative_to(ws))] = f"link to {os.readlink(path)}"
            elif stat.S_ISREG(kind):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                seen[str(path.relative_to(ws))] = digest
            else:
                seen[str(path.relative_to(ws))] = "folder" if stat.S_ISDIR(kind) else "other"
    return seen


def place(ws: Path, mode: Mode, kind: str, run: Callable[[], int]) -> None:
    """Put a kind of thing at the mode's target (for `own` and `changed`, by running it once)."""
    target = ws / mode.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("own", "changed"):
        if not mode.resumes:  # a resume's run folder is the tool's already, 2 epochs of 3
            assert run() == 0
        if kind == "changed":
            with open(target, "ab") as f:
                f.write(b"edited by a person\n")
    elif kind == "absent":
        target.unlink(missing_ok=True)
    elif kind == "stranger":
        target.write_bytes(b"a person's own file\n")
    elif kind == "link":
        target.unlink(missing_ok=True)
        target.symlink_to(ws / VICTIM)
    elif kind == "dangling":
        target.unlink(missing_ok=True)
        target.symlink_to(ws / MISSING)
    elif kind == "folder":
        target.unlink(missing_ok=True)
        target.mkdir()
    elif kind == "fifo":
        target.unlink(missing_ok=True)
        os.mkfifo(target)
    else:  # an input of the mode, under the output's name (a hard link: a regular file)
        target.unlink(missing_ok=True)
        os.link(ws / RUN / "model.pth", target)


CASES = [
    pytest.param(name, kind, overwrite, id=f"{name}-{kind}{'-overwrite' * overwrite}")
    for name, mode in MODES.items()
    for kind in KINDS
    for overwrite in (False, True)
    if (kind != "input" or mode.inputs)
    and not (kind == "fifo" and name == "predict --output_csv")  # a FIFO there is a stream
]


@pytest.mark.parametrize(("name", "kind", "overwrite"), CASES)
def test_a_mode_writes_only_what_the_gate_allows(
    name: str,
    kind: str,
    overwrite: bool,
    tiny_data: Path,
    trained_once: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    mode = MODES[name]
    ws = tmp_path / "ws"
    shutil.copytree(trained_once, ws / RUN)
    shutil.copytree(ROOT / "docs" / "digits", ws / IMAGES)
    (ws / "outside").mkdir()
    (ws / VICTIM).write_text("a file outside every output folder\n")
    monkeypatch.chdir(ws)
    argv = mode.argv(ws, tiny_data)
    place(ws, mode, kind, lambda: main.main(argv))
    before = snapshot(ws)
    capsys.readouterr()
    code = main.main([*argv, *["--overwrite"] * overwrite])
    err = capsys.readouterr().err
    after = snapshot(ws)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    if not allowed(mode, kind, overwrite):
        assert code == 2 and "error: " in err and err.count("\n") == 1, (code, err)
        assert changed == set(), changed
        return
    assert code == 0, err
    may = set(mode.writes) | ({VICTIM, MISSING} if mode.named else set())
    may |= {str(Path(p).parent) for p in may}  # the folders they are made in
    outside = {p for p in changed - may if not p.startswith(tuple(w for w in may if w[-1:] == "/"))}
    assert not outside, outside
    target = ws / mode.target
    if kind in ("link", "dangling"):  # written through: the link stays a link
        assert target.is_symlink() and Path(os.path.realpath(target)).is_file()
    else:
        assert stat.S_ISREG(target.lstat().st_mode)


class Killed(BaseException):
    """A kill -9 in-process: nothing of the tool's catches it."""


@pytest.mark.parametrize("moment", [1, 2, 3])
def test_a_kill_at_any_moment_of_a_write_leaves_a_file_the_record_vouches_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: int
) -> None:
    """A write is three atomic steps (the record accepts both, the file, the record accepts
    the new one): killed after any of them, the file there is one the record vouches for."""
    gate = files.Gate(tmp_path, overwrite=False)
    gate.write("model.log", b"old")
    steps = []
    real = files.atomic_write

    def dies_after(path: Path, data: bytes) -> None:
        real(path, data)
        steps.append(path.name)
        if len(steps) == moment:
            raise Killed

    monkeypatch.setattr(files, "atomic_write", dies_after)
    with pytest.raises(Killed):
        gate.write("model.log", b"new")
    monkeypatch.setattr(files, "atomic_write", real)
    assert steps[-1] == ("model.log" if moment == 2 else files.RECORD)
    assert (tmp_path / "model.log").read_bytes() == (b"old" if moment == 1 else b"new")
    assert gate.vouches("model.log")
    (tmp_path / "model.log").write_bytes(b"a person's")
    assert not gate.vouches("model.log")


def test_an_event_file_that_cannot_be_read_is_a_failed_write(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Root reads every file, so the refusal of the system is played by the test."""
    assert main.main(["--summarize", str(trained), "--out_dir", str(tmp_path / "a"),
                      "--tensorboard"]) == 0  # fmt: skip
    real = Path.read_bytes

    def unreadable(path: Path) -> bytes:
        if path.name == runformat.EVENTS:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    (trained / "metrics.csv").write_text((trained / "metrics.csv").read_text())
    argv = ["--summarize", str(trained), "--out_dir", str(tmp_path / "b"), "--tensorboard"]
    assert main.main(argv) == 1
    err = capsys.readouterr().err
    assert f"Cannot write {trained / runformat.EVENTS}: Permission denied" in err
    assert "Check the path" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["--list_runs", "--seed", "0", "1"],
        ["--predict", "docs/digits", "--model_path", "lr_1e-3/model.pth"],
        ["--predict", "docs/digits", "--model_path", "lr_1e-3/model.pth", "--output_csv", "-"],
    ],
)
def test_overwrite_is_refused_where_nothing_is_written(
    argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main.main([*argv, "--overwrite"]) == 2
    assert "--overwrite replaces files this command would write" in capsys.readouterr().err


SEARCH_RUNS = sorted(p.parent for p in (ROOT / "experiments" / "search").glob("*/seed*/model.log"))


def test_resume_into_every_committed_search_run_is_refused_and_changes_nothing(
    tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """experiments/search commits its runs without weights or checkpoints: a resume there has
    nothing to continue and would train over the evidence."""
    assert len(SEARCH_RUNS) == 42
    before = git_status()
    for run in SEARCH_RUNS:
        argv = ["--resume", "--data_dir", str(tiny_data), "--out_dir", str(run)]
        assert main.main(argv) == 2, run
        assert "Nothing to resume" in capsys.readouterr().err
    assert git_status() == before


def test_the_committed_evidence_is_never_replaced_without_overwrite(
    tiny_data: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The card's own command over the committed lr_1e-3/, another test of its model, a summary
    into a committed experiment: each refuses (or, for the same bytes, writes nothing)."""
    monkeypatch.chdir(ROOT)
    before = git_status()
    data = ["--data_dir", str(tiny_data)]
    assert main.main(["--learning_rate", "0.001", "--epoch", "1", *data]) == 2
    assert main.main(["--test", "true", "--model_path", "lr_1e-3/model.pth", *data]) == 2
    optimizer = "experiments/optimizer"
    assert main.main(["--summarize", optimizer, "--out_dir", optimizer]) in (0, 2)
    assert git_status() == before


def test_a_persons_tmp_files_in_a_run_folder_stay(
    trained: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only the temporary files of the tool's own writes, left by a kill, are removed."""
    (trained / ".mynotes.tmp").write_text("precious\n")
    (trained / ".model.log.abc123.tmp").write_text("a kill's leftover\n")
    argv = ["--epoch", "3", "--resume", "--data_dir", str(tiny_data), "--out_dir", str(trained)]
    assert main.main(argv) == 0
    assert (trained / ".mynotes.tmp").read_text() == "precious\n"
    assert not (trained / ".model.log.abc123.tmp").exists()


def test_the_range_test_never_writes_into_a_run_folder(
    trained: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "--lr_find",
        "--lr_steps",
        "10",
        "--data_dir",
        str(tiny_data),
        "--out_dir",
        str(trained),
    ]
    assert main.main(argv) == 2
    assert "is a run's folder" in capsys.readouterr().err
    assert not (trained / "lr_find.csv").exists()


def test_a_resumed_grid_says_what_to_do_about_a_changed_summary(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--seed", "0", "1", "--epoch", "1", "--data_dir", str(tiny_data)]
    argv += ["--out_dir", str(tmp_path / "g")]
    assert main.main(argv) == 0
    with open(tmp_path / "g" / "results.md", "a") as f:
        f.write("my notes\n")
    assert main.main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--resume replaces only the summary files it wrote" in err and "--overwrite" not in err
