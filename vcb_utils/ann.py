"""Candidate generation: the approximate nearest stored vectors of every query vector, as videos.

The first stage of a two-stage search (the second, exact MaxSim on the few candidates, is in
``vcb_utils.index``). Every stored F and V vector is compressed by faiss into an IVF-PQ code:
the vector's nearest of ``nlist`` coarse centroids (its *list*) and a product-quantised residual
of ``m`` 4-bit codes (``m / 2`` bytes), scanned with faiss's SIMD *fast-scan* kernels. A query
vector is compared with the centroids, the ``nprobe`` nearest lists are scanned, and its
``hits_per_vector`` best codes come back as ``(approximate similarity, vector id)``.

Hits are mapped to videos (``vector_id = row * 2 + branch``, branch 0 = F, 1 = V) and each
video gets an approximate score in the shape of the exact one: for every query vector and
branch, the best hit of that video; a query vector that found no vector of the video counts
with the similarity of its worst hit (an upper estimate of what was not found, as XTR does).
The ``candidates`` videos with the best approximate scores go on to the exact rerank.

Codes are kept in faiss's plain IVF-PQ layout on disk (``encode``: list number + PQ code per
vector, so a part can be appended and read back without encoding again) and converted to the
fast-scan layout in memory (``rebuild``); vectors added later are encoded by faiss directly
(``add_vectors``). RAM holds ``m / 2 + 8`` bytes per vector (code and id) and the centroids.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np

BRANCH_IDS = {"F": 0, "V": 1}
SUBVECTOR_DIMS = 8
"""Dimensions per PQ sub-quantizer: ``m = dim / 8`` (64 codes of 4 bits = 32 bytes at 512)."""
TRAIN_POINTS_PER_LIST = 64
"""Training vectors per coarse list (faiss warns below 39)."""
DUPLICATE_COSINE = 0.98
"""Query vectors this similar to an earlier one are searched once, with their weights added:
query-expansion (pad) vectors are often near copies of each other, and would fetch the same
neighbours."""


@dataclass(frozen=True)
class SearchSettings:
    """How much the two stages do per query; more of each: higher recall, slower."""

    nprobe: int = 4
    """Coarse lists scanned per query vector."""
    hits_per_vector: int = 1024
    """Approximate neighbours kept per query vector."""
    candidates: int = 128
    """Videos reranked exactly (with all their vectors, from disk)."""

    def updated(self, **changes: int | None) -> SearchSettings:
        """These settings with the given fields changed (None leaves a field as it is)."""
        values = asdict(self)
        for name, value in changes.items():
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")
            values[name] = int(value)
        return SearchSettings(**values)


def default_nlist(n_vectors: int) -> int:
    """Coarse lists for ``n_vectors``: the power of two nearest ``sqrt(n) / 2`` (2048 for a
    million videos of 26 vectors: each vector is compared with every centroid once at build
    time, so more lists cost build time), but no more than ``n / 39`` (faiss wants 39
    training vectors per list)."""
    target = 2 ** round(math.log2(max(math.sqrt(max(n_vectors, 1)) / 2, 1)))
    most = 2 ** int(math.log2(max(n_vectors // 39, 1)))
    return max(1, min(target, most))


def default_m(dim: int) -> int:
    """PQ sub-quantizers: one per ``SUBVECTOR_DIMS`` dimensions, an even number dividing ``dim``."""
    m = max(2, dim // SUBVECTOR_DIMS)
    while m > 2 and (dim % m or m % 2):
        m -= 1
    return m


def default_settings(nlist: int) -> SearchSettings:
    """Search settings for an index of ``nlist`` lists: the ``SearchSettings`` defaults, with
    no more lists probed than there are. Chosen on ``benchmarks/bench_search.py``'s curve: at
    100k and 1M videos, 4 lists, 1024 hits and 128 candidates are past the knee (more lists
    cost time linearly for little recall; 2048 hits lower each query vector's worst hit, the
    score a video it did not find gets, and so lowered recall)."""
    return SearchSettings(nprobe=min(nlist, SearchSettings.nprobe))


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """faiss's OpenMP threads within the block (then as they were)."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def vector_ids(rows: np.ndarray, branch: str) -> np.ndarray:
    """The candidate-index ids of vectors of ``rows`` in ``branch`` (``F`` or ``V``)."""
    return np.asarray(rows, dtype=np.int64) * 2 + BRANCH_IDS[branch]


def branch_columns(branch: str, frames: int) -> slice:
    """Where a branch's vectors sit in a stored row: F first, then V."""
    return slice(0, frames) if branch == "F" else slice(frames, None)


def segment_ids(mask: np.ndarray, branches: Sequence[str], frames: int) -> np.ndarray:
    """Ids of the valid vectors of rows ``0..n-1`` (``mask`` ``[n, width]``), in the order
    codes are stored: branch by branch, then row by row, then position."""
    parts = []
    for branch in branches:
        rows = np.nonzero(np.asarray(mask[:, branch_columns(branch, frames)]))[0]
        parts.append(vector_ids(rows, branch))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class CandidateIndex:
    """Trained IVF-PQ codebooks plus the fast-scan codes of every added vector.

    ``parts``: ``(codes, ids)`` pairs to start with (what ``encode`` gave, e.g. read from disk).
    """

    def __init__(
        self,
        trained: bytes,
        generation: str | None = None,
        parts: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    ) -> None:
        import faiss

        self.generation = generation or f"g{uuid.uuid4().hex[:12]}"
        self._trained_bytes = trained
        self._encoder = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        self.dim = self._encoder.d
        self.nlist = self._encoder.nlist
        self.m = self._encoder.pq.M
        self.code_size = self._encoder.sa_code_size()
        self.list_bytes = self._encoder.coarse_code_size()
        self._fast = None
        self.rebuild(parts)

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the encoded vectors of ``parts`` (``(codes, ids)`` pairs, read once, in
        turn).

        The codes go into a plain IVF-PQ index, which faiss then converts to the fast-scan
        layout in one go. (Appending fast-scan codes with ``merge_from`` is not used: in faiss
        1.15 it can write past a list's end when the list holds a multiple of 1024 codes.)
        """
        import faiss

        plain = faiss.deserialize_index(np.frombuffer(self._trained_bytes, dtype=np.uint8))
        for codes, ids in parts:
            if len(codes) != len(ids):
                raise ValueError(f"{len(codes)} codes but {len(ids)} ids")
            for lo in range(0, len(codes), 1 << 20):  # bounded copies out of memory maps
                plain.add_sa_codes(
                    np.ascontiguousarray(codes[lo : lo + (1 << 20)], dtype=np.uint8),
                    np.ascontiguousarray(ids[lo : lo + (1 << 20)], dtype=np.int64),
                )
        fast = faiss.IndexIVFPQFastScan(plain)
        # the conversion shares the plain index's coarse quantizer: give it its own copy, so
        # that the plain index (and its copy of the codes) can go now
        quantizer = faiss.clone_index(plain.quantizer)
        quantizer.this.disown()
        fast.quantizer = quantizer
        fast.own_fields = True
        del plain
        self._fast = fast

    # ---- training and encoding -----------------------------------------------------------------
    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, m: int | None = None, seed: int = 0
    ) -> CandidateIndex:
        """Train the coarse centroids and the PQ codebooks on ``sample`` (unit vectors); the
        index holds no vector yet."""
        import faiss

        sample = _float32(sample)
        n, dim = sample.shape
        nlist = nlist or default_nlist(n)
        m = m or default_m(dim)
        if dim % m or m % 2:
            raise ValueError(f"m={m} sub-quantizers must be even and divide the vector size {dim}")
        if n < nlist:
            raise ValueError(f"{n} training vectors for nlist={nlist}: need at least as many")
        index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 4)
        index.cp.seed = index.pq.cp.seed = seed
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST * 4
        index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1  # small ones
        index.verbose = False
        index.train(sample)
        return cls(faiss.serialize_index(index).tobytes())

    @property
    def trained(self) -> bytes:
        """The trained, empty index (what ``CandidateIndex(trained)`` needs to encode and add)."""
        return self._trained_bytes

    def encode(self, vectors: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8: each vector's list number, then its PQ code."""
        vectors = _float32(vectors)
        codes = np.empty((len(vectors), self.code_size), dtype=np.uint8)
        for start in range(0, len(vectors), batch):
            codes[start : start + batch] = self._encoder.sa_encode(vectors[start : start + batch])
        return codes

    def valid_lists(self, codes: np.ndarray, batch: int = 1 << 20) -> bool:
        """Whether every code names one of the ``nlist`` lists (its first ``list_bytes``
        bytes, little-endian): faiss aborts the whole load on one that does not."""
        weights = 256 ** np.arange(self.list_bytes, dtype=np.int64)
        for start in range(0, len(codes), batch):
            lists = np.asarray(codes[start : start + batch, : self.list_bytes], np.int64) @ weights
            if len(lists) and int(lists.max()) >= self.nlist:
                return False
        return True

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append vectors with their ids (see ``vector_ids``); faiss encodes them as ``encode``
        does."""
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(vectors):
            self._fast.add_with_ids(_float32(vectors), np.ascontiguousarray(ids, np.int64))

    def __len__(self) -> int:
        return int(self._fast.ntotal)

    @property
    def nbytes(self) -> int:
        """Bytes of codes (fast-scan blocks, padded to 32 vectors per list) and ids in RAM."""
        import faiss

        lists = faiss.extract_index_ivf(self._fast).invlists
        total = 0
        for i in range(self.nlist):
            size = lists.list_size(i)
            total += math.ceil(size / 32) * 32 * (self.m // 2) + size * 8
        return total + self.nlist * self.dim * 4

    # ---- search --------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` approximate nearest vectors of each query vector: similarities (inner
        products of unit vectors) and ids ``[n, k]``; id -1 where fewer were found."""
        self._fast.nprobe = min(int(nprobe), self.nlist)
        distances, ids = self._fast.search(_float32(queries), int(k))
        return 1.0 - distances / 2.0, ids  # unit vectors: |q - x|^2 = 2 - 2 <q, x>


def merge_duplicates(
    vectors: np.ndarray, weights: np.ndarray, cosine: float = DUPLICATE_COSINE
) -> tuple[np.ndarray, np.ndarray]:
    """The query vectors to search (each at least ``cosine`` away from the others, greedily in
    order) and their weights: a dropped vector's weight goes to the kept vector nearest it."""
    gram = vectors @ vectors.T
    kept: list[int] = []
    merged = np.zeros(len(vectors), np.float32)
    for j in range(len(vectors)):
        if kept:
            similar = gram[kept, j]
            best = int(np.argmax(similar))
            if similar[best] >= cosine:
                merged[kept[best]] += weights[j]
                continue
        kept.append(j)
        merged[j] += weights[j]
    return vectors[kept], merged[kept]


def approximate_scores(
    sims: np.ndarray,
    ids: np.ndarray,
    weights: np.ndarray,
    branches: tuple[str, ...],
    limit: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and approximate scores of the best ``limit`` videos among the hits, best first.

    ``sims``/``ids`` ``[L, k]`` are the hits of each of L query vectors. A video's score adds,
    over its branches, the weighted mean over query vectors of the best hit of that video in
    that branch, or of the query vector's worst hit where it has none.
    """
    found = ids >= 0
    if not found.any():
        return np.empty(0, np.int64), np.empty(0, np.float32)
    sims = np.where(found, sims, np.inf)
    floor = sims.min(axis=1)  # each query vector's worst hit: what a missing vector may score
    floor[~np.isfinite(floor)] = 0.0  # a query vector with no hit: the same for every video
    sims = np.where(found, sims, -np.inf)
    branch_of = ids & 1
    wanted = np.isin(branch_of, [BRANCH_IDS[b] for b in branches]) & found
    vector_of = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)[wanted]
    rows, inverse = np.unique(ids[wanted] >> 1, return_inverse=True)
    slot = [BRANCH_IDS[b] for b in branches]
    best = np.empty((len(rows), 2, len(ids)), dtype=np.float32)
    best[:] = floor[None, None, :]
    np.maximum.at(best, (inverse, branch_of[wanted], vector_of), sims[wanted])
    scores = (best[:, slot, :] * np.asarray(weights, np.float32)).sum(axis=(1, 2))
    top = min(limit, len(rows))
    order = np.argpartition(-scores, top - 1)[:top]
    order = order[np.argsort(-scores[order], kind="stable")]
    return rows[order], scores[order]


def _float32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))
