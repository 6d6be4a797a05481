"""main.py's shape: leaf modules that never import it, a start without POSIX-only modules, and
--help answered before torch loads."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

LEAVES = ("digits.py", "server.py", "stats.py", "optim.py", "results.py")
# runs main.py as a script with `import fcntl` failing, as it does on Windows
WITHOUT_FCNTL = (
    "import runpy, sys\n"
    "sys.modules['fcntl'] = None\n"
    "sys.path.insert(0, '.')\n"
    "sys.argv = ['main.py', *sys.argv[1:]]\n"
    "runpy.run_path('main.py', run_name='__main__')\n"
)


def python(*args: str, code: str = WITHOUT_FCNTL) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_never_import_main(leaf: str) -> None:
    source = (ROOT / leaf).read_text()
    assert not re.search(r"^\s*(import main|from main import)", source, re.M)


def test_main_holds_the_reports_core() -> None:
    source = (ROOT / "main.py").read_text()
    for name in (
        "class CNN",
        "def get_loader",
        "def train_epoch",
        "def train(",
        "def evaluate",
        "def show_error_images",
        "def seed_everything",
        "def parse_args",
    ):
        assert name in source
    assert "import fcntl" not in source


@pytest.mark.slow
def test_every_mode_runs_without_fcntl(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert python("--help").returncode == 0
    trained = python("--epoch", "1", "--data_dir", str(tiny_data), "--out_dir", str(out))
    assert trained.returncode == 0, trained.stderr
    tested = python(
        "--test", "true", "--data_dir", str(tiny_data), "--model_path", str(out / "model.pth")
    )
    assert tested.returncode == 0 and "test accuracy" in tested.stdout, tested.stderr
    predicted = python(
        "--predict", str(ROOT / "docs" / "serve.png"), "--model_path", str(out / "model.pth")
    )
    assert predicted.returncode == 0 and "serve.png" in predicted.stdout, predicted.stderr


def test_help_and_flag_errors_answer_before_torch_loads() -> None:
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['main.py', *sys.argv[1:]]\n"
        "try:\n    runpy.run_path('main.py', run_name='__main__')\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    assert python("--help", code=probe).stdout.strip().endswith("exit 0 False")
    assert python("--epoch", "0", code=probe).stdout.strip().endswith("exit 2 False")


@pytest.mark.slow
def test_help_takes_a_fraction_of_import_torch(capsys: pytest.CaptureFixture) -> None:
    def seconds(*args: str) -> float:
        began = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, timeout=120)
        return time.perf_counter() - began

    help_s = min(seconds("main.py", "--help") for _ in range(3))
    torch_s = min(seconds("-c", "import torch") for _ in range(3))
    with capsys.disabled():  # a figure for the README, not an assertion on time
        print(f"\n--help {help_s:.2f} s, import torch {torch_s:.2f} s: {help_s / torch_s:.2f}x")


def flat(text: str) -> str:
    """Markdown text as one line: blockquote marks and line breaks gone, spaces collapsed."""
    return " ".join(re.sub(r"^> ?", "", text, flags=re.M).split())


@pytest.mark.parametrize("results", ["results.md", "study/results.md"])
def test_the_readme_quotes_each_generated_answer_as_it_is(results: str) -> None:
    path = ROOT / results
    if not path.exists():
        pytest.skip(f"{results} is not committed yet")
    answer = path.read_text().split("## Answer\n\n")[1].split("\n\n")[0]
    bullets = [line.removeprefix("- ") for line in answer.splitlines()]
    readme = flat((ROOT / "README.md").read_text())
    assert bullets and all(flat(bullet) in readme for bullet in bullets)
