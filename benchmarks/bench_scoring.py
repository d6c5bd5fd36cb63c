"""Throughput and memory of MeanMaxSim scoring: ``vcb_utils.scoring.maxsim`` vs the naive einsum.

Scores Nt texts x Nv videos (32 query vectors; 12 frame + 14 video vectors; dim 512; fp32),
as Video-ColBERT does at evaluation (MMS_F + MMS_V). Prints GFLOP/s, the fraction of this
machine's matmul peak (measured in the same run), the peak extra memory of each method and
the ratio between them. Each method runs in a fresh process so its memory peak is its own.

    python benchmarks/bench_scoring.py            # 1000 x 1000, the issue's setting
    python benchmarks/bench_scoring.py --texts 200 --videos 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

import torch

from vcb_utils.scoring import maxsim

QUERY_LEN, FRAMES, VIDEO_VECTORS, DIM = 32, 12, 14, 512


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs(n_texts: int, n_videos: int):
    g = torch.Generator().manual_seed(0)
    shapes = [(n_texts, QUERY_LEN), (n_videos, FRAMES), (n_videos, VIDEO_VECTORS)]
    unit = torch.nn.functional.normalize
    return [unit(torch.randn(n, k, DIM, generator=g), dim=-1) for n, k in shapes]


def ours(q, f, v):
    return maxsim(q, f) + maxsim(q, v)


def reference_einsum(q, f, v):
    """The reference code's approach: the full [Nt, Nv, Lq, Lv] tensor, then max and mean."""
    sim_f = torch.einsum("ald,bvd->ablv", q, f).amax(dim=-1).mean(dim=-1)
    sim_v = torch.einsum("ald,bvd->ablv", q, v).amax(dim=-1).mean(dim=-1)
    return sim_f + sim_v


def matmul_peak_gflops(repeats: int = 5) -> float:
    """Best sgemm throughput on large square fp32 matrices."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def run_one(name: str, n_texts: int, n_videos: int, repeats: int, queue) -> None:
    method = {"maxsim": ours, "einsum": reference_einsum}[name]
    inputs = make_inputs(n_texts, n_videos)
    method(*(x[:8] for x in inputs))  # warm-up on a small slice
    before = rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = method(*inputs)
        times.append(time.perf_counter() - start)
    queue.put((min(times), peak_rss_bytes() - before, result.numpy()))


def measure(name: str, n_texts: int, n_videos: int, repeats: int):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_one, args=(name, n_texts, n_videos, repeats, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    flops = 2 * args.texts * args.videos * QUERY_LEN * (FRAMES + VIDEO_VECTORS) * DIM
    peak = matmul_peak_gflops()
    print(f"threads: {torch.get_num_threads()}  matmul peak (2048^3 sgemm): {peak:.1f} GFLOP/s")
    print(f"scoring {args.texts} texts x {args.videos} videos: {flops / 1e9:.0f} GFLOP per pass")
    results = {}
    for name in ("maxsim", "einsum"):
        seconds, extra, scores = measure(name, args.texts, args.videos, args.repeats)
        gflops = flops / seconds / 1e9
        results[name] = (seconds, extra, scores)
        print(
            f"{name:>7}: {seconds:7.2f} s  {gflops:6.1f} GFLOP/s"
            f"  {100 * gflops / peak:5.1f}% of peak  peak extra memory {extra / 2**30:5.2f} GiB"
        )
    (t_ours, m_ours, s_ours), (t_ref, m_ref, s_ref) = results["maxsim"], results["einsum"]
    speedup, saving = t_ref / t_ours, m_ref / max(m_ours, 1)
    print(f"maxsim vs einsum: {speedup:.2f}x faster, {saving:.1f}x less memory")
    print(f"max |difference| of the scores: {abs(s_ours - s_ref).max():.2e}")


if __name__ == "__main__":
    main()
