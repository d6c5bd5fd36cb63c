"""A searchable collection of encoded videos: encode once, save, load, search by text.

``VideoIndex`` keeps, for N videos, their ids, paths and captions, the F vectors (one per
frame) and the V vectors (contextualised frames + visual expansion tokens) in fp16, and the
model config they were built with. ``search`` ranks videos by MMS_F + MMS_V (or one branch)
and returns the hits with the token x vector similarities a heatmap draws.

Two ways to find the top-k:

- **exact** (``exact=True``, and always for small collections): every video is scored with
  ``vcb_utils.scoring.maxsim``, block by block with a running top-k, so memory stays bounded.
  The cost grows with N: seconds per query at 100k videos on a CPU.
- **two-stage** (once a candidate index is built: ``build_ann``, or ``save`` from
  ``ANN_MIN_VIDEOS`` videos on): (1) candidates: the approximate nearest stored vectors of
  every query vector, from compressed codes held in RAM (``vcb_utils.ann``, faiss IVF-PQ
  fast-scan), mapped to videos and ranked by an approximate score; (2) rerank: the exact
  ``MMS_F + MMS_V`` of the ``candidates`` best, from the full fp16 vectors, memory-mapped from
  disk. The scores returned are always exact; only which videos are scored is approximate.
  ``settings`` (``nprobe``, ``hits_per_vector``, ``candidates``) trade recall for speed; a
  budget of ``candidates >= len(index)`` scores everything, as the exact search does.

Layout in memory: each run of rows (a saved segment, memory-mapped, or the rows added since
the last save, in RAM) is one padded fp16 tensor ``[n, max_frames + V width, D]`` (F vectors,
then V vectors) with a bool mask: a block of it is exactly what ``maxsim`` takes, and one
video's vectors are one contiguous read from disk.

On disk (format version 4, see ``vcb_utils.index_store``): a pointer file, one manifest per
version, immutable vector segments, a LanceDB catalogue (row, id, path, caption) and the
candidate index's codes. A save never changes a file that a reader may be reading; killed at
any point it leaves the previous version current. Two processes may load, add to and save one
folder at once: see ``VideoIndex.save``. Formats 2 and 3 still load; saving converts them.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import numbers
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vcb_utils import index_cleanup as cleanup
from vcb_utils import index_guard as guard
from vcb_utils import index_store as store
from vcb_utils.ann import (
    TRAIN_POINTS_PER_LIST,
    CandidateIndex,
    SearchSettings,
    approximate_scores,
    branch_columns,
    default_nlist,
    default_settings,
    faiss_threads,
    merge_duplicates,
    segment_ids,
    vector_ids,
)
from vcb_utils.cache import FrameCache
from vcb_utils.config import VALUE_ALIASES, ModelConfig
from vcb_utils.datasets import VideoDataset
from vcb_utils.encode import encode_videos, failed_videos
from vcb_utils.index_store import REBUILD, Current, Manifest
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding
from vcb_utils.scoring import maxsim, token_shares, token_similarities
from vcb_utils.storage import LOCK_FILE, folder_lock
from vcb_utils.video import VideoRef

log = logging.getLogger(__name__)

Branch = Literal["both", "F", "V"]
BRANCHES = ("both", "F", "V")
"""Rank by MMS_F + MMS_V, MMS_F or MMS_V (``spatial``/``temporal``: old names of F/V)."""

FORMAT = store.FORMAT
VERSION = store.VERSION
DEFAULT_BLOCK_VIDEOS = 128
"""Videos per step of the exact scan (7 MB as fp32 at 26 x 512 per video): small blocks stay
in cache and reuse their buffers, the fastest on CPU in ``benchmarks/bench_search.py``."""
ANN_MIN_VIDEOS = 5000
"""``save`` builds the candidate index (two-stage search) once an index has this many videos;
below it the exact scan takes a few tens of milliseconds."""
ENCODE_BLOCK_VIDEOS = 4096
"""Videos whose vectors are compressed at once by ``build_ann`` (about 50 MB as fp32)."""
JOIN_ROWS = 4096
"""Rows added one call after another are joined into one run while it is shorter than this
(many tiny runs would slow the exact scan; copying long ones would slow every addition)."""
PREFETCH = True
"""Before the rerank reads its candidates' vectors, ask the kernel for all of them at once
(``madvise(MADV_WILLNEED)``): the disk serves them in parallel."""
SEARCH_THREADS = 1
"""Threads of the two-stage search (faiss and torch): one query is little work, and more
threads only add synchronisation (on a busy 2-core machine, 2-40x slower with 2 threads)."""
GROWTH_WARNING = 8
"""``save`` warns when an index holds this many times the videos its candidate index was
trained on: the coarse lists are then too few and too long (``build_ann`` retrains)."""

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

PAD_TOKEN = "<pad>"
FIELDS = ("F", "F_mask", "V", "V_mask")
"""The stored tensors, in ``VideoEmbedding`` order."""


@dataclass
class Hit:
    """One retrieved video (``rank`` 1 = best, ``row`` in the index) and its heatmap data.

    ``sim_f`` is ``[query vectors, valid frames]``; ``sim_v`` is ``[query vectors, valid V]``
    whose columns are the valid contextualised frames in order, then the expansion tokens.
    A branch the model does not use has None scores and matrix.
    """

    rank: int
    row: int
    id: str
    path: str
    score_total: float
    score_f: float | None
    score_v: float | None
    sim_f: torch.Tensor | None
    sim_v: torch.Tensor | None
    caption: str = ""


@dataclass
class QueryResult:
    """The hits of one query, ranked by ``branch``; ``tokens`` label the rows of the matrices."""

    query: str
    branch: Branch
    tokens: list[str]
    expansion: list[bool]
    """True for the rows of query-expansion (pad) positions."""
    hits: list[Hit]

    def hit(self, rank: int) -> Hit:
        """The hit at ``rank`` (1 = best); ValueError when there is no such rank."""
        if not 1 <= rank <= len(self.hits):
            raise ValueError(f"rank {rank} is not among the {len(self.hits)} hits")
        return self.hits[rank - 1]


@dataclass
class _Part:
    """A run of rows: ``vectors`` fp16 ``[n, width, D]`` (F then V) and ``mask`` ``[n, width]``.

    ``segment`` names the saved segment in ``folder`` it is memory-mapped from (None: rows
    added since the last save, in RAM). ``codes``: the candidate-index codes of its vectors
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


class VideoIndex:
    """F and V vectors (fp16, padded, with masks), ids, paths and captions of N encoded videos."""

    def __init__(
        self,
        model_config: ModelConfig | dict,
        embedding: VideoEmbedding,
        ids: Sequence[str],
        paths: Sequence[str] | None = None,
        *,
        framerate: float = 1.0,
        captions: Sequence[str] | None = None,
    ) -> None:
        self._setup(model_config, framerate)
        self.add_embeddings(embedding, ids, paths, captions=captions)

    def _setup(self, model_config: ModelConfig | dict, framerate: float) -> None:
        config = asdict(model_config) if isinstance(model_config, ModelConfig) else model_config
        if config["mode"] == "meanP":
            raise ValueError("mode 'meanP' (a single-vector baseline) has no F/V vectors to index")
        self.config = json.loads(json.dumps(config))  # JSON types, as after a round trip
        self.framerate = float(framerate)
        if not (math.isfinite(self.framerate) and self.framerate > 0):
            raise ValueError(f"framerate must be a finite number above 0, not {framerate!r}")
        self.settings = SearchSettings()
        """Two-stage search settings (``nprobe``, ``hits_per_vector``, ``candidates``)."""
        self._frames = int(self.config["max_frames"])
        self._has_v = self.config["mode"] != "F"
        self._width = self._frames + (
            self._frames + int(self.config["n_visual_expansion"]) if self._has_v else 0
        )
        self._parts: list[_Part] = []
        self._checksums: dict[str, dict[str, int]] = {}
        self._saved_rows = 0
        self._pending: dict[str, list[str]] = {"id": [], "path": [], "caption": []}
        self._columns: dict[str, list[str]] = {}
        self._known_ids: set[str] | None = None
        self._catalogue: store.Catalogue | None = None
        self._ann: CandidateIndex | None = None
        self._ann_fresh = False  # built here and not saved yet
        self._ann_trained_rows = 0
        # (folder, version, rows) of the last load or save: the first `rows` are saved there
        self._origin: tuple[Path, str, int] | None = None

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: VideoColBERT,
        paths: Sequence[str | Path],
        ids: Sequence[str] | None = None,
        *,
        framerate: float = 1.0,
        batch_size: int = 16,
        num_workers: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        cache_dir: str | Path | None = None,
        captions: Sequence[str] | None = None,
    ) -> VideoIndex:
        """Encode videos once (progress bar). Ids default to the file names without suffix.

        An unreadable file raises ``VideoReadError`` naming it, or with ``on_error="skip"`` is
        left out with a warning that lists the files (each cause is logged as it happens).
        ``cache_dir``: decoded frames are read from (and added to) this frame cache. For a
        large collection on several processes, resumable, see ``vcb_utils.index_build``.
        """
        paths, ids = _names(paths, "paths"), None if ids is None else _names(ids, "ids")
        embedding, ids, paths, captions = _encode_files(
            model, paths, ids, captions, framerate, batch_size, num_workers, on_error, cache_dir
        )
        return cls(model.cfg, embedding, ids, paths, framerate=framerate, captions=captions)

    def add(
        self,
        model: VideoColBERT,
        paths: Sequence[str | Path],
        ids: Sequence[str] | None = None,
        *,
        batch_size: int = 16,
        num_workers: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        cache_dir: str | Path | None = None,
        captions: Sequence[str] | None = None,
    ) -> None:
        """Encode more videos (at the index's framerate) and append them."""
        self.check_model(model)
        paths, ids = _names(paths, "paths"), None if ids is None else _names(ids, "ids")
        embedding, ids, paths, captions = _encode_files(
            model,
            paths,
            ids,
            captions,
            self.framerate,
            batch_size,
            num_workers,
            on_error,
            cache_dir,
        )
        self.add_embeddings(embedding, ids, paths, captions=captions)

    def add_embeddings(
        self,
        embedding: VideoEmbedding,
        ids: Sequence[str],
        paths: Sequence[str] | None = None,
        *,
        captions: Sequence[str] | None = None,
    ) -> None:
        """Append precomputed vectors (float, any device; bool masks; stored fp16 on the CPU).

        Checked against the index first (ValueError, nothing added): vector size, vectors per
        video, dtypes and finite values; vectors that are not unit vectors give a warning.
        """
        ids = _names(ids, "ids")
        paths = [""] * len(ids) if paths is None else _names(paths, "paths")
        captions = [""] * len(ids) if captions is None else _names(captions, "captions")
        count = embedding.F.shape[0]
        if not len(ids) == len(paths) == len(captions) == count:
            raise ValueError(
                f"{count} videos but {len(ids)} ids, {len(paths)} paths and "
                f"{len(captions)} captions"
            )
        known = self._id_set()
        repeated = {i for i in ids if i in known} | _repeated(ids)
        if repeated:
            raise ValueError(f"duplicate video ids: {sorted(repeated)[:5]}")
        if (embedding.V is None) != (self.config["mode"] == "F"):
            raise ValueError(f"mode {self.config['mode']!r} and the embedding's V set disagree")
        v_width = self._frames + int(self.config["n_visual_expansion"])
        guard.check_embedding(embedding, (self._frames, v_width), self._dim())
        vectors, mask = self._stored(embedding)
        guard.check_values(vectors, mask)
        start = len(self)
        part = _Part(vectors, mask)
        if self._ann is not None and count:  # encoded now: the new videos are found at once
            part.codes = self._encode(self._ann, part, first_row=start)
            part.codes_generation = self._ann.generation
        self._append_pending(part)
        for name, values in (("id", ids), ("path", paths), ("caption", captions)):
            self._pending[name] += values
        known.update(ids)

    def _append_pending(self, part: _Part) -> None:
        """Add ``part`` after the rows; small runs of added rows are joined into one."""
        last = self._parts[-1] if self._parts else None
        if last is None or last.segment is not None or len(last) >= JOIN_ROWS:
            self._parts.append(part)
            return
        if (last.codes is None) != (part.codes is None) or (
            last.codes_generation != part.codes_generation
        ):
            self._parts.append(part)
            return
        joined = _Part(torch.cat([last.vectors, part.vectors]), torch.cat([last.mask, part.mask]))
        if last.codes is not None:
            joined.codes = self._join_codes([last, part])
            joined.codes_generation = last.codes_generation
        self._parts[-1] = joined

    def __len__(self) -> int:
        return self._saved_rows + len(self._pending["id"])

    @property
    def ids(self) -> list[str]:
        """Every video's id, in row order."""
        return self._saved_column("id") + self._pending["id"]

    @property
    def paths(self) -> list[str]:
        """Every video's path ("" when none was given), in row order."""
        return self._saved_column("path") + self._pending["path"]

    @property
    def captions(self) -> list[str]:
        """Every video's caption ("" when none was given), in row order."""
        return self._saved_column("caption") + self._pending["caption"]

    def _saved_column(self, name: str) -> list[str]:
        if self._saved_rows == 0:
            return []
        if name not in self._columns:
            self._columns[name] = self._catalogue.column(name)
        return list(self._columns[name])

    def _id_set(self) -> set[str]:
        if self._known_ids is None:
            self._known_ids = set(self.ids)
        return self._known_ids

    def records(self, rows: Sequence[int]) -> list[dict]:
        """``{"row", "id", "path", "caption"}`` of each of ``rows``; saved rows are read from
        the catalogue (only those rows), unless its columns are already in memory."""
        rows = [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < len(self):
                raise IndexError(f"row {r} is not in an index of {len(self)} videos")
        saved = [r for r in rows if r < self._saved_rows]
        if not saved:
            found = {}
        elif all(name in self._columns for name in self._pending):
            found = {r: {k: self._columns[k][r] for k in self._pending} for r in saved}
        else:
            found = dict(zip(saved, self._catalogue.take(saved), strict=True))
        out = []
        for r in rows:
            if r < self._saved_rows:
                record = found[r]
            else:
                record = {k: v[r - self._saved_rows] for k, v in self._pending.items()}
            out.append(
                {"row": r, "id": record["id"], "path": record["path"], "caption": record["caption"]}
            )
        return out

    # ---- the stored vectors ----------------------------------------------------------------------
    def _stored(self, embedding: VideoEmbedding) -> tuple[torch.Tensor, torch.Tensor]:
        """fp16 vectors ``[n, width, D]`` (F then V, padded) and their bool mask."""
        v_width = self._frames + int(self.config["n_visual_expansion"])
        f, f_mask = _pad(embedding.F, embedding.F_mask, self._frames)
        if embedding.V is None:
            return f.contiguous(), f_mask.contiguous()
        v, v_mask = _pad(embedding.V, embedding.V_mask, v_width)
        return torch.cat([f, v], dim=1), torch.cat([f_mask, v_mask], dim=1)

    def _field(self, name: str) -> torch.Tensor | None:
        if name in ("V", "V_mask") and not self._has_v:
            return None
        columns = slice(0, self._frames) if name.startswith("F") else slice(self._frames, None)
        pieces = [
            (part.mask if name.endswith("mask") else part.vectors)[:, columns]
            for part in self._parts
        ]
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces)

    F = property(lambda self: self._field("F"), doc="F vectors ``[N, max_frames, D]`` (fp16)")
    F_mask = property(lambda self: self._field("F_mask"), doc="valid frames ``[N, max_frames]``")
    V = property(lambda self: self._field("V"), doc="V vectors ``[N, max_frames + E, D]`` or None")
    V_mask = property(lambda self: self._field("V_mask"), doc="valid V vectors or None")
    """The whole collection as tensors (memory-mapped when it is one saved segment, else
    copied): for small indexes and tests; search reads only what it scores."""

    def _dim(self) -> int | None:
        return self._parts[0].vectors.shape[-1] if self._parts else None

    @property
    def nbytes(self) -> int:
        """Bytes of the stored vectors and masks (on disk once saved)."""
        return sum(p.vectors.numel() * 2 + p.mask.numel() for p in self._parts)

    def _rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored vectors and mask of ``rows`` (any order), read from their parts."""
        order = torch.argsort(rows)
        sorted_rows = rows[order]
        vectors, masks, start = [], [], 0
        for part in self._parts:
            stop = start + len(part)
            lo, hi = torch.searchsorted(sorted_rows, torch.tensor([start, stop]))
            if hi > lo:
                local = sorted_rows[lo:hi] - start
                if PREFETCH and part.arrays:
                    _prefetch(part.arrays[0], local.tolist())
                vectors.append(part.vectors[local])
                masks.append(part.mask[local])
            start = stop
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(vectors)[inverse], torch.cat(masks)[inverse]

    # ---- saving and loading --------------------------------------------------------------------
    def save(self, directory: str | Path, *, auto_ann: bool = True) -> Path:
        """Save as a new version of the index in ``directory`` (made if needed); return it.

        Nothing that another process saved there is lost: holding the folder's lock, ``save``
        reads the current version again, then

        - if this index was loaded from (or last saved to) ``directory``, appends the videos
          added here since to that version, which may hold videos that others added meanwhile;
          this index then holds the merged collection;
        - otherwise replaces that version, unless it holds an id that this index lacks.

        Those two errors (an id added both here and by another process, or an id this index
        lacks) are a ValueError, and nothing is written; so are a ``directory`` that holds
        other files and is not an index, and one that is, is inside or contains the folder of
        a video. A save that fails (a full disk: OSError saying how much space it needs) leaves
        the previous version current and this index as it was. From ``ANN_MIN_VIDEOS`` videos
        on, an index without a candidate index gets one (``build_ann``), saved as a further
        version, unless ``auto_ann=False`` (a bulk build that trains it once at the end).
        """
        directory = Path(directory)
        self._check_folder(directory)
        directory.mkdir(parents=True, exist_ok=True)
        store.check_not_forked(directory)
        with folder_lock(directory):
            current = store.current_version(directory)
            base = store.read_manifest(directory, current.name) if _is_v4(current) else None
            cleanup.finish_interrupted(directory, current, base)
            append = self._check_save(directory, current, base)
            # whether the new version's rows are this index's, at the same row numbers
            same_rows = not append or self._origin == (
                directory.resolve(),
                current.name,
                base.count,
            )
            name = store.next_version_name(current)
            planned = self._plan(directory, base if append else None)
            journal = cleanup.Journal(
                version=name,
                replaces=current.name if current else None,
                replaces_layout=current.layout if current else None,
                segments=[segment for segment, _ in planned],
                generation=self._ann.generation if self._ann is not None else None,
                new_catalogue=not store.catalogue_exists(directory),
            )
            cleanup.write_journal(directory, journal)
            try:
                manifest, parts, kept_ann = self._write_version(
                    directory, journal, planned, base, append, same_rows
                )
            except Exception:
                cleanup.finish_interrupted(directory, current, base)  # what it wrote goes
                raise
            cleanup.remove_replaced(directory, journal, manifest)
            self._reopen(directory, name, manifest, parts, kept_ann, same_rows)
        if auto_ann and self._ann is None and len(self) >= ANN_MIN_VIDEOS:
            log.info("%d videos: building the candidate index for two-stage search", len(self))
            self.build_ann()
            self.save(directory)
        elif self._ann is not None and self._growth() >= GROWTH_WARNING:
            warnings.warn(
                f"{directory}: {len(self)} videos, {self._growth():.0f}x "
                "those the candidate index was trained on: retrain it for recall and speed "
                "(index.build_ann(); index.save(...), or `python -m vcb_utils.index_cli "
                "reindex`)",
                stacklevel=2,
            )
        return directory

    def _growth(self) -> float:
        """Videos now per video the candidate index was trained on."""
        return len(self) / max(self._ann_trained_rows, 1)

    def _check_folder(self, directory: Path) -> None:
        """Refuse a folder that holds other files than an index, or the videos' folder."""
        ours = self._origin is not None and self._origin[0] == directory.resolve()
        paths = self._pending["path"] if ours else self.paths
        guard.check_apart_from_videos(directory, guard.video_folders(paths))
        unfinished = (directory / cleanup.JOURNAL_FILE).is_file()
        if not unfinished and store.current_version(directory) is None:
            guard.check_empty_or_index(directory, {LOCK_FILE})

    def _plan(self, directory: Path, base: Manifest | None) -> list[tuple[str, list[_Part]]]:
        """The new segments of a save (appending to ``base``): their names and the parts each
        holds (saved parts of another folder are copied one segment each, added rows as one)."""
        groups = _groups([p for p in self._parts if p.segment is None] if base else self._parts)
        names = store.next_segment_names(directory, [s for s, _ in base.segments] if base else [])
        return [(next(names), group) for group in groups]

    def _write_version(
        self,
        directory: Path,
        journal: cleanup.Journal,
        planned: list[tuple[str, list[_Part]]],
        base: Manifest | None,
        append: bool,
        same_rows: bool,
    ) -> tuple[Manifest, list[_Part], bool]:
        """Write the version ``journal`` names, check that it opens, and make it current;
        return its manifest, its parts and whether this index's candidate index is its."""
        written = [p for _, group in planned for p in group]
        needed = sum(p.vectors.numel() * 2 + p.mask.numel() for p in written)
        if self._ann is not None:
            needed += sum(self._vector_count(p) for p in self._parts) * self._ann.code_size
        with store.disk_space(directory, needed):
            manifest = self._write(directory, planned, base if append else None, base)
            kept_ann = self._write_ann(directory, base if append else None, manifest, same_rows)
            parts = self._open_parts(directory.resolve(), manifest, journal.version, self._dim())
            store.write_manifest(directory, journal.version, manifest)
            store.write_pointer(directory, journal.version)
        return manifest, parts, kept_ann

    def _check_save(self, directory: Path, current: Current | None, base: Manifest | None) -> bool:
        """Whether this save appends to ``base`` (else it replaces); ValueError if it would lose
        or duplicate videos."""
        here = directory.resolve()
        ours = self._origin is not None and self._origin[0] == here
        if current is None:
            return False
        if ours and self._origin[1] == current.name:
            return base is not None  # nothing saved since this index was (format 2/3: convert)
        saved_ids = _saved_ids(directory, current, base)
        if not ours:
            lost = set(saved_ids).difference(self._id_set())
            if lost:
                raise ValueError(
                    f"{directory} holds {len(lost)} videos that this index lacks "
                    f"({sorted(lost)[:5]}): saving would lose them. Add to VideoIndex.load("
                    f"{str(directory)!r}) instead, or save to another folder"
                )
            return False
        if base is None or (base.model, base.framerate) != (self.config, self.framerate):
            raise ValueError(
                f"{directory} was saved with another model config or framerate since this "
                "index was loaded from it: load it again"
            )
        repeated = set(self._pending["id"]).intersection(saved_ids)
        if repeated:
            raise ValueError(f"duplicate video ids: {sorted(repeated)[:5]}")
        return True

    def _write(
        self,
        directory: Path,
        planned: list[tuple[str, list[_Part]]],
        base: Manifest | None,
        replaced: Manifest | None,
    ) -> Manifest:
        """Write the ``planned`` segments and the catalogue rows of the new version (appending
        to ``base``, or replacing ``replaced``); return its manifest (``_write_ann`` adds the
        candidate index)."""
        segments = list(base.segments) if base else []
        checksums = dict(base.checksums) if base else {}
        first_row = base.count if base else 0
        self._written: dict[str, list[_Part]] = {}  # new segment -> the parts it holds
        for name, group in planned:
            checksums[name] = store.write_segment(
                directory,
                name,
                [_numpy(p.vectors) for p in group],
                [_numpy(p.mask) for p in group],
            )
            rows = sum(len(p) for p in group)
            segments.append((name, rows))
            self._written[name] = group
        if base:
            new = {k: v for k, v in self._pending.items()}
        else:
            new = {k: self._saved_column(k) + v for k, v in self._pending.items()}
        catalogue = store.commit_catalogue(
            directory,
            first_row,
            new["id"],
            new["path"],
            new["caption"],
            base.catalogue if base else None,
            keep=replaced.catalogue if replaced else None,
        )
        return Manifest(self.config, self.framerate, segments, catalogue, checksums=checksums)

    def _write_ann(
        self, directory: Path, base: Manifest | None, manifest: Manifest, same_rows: bool
    ) -> bool:
        """Write the codes the new version's candidate index needs and fill ``manifest.ann``;
        return whether this index's candidate index is the new version's as it is."""
        written = self._written
        disk = base.ann if base else None
        if self._ann is not None and (self._ann_fresh or disk is None):
            ann, trained_rows = self._ann, self._ann_trained_rows
            store.write_ann_trained(directory, ann.generation, ann.trained)
            needed = manifest.segments  # a new generation: codes for every segment
        elif disk is not None:
            ann = _open_ann(directory, disk["generation"])
            trained_rows = disk["trained_rows"]
            needed = [(name, rows) for name, rows in manifest.segments if name in written]
        else:
            return False
        for name, rows in needed:
            codes = self._codes_for(directory, ann, name, rows, written.get(name))
            store.write_ann_part(directory, ann.generation, name, codes)
        settings = self.settings if ann is self._ann else SearchSettings(**disk["settings"])
        manifest.ann = {
            "generation": ann.generation,
            "settings": asdict(settings),
            "trained_rows": trained_rows,
            "nlist": ann.nlist,
            "m": ann.m,
        }
        return self._ann is ann and same_rows

    def _codes_for(
        self, directory: Path, ann: CandidateIndex, name: str, rows: int, group: list | None
    ) -> np.ndarray:
        """The codes of segment ``name`` under ``ann``: held in RAM, saved beside a copied
        segment, or encoded from the vectors."""
        if group is not None:  # a segment this save writes from these parts
            part = group[0]
            if len(group) == 1 and part.codes is None and part.segment is not None:
                path = store.ann_folder(part.folder, ann.generation) / f"{part.segment}.codes.npy"
                if path.is_file():
                    count = self._vector_count(part)
                    return np.asarray(
                        store.read_ann_part(
                            part.folder, ann.generation, part.segment, ann.code_size, count
                        )
                    )
            return self._join_codes(group, ann)
        for part in self._parts:  # a segment of this folder, for a new generation
            if part.segment == name and part.folder == directory.resolve():
                return self._join_codes([part], ann)
        vectors, mask = store.open_segment(directory, name, rows, self._width, self._dim())
        return self._encode(ann, _Part(torch.from_numpy(vectors), torch.from_numpy(mask)))

    def _join_codes(self, group: list[_Part], ann: CandidateIndex | None = None) -> np.ndarray:
        """The codes of parts stored as one run of rows (branch by branch, then row); with
        ``ann``, parts without codes of its generation are encoded."""
        runs = []
        for part in group:
            codes = part.codes
            if ann is not None and not (
                codes is not None and part.codes_generation == ann.generation
            ):
                codes = self._encode(ann, part)
            counts = [
                int(part.mask[:, branch_columns(b, self._frames)].sum())
                for b in self._ann_branches()
            ]
            runs.append(np.split(codes, np.cumsum(counts)[:-1]))
        if len(runs) == 1:
            return np.concatenate(runs[0])
        return np.concatenate([c for branch in zip(*runs, strict=True) for c in branch])

    def _reopen(
        self,
        directory: Path,
        name: str,
        manifest: Manifest,
        parts: list[_Part],
        kept_ann: bool,
        same_rows: bool,
    ) -> None:
        """Become the saved version ``name`` (its segments memory-mapped as ``parts``)."""
        here = directory.resolve()
        known = self._known_ids if same_rows else None
        ann, trained_rows = (self._ann, self._ann_trained_rows) if kept_ann else (None, 0)
        self._use_manifest(here, manifest, parts)
        self._known_ids = known
        if ann is not None:
            self._ann, self._ann_trained_rows = ann, trained_rows
            self.settings = SearchSettings(**manifest.ann["settings"])
        elif manifest.ann is not None:
            self._load_ann(here, manifest)
        self._origin = (here, name, manifest.count)

    @classmethod
    def load(
        cls, directory: str | Path, model: VideoColBERT | None = None, *, ann: bool = True
    ) -> VideoIndex:
        """Read the current version saved by ``save``; with ``model``, refuse another config.

        ``ann=False`` leaves the candidate index on disk (search is then exact: no RAM for
        codes); a later ``save`` still keeps it up to date.
        """
        directory = Path(directory)
        while True:
            current = store.current_version(directory)
            if current is None:
                raise FileNotFoundError(
                    f"{directory}: not a video index ({store.POINTER_FILE} missing)"
                )
            try:
                index = cls._read(directory, current, ann)
                break
            except FileNotFoundError:
                if store.current_version(directory) == current:
                    raise  # not deleted by a save that made a newer version meanwhile
        if model is not None:
            index.check_model(model, source=str(directory))
        return index

    @classmethod
    def _read(cls, directory: Path, current: Current, ann: bool = True) -> VideoIndex:
        here = directory.resolve()
        if current.layout != store.VERSION:
            folder = directory / current.name
            manifest, tensors = store.read_legacy(folder)
            embedding = VideoEmbedding(*(tensors.get(name) for name in FIELDS))
            try:
                index = cls(
                    manifest["model"],
                    embedding,
                    manifest["ids"],
                    manifest["paths"],
                    framerate=manifest["framerate"],
                )
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(f"{folder} is not a consistent index ({err}); {REBUILD}") from err
            index._origin = (here, current.name, 0)
            return index
        manifest = store.read_manifest(directory, current.name)
        index = cls.__new__(cls)
        try:
            index._setup(manifest.model, manifest.framerate)
        except (ValueError, TypeError, KeyError) as err:
            path = store.manifest_path(directory, current.name)
            raise ValueError(f"{path} is not a consistent index ({err}); {REBUILD}") from err
        index._use_manifest(here, manifest, index._open_parts(here, manifest, current.name))
        if manifest.ann is not None and ann:
            index._load_ann(here, manifest)
        index._origin = (here, current.name, manifest.count)
        return index

    def _open_parts(
        self, folder: Path, manifest: Manifest, version: str, dim: int | None = None
    ) -> list[_Part]:
        """The segments of ``manifest`` memory-mapped; ValueError naming a file that is not
        the shape the manifest (and ``dim``, when given) says."""
        parts = []
        source = str(store.manifest_path(folder, version))
        for name, rows in manifest.segments:
            vectors, mask = store.open_segment(folder, name, rows, self._width, dim, source)
            dim = vectors.shape[2]
            parts.append(
                _Part(
                    torch.from_numpy(vectors),
                    torch.from_numpy(mask),
                    segment=name,
                    folder=folder,
                    arrays=(vectors, mask),
                )
            )
        return parts

    def _use_manifest(self, folder: Path, manifest: Manifest, parts: list[_Part]) -> None:
        """Become the saved version ``manifest`` of ``folder``: ``parts`` (its segments) and
        its catalogue (no ANN)."""
        self._parts = parts
        self._checksums = manifest.checksums
        self._saved_rows = manifest.count
        self._pending = {"id": [], "path": [], "caption": []}
        self._columns = {}
        self._known_ids = None
        self._catalogue = store.Catalogue(folder, manifest.catalogue, manifest.count)
        self._ann, self._ann_fresh, self._ann_trained_rows = None, False, 0

    def _load_ann(self, folder: Path, manifest: Manifest) -> None:
        info = manifest.ann
        ann = _open_ann(folder, info["generation"])
        try:
            ann.rebuild(self._saved_codes(folder, ann))
        except RuntimeError as err:  # faiss refused the codes
            where = store.ann_folder(folder, ann.generation)
            raise ValueError(f"{where}: the saved codes are corrupt ({err}); {REBUILD}") from err
        self._ann, self._ann_trained_rows = ann, info["trained_rows"]
        self.settings = SearchSettings(**info["settings"])

    def _saved_codes(self, folder: Path, ann: CandidateIndex) -> Iterator[tuple]:
        """``(codes, ids)`` of each segment, memory-mapped one at a time: a segment's pages
        leave this process once the next one is read (peak memory at load)."""
        start = 0
        for part in self._parts:
            count = self._vector_count(part)
            codes = store.read_ann_part(folder, ann.generation, part.segment, ann.code_size, count)
            if not ann.valid_lists(codes):
                path = store.ann_folder(folder, ann.generation) / f"{part.segment}.codes.npy"
                raise ValueError(
                    f"{path} is corrupt (codes name lists the candidate index lacks); {REBUILD}"
                )
            yield codes, self._part_ids(part, start)
            start += len(part)

    def verify(self) -> tuple[int, int]:
        """Read every saved segment and compare it with the CRC-32 recorded when it was
        written (a full read of the vectors: ``index_cli info --verify``); return the number of
        segments verified and of those written without a checksum. ValueError naming a file
        whose bytes changed."""
        verified = unverifiable = 0
        for part in self._parts:
            if part.segment is None:
                continue
            expected = self._checksums.get(part.segment)
            if store.verify_segment(part.folder, part.segment, expected):
                verified += 1
            else:
                unverifiable += 1
        return verified, unverifiable

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

    # ---- the candidate index ---------------------------------------------------------------------
    def build_ann(
        self, nlist: int | None = None, m: int | None = None, seed: int = 0
    ) -> CandidateIndex:
        """(Re)build the candidate index of two-stage search over every stored vector.

        Trains ``nlist`` coarse lists (default: ``ann.default_nlist``) and ``m`` 4-bit PQ
        sub-quantizers (default ``D / 8``) on a sample of the vectors, then compresses them all;
        ``settings`` get defaults for that size. Saved by the next ``save``.
        """
        total = sum(self._vector_count(p) for p in self._parts)
        if total == 0:
            raise ValueError("the index has no vectors to build a candidate index from")
        nlist = nlist or default_nlist(total)
        sample = self._sample_vectors(TRAIN_POINTS_PER_LIST * nlist, seed)
        ann = CandidateIndex.train(sample, nlist, m, seed)
        parts, start = [], 0
        quiet = len(self) < ANN_MIN_VIDEOS
        with tqdm(total=len(self), desc="candidate index", unit="video", disable=quiet) as bar:
            for part in self._parts:
                part.codes = self._encode(ann, part)
                part.codes_generation = ann.generation
                parts.append((part.codes, self._part_ids(part, start)))
                start += len(part)
                bar.update(len(part))
        ann.rebuild(parts)
        log.info("candidate index: %d vectors of %d videos in %d lists", total, len(self), nlist)
        self._ann, self._ann_fresh, self._ann_trained_rows = ann, True, len(self)
        self.settings = default_settings(nlist)
        return ann

    @property
    def ann(self) -> CandidateIndex | None:
        """The candidate index (None: search is exact)."""
        return self._ann

    def _ann_branches(self) -> tuple[str, ...]:
        return tuple(self._branches_available())

    def _vector_count(self, part: _Part) -> int:
        return sum(
            int(part.mask[:, branch_columns(b, self._frames)].sum()) for b in self._ann_branches()
        )

    def _part_ids(self, part: _Part, start: int) -> np.ndarray:
        return segment_ids(part.mask.numpy(), self._ann_branches(), self._frames) + 2 * start

    def _encode(self, ann: CandidateIndex, part: _Part, first_row: int | None = None) -> np.ndarray:
        """Codes of a part's valid vectors in ``segment_ids`` order, a block of rows at a time;
        with ``first_row`` (the part's first row number), the vectors are also added to ``ann``."""
        runs = []
        for branch in self._ann_branches():
            columns = branch_columns(branch, self._frames)
            for lo in range(0, len(part), ENCODE_BLOCK_VIDEOS):
                mask = part.mask[lo : lo + ENCODE_BLOCK_VIDEOS, columns]
                vectors = part.vectors[lo : lo + ENCODE_BLOCK_VIDEOS, columns][mask].float().numpy()
                runs.append(ann.encode(vectors))
                if first_row is not None:
                    rows = np.nonzero(mask.numpy())[0] + first_row + lo
                    ann.add_vectors(vectors, vector_ids(rows, branch))
        return np.concatenate(runs) if runs else np.empty((0, ann.code_size), np.uint8)

    def _sample_vectors(self, count: int, seed: int) -> np.ndarray:
        """About ``count`` valid vectors from rows drawn at random (all when there are fewer)."""
        per_row = max(1.0, sum(self._vector_count(p) for p in self._parts) / max(len(self), 1))
        g = torch.Generator().manual_seed(seed)
        n_rows = min(len(self), math.ceil(count / per_row))
        rows = torch.randperm(len(self), generator=g)[:n_rows]
        vectors = []
        for lo in range(0, n_rows, ENCODE_BLOCK_VIDEOS):
            block, mask = self._rows(rows[lo : lo + ENCODE_BLOCK_VIDEOS])
            for branch in self._ann_branches():
                columns = branch_columns(branch, self._frames)
                vectors.append(block[:, columns][mask[:, columns]].float())
        sample = torch.cat(vectors)
        if len(sample) > count:
            sample = sample[torch.randperm(len(sample), generator=g)[:count]]
        return sample.numpy()

    def stats(self) -> dict:
        """Sizes: videos, stored vectors, bytes on disk (when saved) and in RAM, per video."""
        n = len(self)
        vectors = sum(self._vector_count(p) for p in self._parts)
        pending = sum(
            p.vectors.numel() * 2 + p.mask.numel() for p in self._parts if p.segment is None
        )
        ann = self._ann.nbytes if self._ann is not None else 0
        info = {
            "videos": n,
            "vectors": vectors,
            "vector_bytes": self.nbytes,
            "ram_bytes": ann + pending,
            "ann_bytes": ann,
            "ann": None
            if self._ann is None
            else {
                "nlist": self._ann.nlist,
                "m": self._ann.m,
                "trained_on_videos": self._ann_trained_rows,
                **asdict(self.settings),
            },
        }
        if self._origin is not None:
            disk = store.disk_bytes(self._origin[0])
            info["disk_bytes"] = disk
            info["disk_bytes_per_video"] = sum(disk.values()) / n if n else 0.0
        info["ram_bytes_per_video"] = info["ram_bytes"] / n if n else 0.0
        return info

    # ---- search --------------------------------------------------------------------------------
    @torch.no_grad()
    def search(
        self,
        query: str | Sequence[str],
        k: int = 10,
        branch: Branch = "both",
        *,
        model: VideoColBERT,
        block_videos: int = DEFAULT_BLOCK_VIDEOS,
        exact: bool = False,
        nprobe: int | None = None,
        candidates: int | None = None,
    ) -> list[QueryResult]:
        """The top-k videos of each query by MMS_F + MMS_V (``both``), MMS_F or MMS_V.

        Two-stage when the index has a candidate index (``nprobe`` and ``candidates`` override
        ``settings``), exact with ``exact=True`` or without one. A query longer than
        ``max_words`` tokens is truncated with a warning; an empty one is an error.
        """
        self.check_model(model)
        branch = _branch(branch)
        queries = _check_queries(query)
        _warn_truncated(model, queries)
        text = model.encode_text(queries)
        text = TextEmbedding(text.vectors.float().cpu(), text.mask.cpu(), text.ids.cpu())
        _, rows = self.top_k(
            text, k, branch, block_videos, exact=exact, nprobe=nprobe, candidates=candidates
        )
        return [
            self._result(model, queries[i], text, i, branch, rows[i].tolist())
            for i in range(len(queries))
        ]

    def top_k(
        self,
        text: TextEmbedding,
        k: int,
        branch: Branch = "both",
        block_videos: int = DEFAULT_BLOCK_VIDEOS,
        *,
        exact: bool = False,
        nprobe: int | None = None,
        candidates: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact scores and rows ``[Q, min(k, N)]`` of the best videos, best first.

        ``text`` is on the CPU; fp16 vectors are cast to ``text.vectors.dtype`` to be scored
        (``search`` passes fp32: exact, and faster than fp16 on CPUs without fp16 arithmetic).
        """
        k = _check_k(k)
        branch = _branch(branch)
        names = self._branch_names(branch)
        settings = self.settings.updated(nprobe=nprobe, candidates=candidates)
        if not self.is_two_stage(exact, settings.candidates):
            return self._scan(text, k, names, block_videos)
        return self._two_stage(text, k, names, settings, block_videos)

    def is_two_stage(self, exact: bool = False, candidates: int | None = None) -> bool:
        """Whether ``top_k`` with these arguments runs the two stages (else the exact scan):
        not ``exact``, a candidate index, and fewer candidates than videos."""
        candidates = candidates or self.settings.candidates
        return not exact and self._ann is not None and candidates < len(self)

    def _scan(
        self, text: TextEmbedding, k: int, names: list[str], block_videos: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Score every video, a block at a time, keeping a running top-k."""
        best = torch.empty(len(text.vectors), 0)
        rows = torch.empty(len(text.vectors), 0, dtype=torch.long)
        start = 0
        for part in self._parts:
            for lo in range(0, len(part), block_videos):
                hi = min(lo + block_videos, len(part))
                block = self._score(text, part.vectors[lo:hi], part.mask[lo:hi], names)
                best = torch.cat([best, block], dim=1)
                block_rows = torch.arange(start + lo, start + hi).expand(len(block), -1)
                rows = torch.cat([rows, block_rows], dim=1)
                best, order = best.topk(min(k, best.shape[1]), dim=1)
                rows = rows.gather(1, order)
            start += len(part)
        return best, rows

    def _score(
        self, text: TextEmbedding, vectors: torch.Tensor, mask: torch.Tensor, names: list[str]
    ) -> torch.Tensor:
        """Exact scores ``[Q, n]`` of ``n`` stored rows: the sum of the branches' MaxSim."""
        total = 0
        for name in names:
            columns = branch_columns(name, self._frames)
            total = total + maxsim(
                text.vectors,
                vectors[:, columns].to(text.vectors.dtype),
                text.mask,
                mask[:, columns],
            )
        return total

    def _two_stage(
        self,
        text: TextEmbedding,
        k: int,
        names: list[str],
        settings: SearchSettings,
        block_videos: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates from the compressed codes, then exact scores of those from disk."""
        searched = []  # per query: its distinct vectors and their weights (``merge_duplicates``)
        for i in range(len(text.vectors)):
            vectors = text.vectors[i][text.mask[i]].float().numpy()
            weights = np.full(len(vectors), 1.0 / len(vectors), np.float32)
            searched.append(merge_duplicates(vectors, weights))
        flat = np.concatenate([distinct for distinct, _ in searched])
        with faiss_threads(SEARCH_THREADS):
            sims, ids = self._ann.search(flat, settings.hits_per_vector, settings.nprobe)
        want = min(k, len(self))
        all_scores, all_rows = [], []
        start = 0
        for i, (distinct, weights) in enumerate(searched):
            part = slice(start, start + len(distinct))
            start += len(distinct)
            rows, _ = approximate_scores(
                sims[part], ids[part], weights, tuple(names), max(settings.candidates, want)
            )
            one = TextEmbedding(text.vectors[i : i + 1], text.mask[i : i + 1], text.ids[i : i + 1])
            if len(rows) < want:  # too few candidates found: score every video instead
                log.info("query %d: %d candidates for k=%d, scanning every video", i, len(rows), k)
                scores, top = self._scan(one, k, names, block_videos)
            else:
                rows = torch.from_numpy(rows)
                with _torch_threads(SEARCH_THREADS):
                    vectors, mask = self._rows(rows)
                    exact = self._score(one, vectors, mask, names)
                scores, order = exact.topk(want, dim=1)
                top = rows[order[0]][None]
            all_scores.append(scores)
            all_rows.append(top)
        return torch.cat(all_scores), torch.cat(all_rows)

    def _branch_names(self, branch: Branch) -> list[str]:
        available = self._branches_available()
        wanted = list(available) if branch == "both" else [branch]
        if any(name not in available for name in wanted):
            raise ValueError(f"branch {branch!r}: mode {self.config['mode']!r} has no such scores")
        return wanted

    def _branches_available(self) -> list[str]:
        names = []
        if self.config["mode"] in ("both", "F"):
            names.append("F")
        if self._has_v:
            names.append("V")
        return names

    def _result(
        self,
        model: VideoColBERT,
        query: str,
        text: TextEmbedding,
        i: int,
        branch: Branch,
        rows: list[int],
    ) -> QueryResult:
        tokens, expansion = token_labels(model, text.ids[i], text.mask[i])
        vectors = text.vectors[i][text.mask[i]]
        records = self.records(rows)
        hits = [
            self._make_hit(rank, record, vectors) for rank, record in enumerate(records, start=1)
        ]
        return QueryResult(query, branch, tokens, expansion, hits)

    def _make_hit(self, rank: int, record: dict, query: torch.Tensor) -> Hit:
        row = record["row"]
        stored, mask = self._rows(torch.tensor([row]))
        sims, scores = {}, {}
        for name in self._branches_available():
            columns = branch_columns(name, self._frames)
            valid = stored[0, columns][mask[0, columns]].float()
            sims[name] = token_similarities(query, valid)
            scores[name] = float(token_shares(sims[name]).sum())
        return Hit(
            rank=rank,
            row=row,
            id=record["id"],
            path=record["path"],
            score_total=sum(scores.values()),
            score_f=scores.get("F"),
            score_v=scores.get("V"),
            sim_f=sims.get("F"),
            sim_v=sims.get("V"),
            caption=record.get("caption") or "",
        )


def token_labels(
    model: VideoColBERT, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[list[str], list[bool]]:
    """One label per scoring position of a tokenised query, and which are pad (expansion)."""
    real = model.tokenizer.real_token_mask(ids[None])[0]
    labels = [
        model.tokenizer.decode([int(token)]).strip() if is_real else PAD_TOKEN
        for token, is_real in zip(ids.tolist(), real.tolist(), strict=True)
    ]
    keep = mask.tolist()
    return (
        [label for label, used in zip(labels, keep, strict=True) if used],
        [not r for r, used in zip(real.tolist(), keep, strict=True) if used],
    )


def _check_queries(query: str | Sequence[str]) -> list[str]:
    queries = [query] if isinstance(query, str) else list(query)
    if not queries:
        raise ValueError("no query given")
    for text in queries:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"empty query {text!r}: a query needs at least one word")
    return queries


def _warn_truncated(model: VideoColBERT, queries: list[str]) -> None:
    longer = model.tokenizer(queries, context_length=model.cfg.max_words + 1)
    lengths = model.tokenizer.real_token_mask(longer).sum(dim=1)
    for text, length in zip(queries, lengths.tolist(), strict=True):
        if length > model.cfg.max_words:
            warnings.warn(
                f"query truncated to max_words={model.cfg.max_words} tokens: {text[:60]!r}...",
                stacklevel=3,
            )


def _encode_files(
    model: VideoColBERT,
    paths: Sequence[str | Path],
    ids: Sequence[str] | None,
    captions: Sequence[str] | None,
    framerate: float,
    batch_size: int,
    num_workers: int,
    on_error: str,
    cache_dir: str | Path | None,
    accelerator=None,
) -> tuple[VideoEmbedding, list[str], list[str], list[str]]:
    """Encode the readable files; their embedding, ids, paths and captions in the given order."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    paths = [str(p) for p in paths]
    ids = [Path(p).stem for p in paths] if ids is None else [str(i) for i in ids]
    captions = [""] * len(paths) if captions is None else [str(c) for c in captions]
    if not paths or not len(ids) == len(paths) == len(captions):
        raise ValueError(
            f"need one id (and caption) per video: {len(paths)} paths, {len(ids)} ids, "
            f"{len(captions)} captions"
        )
    videos = [VideoRef(i, Path(p)) for i, p in zip(ids, paths, strict=True)]
    prep = model.preprocessing
    cache = FrameCache(cache_dir, prep.sampling(framerate)) if cache_dir else None
    # uint8 frames, normalised by the model on its device
    source = prep.source(framerate, cache=cache, on_error=on_error, uint8=True)
    embedding = encode_videos(
        model, VideoDataset(videos, source), batch_size, accelerator, num_workers=num_workers
    )
    keep = ~failed_videos(embedding).cpu()
    if not bool(keep.all()):
        skipped = [p for p, ok in zip(paths, keep.tolist(), strict=True) if not ok]
        warnings.warn(
            f"skipped {len(skipped)} unreadable videos (causes logged above):\n"
            + "\n".join(skipped),
            stacklevel=3,
        )
    kept = keep.tolist()

    def chosen(values: list[str]) -> list[str]:
        return [v for v, ok in zip(values, kept, strict=True) if ok]

    return _select(embedding, keep), chosen(ids), chosen(paths), chosen(captions)


def _open_ann(folder: Path, generation: str) -> CandidateIndex:
    """The trained candidate index of ``generation`` saved in ``folder``, holding no codes yet;
    ValueError naming a damaged file."""
    try:
        return CandidateIndex(store.read_ann_trained(folder, generation), generation)
    except RuntimeError as err:  # faiss could not read it
        path = store.ann_folder(folder, generation) / store.TRAINED_FILE
        raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err


def _select(embedding: VideoEmbedding, keep: torch.Tensor) -> VideoEmbedding:
    tensors = (getattr(embedding, name) for name in FIELDS)
    return VideoEmbedding(*(None if t is None else t[keep.to(t.device)] for t in tensors))


def _pad(vectors: torch.Tensor, mask: torch.Tensor, width: int) -> tuple:
    if vectors.shape[1] > width:
        raise ValueError(f"{vectors.shape[1]} vectors per video; the model config allows {width}")
    vectors, mask = vectors.detach().to("cpu", torch.float16), mask.to("cpu", torch.bool)
    extra = width - vectors.shape[1]
    if extra == 0:
        return vectors, mask
    return F.pad(vectors, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy()


def _groups(parts: list[_Part]) -> list[list[_Part]]:
    """Parts to write as one segment each: a saved part alone, consecutive added parts together."""
    groups: list[list[_Part]] = []
    for part in parts:
        if part.segment is None and groups and groups[-1][-1].segment is None:
            groups[-1].append(part)
        elif len(part):
            groups.append([part])
    return [g for g in groups if sum(len(p) for p in g)]


def _saved_ids(directory: Path, current: Current, base: Manifest | None) -> list[str]:
    """Every id the current version of ``directory`` holds."""
    if base is not None:
        return store.Catalogue(directory, base.catalogue, base.count).column("id")
    manifest, _ = store.read_legacy(directory / current.name)
    return list(manifest["ids"])


def _prefetch(array: np.ndarray, rows: list[int]) -> None:
    """Ask the kernel to read these rows of a memory-mapped array now, all at once (so the
    disk serves them in parallel rather than one page fault after another)."""
    handle = getattr(array, "_mmap", None)
    if handle is None or not hasattr(handle, "madvise"):
        return
    row_bytes = array[0].nbytes if len(array) else 0
    first = array.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts in the map
    for row in rows:
        begin = first + row * row_bytes
        aligned = begin - begin % mmap.PAGESIZE
        try:
            handle.madvise(mmap.MADV_WILLNEED, aligned, begin + row_bytes - aligned)
        except (OSError, ValueError):
            return


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(min(count, previous))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_v4(current: Current | None) -> bool:
    return current is not None and current.layout == store.VERSION


def _repeated(values: Sequence[str]) -> set[str]:
    seen, repeated = set(), set()
    for value in values:
        (repeated if value in seen else seen).add(value)
    return repeated


def _names(values: Sequence[str | Path], what: str) -> list[str]:
    """``values`` as strings; TypeError for one string, which would be split into characters."""
    if isinstance(values, (str, bytes, Path)):
        raise TypeError(f"{what} must be a list of strings, not the single value {values!r}")
    return [str(value) for value in values]


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, not {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    return int(k)


def _branch(name: str) -> str:
    """A ranking branch by its name (or an old name); ValueError for anything else."""
    name = VALUE_ALIASES["mode"].get(name, name)
    if name not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, not {name!r}")
    return name
