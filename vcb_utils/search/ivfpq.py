"""The IVF-PQ fast-scan candidate engine: per query vector, its approximate nearest stored vectors.

The candidate engine of indexes saved before ``vcb_utils.search.meanquery`` (manifests that
name no engine, or ``ivfpq-fastscan``); ``build_ann(engine="ivfpq-fastscan")`` still trains it.
Every stored F and V vector is compressed by faiss into an IVF-PQ code: the vector's nearest of
``nlist`` coarse centroids (its *list*) and a product-quantised residual
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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vcb_utils.search.engine import BRANCH_IDS, codes_name_lists, index_of_codes

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


class IvfPqEngine:
    """Trained IVF-PQ codebooks plus the fast-scan codes of every added vector (a
    ``vcb_utils.search.engine.CandidateEngine``).

    ``parts``: ``(codes, ids)`` pairs to start with (what ``encode`` gave, e.g. read from disk).
    """

    name = "ivfpq-fastscan"
    settings_type = SearchSettings
    default_settings = staticmethod(default_settings)
    default_nlist = staticmethod(default_nlist)

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
        """Hold exactly the encoded vectors of ``parts`` (``(codes, ids)`` pairs, read more than
        once), packed into the fast-scan layout by ``vcb_utils.search.engine.index_of_codes``.
        """
        self._fast = index_of_codes(self._trained_bytes, parts)

    @classmethod
    def open(cls, trained: bytes, generation: str) -> IvfPqEngine:
        """The engine ``trained`` saved, holding no codes; RuntimeError if faiss cannot read it."""
        return cls(trained, generation)

    @staticmethod
    def train_points(nlist: int) -> int:
        return TRAIN_POINTS_PER_LIST * nlist

    def describe(self) -> dict:
        return {"nlist": self.nlist, "m": self.m, "bits": 4}

    @staticmethod
    def grid(nlist: int) -> list[SearchSettings]:
        """The settings ``calibrate`` tries."""
        return [
            SearchSettings(nprobe=p, hits_per_vector=h, candidates=c)
            for p in sorted({min(p, nlist) for p in (1, 4, 16)})
            for h in (256, 1024)
            for c in (64, 128, 256, 512)
        ]

    def cost(self, settings: SearchSettings, query_vectors: int, per_video: float) -> float:
        """Operations of one query, roughly: the codes scanned per query vector, and the
        multiply-adds of the exact rerank."""
        scanned = len(self) * min(settings.nprobe, self.nlist) / self.nlist * self.m / 2
        rerank = settings.candidates * per_video * query_vectors * self.dim
        return scanned * query_vectors + rerank

    def narrow(self, query, vectors, mask, columns, settings, want) -> np.ndarray:
        """Every candidate goes on to the exact rerank."""
        return np.arange(len(vectors))

    # ---- training and encoding -----------------------------------------------------------------
    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, seed: int = 0, m: int | None = None
    ) -> IvfPqEngine:
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
        """The trained, empty index (what ``IvfPqEngine(trained)`` needs to encode and add)."""
        return self._trained_bytes

    def encode(
        self, vectors: np.ndarray, videos: np.ndarray | None = None, batch: int = 65536
    ) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8: each vector's list number, then its PQ code (every
        vector alike, whatever its video)."""
        vectors = _float32(vectors)
        codes = np.empty((len(vectors), self.code_size), dtype=np.uint8)
        for start in range(0, len(vectors), batch):
            codes[start : start + batch] = self._encoder.sa_encode(vectors[start : start + batch])
        return codes

    def valid_codes(self, codes: np.ndarray) -> bool:
        return codes_name_lists(codes, self.list_bytes, self.nlist)

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
        """Append vectors with their ids (see ``vector_ids``); faiss encodes them again, in its
        fast-scan layout (``codes`` are not used: faiss 1.15 cannot append fast-scan codes
        safely, see ``rebuild``)."""
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

    def find(
        self,
        queries: Sequence[np.ndarray],
        branches: tuple[str, ...],
        settings: SearchSettings,
        limit: int,
    ) -> list[np.ndarray]:
        """Per query (its valid vectors), the rows of the best ``limit`` videos by
        ``approximate_scores`` of its vectors' hits (one faiss search for all queries)."""
        searched = []  # per query: its distinct vectors and their weights
        for vectors in queries:
            weights = np.full(len(vectors), 1.0 / len(vectors), np.float32)
            searched.append(merge_duplicates(_float32(vectors), weights))
        flat = np.concatenate([distinct for distinct, _ in searched])
        sims, ids = self.search(flat, settings.hits_per_vector, settings.nprobe)
        found, start = [], 0
        for distinct, weights in searched:
            part = slice(start, start + len(distinct))
            start += len(distinct)
            rows, _ = approximate_scores(sims[part], ids[part], weights, branches, limit)
            found.append(rows)
        return found


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
