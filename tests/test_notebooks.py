"""The notebooks run top to bottom (their own asserts check their numbers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("flax")
pytest.importorskip("matplotlib")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
BUDGET_SECONDS = 120  # each notebook must run in under two minutes on CPU


def test_the_three_notebooks_are_here() -> None:
    names = [path.name for path in NOTEBOOKS]
    assert names == ["01_quickstart.ipynb", "02_keras_parity.ipynb", "03_feature_tour.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "notebooks are stored without outputs"
    )
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(path.parent.parent), os.environ.get("PYTHONPATH", "")])
    )
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        notebook,
        timeout=BUDGET_SECONDS,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    seconds = time.perf_counter() - start
    print(f"{path.name}: {seconds:.1f}s")
    assert seconds < BUDGET_SECONDS
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )
    assert images >= 2, "the notebook draws its plots"
