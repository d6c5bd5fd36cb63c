"""A real browser: JupyterLab runs notebook 05, a query typed into the widget shows results.

Headless Debian Chromium (``/usr/bin/chromium``) driven by Python Playwright through the
helpers of ``vcb_utils.jupyter`` (which ``benchmarks/make_figures.py`` uses for the README's
widget screenshot); the test is skipped only when that browser is missing. The notebook runs
in fast mode, the default (``VCB_FULL`` is set to 0 for the server and its kernels).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vcb_utils.jupyter import CHROMIUM, chromium_page, jupyter_lab, run_all_cells, search_in_widget

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a red circle moves left"


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install -y chromium)",
)
def test_query_in_jupyterlab_shows_results_and_heatmap(tmp_path):
    with jupyter_lab(ROOT, tmp_path / "lab", env={"VCB_FULL": "0"}) as url, chromium_page() as page:
        try:
            run_all_cells(page, url)
            search_in_widget(page, QUERY)
            page.locator(".vcb-explorer").screenshot(path=tmp_path / "widget.png")
        finally:
            page.screenshot(path=tmp_path / "jupyterlab.png")  # also to debug a failure

        table = page.locator(".vcb-results table")
        assert table.locator("tr").count() == 1 + 5  # header + the default k
        assert "#1" in table.inner_text()
        assert "⚠" not in page.locator(".vcb-message").inner_text()
        heatmap_width = page.locator(".vcb-heatmap").evaluate("img => img.naturalWidth")
        assert heatmap_width > 400
    assert (tmp_path / "widget.png").stat().st_size > 10_000
