"""How fast the rescored engine gathers its pool's codes into columns, by block size.

``RescoredEngine.rescore`` looks each code byte up with ``np.take`` on one contiguous row per
byte, so it needs the pool's codes (rows of the in-RAM code array) transposed. This script
times, on one thread, gathering the codes of ``--pool`` videos (``--kept`` consecutive codes
each, at random places among ``--videos``) and transposing them whole, against
``code_columns`` at several block sizes, in turns, and prints the medians and their ratio:

    python benchmarks/bench_code_gather.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vcb_utils.search.rescored import GATHER_BLOCK, code_columns

BLOCKS = (128, 256, GATHER_BLOCK, 1024, 2048)


def whole(codes: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The baseline: every code gathered, then one transposing copy."""
    return np.ascontiguousarray(codes[at].T)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=150_000, help="videos whose codes are held")
    parser.add_argument("--kept", type=int, default=13, help="codes per video")
    parser.add_argument("--code-bytes", type=int, default=193)
    parser.add_argument("--pool", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.videos * args.kept, args.code_bytes), dtype=np.uint8)
    videos = np.sort(rng.choice(args.videos, args.pool, replace=False))
    at = (videos[:, None] * args.kept + np.arange(args.kept)).ravel()
    ways = {"whole, then transposed": lambda: whole(codes, at)}
    ways |= {f"code_columns, block {b}": lambda b=b: code_columns(codes, at, b) for b in BLOCKS}
    if any(not np.array_equal(way(), whole(codes, at)) for way in ways.values()):
        raise RuntimeError("a way of gathering gave other columns")
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            began = time.perf_counter()
            way()
            times[name].append(1e3 * (time.perf_counter() - began))
    base = statistics.median(times["whole, then transposed"])
    print(
        f"{len(at):,} codes of {args.code_bytes} B ({args.pool:,} videos), median ms of "
        f"{args.repeats}, one thread:"
    )
    for name, ms in times.items():
        median = statistics.median(ms)
        print(f"  {name:26s} {median:6.1f}  ({base / median:.2f}x the baseline's speed)")


if __name__ == "__main__":
    main()
