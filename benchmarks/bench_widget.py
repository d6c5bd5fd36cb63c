"""Time the QueryExplorer: a query typed in its box to the updated widget, synthetic index.

    python benchmarks/bench_widget.py                     # 20 test captions, k = 10
    python benchmarks/bench_widget.py --queries 50 --k 20

The index is the synthetic test set (the videos notebook 05 searches), encoded with notebook 3's
fast-mode checkpoint (``outputs/notebooks/train-tiny/best``) when it exists, else with an untrained
tiny model of the same shape (a search costs the same either way). Each query is a distinct test
caption, set as ``explorer.query.value`` (what pressing Enter does): the wall time covers the
search, the thumbnails of hits not seen before and the drawing of the ranking and the heatmap, in
this process; the browser's own rendering comes on top. One warm-up query is not counted. The
medians of each part come from ``explorer.timings``. The torch threads of the search are the
explorer's default (one); pass ``--threads 0`` to keep torch's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20, help="timed queries (test captions)")
    parser.add_argument("--k", type=int, default=10, help="results shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.chdir(ROOT)  # notebook_config finds the repository from the working directory
    import torch

    from vcb_utils.datasets import read_annotations
    from vcb_utils.index import VideoIndex
    from vcb_utils.model import VideoColBERT, load_checkpoint
    from vcb_utils.tutorial import notebook_config
    from vcb_utils.widgets import QueryExplorer

    config, run_dir = notebook_config(True)
    checkpoint = run_dir / "best"
    if (checkpoint / "model.safetensors").is_file():
        model, _ = load_checkpoint(checkpoint)
        source = str(checkpoint.relative_to(ROOT))
    else:
        torch.manual_seed(0)
        model, source = VideoColBERT(config.model), "an untrained tiny model (no checkpoint)"
    model.eval()
    data = config.data
    test = read_annotations(data.datatype, data.anno_path, "test", data.video_path)
    paths = list(dict.fromkeys(record.path for record in test))
    captions: dict[str, list[str]] = {}
    for record in test:
        captions.setdefault(Path(record.path).stem, []).append(record.caption)
    index = VideoIndex.build(model, paths, framerate=data.video_framerate)
    explorer = QueryExplorer(
        index, model, k=args.k, captions=captions, threads=args.threads or None
    )
    queries = list(dict.fromkeys(record.caption for record in test))[: args.queries + 1]
    explorer.query.value = queries[0]  # warm-up
    walls, parts = [], {}
    for query in queries[1:]:
        start = time.perf_counter()
        explorer.query.value = query
        walls.append(time.perf_counter() - start)
        assert explorer.error is None, explorer.error
        for name, seconds in explorer.timings.items():
            parts.setdefault(name, []).append(seconds)
    print(
        f"{len(index)} videos, k = {args.k}, model: {source}, torch threads: "
        f"{args.threads or torch.get_num_threads()}, {os.cpu_count()} CPU cores"
    )
    print(
        f"query to updated widget, median of {len(walls)} queries: "
        f"{statistics.median(walls) * 1000:.0f} ms (min {min(walls) * 1000:.0f}, "
        f"max {max(walls) * 1000:.0f})"
    )
    print(
        "medians by part: "
        + ", ".join(f"{name} {statistics.median(v) * 1000:.1f} ms" for name, v in parts.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
