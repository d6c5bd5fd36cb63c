"""What a rescored engine should code for a run of near-copy frames, measured on stored vectors.

The rescored engine (``vcb_utils.search.rescored``) codes one vector per run of near copies
(``near_copies``). This ranks a pool of candidate videos by the mean-query score (per branch,
the best vector for the query's mean vector) computed from the *stored* vectors, so that only
the choice of vectors differs, not the codes' error:

- ``every``: every stored vector (the best any choice can do);
- ``kept``: the kept vectors as they are (the engine's first version);
- ``merged``: each kept vector replaced by the unit mean of its copies (``merged``, used now).

The score is the engine's own ``refine`` (a branch without a kept vector adds nothing).

It prints, per choice and cosine, the share of vectors coded and the recall@10 of the pool's
first 16 / 32 / 64 (mean over queries, +- its standard error) against the exact top-10 that
``bench_search.py`` computed for the same index and queries::

    python benchmarks/bench_near_copies.py --generator multiscene --videos 100000 \\
        --data /tmp/bench --queries 100
"""

from __future__ import annotations

import numpy as np
import torch
from bench_search import measured_index

from vcb_utils.candidates import CandidateSettings, refine
from vcb_utils.index import VideoIndex
from vcb_utils.search.collection import branch_columns
from vcb_utils.search.rescored import merged, near_copies

QUERIES = 40
POOL = CandidateSettings(nprobe=128, hits=16384, candidates=1024)
FIRST = (16, 32, 64)
CHOICES = [
    ("every", None),
    *((f"{name} {c}", c) for name in ("kept", "merged") for c in (0.9, 0.93)),
]


def chosen(vectors: np.ndarray, videos: np.ndarray, choice: str, cosine: float | None):
    """Which of the valid ``vectors`` stand for their video, and as what vectors."""
    if cosine is None:
        return np.ones(len(vectors), bool), vectors
    owner = near_copies(vectors, videos, cosine)
    kept = owner == np.arange(len(owner))
    return kept, merged(vectors, owner) if choice.startswith("merged") else vectors[kept]


def main() -> None:
    torch.set_num_threads(1)
    folder, truth, text = measured_index(__doc__.split("\n\n")[0])
    index = VideoIndex.load(folder)
    collection, engine = index.collection, index.ann
    recalls = {name: {c: [] for c in FIRST} for name, _ in CHOICES}
    coded = dict.fromkeys(recalls, 0)
    total = 0
    columns = [branch_columns(branch, collection.frames) for branch in collection.branches]
    for i in range(min(QUERIES, len(truth))):
        query = text.vectors[i][text.mask[i]].float().numpy()
        weights = np.full(len(query), 1 / len(query), np.float32)
        pool = engine.mean_query.candidates(query, weights, POOL, [0, 1])
        vectors, mask = (t.numpy() for t in collection.read_rows(torch.from_numpy(pool)))
        vectors = vectors.astype(np.float32)
        total += mask.sum()
        top = set(truth[i].tolist())
        for name, cosine in CHOICES:
            stand_ins, kept = vectors.copy(), np.zeros_like(mask)
            for branch in columns:
                valid = mask[:, branch]
                chosen_ones, chosen_vectors = chosen(
                    vectors[:, branch][valid], np.nonzero(valid)[0], name, cosine
                )
                kept_here = np.zeros_like(valid)
                kept_here[valid] = chosen_ones
                stand_ins[:, branch][kept_here] = chosen_vectors
                kept[:, branch] = kept_here
            coded[name] += kept.sum()
            order = pool[refine(query, weights, stand_ins, kept, columns, len(pool))]
            for count in FIRST:
                recalls[name][count].append(len(top & set(order[:count].tolist())) / len(top))
    print(f"{folder.name}: {len(recalls['every'][16])} queries, a pool of {POOL.candidates}")
    for name, by_first in recalls.items():
        cells = "  ".join(
            f"first {c}: {np.mean(r):.3f} +- {np.std(r) / np.sqrt(len(r)):.3f}"
            for c, r in by_first.items()
        )
        print(f"{name:<12} coded {coded[name] / total:.3f}  {cells}")


if __name__ == "__main__":
    main()
