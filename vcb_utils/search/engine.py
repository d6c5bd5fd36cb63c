"""The candidate engine: what the first stage of a two-stage search needs from a vector index.

A ``CandidateEngine`` compresses every stored vector into a code, holds the codes in RAM and,
given the vectors of a query, returns the rows of the videos most likely to be its best. The
index stores the codes (per segment, in ``collection.segment_ids`` order) and the trained
engine (``trained``: bytes) itself, so an engine needs no files of its own. To change the
candidate stage, write one module with a class that has these members and name it in
``ENGINES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np

BRANCH_IDS = {"F": 0, "V": 1}
"""A stored vector's id in an engine is ``row * 2 + BRANCH_IDS[branch]``."""
ENGINES = {
    "mean-query": "vcb_utils.search.meanquery:MeanQueryEngine",
    "ivfpq-fastscan": "vcb_utils.search.ivfpq:IvfPqEngine",
}
"""Every candidate engine by the name a manifest records: ``module:class``."""
DEFAULT_ENGINE = "mean-query"
"""The engine ``build_ann`` trains unless told otherwise."""
LEGACY_ENGINE = "ivfpq-fastscan"
"""The engine of a manifest that names none (saved before engines had names)."""


class Settings(Protocol):
    """An engine's search settings: a frozen dataclass of positive ints, ``candidates`` (the
    videos proposed for the rerank) and ``nprobe`` among them."""

    candidates: int
    nprobe: int


class CandidateEngine(Protocol):
    """A trained, compressed index over stored vectors that proposes candidate videos."""

    name: str
    """Its name in ``ENGINES`` (recorded in the manifest)."""
    settings_type: type
    """Its ``Settings`` dataclass."""
    generation: str
    """A fresh name per training: the folder its saved codes live in."""
    nlist: int
    code_size: int
    """Bytes per stored vector's code."""

    @classmethod
    def train(cls, sample: np.ndarray, nlist: int | None, seed: int) -> CandidateEngine:
        """Trained on ``sample`` (unit vectors ``[n, D]``), holding no vector yet."""

    @classmethod
    def open(cls, trained: bytes, generation: str) -> CandidateEngine:
        """The engine ``trained`` saved, holding no vector yet; ValueError if damaged."""

    @staticmethod
    def default_nlist(n_vectors: int) -> int:
        """Coarse lists for an index of ``n_vectors`` stored vectors."""

    @staticmethod
    def train_points(nlist: int) -> int:
        """How many vectors to train ``nlist`` lists on."""

    @staticmethod
    def default_settings(nlist: int) -> Settings:
        """Settings for an engine of ``nlist`` lists."""

    @staticmethod
    def grid(nlist: int) -> list[Settings]:
        """The settings ``VideoIndex.calibrate`` measures."""

    def cost(self, settings: Settings, query_vectors: int, per_video: float) -> float:
        """Work of one query of ``query_vectors`` vectors (stored videos of ``per_video``
        vectors), roughly, in operations: what "cheapest" means to ``calibrate``."""

    @property
    def trained(self) -> bytes: ...

    @property
    def nbytes(self) -> int:
        """Bytes of codes and ids in RAM."""

    def describe(self) -> dict:
        """What ``stats`` and the manifest show of it (``nlist``, sizes, ...)."""

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8 of ``vectors``."""

    def valid_codes(self, codes: np.ndarray) -> bool:
        """Whether ``codes`` (e.g. read from disk) can be held without crashing the engine."""

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the ``(codes, ids)`` of ``parts``."""

    def add_vectors(self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray) -> None:
        """Hold more vectors; ``codes``: what ``encode`` gave for them (an engine may use them
        instead of encoding again)."""

    def __len__(self) -> int: ...

    def find(
        self,
        queries: Sequence[np.ndarray],
        branches: tuple[str, ...],
        settings: Settings,
        limit: int,
    ) -> list[np.ndarray]:
        """For each query (its valid unit vectors ``[L, D]``, weighted equally, as in
        MeanMaxSim), the rows of at most ``limit`` videos, best first, counting ``branches``."""

    def narrow(
        self,
        query: np.ndarray,
        vectors: np.ndarray,
        mask: np.ndarray,
        columns: Sequence[slice],
        settings: Settings,
        want: int,
    ) -> np.ndarray:
        """Positions, among the candidates whose stored ``vectors`` and ``mask`` were read,
        of those to score exactly (at least ``want``; ``columns``: the branches' columns)."""


def engine_class(name: str) -> type[CandidateEngine]:
    """The engine class named ``name``; ValueError for a name this code does not know."""
    if name not in ENGINES:
        raise ValueError(f"candidate engine {name!r} is unknown (known: {sorted(ENGINES)})")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def updated_settings(settings: Settings, **changes: int | None) -> Settings:
    """``settings`` with the given fields changed (None leaves a field as it is); ValueError
    for a value that is not a positive int."""
    values = {}
    for name, value in changes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
        values[name] = int(value)
    return dataclasses.replace(settings, **values)


def codes_name_lists(codes: np.ndarray, list_bytes: int, nlist: int, batch: int = 1 << 20) -> bool:
    """Whether every IVF code names one of the ``nlist`` lists (its first ``list_bytes`` bytes,
    little-endian): faiss aborts the whole load on one that does not."""
    weights = 256 ** np.arange(list_bytes, dtype=np.int64)
    for start in range(0, len(codes), batch):
        lists = np.asarray(codes[start : start + batch, :list_bytes], np.int64) @ weights
        if len(lists) and int(lists.max()) >= nlist:
            return False
    return True


def add_codes(index, parts: Iterable[tuple[np.ndarray, np.ndarray]], batch: int = 1 << 20) -> None:
    """Add the standalone ``(codes, ids)`` of ``parts`` (read once, in turn) to a trained faiss
    IVF index, ``batch`` at a time: bounded copies out of memory maps."""
    for codes, ids in parts:
        if len(codes) != len(ids):
            raise ValueError(f"{len(codes)} codes but {len(ids)} ids")
        for lo in range(0, len(codes), batch):
            index.add_sa_codes(
                np.ascontiguousarray(codes[lo : lo + batch], dtype=np.uint8),
                np.ascontiguousarray(ids[lo : lo + batch], dtype=np.int64),
            )


def fast_scan(plain):
    """faiss's fast-scan layout of a 4-bit IVF-PQ index ``plain``, owning its own copy of the
    coarse quantizer (the conversion shares ``plain``'s), so that ``plain`` and its copy of the
    codes can go."""
    import faiss

    fast = faiss.IndexIVFPQFastScan(plain)
    quantizer = faiss.clone_index(plain.quantizer)
    quantizer.this.disown()
    fast.quantizer = quantizer
    fast.own_fields = True
    return fast


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
