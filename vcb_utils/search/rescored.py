"""The rescored mean-query engine: a video's near copies merged, two codes each, few reads.

The mean-query engine (``vcb_utils.search.meanquery``) reads every candidate's stored vectors
to rank them, since its 4-bit codes rank the best matches poorly: at a million CLIP-like
videos it reads 4,096 rows a query, and a cold read costs its count, not its bytes
(``benchmarks/bench_query_costs.py``). This engine ranks the candidates in RAM instead, so
that only a few are read:

1. **near copies merged**: the frames of one scene are near copies (cosine 0.9-0.97 on both
   benchmark generators of other scenes' vectors), and the mean-query score takes a maximum
   over them, so per branch a video codes one vector for each run of near copies
   (``near_copies``: cosine ``DISTINCT_COSINE`` or more to a vector kept before it, in frame
   order): their unit mean (``merged``), which predicts their best score far better than the
   first of them does. This codes 5-7 of 23 vectors a video on
   ``benchmarks/vectors_cliplike.py`` and ``vectors_multiscene.py``: a quarter of the codes
   to hold and to scan. The rerank still reads every stored vector.
2. **first code, scanned**: the mean-query engine's 4-bit IVF-PQ code of each kept vector;
   the probed lists give the ``hits`` best vectors for the query's mean vector, and the
   ``pool`` videos of the best hits go on.
3. **second code, rescored**: an 8-bit product quantizer of what the first code leaves of the
   vector (``D / 4`` bytes more; 4-bit for a small index, ``second_code_bits``), kept per video
   in RAM. The pool's videos are scored by the same mean-query score from both codes, and
   only the ``candidates`` best are read, narrowed (``refine``, from their stored vectors) to
   the ``exact`` best and scored exactly.

A code is ``[list number | first code | second code | kept]``, one per valid stored vector
(so it is stored like every engine's); a vector dropped as a near copy is all zeros but for
``kept = 0``. RAM: per kept vector the first code in faiss's fast-scan lists (``D / 8 + 8``
bytes), and both codes again with its id, sorted by id (``D / 8 + D / 4 + 10`` bytes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vcb_utils.candidates import (
    PROBED_SHARE,
    CandidateSettings,
    MeanQueryCandidates,
    best_first,
    check_positive,
    default_nlist,
    refine,
    train_index,
    train_points,
)
from vcb_utils.search.engine import BRANCH_IDS, codes_name_lists, list_numbers

DISTINCT_COSINE = 0.9
"""A stored vector at this cosine or more to a vector its video kept before in the same
branch is merged into the most similar of those. Ranking a pool of 1,024 videos by the
mean-query score of the kept vectors (stored, not coded; 40 queries, 100k videos,
``benchmarks/bench_near_copies.py``), the first 16 hold, of the exact top-10, on multi-scene
videos 0.830 with the kept vectors as they are, 0.927 with the merged means, 0.952 with every
stored vector (0.93: 16% more kept, 0.942); on CLIP-like ones 0.760, 0.882 and 0.945."""
SECOND_SUBVECTOR_DIMS = 4
"""Dimensions per sub-quantizer of the second code (8 bits: ``D / 4`` bytes, 128 at 512)."""
HITS_POOLS = ((4096, 1024), (16384, 2048), (16384, 4096), (65536, 4096))
"""The (hits, pool) pairs of ``grid``: a larger pool needs more hits to rank it."""
READ_COST = 2.4e5
"""What ``cost`` counts for reading one candidate's stored vectors: a cold read (0.03 ms: 512
rows in 14.3 ms at a million multi-scene videos, ``benchmarks/bench_query_costs.py``; four to
eight times that on a slower day of the same disk) takes as long as scanning this many bytes
of codes (8 GB/s)."""
RESCORE_COST = 3.6e3
"""What ``cost`` counts for rescoring one kept vector (0.45 us: a pool of 4,096 videos, 31,790
kept vectors, in 14.2 ms at a million multi-scene videos)."""
HIT_COST = 5e2
"""What ``cost`` counts for one hit made a video's score (0.07 us: 65,536 in 4.4 ms)."""
IN_RAM_GROUP = 1 << 20
"""``rebuild`` hands the first codes (already in RAM) to faiss's lists in chunks of this many,
a group of lists of about as many codes at a time: each pass over RAM is cheap, and what a
group gathers is small. At a million multi-scene videos (7.2M kept vectors) one part and
groups of 4M codes held 0.56 GB more at the peak of a load than after it."""
GATHER_BLOCK = 512
"""Rows ``code_columns`` gathers and transposes at a time: the codes of a pool of 4,096 videos
(53,248 codes of 193 bytes) took 7.1 ms on one thread, against 24.0 ms to gather them all and
then transpose; 128 rows: 11.0 ms, 2,048: 8.7 ms (``benchmarks/bench_code_gather.py``)."""
MAGIC = b"vcb-rescored-engine\n"


@dataclass(frozen=True)
class RescoredSettings:
    """How much each step does per query; more of each: higher recall, slower."""

    nprobe: int = 512
    """Coarse lists scanned for the mean query vector, best bound first."""
    hits: int = 16384
    """Nearest kept vectors by their first codes (each gives its video a score)."""
    pool: int = 4096
    """Videos of the best hits, rescored by both codes."""
    candidates: int = 256
    """Videos of the best rescored scores, read from disk."""
    exact: int = 32
    """Videos ``refine`` keeps (by their stored vectors) for the exact MeanMaxSim."""

    def __post_init__(self) -> None:
        check_positive(self)


def default_settings(nlist: int) -> RescoredSettings:
    """The ``RescoredSettings`` defaults with an eighth of ``nlist`` lists probed."""
    return RescoredSettings(nprobe=max(1, nlist // PROBED_SHARE))


def second_code_bits(sample_size: int) -> int:
    """Bits per sub-quantizer of the second code: 8, or 4 for a sample under 256 vectors (a
    small index; its second code is then half as long); ValueError under 16, where the first
    code has fewer than 4 bits."""
    if sample_size < 16:
        raise ValueError(f"{sample_size} vectors to train on: the rescored engine needs 16")
    return 8 if sample_size >= 256 else 4


def near_copies(
    vectors: np.ndarray, groups: np.ndarray, cosine: float = DISTINCT_COSINE
) -> np.ndarray:
    """For each of ``vectors`` ``[n, D]`` (unit), the position of the vector that stands for
    it: itself (it is kept) unless a vector kept earlier in its group reaches ``cosine`` with
    it, otherwise the most similar of those. ``groups`` ``[n]`` numbers each vector's group (a
    video's branch); a group's vectors are consecutive."""
    n = len(vectors)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, n])
    group = np.repeat(np.arange(len(starts)), lengths)
    place = np.arange(n) - np.repeat(starts, lengths)
    padded = np.zeros((len(starts), int(lengths.max()), vectors.shape[1]), np.float32)
    padded[group, place] = vectors
    gram = padded @ padded.transpose(0, 2, 1)
    kept = np.zeros(padded.shape[:2], bool)
    owner = np.zeros(padded.shape[:2], np.int64)
    kept[:, 0] = True
    for j in range(1, padded.shape[1]):
        earlier = np.where(kept[:, :j], gram[:, :j, j], -np.inf)
        kept[:, j] = (j < lengths) & (earlier.max(axis=1) < cosine)
        owner[:, j] = np.where(kept[:, j], j, earlier.argmax(axis=1))
    return starts[group] + owner[group, place]


def merged(vectors: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The kept vectors of ``near_copies`` (``owner[i] == i``), each replaced by the unit mean
    of the vectors it stands for ``[kept, D]``: the mean-query score of near copies is their
    best, which their mean predicts far better than the first of them (``DISTINCT_COSINE``)."""
    import torch

    sums = torch.zeros(vectors.shape, dtype=torch.float32)
    sums.index_add_(0, torch.from_numpy(owner), torch.from_numpy(vectors))
    kept = sums[torch.from_numpy(owner == np.arange(len(owner)))]
    return torch.nn.functional.normalize(kept, dim=1).numpy()


class RescoredEngine:
    """Two codes of every kept (merged) stored vector: one scanned, one to rescore the candidates
    in RAM (a ``vcb_utils.search.engine.CandidateEngine``).

    ``trained``: what ``train`` packed (the first code's faiss IVF-PQ, the second code's faiss
    PQ and the cosine of ``near_copies``).
    """

    name = "mean-query-rescored"
    settings_type = RescoredSettings
    default_nlist = staticmethod(default_nlist)
    default_settings = staticmethod(default_settings)
    train_points = staticmethod(train_points)

    def __init__(self, trained: bytes, generation: str | None = None) -> None:
        import faiss

        self.generation = generation or f"g{uuid.uuid4().hex[:12]}"
        self.trained = trained
        header, first, second = unpack(trained)
        self.cosine = float(header["cosine"])
        self.mean_query = MeanQueryCandidates(first, branches=len(BRANCH_IDS))
        self.second = faiss.deserialize_index(np.frombuffer(second, dtype=np.uint8))
        encoder = self.mean_query.encoder
        self.dim, self.nlist = encoder.d, encoder.nlist
        self.m, self.bits = encoder.pq.M, encoder.pq.nbits
        self.first_size = self.mean_query.code_size
        self.second_size = self.second.sa_code_size()
        self.code_size = self.first_size + self.second_size + 1
        self._first_centroids = pq_centroids(encoder.pq)
        self._second_centroids = pq_centroids(self.second.pq)
        self.ids = np.empty(0, np.int64)
        """Every kept vector's id (``row * 2 + branch``), ascending."""
        self.codes = np.empty((0, self.first_size + self.second_size), np.uint8)
        """Both codes of each of ``ids``."""
        self.videos = 0
        """Rows with a kept vector."""
        self.row_starts = np.zeros(1, np.int64)
        """``[last row + 2]``: where each row's kept vectors start in ``ids`` (a binary search
        per row in the ids of a million videos took 10 ms of a 4,096-video pool's rescore)."""

    @classmethod
    def open(cls, trained: bytes, generation: str) -> RescoredEngine:
        """The engine ``trained`` saved, holding no codes; RuntimeError if it cannot be read."""
        return cls(trained, generation)

    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, seed: int = 0, m: int | None = None
    ) -> RescoredEngine:
        """Both codes trained on ``sample`` (unit vectors ``[n, D]``): the first as the
        mean-query engine's, the second on what the first leaves of each vector."""
        import faiss

        sample = np.ascontiguousarray(sample, np.float32)
        bits = second_code_bits(len(sample))
        first = train_index(sample, nlist or default_nlist(len(sample)), seed, m)
        encoder = faiss.deserialize_index(np.frombuffer(first, dtype=np.uint8))
        residual = sample - encoder.sa_decode(encoder.sa_encode(sample))
        dim = sample.shape[1]
        second = faiss.IndexPQ(
            dim, max(1, dim // SECOND_SUBVECTOR_DIMS), bits, faiss.METRIC_INNER_PRODUCT
        )
        second.pq.cp.seed = seed
        second.pq.cp.min_points_per_centroid = 1  # few training vectors: no warning
        second.train(np.ascontiguousarray(residual))
        header = {"cosine": DISTINCT_COSINE}
        return cls(pack(header, first, faiss.serialize_index(second).tobytes()))

    def describe(self) -> dict:
        return {
            "nlist": self.nlist,
            "m": self.m,
            "bits": self.bits,
            "second_bytes": self.second_size,
            "distinct_cosine": self.cosine,
            "kept_vectors": len(self.ids),
        }

    @staticmethod
    def grid(nlist: int) -> list[RescoredSettings]:
        """The settings ``calibrate`` tries (cheapest first is sorted by ``cost``)."""
        return [
            RescoredSettings(nprobe=p, hits=h, pool=pool, candidates=c, exact=e)
            for p in sorted({max(1, nlist // share) for share in (32, 16, 8, 4)})
            for h, pool in HITS_POOLS
            for c in (32, 64, 128, 256, 512)
            for e in (32, 128)
            if e <= c <= pool
        ]

    def cost(self, settings: RescoredSettings, query_vectors: int, per_video: float) -> float:
        """Work of one query, roughly, in bytes of code scanned: the first codes of the
        probed lists (``probed_codes``), the hits (``HIT_COST`` each), the pool's kept vectors
        rescored (``RESCORE_COST`` each), the candidates read (``READ_COST`` each) and
        refined, and the multiply-adds of the exact rerank."""
        kept = len(self.ids) / max(self.videos, 1)
        pq_bytes = self.first_size - self.mean_query.list_bytes
        scanned = self.mean_query.probed_codes(settings.nprobe) * pq_bytes
        rescored = settings.hits * HIT_COST + settings.pool * kept * RESCORE_COST
        read = settings.candidates * (READ_COST + per_video * self.dim * 3)
        exact = min(settings.exact, settings.candidates) * per_video * query_vectors * self.dim
        return scanned + rescored + read + exact

    # ---- codes ---------------------------------------------------------------------------------
    def encode(self, vectors: np.ndarray, videos: np.ndarray | None = None) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8 of ``vectors`` ``[n, D]`` (one branch's): the
        ``merged`` near copies of each video coded at the place of their kept vector
        (``videos``: each one's video; None: every vector kept as it is), the rest zeros and
        ``kept = 0``."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if videos is None:
            kept, chosen = np.ones(len(vectors), bool), vectors
        else:
            owner = near_copies(vectors, np.asarray(videos), self.cosine)
            kept, chosen = owner == np.arange(len(vectors)), merged(vectors, owner)
        codes = np.zeros((len(vectors), self.code_size), np.uint8)
        first = self.mean_query.encode(chosen)
        residual = chosen - self.mean_query.encoder.sa_decode(first)
        codes[kept, : self.first_size] = first
        codes[kept, self.first_size : -1] = self.second.sa_encode(np.ascontiguousarray(residual))
        codes[kept, -1] = 1
        return codes

    def valid_codes(self, codes: np.ndarray) -> bool:
        flags = np.asarray(codes[:, -1]) if len(codes) else np.zeros(0, np.uint8)
        return bool((flags <= 1).all()) and codes_name_lists(
            codes, self.mean_query.list_bytes, self.nlist
        )

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the kept codes of ``parts`` (``(codes, ids)`` pairs, read twice: the
        ids, then the codes straight into their place in id order, so that RAM never holds
        them twice)."""
        ids = [np.asarray(i, np.int64)[np.asarray(c[:, -1]) == 1] for c, i in parts]
        self.ids = np.concatenate([np.empty(0, np.int64), *ids])
        order = np.argsort(self.ids, kind="stable")
        self.ids = self.ids[order]
        place = np.empty_like(order)
        place[order] = np.arange(len(order))
        self.codes = np.empty((len(self.ids), self.codes.shape[1]), np.uint8)
        start = 0
        for (part_codes, _), part_ids in zip(parts, ids, strict=True):
            kept = np.asarray(part_codes[:, -1]) == 1
            self.codes[place[start : start + len(part_ids)]] = part_codes[kept, :-1]
            start += len(part_ids)
        self._index_rows()
        first = self.codes[:, : self.first_size]
        chunks = range(0, len(first), IN_RAM_GROUP)
        chunked = [(first[i : i + IN_RAM_GROUP], self.ids[i : i + IN_RAM_GROUP]) for i in chunks]
        self.mean_query.rebuild(chunked, group_codes=IN_RAM_GROUP)

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
        """Hold more vectors (``codes``: what ``encode`` gave for them)."""
        if not len(vectors) == len(ids) == len(codes):
            raise ValueError(f"{len(vectors)} vectors, {len(ids)} ids and {len(codes)} codes")
        kept = codes[:, -1] == 1
        ids = np.asarray(ids, np.int64)[kept]
        self.mean_query.add_vectors(vectors[kept], ids, codes[kept, : self.first_size])
        self._hold([self.codes, codes[kept, :-1]], [self.ids, ids])

    def _hold(self, codes: list[np.ndarray], ids: list[np.ndarray]) -> None:
        """Keep ``codes`` and ``ids`` (lists of pieces) as one run sorted by id."""
        self.ids = np.concatenate([np.empty(0, np.int64), *ids])
        self.codes = np.concatenate([self.codes[:0], *codes])
        if len(self.ids) > 1 and (self.ids[1:] < self.ids[:-1]).any():
            order = np.argsort(self.ids, kind="stable")
            self.ids, self.codes = self.ids[order], self.codes[order]
        self._index_rows()

    def _index_rows(self) -> None:
        """``videos`` and ``row_starts`` of the current ``ids``."""
        rows = int(self.ids[-1] >> 1) + 1 if len(self.ids) else 0
        self.row_starts = np.searchsorted(self.ids, np.arange(rows + 1) * 2)
        self.videos = int(np.count_nonzero(np.diff(self.row_starts)))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.mean_query.nbytes + self.codes.nbytes + self.ids.nbytes + self.row_starts.nbytes

    # ---- search --------------------------------------------------------------------------------
    def find(
        self,
        queries: Sequence[np.ndarray],
        branches: tuple[str, ...],
        settings: RescoredSettings,
        limit: int,
    ) -> list[np.ndarray]:
        """Per query, the rows of the best ``max(candidates, limit)`` videos of the pool by
        the mean-query score of both codes."""
        wanted = [BRANCH_IDS[b] for b in branches]
        keep = max(settings.candidates, limit)
        pools = [(np.mean(v, axis=0), self.pool(v, settings, wanted)) for v in queries]
        return [self.rescore(mean, rows, wanted, keep) for mean, rows in pools]

    def pool(
        self, vectors: np.ndarray, settings: RescoredSettings, branches: list[int]
    ) -> np.ndarray:
        """Rows of the ``pool`` best videos of one query (``[L, D]``) by its mean vector's
        ``hits`` best kept vectors in the first codes of the ``nprobe`` probed lists."""
        first = CandidateSettings(
            nprobe=settings.nprobe, hits=settings.hits, candidates=settings.pool
        )
        return self.mean_query.candidates(vectors, _uniform(vectors), first, branches)

    def rescore(self, mean: np.ndarray, rows: np.ndarray, branches: list[int], keep: int):
        """The ``keep`` best of ``rows`` by the mean-query score of their kept vectors'
        decoded codes, best first (a branch without a kept vector adds nothing)."""
        last = len(self.row_starts) - 1
        first = self.row_starts[np.minimum(rows, last)]
        counts = self.row_starts[np.minimum(rows + 1, last)] - first
        at = np.repeat(first - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        columns = code_columns(self.codes, at)
        list_bytes = self.mean_query.list_bytes
        sims = (self.mean_query.centroids @ mean)[list_numbers(columns.T, list_bytes)]
        for column, table in enumerate(self._tables(mean), start=list_bytes):
            sims += np.take(table, columns[column])
        best = np.full((len(rows), len(BRANCH_IDS)), -np.inf, np.float32)
        video = np.repeat(np.arange(len(rows)), counts)
        np.maximum.at(best, (video, self.ids[at] & 1), sims)
        scores = np.where(np.isfinite(best[:, branches]), best[:, branches], 0.0).sum(axis=1)
        return best_first(rows, scores, keep)

    def _tables(self, mean: np.ndarray) -> np.ndarray:
        """``[code bytes, 256]``: what each value of each byte of both PQ codes adds to a
        vector's inner product with ``mean`` (the decoded vector is the list's centroid plus
        both codes' sub-vectors, on disjoint dimensions within each code)."""
        return np.concatenate(
            [byte_table(self._first_centroids, mean), byte_table(self._second_centroids, mean)]
        )

    def narrow(self, query, vectors, mask, columns, settings: RescoredSettings, want: int):
        """Positions of the ``max(exact, want)`` best candidates by the mean-query score of
        their stored vectors."""
        return refine(query, _uniform(query), vectors, mask, columns, max(settings.exact, want))


def code_columns(codes: np.ndarray, at: np.ndarray, block: int = GATHER_BLOCK) -> np.ndarray:
    """``codes[at].T`` as a contiguous array ``[code bytes, len(at)]`` (one row per code byte:
    what ``np.take`` reads fastest), gathered ``block`` rows at a time so that each block is
    transposed in cache (``GATHER_BLOCK``)."""
    columns = np.empty((codes.shape[1], len(at)), codes.dtype)
    for start in range(0, len(at), block):
        columns[:, start : start + block] = codes[at[start : start + block]].T
    return columns


def pq_centroids(pq) -> np.ndarray:
    """The sub-quantizers' centroids of a faiss product quantizer ``[M, 2**bits, D / M]``;
    ValueError unless its codes are whole bytes or pairs of 4 bits."""
    import faiss

    if pq.nbits not in (4, 8) or pq.nbits == 4 and pq.M % 2:
        raise ValueError(f"{pq.M} codes of {pq.nbits} bits are not whole bytes")
    return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)


def byte_table(centroids: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``[code bytes, 256]``: the inner product with ``mean`` that each value of each code
    byte adds, for ``pq_centroids`` of 8-bit codes or of pairs of 4-bit codes (low bits
    first, as faiss packs them)."""
    m, ksub, dsub = centroids.shape
    table = np.einsum("mkd,md->mk", centroids, mean.reshape(m, dsub).astype(np.float32))
    if ksub == 256:
        return table
    values = np.arange(256)
    return table[0::2][:, values & 15] + table[1::2][:, values >> 4]


def pack(header: dict, first: bytes, second: bytes) -> bytes:
    """``MAGIC``, a JSON line (``header`` and the two sizes), then the two faiss indexes."""
    line = json.dumps({**header, "first": len(first), "second": len(second)}).encode()
    return MAGIC + line + b"\n" + first + second


def unpack(trained: bytes) -> tuple[dict, bytes, bytes]:
    """What ``pack`` packed; RuntimeError if ``trained`` is not that."""
    if not trained.startswith(MAGIC) or b"\n" not in trained[len(MAGIC) :]:
        raise RuntimeError("not a rescored engine's trained bytes")
    line, _, rest = trained[len(MAGIC) :].partition(b"\n")
    try:
        header = json.loads(line)
        first, second = int(header["first"]), int(header["second"])
        float(header["cosine"])
    except (ValueError, KeyError, TypeError) as error:
        raise RuntimeError(f"a rescored engine's header is damaged ({error})") from error
    if first < 0 or second < 0 or first + second != len(rest):
        raise RuntimeError("a rescored engine's trained bytes are cut short or too long")
    return header, rest[:first], rest[first:]


def _uniform(vectors: np.ndarray) -> np.ndarray:
    return np.full(len(vectors), 1.0 / len(vectors), np.float32)
