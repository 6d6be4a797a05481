"""The front door: every command README.md, docs/ and experiments/ show runs as printed on a
fresh copy of the clone (training shortened), exits as the text says, prints what a console
block shows, and leaves the copy clean, as do the natural forms a newcomer types; every long
training command states its cost; every link resolves; the front page stays a front page, and
every figure it states is kept true here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from browser import free_port, need_chromium
from paths import EXPERIMENTS, REAL_MNIST, ROOT, git_status
from PIL import Image

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# every page whose ```bash and ```console blocks run as printed (a ```text block is a record of
# what ran once, with the output it gave: the historical ones are kept that way)
PAGES = [*DOCS, EXPERIMENTS / "README.md", *sorted(EXPERIMENTS.glob("*/README.md"))]
LINKED = PAGES
# installs are CI's own set-up (.ci/run), the suite does not run itself, and the TensorBoard
# server is started and asked by tests/test_tensorboard.py
NOT_RUN = ("pip install", "python -m pytest", "apt-get", "tensorboard --logdir")
SHORT = ["--epoch", "1", "--limit", "600"]
USE_MODES = ("--test", "--predict", "--summarize", "--serve", "--export", "--lr_find")
EXIT = re.compile(r"#\s*exit (\d+)")


@dataclass
class Command:
    """One command of a page: its words, the exit code the text gives it (0 unless a trailing
    `# exit N` says otherwise) and, in a console block, the lines shown beneath it."""

    page: str
    words: list[str]
    exit: int = 0
    shown: list[str] = field(default_factory=list)
    python: bool = False  # a ```python block, run as `python -c`
    note: str = ""  # the comment beside it

    def trains(self) -> bool:
        """Whether it trains (main.py or torchrun in no other mode)."""
        uses = set(USE_MODES) | {"--list_runs"}
        return ("main.py" in self.words) and not uses & set(self.words)


def joined_lines(block: str) -> list[str]:
    """A block's lines with backslash continuations joined."""
    return block.replace("\\\n", " ").splitlines()


def bash_commands(page: str, block: str) -> list[Command]:
    """The commands of a ```bash block, each with its `# exit N`."""
    found = []
    for line in joined_lines(block):
        text, _, comment = line.partition(" #")
        if text.strip() and not text.lstrip().startswith("#"):
            code = EXIT.search("#" + comment)
            exit = int(code.group(1)) if code else 0
            found.append(Command(page, shlex.split(text), exit, note=comment.strip()))
    return found


def console_commands(page: str, block: str) -> list[Command]:
    """The `$ ` commands of a ```console block, each with the lines shown beneath it."""
    found: list[Command] = []
    for line in joined_lines(block):
        if line.startswith("$ "):
            note = line.partition(" #")[2].strip()
            found.append(Command(page, shlex.split(line[2:], comments=True), note=note))
        elif found:
            found[-1].shown.append(line)
    return found


def commands(page: Path) -> list[Command]:
    """Every command a page shows, in order; python blocks too."""
    found = []
    for kind, block in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S):
        name = str(page.relative_to(ROOT))
        if kind == "bash":
            found += bash_commands(name, block)
        elif kind == "console":
            found += console_commands(name, block)
        elif kind == "python":
            found.append(Command(name, [sys.executable, "-c", block], python=True))
    return [c for c in found if not " ".join(c.words).startswith(NOT_RUN)]


def runnable(command: Command, port: int) -> list[str]:
    """The command as this test runs it: python is this interpreter, training is shortened, a
    server listens on a free port, and every localhost:8000 becomes that port."""
    words = [w.replace("localhost:8000", f"localhost:{port}") for w in command.words]
    if words[0] == "python":
        words[0] = sys.executable
    elif words[0] == "torchrun":
        words[:1] = [sys.executable, "-m", "torch.distributed.run"]
    if "main.py" in words and not set(USE_MODES) & set(words):
        words += SHORT
    if "--serve" in words:
        words += ["--port", str(port)]
    return words


def copy_of_the_clone(base: Path) -> Path:
    """The clone as a new user gets it (every file git tracks or would track, as it is now),
    with the MNIST copy where this project's machines have it: ../shared/mnist."""
    if not (REAL_MNIST / "MNIST" / "raw").is_dir():
        pytest.fail(f"the documented commands need the real MNIST at {REAL_MNIST}")
    copy = base / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, map(os.fsdecode, listed)):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (base / "shared").mkdir()
    (base / "shared" / "mnist").symlink_to(REAL_MNIST.resolve())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run([*git, *args], cwd=copy, check=True)
    return copy


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy of the clone for every documented command, run in order."""
    return copy_of_the_clone(tmp_path_factory.mktemp("front_door"))


def top_level(copy: Path) -> set[str]:
    """What stands at a copy's top level, git-ignored or not."""
    return {p.name for p in copy.iterdir()}


def assert_clean(copy: Path, before: set[str]) -> None:
    """Nothing new at the top level but runs/, and no tracked file changed or added."""
    assert top_level(copy) - before <= {"runs"}, sorted(top_level(copy) - before)
    status = git_status(copy)
    assert status == "", status


def start_server(command: Command, words: list[str], cwd: Path, port: int) -> subprocess.Popen:
    """Start a --serve command, check the line it prints against the text, and wait until it
    answers its page."""
    proc = subprocess.Popen(words, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = proc.stdout.readline().decode()
    assert f"http://localhost:{port}/" in line, f"{' '.join(words)} printed {line!r}"
    for shown in command.shown:
        assert shown.replace("localhost:8000", f"localhost:{port}") in line
    with urllib.request.urlopen(f"http://localhost:{port}/", timeout=30) as answer:
        assert answer.status == 200 and b"<canvas" in answer.read()
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0


def check(command: Command, words: list[str], cwd: Path, port: int) -> None:
    """Run one command; it exits as the text says and prints every line a console block shows
    (but the lines the text shortens with an ellipsis)."""
    done = subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=600)
    said = done.stdout + done.stderr
    where = f"{command.page}: {' '.join(command.words)[:120]}"
    assert done.returncode == command.exit, f"{where}\n{said[-2000:]}"
    assert "Traceback" not in said, f"{where}\n{said[-2000:]}"
    for line in command.shown:
        if "…" not in line and "..." not in line:
            assert line.replace("localhost:8000", f"localhost:{port}") in said, f"{where}: {line}"


@pytest.mark.slow
def test_every_documented_command_runs_as_printed_and_leaves_the_clone_clean(
    fresh_copy: Path,
) -> None:
    ran, before = 0, top_level(fresh_copy)
    for page in PAGES:
        server, port = None, free_port()
        for command in commands(page):
            words = runnable(command, port)
            if "--serve" in words:
                server = start_server(command, words, fresh_copy, port)
            else:
                check(command, words, fresh_copy, port)
            ran += 1
        if server:
            stop_server(server)
    assert ran >= 25
    assert_clean(fresh_copy, before)


# what a newcomer types without reading: each writes under runs/ and says so
DATA = ["--data_dir", "../shared/mnist"]
NATURAL = [
    (["--summarize", "experiments/study"], "runs/summary/results.md"),
    (["--lr_find", "--lr_steps", "20", *DATA], "runs/lr_find/lr_find.csv"),
    (["--recipe", "fast", *SHORT, *DATA], "runs/fast: model.pth"),
    (["--test", "true", "--recipe", "fast", *DATA], "runs/fast/test.log"),
    (["--seed", "0", "1", *SHORT, *DATA], "runs/results.md"),
]


@pytest.mark.slow
def test_the_natural_commands_write_only_under_runs_and_say_where(tmp_path: Path) -> None:
    copy = copy_of_the_clone(tmp_path)
    before = top_level(copy)
    for flags, where in NATURAL:
        done = subprocess.run(
            [sys.executable, "main.py", *flags], cwd=copy, capture_output=True, text=True
        )
        said = done.stdout + done.stderr
        assert done.returncode == 0, f"{flags}\n{said[-2000:]}"
        assert where in said, f"{flags}\n{said[-2000:]}"
        assert (copy / where.split(":")[0]).exists()
    assert_clean(copy, before)


def test_every_long_training_command_states_its_cost() -> None:
    """Beside it: runs × epochs, the time and a named CPU; a refused command costs nothing, and
    a shortened one (--limit, at most two epochs, the fast recipe) less than a minute."""
    cost = re.compile(
        r"\d+ runs? × (up to )?\d+ epochs\b.*\b[\d.–]+ (s|min|h)\b.*\b(AMD EPYC|Intel Xeon)"
    )
    long = 0
    for page in PAGES:
        for c in commands(page):
            epochs = c.words[c.words.index("--epoch") + 1] if "--epoch" in c.words else "50"
            short = "--limit" in c.words or int(epochs) <= 2 or "fast" in c.words
            if c.trains() and c.exit == 0 and not short:
                long += 1
                assert cost.search(c.note), f"{c.page}: {' '.join(c.words)[:100]}: {c.note!r}"
    assert long >= 10


def test_the_card_commands_are_among_those_run() -> None:
    readme = commands(ROOT / "README.md")
    lines = {" ".join(c.words): c.exit for c in readme}
    card = "python main.py --learning_rate 0.001 --data_dir ../shared/mnist"
    assert lines[card] == 2 and lines[f"{card} --out_dir runs/lr_1e-3"] == 0
    assert (
        "python main.py --test true --model_path lr_1e-3/model.pth --data_dir ../shared/mnist"
        in lines
    )
    assert any(c.words[0] == "torchrun" for c in commands(ROOT / "docs" / "machines.md"))
    assert sum(len(commands(page)) for page in PAGES) >= 25


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_committed_file(page: Path) -> None:
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        relative = str(path.relative_to(ROOT.resolve()))
        assert path.is_file() and relative in tracked, f"{page.name}: {target}"


def test_the_front_page_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    visible = [p.name for p in ROOT.iterdir() if not p.name.startswith(".")]
    tracked_top = {
        line.split("/")[0]
        for line in subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if not line.startswith(".")
    }
    card = {"main.py", "requirements.txt", "README.md", "lr_1e-3", "lr_5e-4", "lr_1e-4"}
    assert card <= tracked_top and len(tracked_top) <= 14, sorted(tracked_top)
    assert card <= set(visible)


@pytest.mark.slow
def test_the_page_pictures_are_taken_once_the_page_has_settled(tmp_path: Path) -> None:
    need_chromium()
    command = [sys.executable, "-m", "tools.screenshots", "--out_dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # it exits 1 when the 7's bar is not full
    for name in ("page_static.png", "serve.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.size == (900, 640)
