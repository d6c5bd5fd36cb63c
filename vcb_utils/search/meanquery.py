"""The mean-query candidate engine (the default): videos whose best vector matches the mean query.

The scoring is ``vcb_utils.candidates``' (read its docstring for why and how well it ranks):
every stored vector is an IVF-PQ code with 8-bit sub-quantizers in a faiss ``IndexIVFPQ``
(inner product); one search of the query's mean vector gives each video, per branch, its best
hit; the ``candidates`` best videos are read and ``refine``d by the same score from their
stored vectors, and the ``exact`` best of those get the exact MeanMaxSim.

Codes are kept as faiss's standalone codes (``encode``: list number + PQ code per vector), so
the index stores them per segment like any engine's; ``rebuild`` loads them back.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from vcb_utils.candidates import (
    TRAIN_POINTS,
    CandidateSettings,
    MeanQueryCandidates,
    default_nlist,
    refine,
)
from vcb_utils.search.engine import BRANCH_IDS, add_codes, codes_name_lists

SUBVECTOR_DIMS = 8
"""Dimensions per sub-quantizer: ``m = dim / 8`` (64 bytes per vector at 512)."""
MAX_BITS = 8
"""Bits per sub-quantizer code (fewer for a tiny sample: one code per training vector at most)."""


class MeanQueryEngine:
    """8-bit IVF-PQ codes of every stored vector, searched with the mean query vector (a
    ``vcb_utils.search.engine.CandidateEngine``)."""

    name = "mean-query"
    settings_type = CandidateSettings
    default_nlist = staticmethod(default_nlist)

    def __init__(self, trained: bytes, generation: str | None = None) -> None:
        import faiss

        self.generation = generation or f"g{uuid.uuid4().hex[:12]}"
        self._trained = trained
        index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        self.mean_query = MeanQueryCandidates(index, branches=len(BRANCH_IDS))
        self.dim, self.nlist, self.m = index.d, index.nlist, index.pq.M
        self.bits = index.pq.nbits
        self.code_size = index.sa_code_size()
        self.list_bytes = index.coarse_code_size()

    @classmethod
    def open(cls, trained: bytes, generation: str) -> MeanQueryEngine:
        """The engine ``trained`` saved, holding no codes; RuntimeError if faiss cannot read it."""
        return cls(trained, generation)

    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, seed: int = 0, m: int | None = None
    ) -> MeanQueryEngine:
        """Coarse centroids and PQ codebooks trained on ``sample`` (unit vectors ``[n, D]``)."""
        import faiss

        sample = np.ascontiguousarray(sample, np.float32)
        n, dim = sample.shape
        m = m or max(1, dim // SUBVECTOR_DIMS)
        while dim % m:
            m -= 1
        nlist = min(nlist or default_nlist(n * 8), n)
        bits = min(MAX_BITS, int(math.log2(max(n, 2))))
        index = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.seed = index.pq.cp.seed = seed
        index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
        index.verbose = False
        index.train(sample)
        return cls(faiss.serialize_index(index).tobytes())

    @staticmethod
    def train_points(nlist: int) -> int:
        return TRAIN_POINTS

    @staticmethod
    def default_settings(nlist: int) -> CandidateSettings:
        """The ``CandidateSettings`` defaults, probing no more lists than there are."""
        return CandidateSettings(nprobe=min(nlist, CandidateSettings.nprobe))

    @staticmethod
    def grid(nlist: int) -> list[CandidateSettings]:
        """The settings ``calibrate`` tries (cheapest first is sorted by ``cost``)."""
        return [
            CandidateSettings(nprobe=p, hits=h, candidates=c, exact=e)
            for p in sorted({min(p, nlist) for p in (8, 32, 128, 512)})
            for h in (4096, 16384)
            for c in (256, 1024)
            for e in (32, 128, 512)
            if e <= c
        ]

    def cost(self, settings: CandidateSettings, query_vectors: int, per_video: float) -> float:
        """Operations of one query, roughly: the codes scanned, the candidates' vectors read
        and refined, and the multiply-adds of the exact rerank."""
        index = self.mean_query.index
        scanned = index.ntotal * min(settings.nprobe, self.nlist) / self.nlist * self.code_size
        refined = settings.candidates * per_video * self.dim * 3  # read (fp16) and one product
        exact = min(settings.exact, settings.candidates) * per_video * query_vectors * self.dim
        return scanned + refined + exact

    @property
    def trained(self) -> bytes:
        return self._trained

    def describe(self) -> dict:
        return {"nlist": self.nlist, "m": self.m, "bits": self.bits}

    # ---- codes ---------------------------------------------------------------------------------
    def encode(self, vectors: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8: each vector's list number, then its PQ code."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        codes = np.empty((len(vectors), self.code_size), dtype=np.uint8)
        for start in range(0, len(vectors), batch):
            block = vectors[start : start + batch]
            codes[start : start + batch] = self.mean_query.index.sa_encode(block)
        return codes

    def valid_codes(self, codes: np.ndarray) -> bool:
        return codes_name_lists(codes, self.list_bytes, self.nlist)

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the ``(codes, ids)`` of ``parts`` (read once, in turn)."""
        import faiss

        index = faiss.deserialize_index(np.frombuffer(self._trained, dtype=np.uint8))
        add_codes(index, parts)
        self.mean_query.index = index

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(vectors):
            vectors = np.ascontiguousarray(vectors, np.float32)
            self.mean_query.index.add_with_ids(vectors, np.ascontiguousarray(ids, np.int64))

    def __len__(self) -> int:
        return int(self.mean_query.index.ntotal)

    @property
    def nbytes(self) -> int:
        return self.mean_query.nbytes

    # ---- search --------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` approximate nearest stored vectors of each query vector: inner products
        and ids ``[n, k]`` (-1 where fewer were found)."""
        index = self.mean_query.index
        index.nprobe = min(int(nprobe), self.nlist)
        return index.search(np.ascontiguousarray(queries, np.float32), int(k))

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
