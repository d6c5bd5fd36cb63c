"""Candidate stage of two-stage search: the videos whose best vector matches the mean query.

The first stage of a two-stage search picks the few videos that the exact MeanMaxSim rerank
scores; its job is to *rank* them nearly as the exact score does. This stage ranks a video by

    approx(video) = sum over branches of  max_{i in branch} <q_mean, x_i>

where ``q_mean = sum_j w_j q_j`` is the query's weighted mean vector. It is a lower bound of
MeanMaxSim (``sum_j w_j max_i <q_j, x_i> >= max_i sum_j w_j <q_j, x_i>``), tight when one
vector of the video is the best match of most query vectors: the common case, since the
vectors of one query are close to each other (CLIP text tokens at cosine 0.7-0.9, and
query-expansion tokens near copies of their mean). Computed exactly, it puts the exact top-10
in its top 128 for 99.8-100% of the queries of ``benchmarks/vectors_multiscene.py`` and
``benchmarks/vectors_cliplike.py`` at 100k videos, where a video's mean vector reaches 79%
(multi-scene) and PLAID-style centroid interaction (8,192 centroids) at most 21% (CLIP-like).

It needs *precise* inner products: a 4-bit PQ code's error (about 0.1 here) is larger than the
margins of CLIP-like vectors. Two steps, then:

1. ``candidates``: every stored vector is an IVF-PQ code with 8-bit sub-quantizers (``D / 8``
   bytes: 64 at 512 dimensions) in a faiss ``IndexIVFPQ`` (inner product); one search of
   ``q_mean`` returns its ``hits`` best vectors (ids ``row * branches + branch``); each video
   takes, per branch, its best hit, or the worst hit where it has none; the ``candidates``
   best videos come back.
2. ``refine``: the caller reads those videos' stored vectors (it needs them for the exact
   rerank anyway) and ``refine`` keeps the ``exact`` best by the same score computed from
   them; only those get the exact MeanMaxSim.

RAM: ``D / 8 + 8`` bytes per stored vector (code and id): 72 at 512 dimensions, 1.9 GB for a
million videos of 26 vectors. On disk: faiss's own serialisation and a JSON header, each
written aside and renamed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FORMAT = "vcb-mean-query-candidates"
VERSION = 1
SUBVECTOR_DIMS = 8
"""Dimensions per 8-bit PQ sub-quantizer."""
TRAIN_POINTS = 65536
"""Training vectors (at least 256 per sub-quantizer code and 39 per coarse list)."""
ADD_BLOCK = 65536
"""Vectors encoded at once."""


@dataclass(frozen=True)
class CandidateSettings:
    """How much work the candidate stage does per query; more: higher recall, slower."""

    nprobe: int = 128
    """Coarse lists scanned for the mean query vector."""
    hits: int = 16384
    """Nearest stored vectors kept (each gives its video a score)."""
    candidates: int = 1024
    """Videos returned, best approximate score first (for ``refine``)."""
    exact: int = 128
    """Videos ``refine`` keeps for the exact MeanMaxSim rerank."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")


def default_nlist(n_vectors: int) -> int:
    """Coarse lists: the power of two nearest ``sqrt(n) / 2``, with at least 39 training vectors
    per list in ``TRAIN_POINTS``."""
    target = 2 ** round(math.log2(max(math.sqrt(max(n_vectors, 1)) / 2, 1)))
    return max(1, min(target, 2 ** int(math.log2(TRAIN_POINTS // 39))))


class MeanQueryCandidates:
    """IVF-PQ (8-bit) codes of every stored vector, searched with the mean query vector.

    Rows are numbered from 0 in the order they are added; each holds ``branches`` segments of
    vectors (F, then V).
    """

    def __init__(self, index, branches: int = 2) -> None:
        self.index = index
        self.branches = branches
        self.rows = 0

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, branches: int = 2, seed: int = 0
    ) -> MeanQueryCandidates:
        """Coarse centroids and PQ codebooks trained on ``sample`` (unit vectors ``[n, D]``)."""
        import faiss

        sample = np.ascontiguousarray(sample, np.float32)
        n, dim = sample.shape
        m = max(1, dim // SUBVECTOR_DIMS)
        while dim % m:
            m -= 1
        nlist = nlist or default_nlist(n * 8)
        if n < max(nlist, 256):
            raise ValueError(f"{n} training vectors: need at least {max(nlist, 256)}")
        index = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = index.pq.cp.seed = seed
        index.verbose = False
        index.train(sample)
        return cls(index, branches)

    def add(self, vectors: np.ndarray, mask: np.ndarray, branches: Sequence[slice]) -> None:
        """Append rows: ``vectors`` ``[n, width, D]`` (any float type, e.g. a memory map) and
        ``mask`` ``[n, width]``; ``branches`` are the column ranges of the segments (F, V)."""
        if len(branches) != self.branches:
            raise ValueError(f"{len(branches)} column ranges for {self.branches} branches")
        mask = np.asarray(mask, bool)
        for b, columns in enumerate(branches):
            valid = mask[:, columns]
            rows = np.nonzero(valid)[0] + self.rows
            stored = np.asarray(vectors[:, columns])[valid]
            for lo in range(0, len(stored), ADD_BLOCK):
                self.index.add_with_ids(
                    np.ascontiguousarray(stored[lo : lo + ADD_BLOCK], np.float32),
                    rows[lo : lo + ADD_BLOCK] * self.branches + b,
                )
        self.rows += len(mask)

    def empty(self) -> MeanQueryCandidates:
        """The same trained stage without rows (to add to from the start)."""
        import faiss

        index = faiss.clone_index(self.index)
        index.reset()
        return MeanQueryCandidates(index, self.branches)

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of codes and ids in RAM (plus the centroids and codebooks)."""
        code = self.index.code_size + 8
        return self.index.ntotal * code + self.index.nlist * self.index.d * 4

    # ---- searching -----------------------------------------------------------------------------
    def candidates(
        self,
        query_vectors: np.ndarray,
        query_weights: np.ndarray,
        settings: CandidateSettings = CandidateSettings(),
        branches: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Rows of the best ``settings.candidates`` videos by approximate score, best first.

        ``query_vectors`` ``[L, D]`` are one query's valid vectors, ``query_weights`` ``[L]``
        their weights in the mean (``1 / L`` each for MeanMaxSim); ``branches``: the segments
        that count (default all: F + V).
        """
        rows, scores = self.scored(query_vectors, query_weights, settings, branches)
        return _top(rows, scores, settings.candidates)

    def scored(
        self,
        query_vectors: np.ndarray,
        query_weights: np.ndarray,
        settings: CandidateSettings = CandidateSettings(),
        branches: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every row with a hit (ascending) and its approximate score."""
        mean = np.asarray(query_weights, np.float32) @ np.asarray(query_vectors, np.float32)
        self.index.nprobe = min(settings.nprobe, self.index.nlist)
        sims, ids = self.index.search(mean[None].astype(np.float32), settings.hits)
        found = ids[0] >= 0
        sims, ids = sims[0][found], ids[0][found]
        if len(ids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        rows, inverse = np.unique(ids // self.branches, return_inverse=True)
        best = np.full((len(rows), self.branches), sims.min(), np.float32)  # none: the worst hit
        np.maximum.at(best, (inverse, ids % self.branches), sims)
        wanted = list(range(self.branches)) if branches is None else list(branches)
        return rows, best[:, wanted].sum(axis=1)

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write to ``folder`` (made if needed): ``index.faiss``, then ``candidates.json``; each
        written aside and renamed."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = faiss.serialize_index(self.index)
        _replace(folder / "index.faiss", lambda f: f.write(data.tobytes()))
        header = {
            "format": FORMAT,
            "version": VERSION,
            "rows": self.rows,
            "branches": self.branches,
        }
        _replace(folder / "candidates.json", lambda f: f.write(json.dumps(header).encode()))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MeanQueryCandidates:
        """Read what ``save`` wrote; ValueError naming the file when it is not that."""
        import faiss

        folder = Path(folder)
        header_path = folder / "candidates.json"
        try:
            header = json.loads(header_path.read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{header_path}: not a candidate stage ({error})") from error
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(
                f"{header_path}: format {header.get('format')!r} "
                f"version {header.get('version')!r}, not {FORMAT!r} {VERSION}"
            )
        path = folder / "index.faiss"
        try:
            index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{path}: unreadable ({error})") from error
        stage = cls(index, header["branches"])
        stage.rows = header["rows"]
        return stage


@dataclass(frozen=True)
class Calibration:
    """The settings ``calibrate`` chose and what they reached on its sample."""

    settings: CandidateSettings
    recall: float
    """Mean recall@10 (of the exact rerank of the candidates) on the sample."""
    cost: float
    """Work per query (``work``), the measure of "cheapest"."""


def calibrate(
    stage: MeanQueryCandidates,
    queries: Sequence[tuple[np.ndarray, np.ndarray]],
    truths: Sequence[np.ndarray],
    target_recall: float = 0.95,
    grid: Sequence[CandidateSettings] | None = None,
    vectors_per_video: float = 26.0,
) -> Calibration:
    """The cheapest settings of ``grid`` whose recall@10 on ``queries`` reaches ``target_recall``
    (or, if none does, the one of highest recall).

    ``queries``: ``(vectors, weights)`` of each query; ``truths``: its exact top-10 rows. An
    exact rerank of the candidates puts every true top-10 video it is given in its top 10, so
    recall@10 is the share of the exact top-10 among the candidates: no vector is read.
    """
    measured = []
    for settings in grid or default_grid():
        recalls = [
            len(np.intersect1d(stage.candidates(vectors, weights, settings), truth)) / len(truth)
            for (vectors, weights), truth in zip(queries, truths, strict=True)
        ]
        cost = work(stage, settings, vectors_per_video, len(queries[0][0]) if queries else 32)
        measured.append(Calibration(settings, float(np.mean(recalls)), cost))
    reaching = [m for m in measured if m.recall >= target_recall]
    if reaching:
        return min(reaching, key=lambda m: m.cost)
    return max(measured, key=lambda m: (m.recall, -m.cost))


def default_grid() -> list[CandidateSettings]:
    return [
        CandidateSettings(nprobe=p, hits=h, candidates=c)
        for p in (8, 16, 32, 64, 128)
        for h in (1024, 4096, 16384)
        for c in (64, 128, 256, 512)
    ]


def work(
    stage: MeanQueryCandidates,
    settings: CandidateSettings,
    vectors_per_video: float = 26.0,
    query_vectors: int = 32,
) -> float:
    """Operations of one query, roughly: the codes scanned (one table lookup per byte), and the
    multiply-adds of the exact rerank of the candidates."""
    index = stage.index
    scanned = index.ntotal * min(settings.nprobe, index.nlist) / index.nlist * index.code_size
    rerank = settings.candidates * vectors_per_video * query_vectors * index.d
    return scanned + rerank


def refine(
    query_vectors: np.ndarray,
    query_weights: np.ndarray,
    vectors: np.ndarray,
    mask: np.ndarray,
    branches: Sequence[slice],
    keep: int,
) -> np.ndarray:
    """Positions of the ``keep`` best of ``n`` candidates by the mean-query score computed from
    their stored vectors ``[n, width, D]`` (any float type) and ``mask`` ``[n, width]``, best
    first: the precise version of the stage's score, before the exact rerank of the same
    (already read) vectors. A branch with no valid vector adds nothing."""
    mean = np.asarray(query_weights, np.float32) @ np.asarray(query_vectors, np.float32)
    sims = np.where(mask, np.asarray(vectors, np.float32) @ mean, -np.inf)
    best = np.stack([sims[:, columns].max(axis=1) for columns in branches], axis=1)
    scores = np.where(np.isfinite(best), best, 0.0).sum(axis=1)
    return _top(np.arange(len(scores)), scores, keep)


def _top(rows: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    top = min(count, len(rows))
    if top == 0:
        return rows
    best = np.argpartition(-scores, top - 1)[:top]
    return rows[best[np.argsort(-scores[best], kind="stable")]]


def _replace(path: Path, write: Callable) -> None:
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(aside, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(aside, path)
