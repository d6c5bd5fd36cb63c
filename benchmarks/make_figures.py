"""Make the README figures: a MaxSim heatmap and a screenshot of the query widget in JupyterLab.

    python benchmarks/make_figures.py                   # both, into docs/figures/
    python benchmarks/make_figures.py --only heatmap    # no browser needed

Both come from the tiny model on the synthetic clips: the checkpoint notebook 3 trains in fast
mode (``outputs/notebooks/train-tiny/best``), trained here with the same config
(``vcb_utils.tutorial.notebook_config(True)``) if it is missing. The query is the test caption
(of the first 20) whose own video the model ranks highest, as in the tour of notebook 05. For the
screenshot, the index of the test videos is saved next to a one-cell notebook that shows the
explorer with the test captions (``write_explorer_notebook`` of ``tests/jupyter_browser.py``, what
the browser test drives too); JupyterLab runs it in headless Chromium, in a window wide enough
for the ranking and the heatmap side by side, and that query is typed into the widget. Each PNG
is reduced to a 256-colour palette if it is over 300 KB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from vcb_utils.config import RunOptions
from vcb_utils.datasets import Record, read_annotations
from vcb_utils.index import QueryResult, VideoIndex
from vcb_utils.model import VideoColBERT, load_checkpoint
from vcb_utils.train import run
from vcb_utils.tutorial import notebook_config
from vcb_utils.viz import index_frames, maxsim_heatmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser tooling lives with the browser test
from jupyter_browser import (  # noqa: E402
    chromium_page,
    jupyter_lab,
    run_all_cells,
    search_in_widget,
    write_explorer_notebook,
)

CANDIDATES = 20
MAX_BYTES = 300_000
WINDOW = (1600, 1000)
"""The browser window of the screenshot (wide: the heatmap beside the ranking)."""

log = logging.getLogger("make_figures")


def trained_checkpoint() -> Path:
    """Notebook 3's fast-mode checkpoint (notebooks 4 and 5 use it too), trained first with the
    notebooks' fast-mode config if it is missing or was trained for another number of epochs."""
    config, run_dir = notebook_config(True)
    best = run_dir / "best"
    epochs = config.train.epochs
    saved = best / "config.json"
    if not saved.is_file() or json.loads(saved.read_text())["train"]["epochs"] != epochs:
        log.info("no fast-mode checkpoint in %s: training the tiny model, %d epochs", best, epochs)
        run(config, RunOptions(do_eval=False, overwrite=True))  # an earlier run there is unfinished
    return best


def best_example(index: VideoIndex, model: VideoColBERT, test: list[Record]) -> QueryResult:
    """The result of the candidate caption whose own video ranks highest (shortest on ties)."""
    candidates = test[:CANDIDATES]
    results = index.search([record.caption for record in candidates], k=10, model=model)

    def key(pair: tuple[QueryResult, Record]) -> tuple[int, int]:
        result, record = pair
        ranks = (hit.rank for hit in result.hits if hit.path == str(record.path))
        return next(ranks, len(result.hits) + 1), len(record.caption)

    return min(zip(results, candidates, strict=True), key=key)[0]


def save_heatmap(result: QueryResult, index: VideoIndex, path: Path) -> Path:
    fig = maxsim_heatmap(result, 1, index_frames(index, result.hit(1)))
    fig.savefig(path, dpi=90)
    return compact(path)


def save_widget_screenshot(
    query: str, index: VideoIndex, checkpoint: Path, test: list[Record], path: Path
) -> Path:
    """The explorer in JupyterLab (fast mode) over ``index``, ``query`` typed into it."""
    captions: dict[str, list[str]] = {}
    for record in test:
        captions.setdefault(Path(record.path).stem, []).append(record.caption)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        index.save(root / "index")
        write_explorer_notebook(root / "explorer.ipynb", checkpoint, root / "index", captions)
        with jupyter_lab(root, root / "lab") as url, chromium_page(*WINDOW) as page:
            run_all_cells(page, url, "explorer.ipynb")
            page.keyboard.press("Control+b")  # hide the file browser: more room for the widget
            search_in_widget(page, "a red circle moves left")  # warm-up: the first search is slow
            search_in_widget(page, query)
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.locator(".vcb-explorer").screenshot(path=path)
    return compact(path)


def compact(path: Path) -> Path:
    """Keep the PNG if it is small enough, else re-save it with a 256-colour palette."""
    if path.stat().st_size > MAX_BYTES:
        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"{path}: {size} bytes, over the {MAX_BYTES} allowed for docs figures")
    with Image.open(path) as image:
        log.info("%s: %d x %d px, %.0f KB", path, *image.size, size / 1000)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("heatmap", "widget"), help="make just one figure")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/figures", help="output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # notebook_config finds the repository from the working directory
    checkpoint = trained_checkpoint()
    model, saved = load_checkpoint(checkpoint)
    model.eval()
    test = read_annotations("synthetic", None, "test")
    paths = list(dict.fromkeys(record.path for record in test))
    index = VideoIndex.build(model, paths, framerate=saved.data.video_framerate)
    result = best_example(index, model, test)
    log.info("query: %r (top hit %s)", result.query, result.hit(1).id)
    if args.only in (None, "heatmap"):
        save_heatmap(result, index, out / "heatmap.png")
    if args.only in (None, "widget"):
        save_widget_screenshot(result.query, index, checkpoint, test, out / "widget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
