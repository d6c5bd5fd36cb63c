"""The tutorial notebooks: committed clean, parameterised, and they run in fast mode.

Static checks cover every notebook in ``notebooks/`` (their prose: ``test_notebook_prose.py``).
The slow tests execute the notebooks in fast mode (the default: ``VCB_FULL`` is removed from the
environment) with nbclient, one fresh kernel each, started in ``notebooks/`` as JupyterLab would.
Settings are injected after the ``parameters`` cell the way papermill does: notebook 3's run
folder (``train.output_dir``, through ``OVERRIDES``) is an empty folder of this test session, so
notebooks 1-4 and then 5 run as a reader runs them in order: notebook 3 trains there, and 4 and 5
use its checkpoint. Run alone (``-k 04``), notebook 4 finds the folder empty and trains the
checkpoint itself. That path, and a "try this" experiment, are also checked on purpose by a run
of notebook 4 alone on a small synthetic dataset, with one-epoch trainings. Wall times are
printed (``pytest -s``) and recorded as the ``wall_s`` property (``--junitxml``).
"""

from __future__ import annotations

import json
import re
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
    "06_search_at_scale.ipynb",
)
FAST_SWITCH = "FAST = fast_mode()"
NO_OVERRIDES = "OVERRIDES = {}"
CELL_TIMEOUT_S = 900
"""Notebook 3's training cell is the longest: a few minutes on 2 busy cores."""
EXPLORER = "05_interactive_maxsim_explorer.ipynb"
WIDGET_CHECK = """
assert explorer.error is None and explorer.query.value == example.caption  # Run All ends here
assert explorer.truth and len(explorer.result.hits) == explorer.k.value
explorer.row_buttons[1].click()
assert explorer.selected == 2 and "(rank 2)" in explorer.heatmap.value
explorer.k.value = 3
explorer.branch.value = "V"
assert len(explorer.result.hits) == 3 and explorer.result.branch == "V"
print("widget ok", {name: round(seconds, 3) for name, seconds in explorer.timings.items()})
"""


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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """Notebook 3's run folder for this session, empty at first: shared by notebooks 3-5."""
    return str(tmp_path_factory.mktemp("notebooks") / "train")


def execute(
    name: str, run_dir: str, record_property, *, settings: str = "", last: str | None = None
) -> nbformat.NotebookNode:
    """Run notebook ``name`` in fast mode, training into ``run_dir``: ``settings`` (code) after
    its parameters cell, ``last`` (code) after its last cell. The executed notebook is kept beside
    the run folder (``executed-<name>``), to read when a check fails."""
    from nbclient import NotebookClient

    nb = read(NOTEBOOK_DIR / name)
    injected = nbformat.v4.new_code_cell(
        "assert FAST, 'the tests run the fast mode'\n"
        'OVERRIDES = {**OVERRIDES, "train": {**OVERRIDES.get("train", {}), '
        f'"output_dir": {run_dir!r}}}}}\n{settings}',
        metadata={"tags": ["injected-parameters"]},
    )
    nb.cells.insert(nb.cells.index(first_code_cell(nb)) + 1, injected)
    if last:
        nb.cells.append(nbformat.v4.new_code_cell(last))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        wall = time.perf_counter() - start
        nbformat.write(nb, Path(run_dir).parent / f"executed-{name}")
    record_property("wall_s", round(wall, 1))
    print(f"{name}: {wall:.1f} s in fast mode")
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def stderr(nb: nbformat.NotebookNode) -> list[str]:
    return [o.text for o in outputs(nb) if o.get("name") == "stderr" and o.text.strip()]


@pytest.fixture(autouse=True)
def fast_mode_environment(monkeypatch):
    monkeypatch.delenv("VCB_FULL", raising=False)  # the kernel inherits the environment


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST_RUN)
def test_runs_in_fast_mode(name, run_dir, record_property):
    nb = execute(name, run_dir, record_property)
    assert any("image/png" in output.get("data", {}) for output in outputs(nb)), (
        f"{name}: no figure was drawn"
    )
    assert not stderr(nb), f"{name}: on stderr (a warning, or a log line in red):\n{stderr(nb)}"


ORDER_FLOORS = {("reversed", "V"): 0.90, ("twins", "V"): 0.90, ("twins", "both"): 0.80}
"""What the fast-mode model must reach on the order tests (pair accuracy, 100 test clips): the
issue's 0.90 for V on reversed clips and on caption twins. Notebook 3's model (2 processes, the
default seed) measured 0.97 and 0.94 (both: 0.88) when this was set; the main job's 0.94 and 0.91
(README). The floor for both keeps a wider margin for run-to-run noise."""


@pytest.mark.slow
def test_the_fast_mode_model_learns_order(run_dir, record_property):
    """Notebook 4's order tests on notebook 3's model: F ties on every reversed clip, V prefers
    the forward clip and both branches pick the true caption over its twin, well above chance."""
    order_file = Path(run_dir).parent / "evaluation" / "order.json"
    if not order_file.is_file():  # run alone: notebook 4 trains and measures
        execute("04_evaluation.ipynb", run_dir, record_property)
    report = json.loads(order_file.read_text())
    for (test, branch), floor in ORDER_FLOORS.items():
        counts = report[test][branch]
        assert counts["wins"] / counts["n"] >= floor, (test, branch, counts)
    reversed_f = report["reversed"]["F"]
    assert reversed_f["n"] == 100 and reversed_f["ties"] / reversed_f["n"] >= 0.99, reversed_f
    assert {b: c["n"] for b, c in report["twins"].items()} == {"both": 100, "F": 100, "V": 100}


@pytest.mark.slow
def test_explorer_notebook_ends_with_a_working_widget(run_dir, record_property):
    nb = execute(EXPLORER, run_dir, record_property, last=WIDGET_CHECK)
    widget_cell = next(cell for cell in nb.cells if "QueryExplorer(" in cell.source)
    assert any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for output in widget_cell.outputs
    )
    assert not stderr(nb), f"output on stderr:\n{stderr(nb)}"
    printed = "".join(output.get("text", "") for output in nb.cells[-1].outputs)
    assert "widget ok" in printed
    print(printed)


@pytest.mark.slow
def test_evaluation_notebook_trains_what_it_lacks_and_runs_an_experiment(
    tmp_path, small_synthetic, record_property
):
    """Notebook 4 alone, on a small synthetic dataset (one training step per epoch): it trains
    its checkpoint, evaluates it, then trains and compares the F-only experiment."""
    settings = (
        'OVERRIDES["train"]["epochs"] = 1\n'
        f'OVERRIDES["data"] = {{"anno_path": {small_synthetic!r}}}\n'
        'TRY = "F_only"'
    )
    nb = execute("04_evaluation.ipynb", str(tmp_path / "train"), record_property, settings=settings)
    printed = "".join(output.get("text", "") for output in outputs(nb))
    assert "no checkpoint in" in printed and "training F_only" in printed
    assert re.search(r"reversed F ties\s+[\d.]+\s+1\.00", printed), printed[-2000:]
    assert re.search(r"F ties on every reversed clip\s+yes", printed), printed[-2000:]
    assert not stderr(nb), f"output on stderr:\n{stderr(nb)}"
