"""A real browser: the QueryExplorer in JupyterLab answers a query, a click and bad input.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Python Playwright through the
helpers of ``tests/jupyter_browser.py`` (which ``benchmarks/make_figures.py`` uses for the
README's widget screenshot); the test is skipped only when that browser is missing. It does not
run a training notebook: a small untrained checkpoint and an index of a dozen short clips are
prepared here in a second, and a one-cell notebook shows the explorer. Every wait has at least
three times the margin it needs on an idle 2-core machine (``jupyter_browser``: kernel start about
5 s of 90, Run All a few seconds of 240, a query or a click well under 1 s of 30).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from jupyter_browser import (
    CHROMIUM,
    broken_images,
    chromium_page,
    click_result,
    jupyter_lab,
    run_all_cells,
    saw_busy,
    search_in_widget,
    watch_busy,
    write_explorer_notebook,
)
from test_viz import make_model, write_clips

from vcb_utils.index import VideoIndex
from vcb_utils.model import save_checkpoint

K = 10
WINDOW = (1280, 1000)
"""The issue's window: the ranking at k = 10 and the heatmap fit in 1000 px without scrolling."""
SIDE_BY_SIDE_PX = 1100
"""From this notebook width on, the heatmap stands beside the ranking of 10 (tiny model)."""


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, str]:
    """A folder with a checkpoint, a saved index of 12 clips and the explorer notebook; and a
    query that is the caption of the video ranked 2nd for it."""
    root = tmp_path_factory.mktemp("explorer")
    model = make_model()
    (root / "clips").mkdir()
    clips = write_clips(root / "clips", 12)
    index = VideoIndex.build(model, clips, framerate=4.0)  # all 8 frames: the widest heatmap
    index.save(root / "index")
    save_checkpoint(model, root / "checkpoint")
    probe = "a red circle moves left, then a blue square appears at the top"
    second = index.search(probe, K, model=model)[0].hits[1].id
    captions = {f"clip{i}": [f"clip number {i}"] for i in range(len(clips))}
    captions[second] = [probe, "another wording of it"]
    write_explorer_notebook(
        root / "explorer.ipynb", root / "checkpoint", root / "index", captions, K
    )
    return root, probe


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)",
)
def test_explorer_in_jupyterlab_searches_selects_and_explains(prepared, tmp_path):
    root, query = prepared
    with jupyter_lab(root, tmp_path / "lab") as url, chromium_page(*WINDOW) as page:
        try:
            run_all_cells(page, url, "explorer.ipynb")
            explorer = page.locator(".vcb-explorer")
            # before any query: a hint, no rows, no heatmap, no broken image
            assert "Type a query" in explorer.locator(".vcb-message").inner_text()
            assert page.locator(".vcb-hit:visible").count() == 0
            assert not page.locator(".vcb-heatmap").is_visible()
            assert broken_images(page) == 0

            watch_busy(page)
            search_in_widget(page, query)
            assert saw_busy(page), "the busy state never showed"
            assert page.locator(".vcb-hit:visible").count() == K
            assert broken_images(page) == 0
            header = explorer.locator(".vcb-header .vcb-ranked").inner_text()
            assert header.startswith("total")  # ranked by MMS_F + MMS_V, and marked
            assert "✓ ground truth" in page.locator(".vcb-hit-2").inner_text()
            assert "(rank 1)" in page.locator(".vcb-heatmap .vcb-hm-title").inner_text()

            # the ranking at k = 10 and the heatmap fit in the window, without scrolling
            explorer.evaluate("node => node.scrollIntoView({block: 'start'})")
            bottom = page.evaluate(
                """() => Math.max(...[...document.querySelectorAll(
                    '.vcb-explorer .vcb-hit, .vcb-explorer .vcb-heatmap')]
                    .map(node => node.getBoundingClientRect().bottom))"""
            )
            assert bottom <= WINDOW[1], f"the widget ends at {bottom:.0f} px"
            explorer.screenshot(path=tmp_path / "widget.png")

            # the whole caption of the ground truth shows, wrapped, "then ..." half included
            caption = page.locator(".vcb-hit-2 .vcb-caption")
            assert query in caption.inner_text()
            assert caption.evaluate("node => node.scrollWidth <= node.clientWidth")

            # a notebook 1100 px wide: the heatmap beside the ranking
            widen_notebook(page, SIDE_BY_SIDE_PX)
            ranking, heatmap = (
                page.locator(f".vcb-explorer {part}").bounding_box()
                for part in (".vcb-ranking", ".vcb-heatmap")
            )
            assert heatmap["x"] >= ranking["x"] + ranking["width"], (ranking, heatmap)
            assert heatmap["y"] < ranking["y"] + ranking["height"], (ranking, heatmap)
            explorer.screenshot(path=tmp_path / "widget_wide.png")
            page.set_viewport_size(dict(zip(("width", "height"), WINDOW, strict=True)))

            # a click on a result's frames selects it for the heatmap
            watch_busy(page)
            click_result(page, 3)
            assert saw_busy(page)
            assert "vcb-selected" in page.locator(".vcb-hit-3").get_attribute("class")
            assert "vcb-selected" not in page.locator(".vcb-hit-1").get_attribute("class")
            click_result(page, 4, part=".vcb-hit-text")  # and so does a click on its text

            # bad input: a message, no rows, no heatmap, no broken image
            search_in_widget(page, "zxqv")
            assert "⚠" in explorer.locator(".vcb-message").inner_text()
            assert page.locator(".vcb-hit:visible").count() == 0
            assert not page.locator(".vcb-heatmap").is_visible()
            assert broken_images(page) == 0
        finally:
            page.screenshot(path=tmp_path / "jupyterlab.png")  # also to debug a failure
    assert (tmp_path / "widget.png").stat().st_size > 10_000


def widen_notebook(page, width: int) -> None:
    """Resize the window until JupyterLab's notebook panel is ``width`` pixels wide."""
    panel = page.locator(".jp-NotebookPanel")
    chrome = WINDOW[0] - panel.bounding_box()["width"]
    page.set_viewport_size({"width": int(width + chrome), "height": WINDOW[1]})
    page.wait_for_function(
        "(w) => document.querySelector('.jp-NotebookPanel').getBoundingClientRect().width >= w",
        arg=width,
    )
