"""The candidate engine: what the first stage of a two-stage search needs from a vector index.

A ``CandidateEngine`` compresses every stored vector into a code, holds the codes in RAM and,
given the vectors of a query, returns the rows of the videos most likely to be its best. The
index stores the codes (per segment, in ``collection.segment_ids`` order) and the trained
engine (``trained``: bytes) itself, so an engine needs no files of its own. To change the
candidate stage, write one module with a class that has these members and name it in
``ENGINES``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np

BRANCH_IDS = {"F": 0, "V": 1}
"""A stored vector's id in an engine is ``row * 2 + BRANCH_IDS[branch]``."""
ENGINES = {
    "mean-query": "vcb_utils.search.meanquery:MeanQueryEngine",
    "mean-query-rescored": "vcb_utils.search.rescored:RescoredEngine",
    "ivfpq-fastscan": "vcb_utils.search.ivfpq:IvfPqEngine",
}
"""Every candidate engine by the name a manifest records: ``module:class``."""
DEFAULT_ENGINE = "mean-query-rescored"
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

    def encode(self, vectors: np.ndarray, videos: np.ndarray | None = None) -> np.ndarray:
        """Codes ``[n, code_size]`` uint8 of ``vectors``; ``videos`` ``[n]`` (if given)
        numbers the video of each, one video's vectors consecutive, in frame order."""

    def valid_codes(self, codes: np.ndarray) -> bool:
        """Whether ``codes`` (e.g. read from disk) can be held without crashing the engine."""

    def rebuild(self, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Hold exactly the ``(codes, ids)`` of ``parts`` (an iterable that may be read more
        than once)."""

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


def list_numbers(codes: np.ndarray, list_bytes: int) -> np.ndarray:
    """The coarse list each standalone IVF code names: its first ``list_bytes`` bytes,
    little-endian."""
    numbers = np.zeros(len(codes), np.int64)
    for byte in range(list_bytes):
        numbers |= np.asarray(codes[:, byte], np.int64) << (8 * byte)
    return numbers


def codes_name_lists(codes: np.ndarray, list_bytes: int, nlist: int, batch: int = 1 << 20) -> bool:
    """Whether every IVF code names one of the ``nlist`` lists: faiss aborts the whole load on
    one that does not."""
    for start in range(0, len(codes), batch):
        lists = list_numbers(codes[start : start + batch], list_bytes)
        if len(lists) and int(lists.max()) >= nlist:
            return False
    return True


GROUP_CODES = 1 << 22
"""``index_of_codes`` gathers the codes of at most about this many vectors at a time (300 MB)."""


def index_of_codes(
    trained: bytes,
    parts: Iterable[tuple[np.ndarray, np.ndarray]],
    seen: Callable[[np.ndarray], None] | None = None,
    group_codes: int = GROUP_CODES,
    batch: int = 1 << 20,
):
    """The searchable faiss index of the trained IVF-PQ ``trained`` holding the standalone
    ``(codes, ids)`` of ``parts``, each list allocated once, at its size.

    ``parts`` are read once for the list of every code (``seen``, if given, is shown every
    block of ``batch`` codes then), and once per group of consecutive lists holding about
    ``group_codes`` codes, to gather that group's codes: memory holds the index and one group,
    never every code twice (faiss's conversion of a whole plain index held 3.3 GB at a million
    videos for 1.6 GB of codes). 4-bit codes are packed into faiss's fast-scan blocks
    (``block_packer``), and each list is written whole into an empty list (faiss 1.15 appends
    to a fast-scan list safely only when it is empty: ``BlockInvertedLists::add_entries``
    writes past the end of one that holds a multiple of its block). Other widths (the 8-bit
    codes of older indexes) stay in a plain IVF-PQ index.
    """
    import faiss

    plain = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    nlist, list_bytes = plain.nlist, plain.coarse_code_size()
    scannable = fast_scannable(plain.pq)
    index = fast_scan(plain) if scannable else plain
    numbers = _numbers_of(parts, list_bytes, seen, batch)
    sizes = np.bincount(np.concatenate([np.zeros(0, np.int32), *numbers]), minlength=nlist)
    pack = block_packer(index) if scannable and sizes.any() else None
    group_of = np.cumsum(sizes) // max(group_codes, 1)
    with mapped_allocations():
        for group in np.unique(group_of).tolist():
            lists = np.nonzero(group_of == group)[0]
            starts = np.zeros(nlist, np.int64)
            starts[lists] = np.cumsum(sizes[lists]) - sizes[lists]
            codes, ids = _gathered(parts, numbers, group_of == group, starts, sizes, list_bytes)
            for number in lists[sizes[lists] > 0].tolist():
                span = slice(starts[number], starts[number] + sizes[number])
                data = codes[span] if pack is None else pack(codes[span])
                index.invlists.add_entries(
                    number, int(sizes[number]), faiss.swig_ptr(ids[span]), faiss.swig_ptr(data)
                )
    index.ntotal = int(sizes.sum())
    return index


def _numbers_of(parts, list_bytes: int, seen, batch: int) -> list[np.ndarray]:
    """The list number (int32) of every code of each of ``parts`` (``seen`` shown every block
    of codes)."""
    numbers = []
    for codes, ids in parts:
        if len(codes) != len(ids):
            raise ValueError(f"{len(codes)} codes but {len(ids)} ids")
        blocks = [np.zeros(0, np.int32)]
        for lo in range(0, len(codes), batch):
            block = np.ascontiguousarray(codes[lo : lo + batch], np.uint8)
            if seen is not None:
                seen(block)
            blocks.append(list_numbers(block, list_bytes).astype(np.int32))
        numbers.append(np.concatenate(blocks))
    return numbers


def _gathered(
    parts: Iterable[tuple[np.ndarray, np.ndarray]],
    numbers: list[np.ndarray],
    wanted: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    list_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The PQ codes and ids of the codes of ``parts`` whose list is ``wanted``, each list's at
    ``starts[list]`` on, in the order read (``numbers``: each part's list numbers, as read
    before); ValueError if ``parts`` do not give the same codes again."""
    total = int(sizes[wanted].sum())
    codes, ids, cursor = None, np.empty(total, np.int64), starts.copy()
    read = 0
    for (part_codes, part_ids), part_numbers in zip(parts, [*numbers, None], strict=False):
        if part_numbers is None or len(part_codes) != len(part_numbers):
            raise ValueError(_READ_AGAIN)
        read += 1
        rows = np.nonzero(wanted[part_numbers])[0]
        order = np.argsort(part_numbers[rows], kind="stable")
        lists, first, counts = np.unique(
            part_numbers[rows][order], return_index=True, return_counts=True
        )
        places = np.empty(len(rows), np.int64)
        places[order] = np.repeat(cursor[lists] - first, counts) + np.arange(len(rows))
        chosen = np.asarray(part_codes[rows], np.uint8)
        if not np.array_equal(list_numbers(chosen, list_bytes), part_numbers[rows]):
            raise ValueError(_READ_AGAIN)
        if codes is None:
            codes = np.empty((total, chosen.shape[1] - list_bytes), np.uint8)
        codes[places] = chosen[:, list_bytes:]
        ids[places] = np.asarray(part_ids, np.int64)[rows]
        cursor[lists] += counts
    if read != len(numbers):
        raise ValueError(_READ_AGAIN)
    return codes, ids


_READ_AGAIN = (
    "the codes of the parts changed between two reads: pass a sequence or a re-iterable object "
    "(read alike each time), not a generator"
)


@contextmanager
def mapped_allocations() -> Iterator[None]:
    """Allocations of 128 KB and more mapped straight from the OS within the block (glibc; a
    no-op elsewhere), then from 32 MB on (glibc's own ceiling for them).

    faiss rounds each fast-scan list's memory up to a power of two; mapped, only the pages it
    writes are resident, where memory recycled from glibc's heap counts whole (0.6 GB more at a
    million videos). Fixing the threshold ends glibc's own adjustment of it, hence the ceiling
    after the block.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the size from which allocations are mapped."""


def block_packer(fast) -> Callable[[np.ndarray], np.ndarray]:
    """A function from one list's 4-bit PQ codes ``[n, code_size]`` to the fast-scan blocks of
    the index ``fast`` that hold them (zero-padded to whole blocks), as faiss packs them.

    faiss's packer places each 4-bit code of a block on its own (16 us a block: 12 s at a
    million videos). So where each (vector, sub-quantizer) code of a block goes is learnt once
    from it, one code at a time, and a list is then packed with two numpy gathers: the low and
    the high half of every byte of its blocks.
    """
    packer = fast.get_CodePacker()
    per_block, block_bytes, code_size = packer.nvec, packer.block_size, packer.code_size
    width = 2 * code_size  # 4-bit codes per vector
    source = np.full((block_bytes, 2), -1, np.int64)  # per byte, low and high: which code
    flat, block = np.zeros(code_size, np.uint8), np.zeros((1, block_bytes), np.uint8)
    for slot in range(per_block):
        for code in range(width):
            flat[:], block[:] = 0, 0
            flat[code // 2] = 1 << (4 * (code % 2))
            packer.pack_1(flat, slot, block)
            (position,) = np.flatnonzero(block)
            source[position, int(block[0, position] > 15)] = slot * width + code
    if (source < 0).any():
        raise RuntimeError("faiss's fast-scan blocks are not a permutation of 4-bit codes")
    slots, codes_at = np.divmod(source, width)
    from_byte = slots * code_size + codes_at // 2  # in the block's codes, one vector after another
    shift = (4 * (codes_at % 2)).astype(np.uint8)

    def pack(codes: np.ndarray) -> np.ndarray:
        blocks = -(-len(codes) // per_block)
        flat = np.zeros((blocks * per_block, code_size), np.uint8)
        flat[: len(codes)] = codes
        flat = flat.reshape(blocks, per_block * code_size)
        low = (np.take(flat, from_byte[:, 0], axis=1) >> shift[:, 0]) & 15
        high = (np.take(flat, from_byte[:, 1], axis=1) >> shift[:, 1]) << 4  # uint8: drops the rest
        return (low | high).reshape(-1)

    return pack


def fast_scannable(pq) -> bool:
    """Whether faiss's fast-scan kernels take codes of the product quantizer ``pq``: 4-bit
    codes, an even number of them."""
    return pq.nbits == 4 and pq.M % 2 == 0


def fast_scan(plain):
    """faiss's fast-scan layout of a 4-bit IVF-PQ index ``plain``, owning its own copy of the
    coarse quantizer (the conversion shares ``plain``'s), so that ``plain`` and its copy of the
    codes can go: faiss's Python constructor also keeps a reference to ``plain``, which is
    dropped (kept, it held every code twice: 1.6 GB more at a million videos)."""
    import faiss

    fast = faiss.IndexIVFPQFastScan(plain)
    quantizer = faiss.clone_index(plain.quantizer)
    quantizer.this.disown()
    fast.quantizer = quantizer
    fast.own_fields = True
    fast.referenced_objects = []
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
