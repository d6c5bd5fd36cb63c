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

Three steps compute it cheaply:

1. **lists**: every stored vector is in the coarse list of its nearest centroid ``c``, and its
   code decodes to ``c + r`` (``r``: its quantised residual), so no code of a list scores
   above ``<q, c> + |q| r_max`` (``r_max``: the list's largest decoded residual). Lists are
   probed best *bound* first. Ranking by ``<q, c>`` alone (faiss's order) skips the loose
   lists that hold a query's best matches: a mean query is far from every vector (cosine
   0.3-0.6), and on multi-scene videos it found 56% of the exact top-10 at 128 of 1,024
   lists, the bound 95%. (Weighting the ``|q| r_max`` term by 0.5 reached 0.958 at 100k
   multi-scene videos, 0.75 and 1: 0.976 and 0.977, 0.25: 0.845; on CLIP-like ones all
   gave 0.986-0.989: the strict bound is kept.)
2. **hits**: every stored vector is an IVF-PQ code of 4-bit sub-quantizers over 4 dimensions
   each (``D / 8`` bytes: 64 at 512 dimensions) scanned with faiss's SIMD *fast-scan*
   kernels; the ``nprobe`` lists give the ``hits`` best vectors for ``q_mean`` (ids
   ``row * branches + branch``); each video takes, per branch, its best hit (or the worst hit
   where it has none), and the ``candidates`` best videos come back.
3. ``refine``: the caller reads those videos' stored vectors (it needs them for the exact
   rerank anyway) and ``refine`` keeps the ``exact`` best by the same score computed from
   them: a code's error (about 0.03 here) is larger than the margins of CLIP-like vectors.
   Only those get the exact MeanMaxSim.

RAM: ``D / 8 + 8`` bytes per stored vector (code and id): 72 at 512 dimensions, 1.7 GB for a
million videos of 24 valid vectors. On disk: faiss's own serialisation and a JSON header,
each written aside and renamed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vcb_utils.search.engine import GROUP_CODES, fast_scannable, index_of_codes, list_numbers

FORMAT = "vcb-mean-query-candidates"
VERSION = 2
SUBVECTOR_DIMS = 4
"""Dimensions per 4-bit PQ sub-quantizer (one bit per dimension)."""
CODE_BITS = 4
"""Bits per sub-quantizer code: 4 is what faiss's fast-scan kernels scan."""
TRAIN_POINTS_PER_LIST = 40
"""Training vectors per coarse list (faiss wants at least 39)."""
MIN_TRAIN_POINTS = 65536
"""Training vectors however few the lists."""
ADD_BLOCK = 65536
"""Vectors encoded at once."""


@dataclass(frozen=True)
class CandidateSettings:
    """How much work the candidate stage does per query; more: higher recall, slower."""

    nprobe: int = 512
    """Coarse lists scanned for the mean query vector, best bound first (``default_settings``
    of an index: an eighth of its lists; 512 is that of 100k videos)."""
    hits: int = 16384
    """Nearest stored vectors kept (each gives its video a score)."""
    candidates: int = 1024
    """Videos returned, best approximate score first (for ``refine``)."""
    exact: int = 128
    """Videos ``refine`` keeps for the exact MeanMaxSim rerank."""

    def __post_init__(self) -> None:
        check_positive(self)


def check_positive(settings) -> None:
    """ValueError unless every field of the dataclass ``settings`` is a positive int."""
    for name, value in asdict(settings).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")


PROBED_SHARE = 8
"""``default_settings`` probes one list in this many."""


def default_settings(nlist: int) -> CandidateSettings:
    """The ``CandidateSettings`` defaults with an eighth of ``nlist`` lists probed."""
    return CandidateSettings(nprobe=max(1, nlist // PROBED_SHARE))


def default_nlist(n_vectors: int) -> int:
    """Coarse lists: the power of two nearest ``2 sqrt(n)`` (4,096 for 100k videos of 24
    vectors, 8,192 for a million), at most ``n / TRAIN_POINTS_PER_LIST``. Short lists keep
    the bound of each tight."""
    target = 2 ** round(math.log2(max(2 * math.sqrt(max(n_vectors, 1)), 1)))
    most = 2 ** int(math.log2(max(n_vectors // TRAIN_POINTS_PER_LIST, 1)))
    return max(1, min(target, most))


def train_points(nlist: int) -> int:
    """Training vectors for ``nlist`` lists."""
    return max(MIN_TRAIN_POINTS, TRAIN_POINTS_PER_LIST * nlist)


def train_index(sample: np.ndarray, nlist: int, seed: int = 0, m: int | None = None) -> bytes:
    """A trained, empty faiss IVF-PQ (inner product) of ``nlist`` lists and ``m`` 4-bit
    sub-quantizers (default ``D / SUBVECTOR_DIMS``; fewer bits for a sample under 16 vectors),
    serialised."""
    import faiss

    sample = np.ascontiguousarray(sample, np.float32)
    n, dim = sample.shape
    m = m or max(2, dim // SUBVECTOR_DIMS)
    if dim % m or m % 2:
        raise ValueError(f"m={m} sub-quantizers must be even and divide the vector size {dim}")
    nlist = min(nlist, n)
    bits = min(CODE_BITS, int(math.log2(max(n, 2))))
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, nlist, m, bits, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.seed = index.pq.cp.seed = seed
    index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
    index.verbose = False
    index.train(sample)
    return faiss.serialize_index(index).tobytes()


class MeanQueryCandidates:
    """IVF-PQ codes of every stored vector, probed by bound and searched with the mean query.

    ``trained``: what ``train_index`` gave. Rows are numbered from 0 in the order they are
    added; each holds ``branches`` segments of vectors (F, then V).
    """

    def __init__(self, trained: bytes, branches: int = 2) -> None:
        import faiss

        self.trained = trained
        self.branches = branches
        self.encoder = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
        self.nlist = self.encoder.nlist
        self.centroids = self.encoder.quantizer.reconstruct_n(0, self.nlist)
        self.code_size = self.encoder.sa_code_size()
        self.list_bytes = self.encoder.coarse_code_size()
        self._byte_norms = _byte_norms(self.encoder.pq)
        self.radii = np.zeros(self.nlist, np.float32)
        """Per list, the largest residual norm of its codes."""
        self.index = index_of_codes(trained, ())
        self.rows = 0

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls, sample: np.ndarray, nlist: int | None = None, branches: int = 2, seed: int = 0
    ) -> MeanQueryCandidates:
        """Coarse centroids and PQ codebooks trained on ``sample`` (unit vectors ``[n, D]``;
        default lists for ``PROBED_SHARE`` times as many stored vectors)."""
        nlist = nlist or default_nlist(len(sample) * PROBED_SHARE)
        return cls(train_index(sample, nlist, seed), branches)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Standalone codes ``[n, code_size]`` uint8: each vector's list number, then its PQ
        code."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        codes = np.empty((len(vectors), self.code_size), dtype=np.uint8)
        for lo in range(0, len(vectors), ADD_BLOCK):
            codes[lo : lo + ADD_BLOCK] = self.encoder.sa_encode(vectors[lo : lo + ADD_BLOCK])
        return codes

    def rebuild(
        self, parts: Iterable[tuple[np.ndarray, np.ndarray]], group_codes: int = GROUP_CODES
    ) -> None:
        """Hold exactly the ``(codes, ids)`` of ``parts`` (read more than once, once per
        ``group_codes`` codes: ``index_of_codes``), the radii measured from them."""
        self.radii = np.zeros(self.nlist, np.float32)
        self.index = index_of_codes(self.trained, parts, seen=self._widen, group_codes=group_codes)

    def add_vectors(
        self, vectors: np.ndarray, ids: np.ndarray, codes: np.ndarray | None = None
    ) -> None:
        """Hold ``vectors`` ``[n, D]`` with their ids (``row * branches + branch``); ``codes``:
        what ``encode`` gave for them, when at hand (the radii come from them)."""
        codes = self.encode(vectors) if codes is None else codes
        if not len(vectors) == len(ids) == len(codes):
            raise ValueError(f"{len(vectors)} vectors, {len(ids)} ids and {len(codes)} codes")
        for lo in range(0, len(vectors), ADD_BLOCK):
            block = np.ascontiguousarray(vectors[lo : lo + ADD_BLOCK], np.float32)
            self.index.add_with_ids(block, np.ascontiguousarray(ids[lo : lo + ADD_BLOCK], np.int64))
        self._widen(codes)

    def add(self, vectors: np.ndarray, mask: np.ndarray, branches: Sequence[slice]) -> None:
        """Append rows: ``vectors`` ``[n, width, D]`` (any float type, e.g. a memory map) and
        ``mask`` ``[n, width]``; ``branches`` are the column ranges of the segments (F, V)."""
        if len(branches) != self.branches:
            raise ValueError(f"{len(branches)} column ranges for {self.branches} branches")
        mask = np.asarray(mask, bool)
        for b, columns in enumerate(branches):
            valid = mask[:, columns]
            rows = np.nonzero(valid)[0] + self.rows
            self.add_vectors(np.asarray(vectors[:, columns])[valid], rows * self.branches + b)
        self.rows += len(mask)

    def empty(self) -> MeanQueryCandidates:
        """The same trained stage without rows (to add to from the start)."""
        return MeanQueryCandidates(self.trained, self.branches)

    def _widen(self, codes: np.ndarray) -> None:
        """Raise the lists' radii to the residual norms that ``codes`` decode to."""
        for lo in range(0, len(codes), ADD_BLOCK):
            block = np.ascontiguousarray(codes[lo : lo + ADD_BLOCK], np.uint8)
            lists = list_numbers(block, self.list_bytes)
            np.maximum.at(self.radii, lists, self._residual_norms(block[:, self.list_bytes :]))

    def _residual_norms(self, pq_codes: np.ndarray) -> np.ndarray:
        """Norms of the residuals that PQ codes decode to: a table lookup per code byte (at a
        million videos, 5 s instead of a minute of decoding at every load)."""
        if self._byte_norms is None:
            return np.linalg.norm(self.encoder.pq.decode(np.ascontiguousarray(pq_codes)), axis=1)
        squared = np.zeros(len(pq_codes), np.float32)
        for column, table in enumerate(self._byte_norms):
            squared += table[pq_codes[:, column]]
        return np.sqrt(squared)

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of codes and ids in RAM (plus the centroids and radii)."""
        code = self.code_size - self.list_bytes + 8
        return self.index.ntotal * code + self.nlist * (self.index.d + 1) * 4

    def probed_codes(self, nprobe: int) -> int:
        """About how many codes ``nprobe`` lists probed for a query hold: those of the widest
        radius. Lists are probed best bound first, and a wide list's bound is high for every
        query, so on uneven lists ``nprobe / nlist`` of the codes is far too few (at a million
        multi-scene videos of the rescored engine, the 512 widest of 8,192 lists hold 66% of
        its codes, and the 512 a query probed held 63%, median of 50 queries)."""
        widest = np.argsort(-self.radii, kind="stable")[: min(nprobe, self.nlist)]
        return int(self.list_sizes()[widest].sum())

    def list_sizes(self) -> np.ndarray:
        """``[nlist]``: how many codes each coarse list holds."""
        lists = self.index.invlists
        return np.array([lists.list_size(i) for i in range(self.nlist)], np.int64)

    # ---- searching -----------------------------------------------------------------------------
    def probe(self, mean: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` lists of the best bound for the query vector ``mean``, best first,
        and their centroids' inner products with it."""
        coarse = self.centroids @ mean
        bound = coarse + float(np.linalg.norm(mean)) * self.radii
        lists = best_first(np.arange(self.nlist), bound, min(nprobe, self.nlist))
        return lists, coarse[lists]

    def search(self, mean: np.ndarray, hits: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``hits`` best stored vectors for ``mean`` in its ``nprobe`` lists: approximate
        inner products and ids (only those found)."""
        mean = np.ascontiguousarray(mean, np.float32)
        lists, coarse = self.probe(mean, nprobe)
        self.index.nprobe = len(lists)
        sims, ids = self.index.search_preassigned(
            mean[None], int(hits), lists[None].astype(np.int64), coarse[None].astype(np.float32)
        )
        found = ids[0] >= 0
        return sims[0][found], ids[0][found]

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
        return best_first(rows, scores, settings.candidates)

    def scored(
        self,
        query_vectors: np.ndarray,
        query_weights: np.ndarray,
        settings: CandidateSettings = CandidateSettings(),
        branches: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every row with a hit (ascending) and its approximate score."""
        mean = np.asarray(query_weights, np.float32) @ np.asarray(query_vectors, np.float32)
        sims, ids = self.search(mean, settings.hits, settings.nprobe)
        if len(ids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        rows, inverse = np.unique(ids // self.branches, return_inverse=True)
        best = np.full((len(rows), self.branches), sims.min(), np.float32)  # none: the worst hit
        np.maximum.at(best, (inverse, ids % self.branches), sims)
        wanted = list(range(self.branches)) if branches is None else list(branches)
        return rows, best[:, wanted].sum(axis=1)

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write to ``folder`` (made if needed): ``trained.faiss``, ``index.faiss``, then
        ``candidates.json``; each written aside and renamed."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _replace(folder / "trained.faiss", lambda f: f.write(self.trained))
        data = faiss.serialize_index(self.index)
        _replace(folder / "index.faiss", lambda f: f.write(data.tobytes()))
        header = {
            "format": FORMAT,
            "version": VERSION,
            "rows": self.rows,
            "branches": self.branches,
            "radii": self.radii.tolist(),
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
        stage = _read(folder / "trained.faiss", lambda data: cls(data, header["branches"]))
        stage.index = _read(
            folder / "index.faiss",
            lambda data: faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)),
        )
        stage.radii = np.asarray(header["radii"], np.float32)
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
        for p in (128, 256, 512, 1024)
        for h in (4096, 16384)
        for c in (256, 512, 1024)
    ]


def work(
    stage: MeanQueryCandidates,
    settings: CandidateSettings,
    vectors_per_video: float = 26.0,
    query_vectors: int = 32,
) -> float:
    """Operations of one query, roughly: the bytes of code scanned, and the multiply-adds of
    the exact rerank of the candidates."""
    share = min(settings.nprobe, stage.nlist) / stage.nlist
    scanned = stage.index.ntotal * share * (stage.code_size - stage.list_bytes)
    rerank = settings.candidates * vectors_per_video * query_vectors * stage.index.d
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
    their stored vectors ``[n, width, D]`` and ``mask`` ``[n, width]``, best first: the precise
    version of the stage's score, before the exact rerank of the same (already read) vectors.
    A branch with no valid vector adds nothing. The products are taken in the vectors' own
    type (fp16 as stored: one pass, 20x faster than converting them to fp32 first)."""
    mean = np.asarray(query_weights, np.float32) @ np.asarray(query_vectors, np.float32)
    stored = torch.from_numpy(np.ascontiguousarray(vectors))
    products = stored.reshape(-1, stored.shape[-1]) @ torch.from_numpy(mean).to(stored.dtype)
    sims = np.where(mask, products.float().numpy().reshape(mask.shape), -np.inf)
    best = np.stack([sims[:, columns].max(axis=1) for columns in branches], axis=1)
    scores = np.where(np.isfinite(best), best, 0.0).sum(axis=1)
    return best_first(np.arange(len(scores)), scores, keep)


def best_first(rows: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` of ``rows`` with the highest ``scores``, best first (ties: in order)."""
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


def _read(path: Path, make: Callable):
    """``make(bytes of path)``; ValueError naming the file when it cannot be read or parsed."""
    try:
        return make(path.read_bytes())
    except (OSError, RuntimeError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from error


def _byte_norms(pq) -> np.ndarray | None:
    """``[code bytes, 256]``: the squared norm each value of each PQ code byte adds to a decoded
    residual (the sub-vectors cover disjoint dimensions, so these add up), for 8-bit codes and
    for pairs of 4-bit codes (low bits first); None for other widths."""
    import faiss

    centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    squared = (centroids.astype(np.float64) ** 2).sum(axis=2)
    if pq.nbits == 8:
        return squared.astype(np.float32)
    if not fast_scannable(pq):
        return None
    values = np.arange(256)
    return (squared[0::2][:, values & 15] + squared[1::2][:, values >> 4]).astype(np.float32)
