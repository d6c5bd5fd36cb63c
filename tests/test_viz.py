"""MaxSim heatmaps and ranked strips: what is drawn is what the model computed, in the matplotlib
figures and in the explorer's HTML heatmap and thumbnail strips."""

from __future__ import annotations

import dataclasses
import html
import io
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vcb_utils.config import preset
from vcb_utils.index import QueryResult, VideoIndex
from vcb_utils.model import VideoColBERT, VideoEmbedding
from vcb_utils.synthetic import write_video
from vcb_utils.viz import (
    ARGMAX_GID,
    AXES_LABEL,
    BRANCH_TITLES,
    EXPANSION_COLOUR,
    figure_png,
    heatmap_html,
    heatmap_panels,
    index_frames,
    maxsim_heatmap,
    ranked_results_figure,
    strip_png,
)

QUERY = "a red circle moves left"
WORDS = ["<start_of_text>", "a", "red", "circle", "moves", "left", "<end_of_text>"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def heatmap_axes(fig: Figure) -> dict[str, Axes]:
    """The heatmap axes of a ``maxsim_heatmap`` figure by branch (``F``, ``V``)."""
    labels = {AXES_LABEL.format(branch): branch for branch in BRANCH_TITLES}
    return {labels[ax.get_label()]: ax for ax in fig.axes if ax.get_label() in labels}


def marked_cells(ax: Axes) -> list[tuple[int, int]]:
    """``(row, column)`` of every MaxSim mark drawn on a heatmap axes, top row first."""
    cells = [
        (round(p.get_y() + 0.5), round(p.get_x() + 0.5))
        for p in ax.patches
        if p.get_gid() == ARGMAX_GID
    ]
    return sorted(cells)


def make_model(**changes) -> VideoColBERT:
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny").model, temporal_dropout=0.0, **changes)
    return VideoColBERT(cfg).eval()


def random_index(model: VideoColBERT, n: int = 9) -> VideoIndex:
    """Random unit vectors shaped like the model's; video i has ``1 + i % max_frames`` frames."""
    g = torch.Generator().manual_seed(0)
    frames_n, extra = model.cfg.max_frames, model.cfg.n_visual_expansion
    frames = F.normalize(torch.randn(n, frames_n, model.embed_dim, generator=g), dim=-1)
    video = F.normalize(torch.randn(n, frames_n + extra, model.embed_dim, generator=g), dim=-1)
    lengths = 1 + torch.arange(n) % frames_n
    frame_mask = torch.arange(frames_n)[None] < lengths[:, None]
    video_mask = F.pad(frame_mask, (0, extra), value=True)
    if model.cfg.mode == "F":
        video = video_mask = None
    embedding = VideoEmbedding(frames, frame_mask, video, video_mask)
    return VideoIndex(model.cfg, embedding, [f"video{i}" for i in range(n)])


def write_clips(folder: Path, count: int) -> list[Path]:
    """Short real mp4 files: a coloured square on a grey background, one colour per clip."""
    paths = []
    for i in range(count):
        frames = np.full((12, 48, 64, 3), 60, dtype=np.uint8)
        for t in range(12):
            frames[t, 10:30, 4 * t : 4 * t + 20] = (40 * i % 256, 200, 255 - 30 * i % 256)
        paths.append(folder / f"clip{i}.mp4")
        write_video(paths[-1], frames, fps=4)
    return paths


def fake_frames(count: int, seed: int = 0) -> np.ndarray:
    """Non-square uint8 frames (the figures crop them square)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 30, 40, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> VideoColBERT:
    return make_model()


@pytest.fixture(scope="module")
def result(model) -> QueryResult:
    return random_index(model).search(QUERY, k=4, model=model)[0]


def frames_of(result: QueryResult, rank: int) -> np.ndarray:
    return fake_frames(result.hits[rank - 1].sim_f.shape[1], seed=rank)


def test_panels_hold_the_hit_matrices_and_add_up_to_its_scores(result, model):
    for rank, hit in enumerate(result.hits, start=1):
        panel_f, panel_v = heatmap_panels(result, rank)
        np.testing.assert_array_equal(panel_f.matrix, hit.sim_f.numpy())
        np.testing.assert_array_equal(panel_v.matrix, hit.sim_v.numpy())
        assert panel_v.matrix.shape[1] == panel_f.matrix.shape[1] + model.cfg.n_visual_expansion
        assert panel_f.contribution.sum() == pytest.approx(hit.score_f, abs=1e-5)
        assert panel_v.contribution.sum() == pytest.approx(hit.score_v, abs=1e-5)
        assert (panel_f.score, panel_f.hidden) == (pytest.approx(hit.score_f, abs=1e-5), 0.0)


@pytest.mark.parametrize("branch", ["F", "V"])
@pytest.mark.parametrize("rank", [1, 3])
def test_marked_cells_are_the_argmax_of_each_token_row(result, branch, rank):
    hit = result.hits[rank - 1]
    sim = (hit.sim_f if branch == "F" else hit.sim_v).numpy()
    ax = heatmap_axes(maxsim_heatmap(result, rank, frames_of(result, rank)))[branch]
    assert marked_cells(ax) == [(row, int(sim[row].argmax())) for row in range(len(sim))]
    np.testing.assert_array_equal(ax.images[0].get_array(), sim)


def test_row_labels_are_the_decoded_tokens_and_pads_look_different(result, model):
    assert result.tokens == WORDS + ["<pad>"] * (model.cfg.max_words - len(WORDS))
    for ax in heatmap_axes(maxsim_heatmap(result, 1)).values():
        labels = ax.get_yticklabels()
        assert [label.get_text() for label in labels] == result.tokens
        for label, pad in zip(labels, result.expansion, strict=True):
            assert (label.get_color() == EXPANSION_COLOUR) == pad
            assert (label.get_fontstyle() == "italic") == pad


def test_hidden_expansion_rows_leave_the_words_and_say_what_they_carried(result):
    hit = result.hits[0]
    fig = maxsim_heatmap(result, 1, show_expansion=False)
    for branch, ax in heatmap_axes(fig).items():
        assert [label.get_text() for label in ax.get_yticklabels()] == WORDS
        sim = (hit.sim_f if branch == "F" else hit.sim_v).numpy()[: len(WORDS)]
        assert marked_cells(ax) == [(row, int(sim[row].argmax())) for row in range(len(sim))]
        assert "from hidden pad rows" in ax.get_title()
    panel_f = heatmap_panels(result, 1, show_expansion=False)[0]
    assert panel_f.contribution.sum() + panel_f.hidden == pytest.approx(hit.score_f, abs=1e-5)


def test_title_has_both_scores_and_their_sum(result):
    hit = result.hits[1]
    title = maxsim_heatmap(result, 2).get_suptitle()
    expected = f"MMS_F = {hit.score_f:.3f} + MMS_V = {hit.score_v:.3f} = {hit.score_total:.3f}"
    assert expected in title
    assert QUERY in title and hit.id in title


def test_thumbnails_sit_over_the_frame_columns(result):
    frames = frames_of(result, 1)
    fig = maxsim_heatmap(result, 1, frames)
    strip = next(ax for ax in fig.axes if ax.get_title().startswith("sampled frames"))
    assert len(strip.images) == len(frames)
    assert [t.get_text() for t in strip.texts] == ["e1", "e2"]
    assert strip.get_xlim() == heatmap_axes(fig)["V"].get_xlim()
    with pytest.raises(ValueError, match=f"{len(frames) + 1} frames given.*{result.hits[0].id}"):
        maxsim_heatmap(result, 1, fake_frames(len(frames) + 1))


def test_an_f_only_model_draws_one_panel():
    f_only = make_model(mode="F")
    result = random_index(f_only).search(QUERY, k=2, model=f_only)[0]
    fig = maxsim_heatmap(result, 1, frames_of(result, 1))
    assert list(heatmap_axes(fig)) == ["F"]
    assert "MMS_V" not in fig.get_suptitle()


def test_png_export(result, tmp_path):
    fig = maxsim_heatmap(result, 1, frames_of(result, 1))
    fig.savefig(tmp_path / "heatmap.png", dpi=50)
    image = matplotlib.image.imread(tmp_path / "heatmap.png")
    width, height = fig.get_size_inches() * 50
    assert image.shape[:2] == (round(height), round(width))
    data = figure_png(fig, dpi=40)
    assert data.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(io.BytesIO(data)).shape[1] == round(width * 40 / 50)


def test_ranked_results_show_each_hit_with_its_scores(result):
    frames = {hit.id: frames_of(result, hit.rank) for hit in result.hits}
    frames.pop(result.hits[2].id)
    fig = ranked_results_figure(result, frames, k=3)
    assert len(fig.axes) == 3
    assert QUERY in fig.get_suptitle() and "MMS_F + MMS_V" in fig.get_suptitle()
    for ax, hit in zip(fig.axes, result.hits, strict=False):
        texts = " ".join(t.get_text() for t in ax.texts)
        assert hit.id in texts and f"total {hit.score_total:.3f}" in texts
        assert f"MMS_F {hit.score_f:.3f}" in texts and f"MMS_V {hit.score_v:.3f}" in texts
        assert ax.get_ylabel() == f"#{hit.rank}"
    assert "frames unavailable" in " ".join(t.get_text() for t in fig.axes[2].texts)
    assert len(fig.axes[0].images) == 1
    loaded = ranked_results_figure(result, lambda hit: frames_of(result, hit.rank))
    assert len(loaded.axes) == len(result.hits)


def test_ranked_results_without_hits_is_an_error(result):
    empty = dataclasses.replace(result, hits=[])
    with pytest.raises(ValueError, match="no hits"):
        ranked_results_figure(empty, {})
    with pytest.raises(ValueError, match="rank 9"):
        maxsim_heatmap(result, 9)


def test_index_frames_are_the_frames_the_index_encoded(model, tmp_path):
    index = VideoIndex.build(model, write_clips(tmp_path, 2), framerate=2.0)
    hit = index.search(QUERY, k=1, model=model)[0].hits[0]
    frames = index_frames(index, hit, size=32)
    assert frames.shape == (hit.sim_f.shape[1], 32, 43, 3)  # 48 x 64 to a 32 px short side
    assert frames.dtype == np.uint8


# ---- the explorer's light renderings -------------------------------------------------------------
def html_rows(page: str) -> list[tuple[str, list[list[str]]]]:
    """``(token, panels)`` per token row of a ``heatmap_html`` table; each panel is the list of its
    cells' classes ("max" for the MaxSim choice, "" otherwise)."""
    rows = []
    for row in re.findall(r'<tr class="vcb-hm-(?:word|pad)[^"]*">(.*?)</tr>', page):
        token = html.unescape(re.search(r"<th[^>]*>(.*?)</th>", row).group(1))
        panels, current = [], []
        for cell in re.findall(r"<td([^>]*)>", row):
            if "vcb-hm-share" in cell:
                panels.append(current)
                current = []
            else:
                current.append("max" if "vcb-hm-max" in cell else "")
        rows.append((token, panels))
    return rows


def test_heatmap_html_marks_the_argmax_of_each_row_in_both_panels(result):
    hit = result.hits[1]
    frames = frames_of(result, 2)
    page = heatmap_html(result, 2, frames)
    rows = html_rows(page)
    assert [token for token, _ in rows] == result.tokens
    for row, (_, (f_cells, v_cells)) in enumerate(rows):
        assert f_cells.index("max") == int(hit.sim_f[row].argmax()) and f_cells.count("max") == 1
        assert v_cells.index("max") == int(hit.sim_v[row].argmax()) and v_cells.count("max") == 1
    assert page.count('<img src="data:image/png;base64,') == 2 * len(frames)  # over F and V
    assert f"MMS_F = {hit.score_f:.3f}" in page and f"MMS_V = {hit.score_v:.3f}" in page
    assert f"{hit.id} (rank 2)" in page and ">e1<" in page and ">e2<" in page
    value = float(hit.sim_f[0, 0])
    assert f"({'F'}): {value:.3f}" in html.unescape(page)  # every cell's value is its tooltip


def test_heatmap_html_without_pad_rows_says_what_they_carried(result):
    page = heatmap_html(result, 1, show_expansion=False)
    assert [token for token, _ in html_rows(page)] == WORDS
    hidden = heatmap_panels(result, 1, show_expansion=False)[0].hidden
    assert f"hidden &lt;pad&gt; rows carry {hidden:.3f} of MMS_F" in page
    assert "vcb-hm-pad" not in page


def test_heatmap_html_of_an_f_only_model_has_one_panel():
    f_only = make_model(mode="F")
    result = random_index(f_only).search(QUERY, k=2, model=f_only)[0]
    rows = html_rows(heatmap_html(result, 1, frames_of(result, 1)))
    assert all(len(panels) == 1 for _, panels in rows)


def test_strip_png_is_one_row_of_square_thumbnails():
    data = strip_png(fake_frames(5), height=20, gap=2)
    assert data.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(io.BytesIO(data)).shape[:2] == (20, 5 * 22 - 2)
