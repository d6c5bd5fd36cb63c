"""Make the README figures: a MaxSim heatmap and a screenshot of the query widget in JupyterLab.

    python benchmarks/make_figures.py                   # both, into docs/figures/
    python benchmarks/make_figures.py --only heatmap    # no browser needed

Both come from the tiny model on the synthetic clips: the checkpoint notebook 3 trains in fast
mode (``outputs/notebooks/train-tiny/best``), trained here with the same config
(``vcb_utils.tutorial.notebook_config(True)``) if it is missing. The query is the test caption
(of the first 20) whose own video the model ranks highest, as in the tour of notebook 05. The
screenshot runs notebook 05 in JupyterLab with headless Chromium (``vcb_utils.jupyter``) and
types that query into the widget. Each PNG is reduced to a 256-colour palette if it is over
300 KB.
"""

from __future__ import annotations

import argparse
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
from vcb_utils.jupyter import chromium_page, jupyter_lab, run_all_cells, search_in_widget
from vcb_utils.model import VideoColBERT, load_checkpoint
from vcb_utils.train import run
from vcb_utils.tutorial import notebook_config
from vcb_utils.viz import index_frames, maxsim_heatmap

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = 20
MAX_BYTES = 300_000

log = logging.getLogger("make_figures")


def trained_checkpoint() -> Path:
    """Notebook 3's fast-mode checkpoint (notebooks 4 and 5 use it too), trained first with the
    notebooks' fast-mode config if it is missing."""
    config, run_dir = notebook_config(True)
    best = run_dir / "best"
    if not (best / "model.safetensors").is_file():
        epochs = config.train.epochs
        log.info("no checkpoint in %s: training the tiny model for %d epochs", best, epochs)
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


def save_widget_screenshot(query: str, path: Path) -> Path:
    """Notebook 05 run in JupyterLab (fast mode), ``query`` typed into its widget."""
    with (
        tempfile.TemporaryDirectory() as state,
        jupyter_lab(ROOT, Path(state), env={"VCB_FULL": "0"}) as url,
        chromium_page() as page,
    ):
        run_all_cells(page, url)
        search_in_widget(page, query)
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
    model, saved = load_checkpoint(trained_checkpoint())
    model.eval()
    test = read_annotations("synthetic", None, "test")
    paths = list(dict.fromkeys(record.path for record in test))
    index = VideoIndex.build(model, paths, framerate=saved.data.video_framerate)
    result = best_example(index, model, test)
    log.info("query: %r (top hit %s)", result.query, result.hit(1).id)
    if args.only in (None, "heatmap"):
        save_heatmap(result, index, out / "heatmap.png")
    if args.only in (None, "widget"):
        save_widget_screenshot(result.query, out / "widget.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
