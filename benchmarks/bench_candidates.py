"""Candidate stages of two-stage search, measured standalone on three vector generators.

For each generator (``synthetic``: ``vcb_utils.synthetic_vectors``; ``multiscene``:
``benchmarks/vectors_multiscene.py``; ``cliplike``: ``benchmarks/vectors_cliplike.py``) and
size, the vectors are drawn once into a cache folder (memory-mapped ``.npy``, fp16, F then V
per row, as ``VideoIndex`` stores them), with queries aimed at random videos and their exact
top-10 (MeanMaxSim_F + MeanMaxSim_V over every video: the ground truth). Then, for each
candidate stage, its build time from the stored vectors and, in a fresh process (so that its
memory is its own), one query at a time: the candidates, then the exact rerank of those from
the memory-mapped vectors; median and p90 ms, recall@10 against the exact top-10, and the
process's peak resident memory.

Stages: ``meanquery`` is ``vcb_utils.candidates.MeanQueryCandidates``, the default engine's
scoring, with its default settings for the size; ``current`` is ``vcb_utils.search.ivfpq``, the
engine of indexes saved before it (IVF-PQ fast-scan hits of every query vector,
``approximate_scores``), kept as the baseline.

    python benchmarks/bench_candidates.py --generators cliplike --sizes 100000
    python benchmarks/bench_candidates.py --cache /tmp/vcb_candidates --sizes 1000000 --queries 50

Timings on a shared machine move with its load: the 1-minute load average is printed beside
each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_search import in_fresh_process  # noqa: E402
from vectors_cliplike import ClipLikeVideos  # noqa: E402
from vectors_multiscene import MultiSceneVideos  # noqa: E402

from vcb_utils.candidates import (  # noqa: E402
    CandidateSettings,
    MeanQueryCandidates,
    calibrate,
    default_nlist,
    default_settings,
    refine,
    train_points,
)
from vcb_utils.scoring import maxsim  # noqa: E402
from vcb_utils.search import ivfpq  # noqa: E402
from vcb_utils.synthetic_vectors import ClusteredVectors  # noqa: E402

K = 10
CHUNK = 16_384
"""Videos drawn, written or read at once."""
FRAMES = 12
THREADS = 2
"""Threads of the builds and the exact pass (the queries run on one)."""


class Synthetic:
    """``ClusteredVectors`` in the generators' interface (numpy arrays, F then V per row)."""

    def __init__(self, n_videos: int, seed: int = 0) -> None:
        self.vectors = ClusteredVectors(n_videos, seed=seed)
        self.frames = self.vectors.frames

    def videos(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        drawn = self.vectors.videos(start, stop)
        vectors = torch.cat([drawn.F, drawn.V], dim=1).numpy()
        return vectors, torch.cat([drawn.F_mask, drawn.V_mask], dim=1).numpy()

    def queries(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        text = self.vectors.queries(torch.from_numpy(targets))
        return text.vectors.numpy(), text.mask.numpy()


GENERATORS = {"synthetic": Synthetic, "multiscene": MultiSceneVideos, "cliplike": ClipLikeVideos}


# ---- the cached vectors, queries and ground truth -----------------------------------------------
def materialise(name: str, n: int, cache: Path, count: int) -> Path:
    """Draw ``n`` videos of generator ``name`` and ``count`` queries into ``cache`` (once)."""
    folder = cache / f"{name}-{n}"
    if (folder / "done.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    generator = GENERATORS[name](n)
    began = time.perf_counter()
    first, mask0 = generator.videos(0, 1)
    vectors = np.lib.format.open_memmap(
        folder / "vectors.npy", "w+", np.float16, (n, *first.shape[1:])
    )
    mask = np.lib.format.open_memmap(folder / "mask.npy", "w+", bool, (n, mask0.shape[1]))
    for lo in range(0, n, CHUNK):
        vectors[lo : lo + CHUNK], mask[lo : lo + CHUNK] = generator.videos(lo, min(n, lo + CHUNK))
    vectors.flush()
    mask.flush()
    del vectors, mask
    targets = np.random.default_rng(5).permutation(n)[:count]
    queries, query_mask = generator.queries(targets)
    np.save(folder / "targets.npy", targets)
    np.save(folder / "queries.npy", queries.astype(np.float32))
    np.save(folder / "query_mask.npy", query_mask)
    drawn_s = time.perf_counter() - began
    began = time.perf_counter()
    truth = exact_top_k(folder)
    np.save(folder / "truth.npy", truth)
    info = {"draw_s": drawn_s, "truth_s": time.perf_counter() - began, "load": load()}
    (folder / "done.json").write_text(json.dumps(info))
    return folder


def open_vectors(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.load(folder / "vectors.npy", mmap_mode="r"),
        np.load(folder / "mask.npy", mmap_mode="r"),
    )


def open_queries(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(folder / "queries.npy"), np.load(folder / "query_mask.npy")


def exact_scores(
    queries: torch.Tensor, query_mask: torch.Tensor, vectors: np.ndarray, mask: np.ndarray
) -> torch.Tensor:
    """MeanMaxSim_F + MeanMaxSim_V ``[Q, n]`` of stored rows (F then V)."""
    stored = torch.from_numpy(np.array(vectors, np.float32))
    valid = torch.from_numpy(np.array(mask))
    return sum(
        maxsim(queries, stored[:, columns], query_mask, valid[:, columns])
        for columns in (slice(0, FRAMES), slice(FRAMES, None))
    )


def exact_top_k(folder: Path) -> np.ndarray:
    """Rows ``[Q, K]`` of every query's exact best videos: every video scored, a chunk at a time."""
    vectors, mask = open_vectors(folder)
    queries, query_mask = (torch.from_numpy(a) for a in open_queries(folder))
    best = torch.full((len(queries), 0), -np.inf)
    rows = torch.zeros((len(queries), 0), dtype=torch.long)
    for lo in range(0, len(vectors), CHUNK):
        hi = min(lo + CHUNK, len(vectors))
        scores = exact_scores(queries, query_mask, vectors[lo:hi], mask[lo:hi])
        best = torch.cat([best, scores], dim=1)
        rows = torch.cat([rows, torch.arange(lo, hi).expand(len(queries), -1)], dim=1)
        best, order = best.topk(K, dim=1)
        rows = rows.gather(1, order)
    return rows.numpy()


def load() -> float:
    return os.getloadavg()[0]


# ---- the stages: build (timed), save, load, candidates of one query ------------------------------
def sample_vectors(vectors: np.ndarray, mask: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """About ``count`` valid vectors of rows drawn at random (fp32)."""
    rng = np.random.default_rng(seed)
    per_row = max(1.0, mask[: min(len(mask), 1000)].sum() / min(len(mask), 1000))
    rows = np.sort(rng.choice(len(vectors), min(len(vectors), int(count / per_row) + 1), False))
    sample = np.asarray(vectors[rows])[np.asarray(mask[rows])].astype(np.float32)
    return sample[rng.permutation(len(sample))[:count]]


class CurrentStage:
    """``vcb_utils.search.ivfpq`` as ``VideoIndex`` builds and searches it (IVF-PQ 4-bit
    fast-scan hits of every distinct query vector, ``approximate_scores``)."""

    name = "current"

    def __init__(self, engine: ivfpq.IvfPqEngine, settings: ivfpq.SearchSettings) -> None:
        self.engine, self.settings = engine, settings

    @classmethod
    def build(cls, vectors: np.ndarray, mask: np.ndarray) -> CurrentStage:
        nlist = ivfpq.default_nlist(int(mask.sum()))
        sample = sample_vectors(vectors, mask, ivfpq.TRAIN_POINTS_PER_LIST * nlist)
        engine = ivfpq.IvfPqEngine.train(sample, nlist)
        parts = []
        for lo in range(0, len(vectors), CHUNK):
            block, valid = np.asarray(vectors[lo : lo + CHUNK]), np.asarray(mask[lo : lo + CHUNK])
            for branch, columns in enumerate(BRANCHES):
                rows = np.nonzero(valid[:, columns])[0] + lo
                parts.append(
                    (engine.encode(block[:, columns][valid[:, columns]]), rows * 2 + branch)
                )
        engine.rebuild(parts)
        return cls(engine, ivfpq.default_settings(nlist))

    def save(self, folder: Path) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "trained.bin").write_bytes(self.engine.trained)
        faiss.write_index(self.engine._fast, str(folder / "fast.faiss"))  # the fast-scan codes
        (folder / "settings.json").write_text(json.dumps(dataclasses.asdict(self.settings)))

    @classmethod
    def load(cls, folder: Path) -> CurrentStage:
        import faiss

        engine = ivfpq.IvfPqEngine((folder / "trained.bin").read_bytes())
        engine._fast = faiss.read_index(str(folder / "fast.faiss"))
        settings = ivfpq.SearchSettings(**json.loads((folder / "settings.json").read_text()))
        return cls(engine, settings)

    def candidates(self, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.engine.find([vectors], ("F", "V"), self.settings, self.settings.candidates)[0]

    def describe(self) -> str:
        s = self.settings
        return (
            f"IVF-PQ {self.engine.nlist} lists x {self.engine.m} 4-bit codes; nprobe {s.nprobe}, "
            f"{s.hits_per_vector} hits, {s.candidates} candidates"
        )


class MeanQueryStage:
    """``vcb_utils.candidates.MeanQueryCandidates`` with its default settings."""

    name = "meanquery"

    def __init__(self, stage: MeanQueryCandidates, settings: CandidateSettings) -> None:
        self.stage, self.settings = stage, settings

    @classmethod
    def build(cls, vectors: np.ndarray, mask: np.ndarray) -> MeanQueryStage:
        nlist = default_nlist(int(mask.sum()))
        stage = MeanQueryCandidates.train(sample_vectors(vectors, mask, train_points(nlist)), nlist)
        for lo in range(0, len(vectors), CHUNK):
            stage.add(vectors[lo : lo + CHUNK], mask[lo : lo + CHUNK], BRANCHES)
        return cls(stage, default_settings(nlist))

    def save(self, folder: Path) -> None:
        self.stage.save(folder)

    @classmethod
    def load(cls, folder: Path) -> MeanQueryStage:
        stage = MeanQueryCandidates.load(folder)
        return cls(stage, default_settings(stage.nlist))

    def candidates(self, vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return self.stage.candidates(vectors, weights, self.settings)

    def calibrate(self, queries: np.ndarray, query_mask: np.ndarray, truth: np.ndarray) -> str:
        """The cheapest settings of ``calibration_grid`` reaching recall 0.95 on these queries
        (the same queries: an optimistic estimate)."""
        sample = [
            (q[m], np.full(int(m.sum()), 1 / m.sum(), np.float32))
            for q, m in zip(queries, query_mask, strict=True)
        ]
        grid = calibration_grid(self.stage.nlist)
        chosen = calibrate(self.stage, sample, list(truth), 0.95, grid)
        return f"{chosen.settings} -> recall {chosen.recall:.3f}"

    def describe(self) -> str:
        encoder, s = self.stage.encoder, self.settings
        return (
            f"IVF-PQ {encoder.nlist} lists x {encoder.pq.M} {encoder.pq.nbits}-bit codes; "
            f"nprobe {s.nprobe} (by bound), "
            f"{s.hits} hits, {s.candidates} candidates, {s.exact} refined to the exact rerank"
        )


STAGES = {"current": CurrentStage, "meanquery": MeanQueryStage}


def calibration_grid(nlist: int) -> list[CandidateSettings]:
    """The standalone calibration's settings: a 32nd to a quarter of the lists probed."""
    return [
        CandidateSettings(nprobe=max(1, nlist // share), hits=h, candidates=c)
        for share in (32, 16, 8, 4)
        for h in (4096, 16384)
        for c in (256, 512, 1024)
    ]


BRANCHES = [slice(0, FRAMES), slice(FRAMES, None)]


# ---- measuring, each in a fresh process ---------------------------------------------------
def memory() -> dict[str, int]:
    """This process's resident memory (bytes): peak and now."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def build_stage(stage_name: str, data: str, out) -> None:
    """Build a stage from the cached vectors and save it beside them (timed)."""
    torch.set_num_threads(THREADS)
    folder = Path(data)
    vectors, mask = open_vectors(folder)
    began, load_before = time.perf_counter(), load()
    stage = STAGES[stage_name].build(vectors, mask)
    seconds = time.perf_counter() - began
    stage.save(folder / f"stage-{stage_name}")
    out.send({"build_s": seconds, "load": [load_before, load()], "memory": memory()})


def measure_stage(stage_name: str, data: str, out) -> None:
    """Load a saved stage; candidates, then the exact rerank, one query at a time."""
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    folder = Path(data)
    vectors, mask = open_vectors(folder)
    queries, query_mask = open_queries(folder)
    truth = np.load(folder / "truth.npy")
    stage = STAGES[stage_name].load(folder / f"stage-{stage_name}")
    times, candidate_times, recalls, loads = [], [], [], [load()]
    for i in range(len(queries)):
        q = queries[i][query_mask[i]]
        began = time.perf_counter()
        rows = stage.candidates(q, np.full(len(q), 1 / len(q), np.float32))
        found = time.perf_counter()
        top = rerank(q, rows, vectors, mask, getattr(stage.settings, "exact", None))
        ended = time.perf_counter()
        times.append(ended - began)
        candidate_times.append(found - began)
        recalls.append(len(np.intersect1d(top, truth[i])) / K)
    loads.append(load())
    calibrated = stage.calibrate(queries, query_mask, truth) if stage.name == "meanquery" else None
    out.send(
        {
            "calibrated": calibrated,
            "median_ms": 1e3 * statistics.median(times),
            "p90_ms": 1e3 * float(np.percentile(times, 90)),
            "candidates_median_ms": 1e3 * statistics.median(candidate_times),
            "recall": float(np.mean(recalls)),
            "memory": memory(),
            "load": loads,
            "settings": stage.describe(),
            "queries": len(queries),
        }
    )


def rerank(
    query: np.ndarray, rows: np.ndarray, vectors: np.ndarray, mask: np.ndarray, keep: int | None
) -> np.ndarray:
    """The exact top-K of the candidate ``rows``: MeanMaxSim_F + MeanMaxSim_V from the stored
    (memory-mapped) vectors, read in row order; with ``keep``, only of the ``keep`` best by
    ``vcb_utils.candidates.refine`` (of the same vectors)."""
    order = np.sort(rows)
    stored, valid = vectors[order], mask[order]
    if keep is not None:
        weights = np.full(len(query), 1 / len(query), np.float32)
        kept = np.sort(refine(query, weights, stored, valid, BRANCHES, keep))
        order, stored, valid = order[kept], stored[kept], valid[kept]
    scores = exact_scores(torch.from_numpy(query)[None], None, stored, valid)[0]
    return order[scores.topk(min(K, len(order))).indices.numpy()]


# ---- the report -------------------------------------------------------------------------
def report(name: str, n: int, stage: str, built: dict, measured: dict) -> str:
    return (
        f"| {name} | {n:,} | {stage} | {measured['median_ms']:.1f} / {measured['p90_ms']:.1f} "
        f"(candidates {measured['candidates_median_ms']:.1f}) | {measured['recall']:.3f} | "
        f"{measured['memory']['VmHWM'] / 1e9:.2f} GB | {built['build_s'] / 60:.1f} min | "
        f"{measured['load'][0]:.1f}-{measured['load'][1]:.1f} | {measured['settings']} |"
    )


HEADER = (
    "| generator | videos | stage | median / p90 ms | recall@10 | peak RSS (query process) | "
    "build | load avg | settings |\n|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/vcb_candidates"))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rebuild", action="store_true", help="build the stages again")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"load average {load():.1f} on {os.cpu_count()} cores")
    print(HEADER)
    for n in args.sizes:
        for name in args.generators:
            folder = materialise(name, n, args.cache, args.queries)
            for stage in args.stages:
                record = folder / f"stage-{stage}" / "bench-build.json"
                if args.rebuild or not record.is_file():
                    built = in_fresh_process(build_stage, stage, str(folder))
                    record.write_text(json.dumps(built))
                built = json.loads(record.read_text())
                measured = in_fresh_process(measure_stage, stage, str(folder))
                print(report(name, n, stage, built, measured), flush=True)
                if measured["calibrated"]:
                    print(
                        f"|  |  | calibrated (target 0.95): {measured['calibrated']} |", flush=True
                    )


if __name__ == "__main__":
    main()
