"""Query latency of ``VideoIndex`` search over collections of random videos.

Each video holds 26 unit vectors (12 F + 14 V, dim 512) stored in fp16; each query is 32 unit
vectors (already encoded: the text encoder is not timed). Prints the median latency of one
query against 1k, 10k and 100k videos, the bytes stored per video, how latency grows with
size, the read bandwidth reached as a fraction of the machine's (measured in the same run),
and what a million-video collection would need. Before that it measures, on 10k videos, the
choices the scan depends on: scoring the fp16 blocks directly vs casting them to fp32 (and
bf16 for comparison), the block size, and the number of threads.

    python benchmarks/bench_search.py                  # the issue's setting, about 2-3 minutes
    python benchmarks/bench_search.py --sizes 1000 10000 --queries 20

Timings on a shared machine move with the other work on it: the load average is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vcb_utils.config import ModelConfig
from vcb_utils.index import DEFAULT_BLOCK_VIDEOS, VideoIndex
from vcb_utils.model import TextEmbedding, VideoEmbedding

FRAMES, VIDEO_VECTORS, DIM, QUERY_LEN, K = 12, 14, 512, 32, 10
UNIQUE_VIDEOS = 10_000
"""Larger collections repeat these random videos (same cost per video, quicker to make)."""


def random_index(n: int) -> VideoIndex:
    g = torch.Generator().manual_seed(0)
    unique = min(n, UNIQUE_VIDEOS)
    vectors = [
        F.normalize(torch.randn(unique, count, DIM, generator=g), dim=-1).half()
        for count in (FRAMES, VIDEO_VECTORS)
    ]
    repeats = math.ceil(n / unique)
    f_vectors, v_vectors = (v.repeat(repeats, 1, 1)[:n] for v in vectors)
    embedding = VideoEmbedding(
        F=f_vectors,
        F_mask=torch.ones(n, FRAMES, dtype=torch.bool),
        V=v_vectors,
        V_mask=torch.ones(n, VIDEO_VECTORS, dtype=torch.bool),
    )
    cfg = ModelConfig(max_frames=FRAMES, n_visual_expansion=VIDEO_VECTORS - FRAMES)
    return VideoIndex(cfg, embedding, [f"video{i}" for i in range(n)])


def random_queries(count: int, dtype: torch.dtype = torch.float32) -> list[TextEmbedding]:
    g = torch.Generator().manual_seed(1)
    vectors = F.normalize(torch.randn(count, 1, QUERY_LEN, DIM, generator=g), dim=-1)
    mask = torch.ones(1, QUERY_LEN, dtype=torch.bool)
    ids = torch.zeros(1, QUERY_LEN, dtype=torch.long)
    return [TextEmbedding(v.to(dtype), mask, ids) for v in vectors]


def latencies(
    index: VideoIndex, queries: list[TextEmbedding], block: int = DEFAULT_BLOCK_VIDEOS
) -> list[float]:
    index.top_k(queries[0], K, block_videos=block)  # warm-up
    times = []
    for text in queries:
        start = time.perf_counter()
        index.top_k(text, K, block_videos=block)
        times.append(time.perf_counter() - start)
    return times


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run in turns so that load changes hit all alike."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(run())
    return {name: statistics.median(t) for name, t in times.items()}


def timed(run: Callable[[], object]) -> Callable[[], float]:
    def once() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return once


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes per second of a sum over 1 GiB of fp32 (best of ``repeats``)."""
    x = torch.ones(256 * 1024 * 1024)
    best = min(timed(x.sum)() for _ in range(repeats))
    return x.numel() * x.element_size() / best


def matmul_peak(repeats: int = 5) -> float:
    """FLOP per second of a 2048^3 fp32 matrix product (best of ``repeats``)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = min(timed(lambda: a @ b)() for _ in range(repeats))
    return 2 * 2048**3 / best


def choose_threads(index: VideoIndex, query: TextEmbedding) -> int:
    """The faster of 1 thread and all threads (other work on a shared machine can flip it)."""
    counts = {f"{count} thread(s)": count for count in sorted({1, torch.get_num_threads()})}
    run = timed(lambda: index.top_k(query, K))
    medians = interleaved({name: _with_threads(c, run) for name, c in counts.items()}, repeats=3)
    print("threads (10k videos):  " + _row(medians))
    return counts[min(medians, key=medians.get)]


def _with_threads(count: int, run: Callable[[], float]) -> Callable[[], float]:
    def once() -> float:
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            return run()
        finally:
            torch.set_num_threads(previous)

    return once


def compare_dtypes(index: VideoIndex) -> None:
    dtypes = {
        "fp16 blocks as stored": torch.float16,
        "fp32 cast per block": torch.float32,
        "bf16 cast per block": torch.bfloat16,
    }
    queries = {name: random_queries(1, dtype)[0] for name, dtype in dtypes.items()}
    runs = {name: timed(lambda q=q: index.top_k(q, K)) for name, q in queries.items()}
    print("scan dtype (10k):      " + _row(interleaved(runs, repeats=5)))
    exact = _all_scores(index, queries["fp32 cast per block"])
    for name in ("fp16 blocks as stored", "bf16 cast per block"):
        error = (_all_scores(index, queries[name]) - exact).abs().max()
        print(f"  {name}: scores differ from fp32 by up to {error:.1e}")
    print("  search casts to fp32 (exact; fp16 arithmetic is emulated on most CPUs)")


def _all_scores(index: VideoIndex, query: TextEmbedding) -> torch.Tensor:
    scores, rows = index.top_k(query, len(index))
    return scores[0][rows[0].argsort()]


def compare_blocks(index: VideoIndex, query: TextEmbedding) -> None:
    runs = {
        f"{block} videos": timed(lambda b=block: index.top_k(query, K, block_videos=b))
        for block in (32, DEFAULT_BLOCK_VIDEOS, 512, 2048)
    }
    medians = interleaved(runs, repeats=5)
    print(f"block size (10k):      {_row(medians)} (default {DEFAULT_BLOCK_VIDEOS})")


def batched_queries(index: VideoIndex, count: int = 8) -> None:
    queries = random_queries(count)
    text = TextEmbedding(
        *(torch.cat([getattr(q, f) for q in queries]) for f in ("vectors", "mask", "ids"))
    )
    medians = interleaved({"batch": timed(lambda: index.top_k(text, K))}, repeats=3)
    print(f"{count} queries at once (10k): {medians['batch'] / count * 1e3:.0f} ms per query")


def _row(medians: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in medians.items())


def size_table(
    sizes: list[int], n_queries: int, large_queries: int, bandwidth: float, peak: float
) -> list:
    print(
        f"\n{'videos':>9} {'queries':>7} {'MB stored':>9} {'median ms':>9} {'p10-p90 ms':>13} "
        f"{'us/video':>8} {'x prev':>6} {'GB/s':>5} {'% bw':>5} {'GFLOP/s':>7} {'% mm':>5}"
    )
    rows, previous = [], None
    for n in sizes:
        index = random_index(n)
        count = n_queries if n < 100_000 else large_queries
        times = sorted(latencies(index, random_queries(count)))
        median = statistics.median(times)
        p10, p90 = times[len(times) // 10], times[(9 * len(times)) // 10]
        growth = f"{median / previous:.1f}" if previous else "-"
        flops = 2 * n * (FRAMES + VIDEO_VECTORS) * QUERY_LEN * DIM / median
        print(
            f"{n:>9,} {count:>7} {index.nbytes / 1e6:>9.0f} {median * 1e3:>9.1f} "
            f"{p10 * 1e3:>6.1f}-{p90 * 1e3:<6.1f} {median / n * 1e6:>8.2f} {growth:>6} "
            f"{index.nbytes / median / 1e9:>5.1f} {100 * index.nbytes / median / bandwidth:>5.1f} "
            f"{flops / 1e9:>7.1f} {100 * flops / peak:>5.0f}"
        )
        rows.append((n, median, index.nbytes / n))
        previous = median
        del index
    return rows


def growth_summary(rows: list) -> None:
    (n0, t0, _), (n1, t1, per_video) = rows[0], rows[-1]
    exponent = math.log(t1 / t0) / math.log(n1 / n0) if n1 > n0 else float("nan")
    print(f"\nlatency grows as N^{exponent:.2f} from {n0:,} to {n1:,} videos")
    print(
        "% bw: read bandwidth reached / measured bandwidth; % mm: FLOP rate / matmul peak. "
        "With 32 query vectors each fp16 byte read costs 32 FLOP: the scan is compute-bound"
    )
    print(f"bytes per video stored: {per_video:,.0f} (26 x 512 fp16 vectors + 26 mask bytes)")
    million = 1_000_000
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(
        f"1M videos: {per_video * million / 1e9:.1f} GB of vectors in RAM (+ ids and paths; "
        f"this machine has {ram / 1e9:.0f} GB), "
        f"about {t1 / n1 * million:.1f} s per query at the {n1:,}-video cost per video "
        "(linear: the scan reads every video); a GPU or an approximate first stage "
        "(e.g. one pooled vector per video, then MaxSim on the top few thousand) is the way "
        "to interactive latency at that size"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100, help="queries timed per size")
    parser.add_argument("--large-queries", type=int, default=10, help="queries at >= 100k")
    args = parser.parse_args()

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    bandwidth = read_bandwidth()
    print(f"memory read bandwidth {bandwidth / 1e9:.1f} GB/s (sum of 1 GiB fp32, all threads)")
    calibration = random_index(10_000)
    query = random_queries(1)[0]
    torch.set_num_threads(choose_threads(calibration, query))
    peak = matmul_peak()
    print(f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} thread(s)")
    compare_dtypes(calibration)
    compare_blocks(calibration, query)
    batched_queries(calibration)
    del calibration
    print(f"\ntimed: fp32 scan, {DEFAULT_BLOCK_VIDEOS}-video blocks, top {K}, one query at a time")
    if max(args.sizes) >= 100_000 and args.large_queries < args.queries:
        print(f"collections of 100k or more: median of {args.large_queries} queries (time)")
    rows = size_table(args.sizes, args.queries, args.large_queries, bandwidth, peak)
    growth_summary(rows)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
