"""Candidate stage of two-stage search: centroid interaction over every code of a video.

The first stage of a two-stage search picks the few videos that the exact MeanMaxSim rerank
scores; its job is to *rank* them nearly as the exact score does. As PLAID does for ColBERT,
every stored vector is replaced by its nearest of ``K`` centroids (a 2-byte code), and a video's
approximate score is the exact formula on those centroids:

    approx(video) = sum over branches of  sum_j w_j  max_{i in branch} <q_j, centroid(x_i)>

computed over *all* of the video's codes (no vector is missing, unlike scores pieced together
from nearest-neighbour hits). The similarities of every query vector to every centroid are one
matrix product; a video's score is then a gather and a segment max.

Which videos are scored: those holding a vector in one of the ``nprobe`` centroids nearest each
query vector (inverted lists: centroid -> rows). The ``candidates`` best go on to the exact
rerank.

The ``K = coarse x fine`` centroids are trained hierarchically (``coarse`` k-means clusters,
then ``fine`` k-means centroids within each), so that assigning a million videos' 24M vectors
costs ``coarse + fine`` comparisons per vector, not ``K``.

RAM: 2 bytes per stored vector (4 past 65,536 centroids), 4 bytes per (centroid, video)
pair of the inverted lists, 16 bytes per video of offsets, and the centroids (``K x D``
fp32): about 170 MB for a million videos of 26 vectors at ``K = 16384``.

On disk (``save``/``load``): ``.npy`` files (read with ``allow_pickle=False``) and a JSON
header, each written aside and renamed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vcb_utils.ann import merge_duplicates

FORMAT = "vcb-centroid-candidates"
VERSION = 1
TRAIN_POINTS_PER_CENTROID = 24
"""Training vectors per fine centroid (faiss warns below 39 per centroid; more costs build
time for little: the centroids only have to cover the vectors, not be optimal)."""
ASSIGN_BLOCK = 65536
"""Vectors assigned to centroids at once (128 MB of fp32 at 512 dimensions)."""
ARRAYS = ("coarse", "centroids", "codes", "segments", "list_starts", "list_rows")


@dataclass(frozen=True)
class CandidateSettings:
    """How much work the candidate stage does per query; more: higher recall, slower."""

    nprobe: int = 4
    """Centroids probed per (distinct) query vector: their videos are scored."""
    candidates: int = 256
    """Videos returned, best approximate score first (for the exact rerank)."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, not {value!r}")


def default_centroids(n_vectors: int) -> tuple[int, int]:
    """``(coarse, fine)`` for ``n_vectors`` stored vectors: ``K = coarse * fine`` is the power of
    two nearest ``sqrt(n) * 4`` (16,384 for 1M videos of 24 vectors; enough vectors per
    centroid to train it), between 16 and 65,536; ``coarse`` about ``sqrt(K)``."""
    target = max(n_vectors, 1) ** 0.5 * 4
    k = 2 ** min(16, max(4, round(math.log2(target))))
    most = max(16, 2 ** int(math.log2(max(n_vectors // 8, 1))))  # at least 8 vectors each
    k = min(k, most)
    coarse = 2 ** (int(math.log2(k)) // 2)
    return coarse, k // coarse


class CentroidCandidates:
    """Centroids, the code of every stored vector, and inverted lists centroid -> rows.

    Rows are numbered from 0 in the order they are added. Each row holds ``branches``
    segments of vectors (F, then V); every segment needs at least one valid vector.
    """

    def __init__(
        self,
        coarse: np.ndarray,
        centroids: np.ndarray,
        codes: np.ndarray | None = None,
        segments: np.ndarray | None = None,
        branches: int = 2,
    ) -> None:
        self.coarse = np.ascontiguousarray(coarse, np.float32)
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        if len(self.centroids) % len(self.coarse):
            raise ValueError(f"{len(self.centroids)} centroids for {len(self.coarse)} coarse ones")
        self.fine = len(self.centroids) // len(self.coarse)
        self._half_norms = 0.5 * (self.centroids**2).sum(axis=1)
        dtype = np.uint16 if len(self.centroids) <= 1 << 16 else np.int32
        self.codes = np.asarray(codes if codes is not None else np.empty(0), dtype)
        self.segments = np.asarray(segments if segments is not None else [0], np.int64)
        """Where each row's segments start in ``codes`` (row r, branch b: ``r * branches + b``),
        and the end."""
        self.branches = branches
        if (len(self.segments) - 1) % branches:
            raise ValueError(f"{len(self.segments) - 1} segments for {branches} branches a row")
        self._lists: tuple[np.ndarray, np.ndarray] | None = None

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        coarse: int | None = None,
        fine: int | None = None,
        n_vectors: int | None = None,
        seed: int = 0,
    ) -> CentroidCandidates:
        """Centroids trained on ``sample`` (unit vectors ``[n, D]``); no row yet. ``coarse`` and
        ``fine`` default to ``default_centroids(n_vectors or len(sample))``."""
        import faiss

        sample = np.ascontiguousarray(sample, np.float32)
        default = default_centroids(n_vectors or len(sample))
        coarse, fine = coarse or default[0], fine or default[1]
        if len(sample) < coarse:
            raise ValueError(f"{len(sample)} training vectors for {coarse} coarse centroids")
        top = faiss.Kmeans(
            sample.shape[1], coarse, niter=12, seed=seed, max_points_per_centroid=256
        )
        top.train(sample)
        group = _nearest(sample, top.centroids, 0.5 * (top.centroids**2).sum(axis=1))
        centroids = np.empty((coarse, fine, sample.shape[1]), np.float32)
        for g in range(coarse):
            members = sample[group == g]
            if len(members) <= fine:  # too few to cluster: the members themselves, repeated
                members = members if len(members) else top.centroids[g : g + 1]
                centroids[g] = members[np.arange(fine) % len(members)]
                continue
            inner = faiss.Kmeans(sample.shape[1], fine, niter=10, seed=seed + 1 + g)
            inner.cp.min_points_per_centroid = 1
            inner.train(members)
            centroids[g] = inner.centroids
        return cls(top.centroids, centroids.reshape(coarse * fine, -1))

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The code (nearest centroid, within the nearest coarse cluster) of each vector."""
        codes = np.empty(len(vectors), self.codes.dtype)
        coarse_half = 0.5 * (self.coarse**2).sum(axis=1)
        for lo in range(0, len(vectors), ASSIGN_BLOCK):
            block = np.ascontiguousarray(vectors[lo : lo + ASSIGN_BLOCK], np.float32)
            group = _nearest(block, self.coarse, coarse_half)
            out = np.empty(len(block), np.int64)
            order = np.argsort(group, kind="stable")
            bounds = np.searchsorted(group[order], np.arange(len(self.coarse) + 1))
            for g in np.nonzero(np.diff(bounds))[0].tolist():
                members = order[bounds[g] : bounds[g + 1]]
                span = slice(g * self.fine, (g + 1) * self.fine)
                out[members] = span.start + _nearest(
                    block[members], self.centroids[span], self._half_norms[span]
                )
            codes[lo : lo + len(block)] = out
        return codes

    def add(self, vectors: np.ndarray, mask: np.ndarray, branches: Sequence[slice]) -> None:
        """Append rows: ``vectors`` ``[n, width, D]`` (any float type, e.g. a memory map) and
        ``mask`` ``[n, width]``; ``branches`` are the column ranges of the segments (F, V)."""
        if len(branches) != self.branches:
            raise ValueError(f"{len(branches)} column ranges for {self.branches} branches")
        mask = np.asarray(mask, bool)
        counts = np.stack([mask[:, b].sum(axis=1) for b in branches], axis=1)  # [n, branches]
        if len(mask) and counts.min() == 0:
            row = int(np.nonzero(counts.min(axis=1) == 0)[0][0])
            raise ValueError(f"row {row} of the added vectors has a branch with no valid vector")
        starts = np.concatenate([[0], np.cumsum(counts.ravel())])  # segment after segment
        codes = np.empty(int(starts[-1]), self.codes.dtype)
        for b, columns in enumerate(branches):
            valid = mask[:, columns]
            branch_codes = self.assign(np.asarray(vectors[:, columns])[valid])
            rank = np.arange(len(branch_codes)) - np.repeat(
                np.cumsum(counts[:, b]) - counts[:, b], counts[:, b]
            )  # each code's place within its segment
            codes[np.repeat(starts[b : -1 : self.branches], counts[:, b]) + rank] = branch_codes
        base = self.segments[-1]
        self.codes = np.concatenate([self.codes, codes])
        self.segments = np.concatenate([self.segments, base + starts[1:]])
        self._lists = None  # rebuilt at the next query

    def __len__(self) -> int:
        return (len(self.segments) - 1) // self.branches

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM (codes, offsets, inverted lists, centroids)."""
        list_starts, list_rows = self._inverted_lists()
        arrays = (self.coarse, self.centroids, self.codes, self.segments)
        return sum(a.nbytes for a in arrays) + list_starts.nbytes + list_rows.nbytes

    def _inverted_lists(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts [K + 1], rows)``: the distinct rows holding a code of each centroid."""
        if self._lists is None:
            rows = np.repeat(
                np.arange(len(self), dtype=np.int64), np.diff(self.segments[:: self.branches])
            )
            pairs = np.unique(self.codes.astype(np.int64) * max(len(self), 1) + rows)
            codes, rows = np.divmod(pairs, max(len(self), 1))
            starts = np.searchsorted(codes, np.arange(len(self.centroids) + 1))
            self._lists = (starts.astype(np.int64), rows.astype(np.int32))
        return self._lists

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
        rows, scores = self.scored(query_vectors, query_weights, settings.nprobe, branches)
        return _top(rows, scores, settings.candidates)

    def scored(
        self,
        query_vectors: np.ndarray,
        query_weights: np.ndarray,
        nprobe: int,
        branches: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every probed row (ascending) and its approximate score."""
        vectors, weights = merge_duplicates(
            np.asarray(query_vectors, np.float32), np.asarray(query_weights, np.float32)
        )
        sims = np.ascontiguousarray(self.centroids @ vectors.T)  # [K, J]: a row per centroid
        rows = self._probed(sims, nprobe)
        if len(rows) == 0:
            return rows, np.empty(0, np.float32)
        segment = (rows[:, None] * self.branches + np.arange(self.branches)).ravel()
        lengths = self.segments[segment + 1] - self.segments[segment]
        begins = np.cumsum(lengths) - lengths  # where each segment starts once gathered
        positions = np.arange(int(lengths.sum())) + np.repeat(
            self.segments[segment] - begins, lengths
        )
        gathered = sims[self.codes[positions]]  # [codes of the rows, J]
        best = np.maximum.reduceat(gathered, begins, axis=0)  # [segments, J]: each one's max
        per_branch = (best @ weights).reshape(len(rows), self.branches)
        wanted = list(range(self.branches)) if branches is None else list(branches)
        return rows, per_branch[:, wanted].sum(axis=1)

    def _probed(self, sims: np.ndarray, nprobe: int) -> np.ndarray:
        """The rows in the ``nprobe`` centroids nearest each query vector."""
        starts, list_rows = self._inverted_lists()
        nprobe = min(nprobe, len(sims))
        probed = np.unique(np.argpartition(-sims, nprobe - 1, axis=0)[:nprobe].ravel())
        pieces = [list_rows[starts[c] : starts[c + 1]] for c in probed.tolist()]
        return np.unique(np.concatenate(pieces)).astype(np.int64) if pieces else np.empty(0, int)

    # ---- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write to ``folder`` (made if needed): ``.npy`` arrays, then ``candidates.json``; each
        file is written aside and renamed."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        list_starts, list_rows = self._inverted_lists()
        arrays = dict(
            coarse=self.coarse,
            centroids=self.centroids,
            codes=self.codes,
            segments=self.segments,
            list_starts=list_starts,
            list_rows=list_rows,
        )
        for name, array in arrays.items():
            _replace(folder / f"{name}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
        header = {
            "format": FORMAT,
            "version": VERSION,
            "rows": len(self),
            "branches": self.branches,
        }
        _replace(folder / "candidates.json", lambda f: f.write(json.dumps(header).encode()))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> CentroidCandidates:
        """Read what ``save`` wrote; ValueError naming the file when it is not that."""
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
        arrays = {}
        for name in ARRAYS:
            try:
                arrays[name] = np.load(folder / f"{name}.npy", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ValueError(f"{folder / (name + '.npy')}: unreadable ({error})") from error
        stage = cls(*(arrays[n] for n in ARRAYS[:4]), branches=header["branches"])
        if len(stage) != header["rows"] or stage.segments[-1] != len(stage.codes):
            raise ValueError(
                f"{folder}: {len(stage)} rows and {len(stage.codes)} codes do not "
                f"match the header's {header['rows']} rows"
            )
        stage._lists = (arrays["list_starts"], arrays["list_rows"])
        return stage


@dataclass(frozen=True)
class Calibration:
    """The settings ``calibrate`` chose and what they reached on its sample."""

    settings: CandidateSettings
    recall: float
    """Mean recall@10 (of the exact rerank of the candidates) on the sample."""
    cost: float
    """Mean work per query (``work``), the measure of "cheapest"."""


def calibrate(
    stage: CentroidCandidates,
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
    grid = list(grid or default_grid())
    measured = []
    for settings in grid:
        recalls, costs = [], []
        for (vectors, weights), truth in zip(queries, truths, strict=True):
            rows, scores = stage.scored(vectors, weights, settings.nprobe)
            top = _top(rows, scores, settings.candidates)
            recalls.append(len(np.intersect1d(top, truth)) / len(truth))
            costs.append(work(stage, len(vectors), len(rows), settings, vectors_per_video))
        measured.append(Calibration(settings, float(np.mean(recalls)), float(np.mean(costs))))
    reaching = [m for m in measured if m.recall >= target_recall]
    if reaching:
        return min(reaching, key=lambda m: m.cost)
    return max(measured, key=lambda m: (m.recall, -m.cost))


def default_grid() -> list[CandidateSettings]:
    return [
        CandidateSettings(nprobe=p, candidates=c)
        for p in (1, 2, 4, 8, 16)
        for c in (64, 128, 256, 512, 1024)
    ]


GATHER_COST = 8.0
"""Cost of one gathered similarity relative to one multiply-add of a matrix product (measured
on a 2-core x86 box: random gathers are memory-bound, products are not)."""


def work(
    stage: CentroidCandidates,
    query_vectors: int,
    scored_rows: int,
    settings: CandidateSettings,
    vectors_per_video: float,
) -> float:
    """Multiply-adds (gathers weighted by ``GATHER_COST``) of one query: its similarities to the
    centroids, the centroid interaction of the scored rows, the exact rerank of the
    candidates."""
    dim = stage.centroids.shape[1]
    centroids = len(stage.centroids) * dim * query_vectors
    interaction = GATHER_COST * scored_rows * vectors_per_video * query_vectors
    rerank = min(settings.candidates, scored_rows) * vectors_per_video * query_vectors * dim
    return centroids + interaction + rerank


def _top(rows: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    top = min(count, len(rows))
    if top == 0:
        return rows
    best = np.argpartition(-scores, top - 1)[:top]
    return rows[best[np.argsort(-scores[best], kind="stable")]]


def _nearest(vectors: np.ndarray, centroids: np.ndarray, half_norms: np.ndarray) -> np.ndarray:
    """Index of the nearest (L2) centroid of each vector: ``argmax <x, c> - |c|^2 / 2``."""
    return np.argmax(vectors @ centroids.T - half_norms, axis=1)


def _replace(path: Path, write: Callable) -> None:
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(aside, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(aside, path)
