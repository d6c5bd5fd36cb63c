"""Where a two-stage query spends its time at scale, and what a second, finer code would buy.

On an index that ``bench_search.py`` built and measured (its calibrated settings and exact
top-10), this script prints three things:

1. **stages**: one query at a time on one thread, the vector files evicted from the page cache
   first (as ``bench_search.py`` times them), the median milliseconds of each step of
   ``vcb_utils.search.searcher.two_stage``: the candidates (the engine's ``find``: for the
   mean-query engine the scan of the probed lists' codes and their hits made videos; for the
   rescored one two steps, its ``pool`` (that scan) and its ``rescore``, and apart from the
   total the scan for the hits alone), reading the candidates' stored vectors,
   ``narrow`` (the mean-query score from those vectors) and the exact MeanMaxSim of the rest;
   and how many codes the probed lists hold (coarse lists are not even: a few large ones cost
   the most);
2. **cold reads**: the milliseconds of ``collection.read_file_rows`` (``posix_fadvise`` for
   every row, then ``pread``) reading ``n`` random rows of a given size from the evicted
   segment files: whether a read costs its bytes or its count;
3. **second codes** (of the mean-query engine): the share of the exact top-10 within the
   first 32 ... 512 of the candidates when they are ranked by the mean-query score from the
   stored vectors (what ``narrow`` does now) or from a second code of each vector: an 8-bit
   product quantizer of the vector (64 or 128 bytes), or of what the first code leaves (the
   residual of its residual, 32 or 64 bytes more). The quantizers are trained on the vectors
   of 4,000 random videos. For the rescored engine instead, where its steps lose the exact
   top-10: the share within the first 32 ... 4,096 of its pool ranked by the best hit's
   first code and by both codes, and within the ``exact`` that ``narrow`` keeps.

    python benchmarks/bench_search.py --generator cliplike --sizes 1000000 --data /scratch/b
    python benchmarks/bench_query_costs.py --generator cliplike --videos 1000000 --data /scratch/b

At a million videos the third part encodes every candidate's vectors four times per query
(about 15 s a query on 2 cores).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_ranking import shares
from bench_search import evict, measured_index, one

from vcb_utils.index import VideoIndex
from vcb_utils.search import searcher
from vcb_utils.search.collection import branch_columns, read_file_rows
from vcb_utils.search.engine import BRANCH_IDS, faiss_threads
from vcb_utils.threads import torch_threads

SHORTLISTS = (32, 64, 128, 256, 512)
POOL_CUTS = (*SHORTLISTS, 1024, 2048, 4096)
READS = ((256, None), (1024, None), (4096, None), (4096, 26 * 128))
"""(rows, bytes per row; None: a stored row) of the cold-read trials."""
SECOND_CODES = {
    "vector, 8-bit PQ, 64 B": ("vector", 64),
    "vector, 8-bit PQ, 128 B": ("vector", 128),
    "residual of the first code, 8-bit PQ, +32 B": ("residual", 32),
    "residual of the first code, 8-bit PQ, +64 B": ("residual", 64),
}
TRAIN_VIDEOS = 4000


def stage_times(index: VideoIndex, text, count: int) -> dict[str, list[float]]:
    """Milliseconds of each step of a two-stage query, per query."""
    collection, stage, settings = index.collection, index.stage, index.settings
    names = list(collection.branches)
    columns = [branch_columns(name, collection.frames) for name in names]
    steps: dict[str, list[float]] = {}
    for i in range(count):
        query = text.vectors[i][text.mask[i]].float().numpy()
        with faiss_threads(1), torch_threads(1):
            marks = [time.perf_counter()]
            rows = candidates(stage, query, names, settings, marks)
            vectors, mask = collection.read_rows(torch.from_numpy(rows))
            marks.append(time.perf_counter())
            keep = stage.engine.narrow(query, vectors.numpy(), mask.numpy(), columns, settings, 10)
            marks.append(time.perf_counter())
            keep = torch.from_numpy(np.asarray(keep, np.int64))
            searcher.score(collection, one(text, i), vectors[keep], mask[keep], names).topk(10)
            marks.append(time.perf_counter())
        spans = np.diff(marks) * 1e3
        found = ("pool", "rescore") if len(spans) == 5 else ("candidates",)
        for name, ms in zip((*found, "read", "narrow", "exact"), spans, strict=True):
            steps.setdefault(name, []).append(float(ms))
    return steps


def candidates(stage, query: np.ndarray, names: list[str], settings, marks: list[float]):
    """The engine's candidates for one query, a time mark after each step: for the rescored
    engine its ``pool`` (the first codes' scan and the hits made videos) and its ``rescore``,
    for others the whole ``find``."""
    engine = stage.engine
    if not hasattr(engine, "rescore"):
        (rows,) = stage.find([query], names, settings, 10)
        marks.append(time.perf_counter())
        return rows
    wanted = [BRANCH_IDS[name] for name in names]
    pool = engine.pool(query, settings, wanted)
    marks.append(time.perf_counter())
    rows = engine.rescore(query.mean(axis=0), pool, wanted, max(settings.candidates, 10))
    marks.append(time.perf_counter())
    return rows


def search_times(index: VideoIndex, text, count: int) -> list[float]:
    """Milliseconds of the first codes' scan alone (faiss's ``search_preassigned`` for the
    ``hits``), per query: the part of the pool step that is not making videos of the hits."""
    settings, times = index.settings, []
    mean_query = index.stage.engine.mean_query
    for i in range(count):
        mean = text.vectors[i][text.mask[i]].float().mean(dim=0).numpy()
        with faiss_threads(1):
            began = time.perf_counter()
            mean_query.search(mean, settings.hits, settings.nprobe)
            times.append(1e3 * (time.perf_counter() - began))
    return times


def rescored_shares(
    index: VideoIndex, text, truth: np.ndarray
) -> tuple[dict[str, list[float]], float]:
    """For the rescored engine under the index's settings, the share of the exact top-10 within
    the first n (``POOL_CUTS``) of its pool ranked by the best hits' first codes and by both
    codes (``rescore``), and within what ``narrow`` keeps of the candidates."""
    collection, stage, settings = index.collection, index.stage, index.settings
    engine, names = stage.engine, list(collection.branches)
    wanted = [BRANCH_IDS[name] for name in names]
    columns = [branch_columns(name, collection.frames) for name in names]
    found: dict[str, list[list[float]]] = {}
    narrowed: list[float] = []
    for i, exact_top in enumerate(truth):
        query = text.vectors[i][text.mask[i]].float().numpy()
        pool = engine.pool(query, settings, wanted)
        ranked = engine.rescore(query.mean(axis=0), pool, wanted, len(pool))
        chosen = ranked[: settings.candidates]
        vectors, mask = collection.read_rows(torch.from_numpy(chosen))
        keep = engine.narrow(query, vectors.numpy(), mask.numpy(), columns, settings, 10)
        found.setdefault("pool, by the best hit (first code)", []).append(
            shares(pool, exact_top, POOL_CUTS)
        )
        found.setdefault("pool, rescored (both codes)", []).append(
            shares(ranked, exact_top, POOL_CUTS)
        )
        narrowed.append(shares(chosen[np.asarray(keep)], exact_top, (len(keep),))[0])
    shares_by_way = {name: np.mean(rows, axis=0).tolist() for name, rows in found.items()}
    return shares_by_way, float(np.mean(narrowed))


def probed_codes(index: VideoIndex, text, count: int) -> tuple[np.ndarray, list[int]]:
    """The codes in each coarse list, and in the lists each query probes."""
    mean_query, settings = index.stage.engine.mean_query, index.settings
    sizes = mean_query.list_sizes()
    probed = []
    for i in range(count):
        mean = text.vectors[i][text.mask[i]].float().mean(dim=0).numpy()
        chosen, _ = mean_query.probe(mean, settings.nprobe)
        probed.append(int(sizes[chosen].sum()))
    return sizes, probed


def cold_reads(folder: Path, repeats: int = 3) -> dict[tuple[int, int], list[float]]:
    """Milliseconds of ``collection.read_file_rows`` reading ``rows`` random rows of ``size``
    bytes from evicted segment files (each trial on another file, ``READS`` in turns)."""
    files = sorted((folder / "segments").rglob("vectors.npy"))
    times: dict[tuple[int, int], list[float]] = {}
    trial = 0
    for repeat in range(repeats):
        for rows, size in READS:
            stored = np.load(files[trial % len(files)], mmap_mode="r")
            trial += 1
            size = size or stored[0].nbytes
            count = (stored.size * stored.itemsize) // size
            array = np.memmap(stored.filename, np.uint8, "r", stored.offset, (count, size))
            chosen = np.sort(np.random.default_rng([repeat, rows, size]).choice(count, rows, False))
            out = np.empty((rows, size), np.uint8)
            evict(folder)
            began = time.perf_counter()
            if not read_file_rows(array, chosen, out, np.arange(rows)):
                raise RuntimeError("this platform has no pread: cold reads not measured")
            times.setdefault((rows, size), []).append(1e3 * (time.perf_counter() - began))
    return times


def trained_codes(index: VideoIndex) -> dict[str, tuple[str, object]]:
    """Each second code's kind and its product quantizer, trained on random videos' vectors."""
    import faiss

    collection = index.collection
    rows = np.random.default_rng(0).choice(len(collection), TRAIN_VIDEOS, replace=False)
    vectors, mask = collection.read_rows(torch.from_numpy(rows))
    sample = np.ascontiguousarray(vectors[mask].float().numpy())
    residual = sample - first_code(index, sample)
    codes = {}
    for name, (kind, size) in SECOND_CODES.items():
        quantizer = faiss.ProductQuantizer(sample.shape[1], size, 8)
        quantizer.train(sample if kind == "vector" else residual)
        codes[name] = (kind, quantizer)
    return codes


def first_code(index: VideoIndex, vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as the candidate stage's codes give them back."""
    encoder = index.stage.engine.mean_query.encoder
    return encoder.sa_decode(encoder.sa_encode(np.ascontiguousarray(vectors, np.float32)))


def video_scores(sims: np.ndarray, columns: list[slice]) -> np.ndarray:
    """The mean-query score of each video from its vectors' inner products ``[n, width]``."""
    best = np.stack([sims[:, c].max(axis=1) for c in columns], axis=1)
    return np.where(np.isfinite(best), best, 0.0).sum(axis=1)


def second_code_shares(index: VideoIndex, text, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per way of ranking the candidates, the share of the exact top-10 per shortlist length."""
    collection, settings = index.collection, index.settings
    mean_query = index.stage.engine.mean_query
    columns = [branch_columns(name, collection.frames) for name in collection.branches]
    codes = trained_codes(index)
    found: dict[str, list[list[float]]] = {}
    for i, exact_top in enumerate(truth):
        query = text.vectors[i][text.mask[i]].float().numpy()
        weights = np.full(len(query), 1 / len(query), np.float32)
        mean = weights @ query
        candidates = mean_query.candidates(query, weights, settings)
        vectors, mask = collection.read_rows(torch.from_numpy(candidates))
        valid = mask.numpy()
        stored = vectors.numpy()[valid].astype(np.float32)
        first = first_code(index, stored)
        ways = {"first code (the candidates' order)": None, "stored fp16 vectors": stored}
        for name, (kind, quantizer) in codes.items():
            if kind == "vector":
                ways[name] = quantizer.decode(quantizer.compute_codes(stored))
            else:
                ways[name] = first + quantizer.decode(quantizer.compute_codes(stored - first))
        for name, approx in ways.items():
            if approx is None:
                order = np.arange(len(candidates))
            else:
                sims = np.full(valid.shape, -np.inf, np.float32)
                sims[valid] = approx @ mean
                order = np.argsort(-video_scores(sims, columns), kind="stable")
            found.setdefault(name, []).append(shares(candidates[order], exact_top, SHORTLISTS))
    return {name: np.mean(rows, axis=0) for name, rows in found.items()}


def main() -> None:
    folder, truth, text = measured_index(__doc__.split("\n\n")[0])
    index = VideoIndex.load(folder)
    print(f"{folder.name}: {len(index):,} videos, settings {index.settings}")
    evict(folder)
    steps = stage_times(index, text, len(truth))
    total = np.sum([steps[name] for name in steps], axis=0)
    print(f"steps of one query, median ms of {len(truth)} (cold vectors, 1 thread):")
    for name, ms in [*steps.items(), ("total", total)]:
        print(f"  {name:10s} {statistics.median(ms):7.1f}  (p90 {np.percentile(ms, 90):7.1f})")
    if "pool" in steps:
        searched = search_times(index, text, len(truth))
        print(
            f"  of the pool step, the scan for {index.settings.hits:,} hits alone: "
            f"{statistics.median(searched):.1f} (p90 {np.percentile(searched, 90):.1f})"
        )
    sizes, probed = probed_codes(index, text, len(truth))
    largest = ", ".join(f"{size:,}" for size in np.sort(sizes)[::-1][:3])
    share = statistics.median(probed) / sizes.sum()
    print(
        f"coarse lists: {len(sizes):,} holding {sizes.sum():,} codes (largest {largest}, "
        f"median {int(np.median(sizes)):,}); the {index.settings.nprobe:,} lists a query "
        f"probes hold {share:.0%} of them (median)"
    )
    print("cold reads of random rows from the evicted segments, ms per trial:")
    for (rows, size), ms in cold_reads(folder).items():
        print(f"  {rows:5d} rows of {size:6d} B: " + ", ".join(f"{t:.0f}" for t in ms))
    if "pool" in steps:
        print(f"share of the exact top-10 within the first {', '.join(map(str, POOL_CUTS))}:")
        ways, narrowed = rescored_shares(index, text, truth)
        for name, row in ways.items():
            print(f"  {name:38s} " + " ".join(f"{v:.3f}" for v in row))
        settings = index.settings
        print(
            f"  and of the first {settings.candidates}, within the {settings.exact} that "
            f"narrow keeps: {narrowed:.3f}"
        )
    if index.ann.name != "mean-query":
        print(f"second codes: measured for the mean-query engine only, not {index.ann.name}")
    else:
        print(f"share of the exact top-10 within the first {', '.join(map(str, SHORTLISTS))}")
        print(f"of the {index.settings.candidates} candidates, ranked by:")
        for name, row in second_code_shares(index, text, truth).items():
            print(f"  {name:46s} " + " ".join(f"{v:.3f}" for v in row))
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
