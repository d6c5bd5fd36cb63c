"""QueryExplorer wiring in plain pytest: searching, clicking a result, empty and busy states.

Outside a kernel the widgets still fire their observers and click handlers, and the explorer
keeps everything it shows as widget values (HTML strings, CSS classes, layouts), so the tests read
those. Notebook 05's widget cell runs inside a real kernel in ``test_notebooks.py``, and in a
real browser in ``test_browser.py``; the latency is measured by ``benchmarks/bench_widget.py``.
"""

from __future__ import annotations

import io
import re
import time

import pytest
import torch
from test_viz import QUERY, make_model, write_clips

from vcb_utils.index import VideoIndex
from vcb_utils.model import VideoColBERT, VideoEmbedding
from vcb_utils.widgets import (
    TRUTH_MARK,
    QueryExplorer,
    caption_vocabulary,
    evenly_spaced,
    hit_row,
    normalise_caption,
    query_problem,
    ranking_header,
)

VOCABULARY = caption_vocabulary(["a red circle moves left, then a blue square appears"])
CAPTIONS = {f"clip{i}": [f"a clip of colour number {i}"] for i in range(6)}
CAPTIONS["clip2"] = [QUERY + ".", "another wording"]


@pytest.fixture(scope="module")
def model() -> VideoColBERT:
    return make_model()


@pytest.fixture(scope="module")
def index(model, tmp_path_factory) -> VideoIndex:
    return VideoIndex.build(model, write_clips(tmp_path_factory.mktemp("clips"), 6), framerate=2.0)


@pytest.fixture
def explorer(index, model) -> QueryExplorer:
    return QueryExplorer(index, model, k=3, vocabulary=VOCABULARY, captions=CAPTIONS)


def shown_rows(explorer: QueryExplorer) -> list[str]:
    """The HTML of the result rows on display."""
    return [
        html.value
        for row, html in zip(explorer.rows, explorer.row_html, strict=True)
        if row.layout.display != "none"
    ]


def selected_rows(explorer: QueryExplorer) -> list[int]:
    return [i + 1 for i, row in enumerate(explorer.rows) if "vcb-selected" in row._dom_classes]


def test_a_query_shows_the_ranking_and_the_heatmap_of_the_first_hit(explorer, index, monkeypatch):
    calls = []
    search = index.search
    monkeypatch.setattr(index, "search", lambda *a, **kw: calls.append(a) or search(*a, **kw))
    explorer.query.value = QUERY  # what Enter sends (continuous_update=False)
    assert len(calls) == 1
    assert explorer.error is None and explorer.result.query == QUERY
    rows = shown_rows(explorer)
    assert len(rows) == 3 == len(explorer.result.hits)
    for hit, row in zip(explorer.result.hits, rows, strict=True):
        assert f"#{hit.rank}" in row and hit.id in row and f"{hit.score_total:.3f}" in row
        assert '<img src="data:image/png;base64,' in row  # its frames
        assert CAPTIONS[hit.id][0] in row
    assert explorer.selected == 1 and selected_rows(explorer) == [1]
    assert f"{explorer.result.hits[0].id} (rank 1)" in explorer.heatmap.value
    assert explorer.heatmap.layout.display != "none"
    assert "top 3 of 6 videos" in explorer.status.value
    assert {"search", "frames", "heatmap", "total"} <= set(explorer.timings)
    explorer.search_button.click()
    assert len(calls) == 2


def test_clicking_a_result_selects_it_for_the_heatmap(explorer):
    explorer.query.value = QUERY
    first = explorer.heatmap.value
    explorer.row_buttons[2].click()  # the button over the whole row: its frames, text and scores
    assert explorer.selected == 3 and selected_rows(explorer) == [3]
    assert explorer.heatmap.value != first
    assert f"{explorer.result.hits[2].id} (rank 3)" in explorer.heatmap.value
    assert set(explorer.timings) == {"heatmap", "total"}
    explorer.select(1)
    assert selected_rows(explorer) == [1] and explorer.heatmap.value == first


def test_the_ground_truth_video_is_marked_when_the_query_is_its_caption(explorer):
    explorer.k.value = 6  # every video, so the caption's own one is among the hits
    explorer.query.value = "A red circle   moves left"  # case, spaces and the full stop differ
    assert explorer.truth == {"clip2"}
    marked = [row for row in shown_rows(explorer) if TRUTH_MARK in row]
    assert len(marked) == 1 and "clip2" in marked[0]
    explorer.query.value = "a red circle"
    assert explorer.truth == set() and not any(TRUTH_MARK in row for row in shown_rows(explorer))


def test_a_ground_truth_video_outside_the_top_k_is_named(model, index):
    last = index.search(QUERY, k=len(index), model=model)[0].hits[-1].id
    explorer = QueryExplorer(index, model, k=1, captions={last: [QUERY]})
    explorer.query.value = QUERY
    assert explorer.truth == {last}
    assert f"the video this caption describes ({last}) is not in them" in explorer.status.value


def test_changing_k_or_the_branch_searches_again_and_marks_the_rank_column(explorer):
    explorer.query.value = QUERY
    explorer.k.value = 5
    assert len(explorer.result.hits) == 5 and len(shown_rows(explorer)) == 5
    for branch, score, title in (("F", "score_f", "MMS_F"), ("V", "score_v", "MMS_V")):
        explorer.branch.value = branch
        scores = [getattr(hit, score) for hit in explorer.result.hits]
        assert explorer.result.branch == branch and scores == sorted(scores, reverse=True)
        marked = re.findall(r'vcb-ranked"[^>]*>([^<]*)<', explorer.header.value)
        assert marked == [f"{title} ▼"]
        assert all(row.count("vcb-ranked") == 1 for row in shown_rows(explorer))


def test_settings_without_a_query_do_not_search(explorer):
    explorer.k.value = 2
    explorer.branch.value = "F"
    assert explorer.result is None and explorer.error is None


def test_hiding_the_pad_rows_shortens_the_heatmap_and_says_what_they_carried(explorer):
    explorer.query.value = QUERY
    tall = explorer.heatmap.value.count("<tr")
    explorer.show_expansion.value = False
    assert explorer.heatmap.value.count("<tr") < tall
    assert "hidden &lt;pad&gt; rows carry" in explorer.heatmap.value


def test_before_any_query_a_hint_and_nothing_empty_on_display(explorer):
    assert "Type a query" in explorer.message.value and "⚠" not in explorer.message.value
    assert shown_rows(explorer) == [] and explorer.heatmap.layout.display == "none"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("", "Type a query first"),
        ("   ", "Type a query first"),
        ("zxqv", "word pieces (z · x · q · v)"),
        ("!!! ???", "No whole word in '!!! ???'"),
    ],
)
def test_bad_input_shows_a_message_and_hides_the_results(explorer, query, message):
    explorer.query.value = QUERY
    explorer.query.value = query
    explorer.search_button.click()
    assert explorer.result is None and message in explorer.error
    assert "⚠" in explorer.message.value
    assert shown_rows(explorer) == [] and explorer.heatmap.layout.display == "none"
    assert explorer.heatmap.value == "" and explorer.selected is None


def test_the_explorer_is_busy_while_it_works(explorer, index, monkeypatch):
    seen = []
    search = index.search

    def watched(*args, **kwargs):
        seen.append(("vcb-busy" in explorer.view._dom_classes, explorer.search_button.disabled))
        return search(*args, **kwargs)

    monkeypatch.setattr(index, "search", watched)
    explorer.query.value = QUERY
    assert seen == [(True, True)]
    assert "vcb-busy" not in explorer.view._dom_classes and not explorer.search_button.disabled


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


def test_an_unreadable_video_shows_text_not_an_image(model, tmp_path):
    paths = write_clips(tmp_path, 2)
    index = VideoIndex.build(model, paths, framerate=2.0)
    paths[0].unlink()
    explorer = QueryExplorer(index, model)
    explorer.query.value = QUERY
    assert explorer.result is not None and explorer.heatmap.value
    assert any("cannot read video" in note and "clip0.mp4" in note for note in explorer.notes)
    row = next(row for row in shown_rows(explorer) if "clip0" in row)
    assert "frames unavailable" in row and "<img" not in row


def test_pure_renderings(explorer):
    explorer.query.value = QUERY
    hit = explorer.result.hits[0]
    row = hit_row(hit, "both", None, 100, ["first", "second"], truth=True)
    assert TRUTH_MARK in row and "first (+1 more)" in row and "frames unavailable" in row
    assert 'title="first\nsecond"' in row
    assert "total ▼" in ranking_header("both", 100)
    assert normalise_caption("  A Red  circle. ") == "a red circle"


def test_query_problem_is_none_for_a_real_query(index, model):
    assert query_problem(QUERY, model, index) is None
    assert query_problem("a zxqv", model, index) is None  # one whole word is enough


def test_query_to_updated_widget_is_timed(explorer):
    start = time.perf_counter()
    explorer.query.value = QUERY
    wall = time.perf_counter() - start
    assert explorer.timings["search"] <= explorer.timings["total"] <= wall
    print(f"query to updated widget: {wall * 1000:.0f} ms ({explorer.timings})")


def test_an_f_only_index_ranks_by_f_alone(tmp_path):
    f_only = make_model(mode="F")
    index = VideoIndex.build(f_only, write_clips(tmp_path, 3), framerate=2.0)
    explorer = QueryExplorer(index, f_only, k=2)
    assert explorer.branch.options == ("F",) and explorer.branch.tooltips == ("MMS_F",)
    explorer.query.value = QUERY
    assert explorer.result.branch == "F" and len(shown_rows(explorer)) == 2
    assert all(row.count("–") == 1 for row in shown_rows(explorer))  # no MMS_V
    assert "MMS_V" not in explorer.heatmap.value.split("</div>", 1)[1]  # one panel, F


def test_evenly_spaced_keeps_the_first_and_last_frame():
    assert evenly_spaced(4, 6) == [0, 1, 2, 3]
    assert evenly_spaced(8, 6) == [0, 1, 3, 4, 6, 7]  # round(7 * i / 5): 0 1.4 2.8 4.2 5.6 7
    assert evenly_spaced(12, 3) == [0, 6, 11]  # 5.5 rounds to the even 6


def test_thumbnail_strips_show_at_most_strip_frames(model, tmp_path):
    from PIL import Image

    index = VideoIndex.build(model, write_clips(tmp_path, 2), framerate=4.0)  # 8 frames each
    explorer = QueryExplorer(index, model, k=2, strip_frames=5, strip_height=10)
    explorer.query.value = QUERY
    strip = explorer._strips[explorer.result.hits[0].id]
    assert Image.open(io.BytesIO(strip)).size == (5 * 12 - 2, 10)
