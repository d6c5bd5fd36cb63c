"""The tutorial notebooks: committed clean, parameterised, and each one runs on its own.

Static checks cover every notebook in ``notebooks/``. The slow tests execute notebooks 01-04 in
fast mode (the default: ``VCB_FULL`` is removed from the environment) with nbclient, one fresh
kernel each, started in ``notebooks/`` as JupyterLab would. Each run gets its own empty output
folder (notebook 3's run folder, ``train.output_dir``, through ``OVERRIDES``), injected after the
``parameters`` cell the way papermill does, so a notebook passes only if it creates or finds
everything it needs by itself (notebook 4 trains its checkpoint when notebook 3's is absent).
Wall times are printed (``pytest -s``) and recorded as the ``wall_s`` property
(``--junitxml``).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
FAST_RUN = (
    "01_data_preparation.ipynb",
    "02_building_videocolbert.ipynb",
    "03_training_with_accelerate.ipynb",
    "04_evaluation.ipynb",
)
FAST_SWITCH = "FAST = fast_mode()"
NO_OVERRIDES = "OVERRIDES = {}"
CELL_TIMEOUT_S = 300


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def first_code_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(cell for cell in nb.cells if cell.cell_type == "code")


def test_the_tutorial_notebooks_exist():
    missing = set(FAST_RUN) - {path.name for path in NOTEBOOKS}
    assert not missing, f"missing from {NOTEBOOK_DIR}: {sorted(missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_or_execution_counts(path):
    nb = read(path)
    nbformat.validate(nb)
    dirty = [
        index
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        and (cell.outputs or cell.execution_count is not None or "execution" in cell.metadata)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs, execution counts or timings; clear them "
        f"(JupyterLab: Edit > Clear Outputs of All Cells, or `jupyter nbconvert "
        f"--clear-output --inplace {path.relative_to(REPO)}`)"
    )
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell_with_the_fast_switch(path):
    cell = first_code_cell(read(path))
    assert "parameters" in cell.metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters'"
    )
    for line in (FAST_SWITCH, NO_OVERRIDES):
        assert line in cell.source, f"{path.name}: the parameters cell must set {line}"


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST_RUN)
def test_runs_on_its_own_in_fast_mode(name, tmp_path, monkeypatch, record_property):
    from nbclient import NotebookClient

    nb = read(NOTEBOOK_DIR / name)
    run_dir = str(tmp_path / "outputs" / "train")
    injected = nbformat.v4.new_code_cell(
        "assert FAST, 'the tests run the fast mode'\n"
        'OVERRIDES = {**OVERRIDES, "train": {**OVERRIDES.get("train", {}), '
        f'"output_dir": {run_dir!r}}}}}',
        metadata={"tags": ["injected-parameters"]},
    )
    nb.cells.insert(nb.cells.index(first_code_cell(nb)) + 1, injected)
    monkeypatch.delenv("VCB_FULL", raising=False)  # the kernel inherits the environment
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    wall = time.perf_counter() - start
    record_property("wall_s", round(wall, 1))
    print(f"{name}: {wall:.1f} s in fast mode")
    assert any(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    ), f"{name}: no figure was drawn"
