"""main.py's shape: leaf modules that never import it, a start without POSIX-only modules, and
--help answered before torch loads."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from paths import EXPERIMENTS, ROOT

PACKAGE = ROOT / "mnist_cnn"
LEAVES = tuple(sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")))
PACKAGES = {"mnist_cnn", *(f"mnist_cnn.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py"))}
# what main.py imports before torch: the --help and --summarize path
STANDARD_LIBRARY_ONLY = (
    "__init__.py",
    "interrupts.py",
    "flagtypes.py",
    "training/__init__.py",
    "training/workers.py",
    "settings.py",
    "runformat.py",
)
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


def imported_modules(path: Path, at_import: bool = False) -> set[str]:
    """The top-level names of every module a file imports, anywhere in it (parsed, not searched;
    the package's own modules by their full name); at_import: only those imported when the
    module loads (not in functions, not for type hints)."""
    names = set()
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree)
    if at_import:
        nodes = [
            n
            for n in tree.body
            if not (isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
        ]
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module in PACKAGES:
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top = node.module.split(".")[0]
            names.add(node.module if top == "mnist_cnn" else top)
    return names


def top_level_names(path: Path) -> set[str]:
    """The functions, classes and assigned names a module defines at its top level."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_package_holds_every_library_module() -> None:
    assert len(LEAVES) >= 25 and "training/runrecord.py" in LEAVES
    assert (PACKAGE / "use" / "page.html").is_file()


def test_the_package_is_cut_by_genre() -> None:
    rooms = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert rooms == {"training", "analysis", "use"}
    for room in rooms:
        assert "Never imports main" in (PACKAGE / room / "__init__.py").read_text()


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_package_never_imports_main_or_the_tools(leaf: str) -> None:
    assert not {"main", "tools"} & imported_modules(PACKAGE / leaf)


@pytest.mark.parametrize("leaf", STANDARD_LIBRARY_ONLY)
def test_the_modules_main_loads_before_torch_use_the_standard_library_only(leaf: str) -> None:
    own = {module_name(PACKAGE / name) for name in STANDARD_LIBRARY_ONLY}
    assert imported_modules(PACKAGE / leaf, at_import=True) - own <= sys.stdlib_module_names


def test_main_holds_the_cards_names() -> None:
    path = ROOT / "main.py"
    assert {
        "CNN",
        "get_loader",
        "train_epoch",
        "train",
        "evaluate",
        "show_error_images",
        "seed_everything",
        "parse_args",
        "build_parser",
        "RECIPES",
        "MODES",
    } <= top_level_names(path)
    assert "fcntl" not in imported_modules(path)


def test_main_leaves_the_grid_to_its_module_and_dispatches_through_a_mapping() -> None:
    source = (ROOT / "main.py").read_text()
    names = top_level_names(ROOT / "main.py")
    assert not {"plan_runs", "list_runs", "resume_hint", "short_schedule", "run_folder"} & names
    assert "folder_lock" not in source and "globals()[" not in source
    assert not [p for p in PACKAGE.rglob("*.py") if "__getattr__" in p.read_text()]


def module_name(path: Path) -> str:
    """main, mnist_cnn[.ROOM].NAME (a package's __init__.py: the package) or tools.NAME."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(source: str, ours: set[str], module: str = "") -> set[str]:
    """The project's modules a source imports anywhere: at the top, inside functions, under
    TYPE_CHECKING (a lazy import still makes a circle), relative imports resolved against
    `module`, and importlib.import_module or __import__ of a constant name."""
    found = set()
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from ..analysis import events, inside mnist_cnn.training.epochs
                base = ".".join([*package[: len(package) - node.level], *filter(None, [base])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in IMPORTERS
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found & ours


IMPORTERS = ("import_module", "__import__")


def import_graph(extra: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Every module of the project -> the project's modules it imports; `extra` adds source
    lines to a module (to inject a circle)."""
    files = [ROOT / "main.py", *PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py")]
    sources = {module_name(f): f.read_text() for f in files}
    for name, more in (extra or {}).items():
        sources[name] += "\n" + more
    ours = set(sources) | {"tools"}
    return {name: own_imports(source, ours, name) - {name} for name, source in sources.items()}


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of the graph (its modules, the first repeated at the end), or []."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return []
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt, [*path, node])
            if found:
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return []


def test_no_import_circle_lazy_imports_included() -> None:
    graph = import_graph()
    assert "mnist_cnn.files" in graph["mnist_cnn.plots"]  # the graph sees the real imports
    assert circle(graph) == []


def test_the_circle_test_finds_an_injected_lazy_circle() -> None:
    lazy = "def later():\n    from mnist_cnn.analysis.results import RunResult\n"
    found = circle(import_graph({"mnist_cnn.plots": lazy}))
    assert found[0] == found[-1] and {"mnist_cnn.plots", "mnist_cnn.analysis.results"} <= set(found)


ROOMS = ("training", "analysis", "use")


def room_leaks(graph: dict[str, set[str]]) -> list[str]:
    """Imports that cross between rooms (training and analysis either way, use into either) or
    run up from the foundations (the package's top-level modules) into a room."""

    def room(module: str) -> str | None:
        parts = module.split(".")
        if parts[0] != "mnist_cnn":
            return None
        return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "foundation"

    leaks = []
    for module, imported in graph.items():
        here = room(module)
        for other in imported:
            there = room(other)
            if here and there and there not in (here, "foundation"):
                leaks.append(f"{module} -> {other}")
    return sorted(leaks)


def test_the_rooms_never_import_each_other_lazy_imports_included() -> None:
    graph = import_graph()
    assert "mnist_cnn.runformat" in graph["mnist_cnn.training.runrecord"]  # real imports seen
    assert room_leaks(graph) == []


@pytest.mark.parametrize(
    "module, lazy",
    [
        ("mnist_cnn.training.epochs", "from mnist_cnn.analysis.events import write_events"),
        ("mnist_cnn.analysis.events", "from mnist_cnn.training.runrecord import Run"),
        ("mnist_cnn.use.server", "import mnist_cnn.training.optim"),
        ("mnist_cnn.runformat", "from mnist_cnn.analysis import readback"),
        ("mnist_cnn.training.epochs", "from ..analysis.events import write_events"),
        ("mnist_cnn.training.epochs", "from .. import analysis"),
        ("mnist_cnn.use.server", "from mnist_cnn import training"),
        ("mnist_cnn.analysis.summary", "importlib.import_module('mnist_cnn.training.grid')"),
        ("mnist_cnn.analysis.summary", "__import__('mnist_cnn.training')"),
    ],
)
def test_the_rooms_test_finds_an_injected_lazy_import(module: str, lazy: str) -> None:
    graph = import_graph({module: f"def later():\n    {lazy}\n"})
    assert [leak for leak in room_leaks(graph) if leak.startswith(module)]


def test_the_run_folders_format_is_a_leaf() -> None:
    assert import_graph()["mnist_cnn.runformat"] <= {"mnist_cnn.interrupts"}
    assert imported_modules(PACKAGE / "runformat.py") - {"mnist_cnn.interrupts"} <= (
        sys.stdlib_module_names
    )


def test_every_mode_has_its_runner() -> None:
    import main

    assert set(main.RUN_MODE) == set(main.MODES)
    assert all(callable(run) for run in main.RUN_MODE.values())


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


def help_to_torch_ratio(help_s: float, torch_s: float) -> float:
    """--help's start-up time as a fraction of `import torch`'s."""
    return help_s / torch_s


@pytest.mark.slow
def test_help_takes_a_fraction_of_import_torch(capsys: pytest.CaptureFixture) -> None:
    def seconds(*args: str) -> float:
        began = time.perf_counter()
        done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return time.perf_counter() - began

    help_s = min(seconds("main.py", "--help") for _ in range(3))
    torch_s = min(seconds("-c", "import torch") for _ in range(3))
    ratio = help_to_torch_ratio(help_s, torch_s)
    assert ratio == pytest.approx(help_s / torch_s) and help_to_torch_ratio(1, 4) == 0.25
    with capsys.disabled():  # the figure for the README; the time itself is bench.py's to judge
        print(f"\n--help {help_s:.2f} s, import torch {torch_s:.2f} s: {ratio:.2f}x")


def flat(text: str) -> str:
    """Markdown text as one line: blockquote marks and line breaks gone, spaces collapsed."""
    return " ".join(re.sub(r"^> ?", "", text, flags=re.M).split())


@pytest.mark.parametrize("study", ["report", "study"])
def test_each_chapter_quotes_its_generated_answer_and_claims_table_as_they_are(study: str) -> None:
    text = (EXPERIMENTS / study / "results.md").read_text()
    answer = text.split("## Answer\n\n")[1].split("\n\nBetter means")[0]
    parts = [line.removeprefix("- ") for line in answer.splitlines() if line.strip()]
    chapter = flat((EXPERIMENTS / study / "README.md").read_text())
    assert len(parts) >= 4 and all(flat(part) in chapter for part in parts)
    claims = text.split("## Claims")[1].split("| # |")[1].split("\n\n")[0].splitlines()[2:]
    assert len(claims) == 6 and all(flat(row) in chapter for row in claims)


def test_the_rates_chapter_quotes_the_rate_curve_table_as_generated() -> None:
    text = (EXPERIMENTS / "rates" / "results.md").read_text()
    table = text.split("## The rate curve")[1].split("| learning rate |")[1]
    rows = ["| learning rate |" + table.split("\n\n")[0]][0].splitlines()
    chapter = (EXPERIMENTS / "rates" / "README.md").read_text()
    assert len(rows) == 11 and all(row in chapter for row in rows)
    assert "range test (lr_find.csv): suggested learning rate 0.00335" in text


@pytest.mark.slow
def test_summarize_never_imports_torch(tmp_path: Path) -> None:
    command = [sys.executable, "-X", "importtime", "main.py", "--summarize", "experiments/study"]
    done = subprocess.run(
        [*command, "--out_dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert {"numpy", "scipy.stats", "matplotlib"} <= imported  # the list is complete
    assert not [name for name in imported if name.split(".")[0] == "torch"]
    assert (tmp_path / "results.md").read_bytes() == (
        EXPERIMENTS / "study" / "results.md"
    ).read_bytes()
