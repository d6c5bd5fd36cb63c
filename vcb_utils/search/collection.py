"""The collection of an index: its videos' ids, paths and captions, and their stored vectors.

Each run of rows (a saved segment, memory-mapped, or the rows added since the last save, in
RAM) is one ``Part``: a padded fp16 tensor ``[n, max_frames + V width, D]`` (F vectors, then V
vectors) with a bool mask. A block of it is exactly what ``maxsim`` takes, and one video's
vectors are one contiguous read from disk. Saved rows' ids, paths and captions are read from
the catalogue when asked; added rows' are held here until the next save.

A stored vector has an id in the candidate stage: ``row * 2 + branch`` (F 0, V 1); a part's
codes are kept branch by branch, then row by row, then position (``segment_ids``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vcb_utils.branches import branches_of
from vcb_utils.config import ModelConfig
from vcb_utils.model import VideoColBERT, VideoEmbedding
from vcb_utils.search import guard
from vcb_utils.search.catalogue import Catalogue
from vcb_utils.search.engine import BRANCH_IDS

VECTOR_FIELDS = (
    "backbone",
    "mode",
    "max_words",
    "query_expansion",
    "max_frames",
    "n_visual_expansion",
    "temporal_layers",
    "temporal_heads",
    "temporal_width",
    "temporal_mlp_ratio",
)
"""Model config fields that change the vectors or how they are scored: they must match."""
FIELDS = ("F", "F_mask", "V", "V_mask")
"""The stored tensors, in ``VideoEmbedding`` order."""
COLUMNS = ("id", "path", "caption")
"""What the catalogue holds per video, beside its row number."""
JOIN_ROWS = 4096
"""Rows added one call after another are joined into one run while it is shorter than this
(many tiny runs would slow the exact scan; copying long ones would slow every addition)."""
PREFETCH = True
"""Before the rerank reads its candidates' vectors, ask the kernel for all of them at once
(``posix_fadvise(WILLNEED)``): the disk serves them in parallel."""


@dataclass
class Part:
    """A run of rows: ``vectors`` fp16 ``[n, width, D]`` (F then V) and ``mask`` ``[n, width]``.

    ``segment`` names the saved segment in ``folder`` it is memory-mapped from (None: rows
    added since the last save, in RAM). ``codes``: the candidate-stage codes of its vectors
    (``segment_ids`` order) under generation ``codes_generation``, when held in RAM.
    """

    vectors: torch.Tensor
    mask: torch.Tensor
    segment: str | None = None
    folder: Path | None = None
    codes: np.ndarray | None = None
    codes_generation: str | None = None
    arrays: tuple = field(default=(), repr=False)
    """The memory maps behind a saved part (kept open while it is used)."""

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def nbytes(self) -> int:
        return self.vectors.numel() * 2 + self.mask.numel()


def branch_columns(branch: str, frames: int) -> slice:
    """Where a branch's vectors sit in a stored row: F first, then V."""
    return slice(0, frames) if branch == "F" else slice(frames, None)


def vector_ids(rows: np.ndarray, branch: str) -> np.ndarray:
    """The candidate-stage ids of vectors of ``rows`` in ``branch`` (``F`` or ``V``)."""
    return np.asarray(rows, dtype=np.int64) * 2 + BRANCH_IDS[branch]


def segment_ids(mask: np.ndarray, branches: Sequence[str], frames: int) -> np.ndarray:
    """Ids of the valid vectors of rows ``0..n-1`` (``mask`` ``[n, width]``), in the order
    codes are stored: branch by branch, then row by row, then position."""
    parts = []
    for branch in branches:
        rows = np.nonzero(np.asarray(mask[:, branch_columns(branch, frames)]))[0]
        parts.append(vector_ids(rows, branch))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class Collection:
    """Ids, paths, captions and stored vectors of N videos, in row order."""

    def __init__(self, model_config: ModelConfig | dict, framerate: float) -> None:
        config = asdict(model_config) if isinstance(model_config, ModelConfig) else model_config
        if config["mode"] == "meanP":
            raise ValueError("mode 'meanP' (a single-vector baseline) has no F/V vectors to index")
        self.config = json.loads(json.dumps(config))  # JSON types, as after a round trip
        self.framerate = float(framerate)
        if not (math.isfinite(self.framerate) and self.framerate > 0):
            raise ValueError(f"framerate must be a finite number above 0, not {framerate!r}")
        self.branches = tuple(b for b in branches_of(self.config["mode"]) if b != "both")
        """The score branches stored (``F``, ``V`` or both), in row order."""
        self.frames = int(self.config["max_frames"])
        self.v_width = self.frames + int(self.config["n_visual_expansion"])
        self.width = self.frames + (self.v_width if "V" in self.branches else 0)
        self.parts: list[Part] = []
        self.checksums: dict[str, dict[str, int]] = {}
        self.saved_rows = 0
        self.pending: dict[str, list[str]] = {name: [] for name in COLUMNS}
        """Ids, paths and captions of the rows added since the last save."""
        self.columns: dict[str, list[str]] = {}
        """Saved columns read from the catalogue (read once, when first asked)."""
        self.known_ids: set[str] | None = None
        self.catalogue: Catalogue | None = None
        self.origin: tuple[Path, str, int] | None = None
        """(folder, version, rows) of the last load or save: the first ``rows`` are saved there."""

    # ---- adding ------------------------------------------------------------------------------
    def checked_part(
        self,
        embedding: VideoEmbedding,
        ids: Sequence[str],
        paths: Sequence[str] | None,
        captions: Sequence[str] | None,
    ) -> tuple[Part, dict[str, list[str]]]:
        """The rows ``embedding`` would add and their columns, checked against the collection
        (ValueError, nothing added): counts, ids, vector size, vectors per video, dtypes and
        finite values; vectors that are not unit vectors give a warning."""
        ids = strings(ids, "ids")
        paths = [""] * len(ids) if paths is None else strings(paths, "paths")
        captions = [""] * len(ids) if captions is None else strings(captions, "captions")
        count = embedding.F.shape[0]
        if not len(ids) == len(paths) == len(captions) == count:
            raise ValueError(
                f"{count} videos but {len(ids)} ids, {len(paths)} paths and "
                f"{len(captions)} captions"
            )
        known = self.id_set()
        repeated = {i for i in ids if i in known} | _repeated(ids)
        if repeated:
            raise ValueError(f"duplicate video ids: {sorted(repeated)[:5]}")
        if (embedding.V is None) != ("V" not in self.branches):
            raise ValueError(f"mode {self.config['mode']!r} and the embedding's V set disagree")
        guard.check_embedding(embedding, (self.frames, self.v_width), self.dim)
        vectors, mask = self._stored(embedding)
        guard.check_values(vectors, mask)
        return Part(vectors, mask), {"id": ids, "path": paths, "caption": captions}

    def append(self, part: Part, columns: dict[str, list[str]]) -> None:
        """Add ``part`` after the rows; small runs of added rows are joined into one."""
        self._append_part(part)
        for name in COLUMNS:
            self.pending[name] += columns[name]
        self.id_set().update(columns["id"])

    def _append_part(self, part: Part) -> None:
        last = self.parts[-1] if self.parts else None
        if last is None or last.segment is not None or len(last) >= JOIN_ROWS:
            self.parts.append(part)
            return
        if (last.codes is None) != (part.codes is None) or (
            last.codes_generation != part.codes_generation
        ):
            self.parts.append(part)
            return
        joined = Part(torch.cat([last.vectors, part.vectors]), torch.cat([last.mask, part.mask]))
        if last.codes is not None:
            joined.codes = self.join_codes([last.codes, part.codes], [last, part])
            joined.codes_generation = last.codes_generation
        self.parts[-1] = joined

    def _stored(self, embedding: VideoEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        """fp16 vectors ``[n, width, D]`` (F then V, padded) and their bool mask."""
        f, f_mask = _pad(embedding.F, embedding.F_mask, self.frames)
        if embedding.V is None:
            return f.contiguous(), f_mask.contiguous()
        v, v_mask = _pad(embedding.V, embedding.V_mask, self.v_width)
        return torch.cat([f, v], dim=1), torch.cat([f_mask, v_mask], dim=1)

    def use_saved(
        self, parts: list[Part], checksums: dict[str, dict[str, int]], catalogue: Catalogue
    ) -> None:
        """Hold a saved version: its segments (``parts``), their checksums and its catalogue."""
        self.parts = parts
        self.checksums = checksums
        self.saved_rows = catalogue.rows
        self.pending = {name: [] for name in COLUMNS}
        self.columns = {}
        self.known_ids = None
        self.catalogue = catalogue

    # ---- ids, paths, captions ----------------------------------------------------------------
    def __len__(self) -> int:
        return self.saved_rows + len(self.pending["id"])

    def column(self, name: str) -> list[str]:
        """Every video's ``id``, ``path`` or ``caption``, in row order."""
        return self.saved_column(name) + self.pending[name]

    def saved_column(self, name: str) -> list[str]:
        if self.saved_rows == 0:
            return []
        if name not in self.columns:
            self.columns[name] = self.catalogue.column(name)
        return list(self.columns[name])

    def id_set(self) -> set[str]:
        if self.known_ids is None:
            self.known_ids = set(self.column("id"))
        return self.known_ids

    def records(self, rows: Sequence[int]) -> list[dict]:
        """``{"row", "id", "path", "caption"}`` of each of ``rows``; saved rows are read from
        the catalogue (only those rows), unless its columns are already in memory."""
        rows = [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < len(self):
                raise IndexError(f"row {r} is not in an index of {len(self)} videos")
        saved = [r for r in rows if r < self.saved_rows]
        if not saved:
            found = {}
        elif all(name in self.columns for name in COLUMNS):
            found = {r: {k: self.columns[k][r] for k in COLUMNS} for r in saved}
        else:
            found = dict(zip(saved, self.catalogue.take(saved), strict=True))
        out = []
        for r in rows:
            if r < self.saved_rows:
                record = found[r]
            else:
                record = {k: v[r - self.saved_rows] for k, v in self.pending.items()}
            out.append({"row": r, **{k: record[k] for k in COLUMNS}})
        return out

    # ---- the stored vectors --------------------------------------------------------------------
    def field(self, name: str) -> torch.Tensor | None:
        """One of ``FIELDS`` for the whole collection (None: V of an F-only index)."""
        if name in ("V", "V_mask") and "V" not in self.branches:
            return None
        columns = branch_columns(name[0], self.frames)
        pieces = [
            (part.mask if name.endswith("mask") else part.vectors)[:, columns]
            for part in self.parts
        ]
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces)

    @property
    def dim(self) -> int | None:
        return self.parts[0].vectors.shape[-1] if self.parts else None

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def read_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored vectors and mask of ``rows`` (any order), read from their parts.

        The rows of each part are read in ascending order, straight into their places in the
        result: a saved part's vectors with ``pread`` (``read_file_rows``), others gathered
        with numpy (several times faster than torch's indexing and ``cat`` of fp16: 24 ms ->
        5 ms for 1,024 candidates at 26 x 512)."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        first = self.parts[0]
        vectors = np.empty((len(rows), *first.vectors.shape[1:]), np.float16)
        mask = np.empty((len(rows), *first.mask.shape[1:]), bool)
        start = 0
        for part in self.parts:
            stop = start + len(part)
            lo, hi = np.searchsorted(sorted_rows, [start, stop])
            if hi > lo:
                local = sorted_rows[lo:hi] - start
                stored, valid = part.arrays or (part.vectors.numpy(), part.mask.numpy())
                if not read_file_rows(stored, local, vectors, order[lo:hi]):
                    vectors[order[lo:hi]] = stored[local]
                mask[order[lo:hi]] = valid[local]
            start = stop
        return torch.from_numpy(vectors), torch.from_numpy(mask)

    def branch_counts(self, part: Part) -> list[int]:
        """Valid vectors of ``part`` in each branch."""
        return [int(part.mask[:, branch_columns(b, self.frames)].sum()) for b in self.branches]

    def vector_count(self, part: Part | None = None) -> int:
        """Valid vectors of ``part`` (None: of the whole collection)."""
        parts = self.parts if part is None else [part]
        return sum(sum(self.branch_counts(p)) for p in parts)

    def part_ids(self, part: Part, start: int) -> np.ndarray:
        """Candidate-stage ids of the vectors of ``part`` (whose first row is ``start``)."""
        return segment_ids(part.mask.numpy(), self.branches, self.frames) + 2 * start

    def join_codes(self, codes: Sequence[np.ndarray], parts: Sequence[Part]) -> np.ndarray:
        """The codes of consecutive ``parts`` (``codes[i]`` those of ``parts[i]``) stored as
        one run of rows: branch by branch, then row."""
        runs = [
            np.split(c, np.cumsum(self.branch_counts(p))[:-1])
            for c, p in zip(codes, parts, strict=True)
        ]
        if len(runs) == 1:
            return np.concatenate(runs[0])
        return np.concatenate([c for branch in zip(*runs, strict=True) for c in branch])

    def check_model(self, model: VideoColBERT, source: str = "the index") -> None:
        """ValueError naming every vector-changing config field where ``model`` differs."""
        current = asdict(model.cfg)
        diffs = [
            f"{name}: index {self.config.get(name)!r}, model {current[name]!r}"
            for name in VECTOR_FIELDS
            if self.config.get(name) != current[name]
        ]
        if diffs:
            raise ValueError(f"{source} was built with another model config: " + "; ".join(diffs))


def strings(values: Sequence[str | Path], what: str) -> list[str]:
    """``values`` as strings; TypeError for one string, which would be split into characters."""
    if isinstance(values, (str, bytes, Path)):
        raise TypeError(f"{what} must be a list of strings, not the single value {values!r}")
    return [str(value) for value in values]


def read_file_rows(array: np.ndarray, rows: np.ndarray, out: np.ndarray, places) -> bool:
    """Read ``rows`` (ascending) of the memory-mapped ``.npy`` ``array`` into ``out[places]``
    with ``pread``, after asking for all of them at once (``PREFETCH``); False, reading
    nothing, where ``array`` maps no file or the platform lacks ``preadv``.

    Read through the file, not the map, the rows stay in the page cache and out of this
    process: its resident memory does not grow with every video it has searched (a million
    videos: 3.7 GB of mapped pages after 50 queries at 4,096 candidates)."""
    filename = getattr(array, "filename", None)
    if filename is None or not hasattr(os, "preadv") or not len(rows):
        return False
    row_bytes = array[0].nbytes
    offsets = [array.offset + row * row_bytes for row in rows.tolist()]
    descriptor = os.open(filename, os.O_RDONLY)
    try:
        if PREFETCH and hasattr(os, "posix_fadvise"):
            for offset in offsets:
                os.posix_fadvise(descriptor, offset, row_bytes, os.POSIX_FADV_WILLNEED)
        for place, offset in zip(np.asarray(places).tolist(), offsets, strict=True):
            if os.preadv(descriptor, [out[place]], offset) != row_bytes:
                raise ValueError(f"{filename} is cut short: no whole row at byte {offset}")
    finally:
        os.close(descriptor)
    return True


def _pad(vectors: torch.Tensor, mask: torch.Tensor, width: int) -> tuple:
    if vectors.shape[1] > width:
        raise ValueError(f"{vectors.shape[1]} vectors per video; the model config allows {width}")
    vectors, mask = vectors.detach().to("cpu", torch.float16), mask.to("cpu", torch.bool)
    extra = width - vectors.shape[1]
    if extra == 0:
        return vectors, mask
    return F.pad(vectors, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _repeated(values: Sequence[str]) -> set[str]:
    seen, repeated = set(), set()
    for value in values:
        (repeated if value in seen else seen).add(value)
    return repeated
