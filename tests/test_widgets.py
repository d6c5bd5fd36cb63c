"""QueryExplorer wiring in plain pytest, and notebook 05's widget cell inside a real kernel.

Outside a kernel the widgets still fire their observers and click handlers, and the explorer
keeps everything it shows as widget values (HTML, PNG bytes), so the tests read those.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import ipywidgets as widgets
import matplotlib.image
import nbformat
import pytest
import torch
from test_viz import PNG_SIGNATURE, QUERY, make_model, write_clips

from vcb_utils.index import VideoIndex
from vcb_utils.model import VideoColBERT, VideoEmbedding
from vcb_utils.viz import index_frames
from vcb_utils.widgets import QueryExplorer, caption_vocabulary, query_problem, render_result

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_interactive_maxsim_explorer.ipynb"
VOCABULARY = caption_vocabulary(["a red circle moves left, then a blue square appears"])
WIDGET_CHECK = """
explorer.query.value = "a red circle moves left"
assert explorer.error is None and len(explorer.result.hits) == explorer.k.value
explorer.k.value = 3
explorer.branch.value = "V"
assert len(explorer.result.hits) == 3 and explorer.result.branch == "V"
assert bytes(explorer.heatmap_image.value).startswith(b"\\x89PNG")
print("widget ok", {name: round(seconds, 3) for name, seconds in explorer.timings.items()})
"""


@pytest.fixture(scope="module")
def model() -> VideoColBERT:
    return make_model()


@pytest.fixture(scope="module")
def index(model, tmp_path_factory) -> VideoIndex:
    return VideoIndex.build(model, write_clips(tmp_path_factory.mktemp("clips"), 6), framerate=2.0)


@pytest.fixture
def explorer(index, model) -> QueryExplorer:
    return QueryExplorer(index, model, k=3, vocabulary=VOCABULARY)


def table_rows(explorer: QueryExplorer) -> int:
    return explorer.table.value.count("<tr") - 1  # minus the header


def is_png(image: widgets.Image) -> bool:
    return bytes(image.value).startswith(PNG_SIGNATURE)


def image_size(data: bytes) -> tuple[int, int]:
    return matplotlib.image.imread(io.BytesIO(data)).shape[:2]


def test_setting_the_text_and_clicking_search_run_a_search(explorer, index, monkeypatch):
    calls = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda *a, **kw: calls.append(a) or search(*a, **kw))
    explorer.query.value = QUERY  # what Enter sends (continuous_update=False)
    assert len(calls) == 1
    assert explorer.error is None and explorer.result.query == QUERY
    assert [hit.rank for hit in explorer.result.hits] == [1, 2, 3]
    assert table_rows(explorer) == 3
    assert all(hit.id in explorer.table.value for hit in explorer.result.hits)
    assert is_png(explorer.results_image) and is_png(explorer.heatmap_image)
    assert explorer.selected.options == tuple(
        (f"#{hit.rank} {hit.id}", hit.rank) for hit in explorer.result.hits
    )
    assert "top 3 of 6 videos" in explorer.status.value
    explorer.search_button.click()
    assert len(calls) == 2


def test_changing_k_or_the_branch_searches_again(explorer):
    explorer.query.value = QUERY
    explorer.k.value = 5
    assert len(explorer.result.hits) == 5 and table_rows(explorer) == 5
    for branch, score in (("F", "score_f"), ("V", "score_v"), ("both", "score_total")):
        explorer.branch.value = branch
        scores = [getattr(hit, score) for hit in explorer.result.hits]
        assert explorer.result.branch == branch
        assert scores == sorted(scores, reverse=True)


def test_settings_without_a_query_do_not_search(explorer):
    explorer.k.value = 2
    explorer.branch.value = "F"
    assert explorer.result is None and explorer.error is None


def test_picking_a_result_draws_its_heatmap(explorer, index):
    explorer.query.value = QUERY
    first = explorer.heatmap_image.value
    explorer.selected.value = 2
    assert explorer.heatmap_image.value != first
    assert '<tr style="font-weight:bold"><td>#2</td>' in explorer.table.value
    frames = {hit.id: index_frames(index, hit) for hit in explorer.result.hits}
    assert explorer.heatmap_image.value == render_result(explorer.result, 2, frames).heatmap_png


def test_hiding_the_pad_rows_shrinks_the_heatmap(explorer):
    explorer.query.value = QUERY
    tall = image_size(explorer.heatmap_image.value)
    explorer.show_expansion.value = False
    short = image_size(explorer.heatmap_image.value)
    assert short[0] < tall[0] and short[1] == tall[1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Type a query first"),
        ("   ", "Type a query first"),
        ("zxqv", "word pieces (z · x · q · v)"),
        ("!!! ???", "No whole word in '!!! ???'"),
    ],
)
def test_bad_input_shows_a_message_instead_of_results(explorer, query, message):
    explorer.query.value = QUERY
    explorer.query.value = query
    explorer.search_button.click()
    assert explorer.result is None and message in explorer.error
    assert "⚠" in explorer.message.value
    assert explorer.table.value == "" and explorer.heatmap_image.value == b""
    assert explorer.selected.options == ()


def test_an_index_without_videos_shows_a_message(model):
    frames, video = model.cfg.max_frames, model.cfg.max_frames + model.cfg.n_visual_expansion
    embedding = VideoEmbedding(
        torch.zeros(0, frames, model.embed_dim),
        torch.zeros(0, frames, dtype=torch.bool),
        torch.zeros(0, video, model.embed_dim),
        torch.zeros(0, video, dtype=torch.bool),
    )
    explorer = QueryExplorer(VideoIndex(model.cfg, embedding, []), model)
    explorer.query.value = QUERY
    assert explorer.result is None and "no videos" in explorer.error
    assert explorer.k.max == 1


def test_notes_flag_unseen_words_and_truncation(explorer, model):
    explorer.query.value = "a dog moves left " + "and then left " * model.cfg.max_words
    assert explorer.error is None and explorer.result is not None
    assert any("never learned them): and, dog" in note for note in explorer.notes)
    assert any("truncated" in note for note in explorer.notes)
    assert "note: " in explorer.message.value


def test_an_unreadable_video_leaves_a_note_not_a_traceback(model, tmp_path):
    paths = write_clips(tmp_path, 2)
    index = VideoIndex.build(model, paths, framerate=2.0)
    paths[0].unlink()
    explorer = QueryExplorer(index, model)
    explorer.query.value = QUERY
    assert explorer.result is not None and is_png(explorer.heatmap_image)
    assert any("cannot read video" in note and "clip0.mp4" in note for note in explorer.notes)


def test_query_problem_is_none_for_a_real_query(index, model):
    assert query_problem(QUERY, model, index) is None
    assert query_problem("a zxqv", model, index) is None  # one whole word is enough


def test_search_latency_is_measured(explorer):
    start = time.perf_counter()
    explorer.query.value = QUERY
    wall = time.perf_counter() - start
    assert set(explorer.timings) == {"search", "figures"}
    assert sum(explorer.timings.values()) <= wall
    print(f"query to updated widget: {wall * 1000:.0f} ms ({explorer.timings})")


@pytest.mark.slow
def test_notebook_widget_cell_runs_in_a_kernel(monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(WIDGET_CHECK))
    monkeypatch.setenv("VCB_FAST", "1")  # the kernel inherits the environment
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    widget_cell = next(cell for cell in nb.cells if "QueryExplorer(" in cell.source)
    assert any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for output in widget_cell.outputs
    )
    printed = "".join(output.get("text", "") for output in nb.cells[-1].outputs)
    assert "widget ok" in printed
    print(printed)
