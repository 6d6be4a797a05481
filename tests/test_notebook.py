"""docs/notebook.ipynb: committed without outputs, and run as a reader runs it (from docs/ in a
copy of the clone, MNIST from $MNIST_DIR) it trains the fast recipe to at least 99.1% and reads
the digit it draws."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from paths import REAL_MNIST, ROOT

NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code) >= 6
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_the_notebook_runs_and_reaches_the_fast_recipes_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("main.py", "requirements.txt"):
        shutil.copy2(ROOT / name, clone / name)
    for name in ("mnist_cnn", "docs"):
        shutil.copytree(ROOT / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("MNIST_DIR", str(REAL_MNIST))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(clone / "docs")}},
    )
    client.execute()  # a failing cell (the notebook's own checks among them) raises here
    said = "".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert f"the clone: {clone}" in said and "read as 7" in said
    accuracy = (clone / "runs" / "notebook" / "test.log").read_text()
    assert float(accuracy.split("test accuracy: ")[1].split("%")[0]) >= 99.1
    assert {"figure.png", "confusion.png", "errors.png"} <= {
        p.name for p in (clone / "runs" / "notebook").iterdir()
    }
    assert not os.path.exists(ROOT / "docs" / "runs")
