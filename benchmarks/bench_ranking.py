"""How well the candidate stage ranks: the exact top-10 under the codes' score and under the same
score computed exactly, on an index that ``bench_search.py`` built and measured.

The mean-query candidate stage ranks a video by the sum over its branches of its best vector's
inner product with the query's mean vector, read from 4-bit codes. This script separates the two
ways that can miss the exact top-10 (MeanMaxSim): the score itself, computed exactly from the
stored vectors (one pass over every vector for all queries at once), and the codes' error, and
prints for each the share of the exact top-10 within the first 32 ... 8,192 videos, and how far
the codes' score of the exact top-10 videos, and of the others found, is from its exact value.

    python benchmarks/bench_search.py --generator cliplike --sizes 1000000 --data /scratch/b
    python benchmarks/bench_ranking.py --generator cliplike --videos 1000000 --data /scratch/b
"""

from __future__ import annotations

import time

import numpy as np
import torch
from bench_search import measured_index

from vcb_utils.candidates import CandidateSettings
from vcb_utils.index import VideoIndex
from vcb_utils.search.collection import branch_columns

CUTS = (32, 128, 256, 1024, 2048, 4096, 8192)
SETTINGS = [(1024, 16384), (1024, 65536), (2048, 65536)]
"""(nprobe, hits) of the codes' rankings."""


def shares(ranked: np.ndarray, truth: np.ndarray, cuts: tuple[int, ...] = CUTS) -> list[float]:
    """The share of ``truth`` within the first n of ``ranked``, for each n of ``cuts``."""
    place = {row: i for i, row in enumerate(ranked.tolist())}
    return [float(np.mean([place.get(r, np.inf) < n for r in truth])) for n in cuts]


def exact_mean_scores(index: VideoIndex, means: np.ndarray, block: int = 8192) -> np.ndarray:
    """``[queries, videos]``: the sum over branches of each video's best inner product with
    each query's mean vector, from the stored vectors."""
    collection, queries = index.collection, torch.from_numpy(means).half()
    scores = []
    for part in collection.parts:
        for lo in range(0, len(part), block):
            vectors, mask = part.vectors[lo : lo + block], part.mask[lo : lo + block]
            sims = (vectors @ queries.T).float().masked_fill(~mask[..., None], -torch.inf)
            total = 0
            for branch in collection.branches:
                best = sims[:, branch_columns(branch, collection.frames)].max(dim=1).values
                total = total + torch.where(best.isfinite(), best, 0.0)
            scores.append(total)
    return torch.cat(scores).T.numpy()


def main() -> None:
    folder, truth, text = measured_index(__doc__.split("\n\n")[0])
    queries = [text.vectors[i][text.mask[i]].float().numpy() for i in range(len(truth))]
    means = np.stack([q.mean(axis=0) for q in queries])
    index = VideoIndex.load(folder)
    stage = index.stage.engine.mean_query
    print(f"share of the exact top-10 within the first {', '.join(map(str, CUTS))} videos")
    for nprobe, hits in SETTINGS:
        settings = CandidateSettings(nprobe=nprobe, hits=hits, candidates=max(CUTS))
        began = time.perf_counter()
        found = [
            shares(stage.candidates(q, np.full(len(q), 1 / len(q), np.float32), settings), t)
            for q, t in zip(queries, truth, strict=True)
        ]
        ms = 1e3 * (time.perf_counter() - began) / len(queries)
        row = " ".join(f"{v:.3f}" for v in np.mean(found, axis=0))
        print(f"  codes, nprobe {nprobe}, {hits} hits ({ms:.0f} ms a query): {row}")
    began = time.perf_counter()
    exact = exact_mean_scores(index, means)
    found = [shares(np.argsort(-s)[: max(CUTS)], t) for s, t in zip(exact, truth, strict=True)]
    row = " ".join(f"{v:.3f}" for v in np.mean(found, axis=0))
    print(f"  exact mean-query score ({time.perf_counter() - began:.0f} s pass): {row}")
    top, others = [], []
    for i, q in enumerate(queries):
        sims, ids = stage.search(q.mean(axis=0), SETTINGS[1][1], SETTINGS[1][0])
        rows, inverse = np.unique(ids // stage.branches, return_inverse=True)
        best = np.full((len(rows), stage.branches), -np.inf, np.float32)
        np.maximum.at(best, (inverse, ids % stage.branches), sims)
        whole = np.isfinite(best).all(axis=1)  # a hit in every branch
        error = best[whole].sum(axis=1) - exact[i, rows[whole]]
        is_top = np.isin(rows[whole], truth[i])
        top.extend(error[is_top].tolist())
        others.extend(error[~is_top].tolist())
    for name, errors in (("exact top-10 videos", top), ("other videos found", others)):
        errors = np.asarray(errors)
        print(
            f"codes' score - exact score, {name}: {errors.mean():+.4f} "
            f"+- {errors.std() / np.sqrt(len(errors)):.4f} (sd {errors.std():.4f}, n {len(errors)})"
        )


if __name__ == "__main__":
    main()
