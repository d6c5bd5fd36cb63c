"""The mean-query candidate engine: videos whose best vector matches the mean query.

The scoring is ``vcb_utils.candidates``' (read its docstring for why and how well it ranks):
every stored vector is a 4-bit IVF-PQ code scanned with faiss's fast-scan kernels; the
query's mean vector probes the lists of best bound (centroid score plus a share of the list's
radius), and each video gets, per branch, its best hit; the ``candidates`` best videos are
read and ``refine``d by the same score from their stored vectors, and the ``exact`` best of
those get the exact MeanMaxSim.

Codes are kept as faiss's standalone codes (``encode``: list number + PQ code per vector), so
the index stores them per segment like any engine's; ``rebuild`` loads them back. Indexes
saved with the 8-bit codes of the first version of this engine load and search as they are.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from vcb_utils.candidates import (
    CandidateSettings,
    MeanQueryCandidates,
    default_nlist,
    default_settings,
    refine,
    train_index,
    train_points,
)
from vcb_utils.search.engine import BRANCH_IDS, codes_name_lists

HITS_CANDIDATES = (
    (4096, 256),
    (4096, 1024),
    (16384, 256),
    (16384, 1024),
    (16384, 4096),
    (65536, 4096),
)
"""The (hits, candidates) pairs of ``grid``: more candidates need more hits to rank."""


class MeanQueryEngine:
    """IVF-PQ codes of every stored vector, searched with the mean query vector (a
    ``vcb_utils.search.engine.CandidateEngine``)."""

    name = "mean-query"
    settings_type = CandidateSettings
    default_nlist = staticmethod(default_nlist)
    default_settings = staticmethod(default_settings)
    train_points = staticmethod(train_points)

    def __init__(self, trained: bytes, generation: str | None = None) -> None:
        self.generation = generation or f"g{uuid.uuid4().hex[:12]}"
        self.mean_query = MeanQueryCandidates(trained, branches=len(BRANCH_IDS))
        encoder = self.mean_query.encoder
        self.dim, self.nlist, self.m, self.bits = (
            encoder.d,
            encoder.nlist,
            encoder.pq.M,
            encoder.pq.nbits,
        )
        self.code_size = self.mean_query.code_size

    @classmethod
    def open(cls, trained: bytes, generation: str) -> MeanQueryEngine:
        """The engine ``trained`` saved, holding no codes; RuntimeError if faiss cannot read it."""
        return cls(trained, generation)

    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, seed: int = 0, m: int | None = None
    ) -> MeanQueryEngine:
        """Coarse centroids and PQ codebooks trained on ``sample`` (unit vectors ``[n, D]``)."""
        return cls(train_index(sample, nlist or default_nlist(len(sample)), seed, m))

    @staticmethod
    def grid(nlist: int) -> list[CandidateSettings]:
        """The settings ``calibrate`` tries (cheapest first is sorted by ``cost``). The widest,
        4,096 candidates from 65,536 hits, is for a million CLIP-like videos: there the 4-bit
        codes put 4% of the exact top-10 below the 1,024th candidate."""
        return [
            CandidateSettings(nprobe=p, hits=h, candidates=c, exact=e)
            for p in sorted({max(1, nlist // share) for share in (32, 16, 8, 4)})
            for h, c in HITS_CANDIDATES
            for e in (32, 128, 512)
            if e <= c
        ]

    def cost(self, settings: CandidateSettings, query_vectors: int, per_video: float) -> float:
        """Operations of one query, roughly: the code bytes scanned (``probed_codes``), the
        candidates' vectors read and refined, and the multiply-adds of the exact rerank."""
        pq_bytes = self.code_size - self.mean_query.list_bytes
        scanned = self.mean_query.probed_codes(settings.nprobe) * pq_bytes
        refined = settings.candidates * per_video * self.dim * 3  # read (fp16) and one product
        exact = min(settings.exact, settings.candidates) * per_video * query_vectors * self.dim
        return scanned + refined + exact

    @property
    def trained(self) -> bytes:
        return self.mean_query.trained

    def describe(self) -> dict:
        return {"nlist": self.nlist, "m": self.m, "bits": self.bits}

    # ---- codes ---------------------------------------------------------------------------------
    def encode(self, vectors: np.ndarray, videos: np.ndarray | None = None) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8: each vector's list number, then its PQ code (every
        vector alike, whatever its video)."""
        return self.mean_query.encode(vectors)

    def valid_codes(self, codes: np.ndarray) -> bool:
        return codes_name_lists(codes, self.mean_query.list_bytes, self.nlist)

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the ``(codes, ids)`` of ``parts`` (read more than once)."""
        self.mean_query.rebuild(parts)

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
        self.mean_query.add_vectors(vectors, ids, codes)

    def __len__(self) -> int:
        return int(self.mean_query.index.ntotal)

    @property
    def nbytes(self) -> int:
        return self.mean_query.nbytes

    # ---- search --------------------------------------------------------------------------------
    def find(
        self,
        queries: Sequence[np.ndarray],
        branches: tuple[str, ...],
        settings: CandidateSettings,
        limit: int,
    ) -> list[np.ndarray]:
        """Per query, the rows of the best ``limit`` videos by the mean-query score."""
        budget = replace(settings, candidates=limit)
        wanted = [BRANCH_IDS[b] for b in branches]
        return [
            self.mean_query.candidates(vectors, _uniform(vectors), budget, wanted)
            for vectors in queries
        ]

    def narrow(
        self,
        query: np.ndarray,
        vectors: np.ndarray,
        mask: np.ndarray,
        columns: Sequence[slice],
        settings: CandidateSettings,
        want: int,
    ) -> np.ndarray:
        """Positions of the ``max(exact, want)`` best candidates by the mean-query score of
        their stored vectors (``[n, width, D]``; ``columns``: the branches' columns)."""
        return refine(query, _uniform(query), vectors, mask, columns, max(settings.exact, want))


def _uniform(vectors: np.ndarray) -> np.ndarray:
    return np.full(len(vectors), 1.0 / len(vectors), np.float32)
