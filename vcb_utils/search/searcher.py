"""The top-k videos of encoded queries: the exact scan, or two stages (candidates, exact rerank).

- **exact** (``scan``): every video is scored with ``vcb_utils.scoring.maxsim``, block by block
  with a running top-k, so memory stays bounded. Seconds per query at 100k videos on a CPU.
- **two-stage** (``two_stage``): the candidate stage (``vcb_utils.search.stage``) proposes a
  few videos per query from compressed codes in RAM; their full fp16 vectors are read from the
  memory-mapped segments, the engine may narrow them down (``narrow``), and the exact
  ``MMS_F + MMS_V`` of the rest ranks them. The scores are always exact; only which videos are
  scored is approximate.
"""

from __future__ import annotations

import logging
import numbers
from typing import TYPE_CHECKING

import numpy as np
import torch

from vcb_utils.model import TextEmbedding
from vcb_utils.scoring import maxsim
from vcb_utils.search.collection import Collection, branch_columns
from vcb_utils.search.engine import Settings, faiss_threads
from vcb_utils.threads import torch_threads

if TYPE_CHECKING:
    from vcb_utils.search.stage import CandidateStage

log = logging.getLogger(__name__)

DEFAULT_BLOCK_VIDEOS = 128
"""Videos per step of the exact scan (7 MB as fp32 at 26 x 512 per video): small blocks stay
in cache and reuse their buffers, the fastest on CPU in ``benchmarks/bench_search.py``."""
SEARCH_THREADS = 1
"""Threads of the two-stage search (faiss and torch): one query is little work, and more
threads only add synchronisation (on a busy 2-core machine, 2-40x slower with 2 threads)."""


def score(
    collection: Collection,
    text: TextEmbedding,
    vectors: torch.Tensor,
    mask: torch.Tensor,
    names: list[str],
) -> torch.Tensor:
    """Exact scores ``[Q, n]`` of ``n`` stored rows: the sum of the branches' MaxSim."""
    total = 0
    for name in names:
        columns = branch_columns(name, collection.frames)
        total = total + maxsim(
            text.vectors,
            vectors[:, columns].to(text.vectors.dtype),
            text.mask,
            mask[:, columns],
        )
    return total


def scan(
    collection: Collection, text: TextEmbedding, k: int, names: list[str], block_videos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score every video, a block at a time, keeping a running top-k."""
    best = torch.empty(len(text.vectors), 0)
    rows = torch.empty(len(text.vectors), 0, dtype=torch.long)
    start = 0
    for part in collection.parts:
        for lo in range(0, len(part), block_videos):
            hi = min(lo + block_videos, len(part))
            block = score(collection, text, part.vectors[lo:hi], part.mask[lo:hi], names)
            best = torch.cat([best, block], dim=1)
            block_rows = torch.arange(start + lo, start + hi).expand(len(block), -1)
            rows = torch.cat([rows, block_rows], dim=1)
            best, order = best.topk(min(k, best.shape[1]), dim=1)
            rows = rows.gather(1, order)
        start += len(part)
    return best, rows


def two_stage(
    collection: Collection,
    stage: CandidateStage,
    text: TextEmbedding,
    k: int,
    names: list[str],
    settings: Settings,
    block_videos: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates from the compressed codes, then exact scores of those from disk."""
    queries = [text.vectors[i][text.mask[i]].float().numpy() for i in range(len(text.vectors))]
    want = min(k, len(collection))
    with faiss_threads(SEARCH_THREADS):
        found = stage.find(queries, names, settings, want)
    all_scores, all_rows = [], []
    for i, rows in enumerate(found):
        one = TextEmbedding(text.vectors[i : i + 1], text.mask[i : i + 1], text.ids[i : i + 1])
        if len(rows) < want:  # too few candidates found: score every video instead
            log.info("query %d: %d candidates for k=%d, scanning every video", i, len(rows), k)
            scores, top = scan(collection, one, k, names, block_videos)
        else:
            scores, top = rerank(collection, stage, one, rows, want, names, settings)
        all_scores.append(scores)
        all_rows.append(top)
    return torch.cat(all_scores), torch.cat(all_rows)


def rerank(
    collection: Collection,
    stage: CandidateStage,
    text: TextEmbedding,
    rows: np.ndarray,
    k: int,
    names: list[str],
    settings: Settings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-``k`` of the candidate ``rows`` for one query: scores and rows ``[1, k]``."""
    with torch_threads(SEARCH_THREADS):
        vectors, mask = collection.read_rows(torch.from_numpy(rows))
        query = text.vectors[0][text.mask[0]].float().numpy()
        columns = [branch_columns(name, collection.frames) for name in names]
        keep = stage.engine.narrow(query, vectors.numpy(), mask.numpy(), columns, settings, k)
        keep = torch.from_numpy(np.asarray(keep, np.int64))
        exact = score(collection, text, vectors[keep], mask[keep], names)
    scores, order = exact.topk(k, dim=1)
    return scores, torch.from_numpy(rows)[keep[order[0]]][None]


def score_names(collection: Collection, branch: str) -> list[str]:
    """The branches a ranking by ``branch`` adds up; ValueError for one the index lacks."""
    wanted = list(collection.branches) if branch == "both" else [branch]
    if any(name not in collection.branches for name in wanted):
        raise ValueError(
            f"branch {branch!r}: mode {collection.config['mode']!r} has no such scores"
        )
    return wanted


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, not {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    return int(k)
