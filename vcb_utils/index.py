"""A searchable collection of encoded videos: encode once, save, load, search by text.

``VideoIndex`` keeps, for N videos, their ids and paths, the F vectors (one per frame) and the
V vectors (contextualised frames + visual expansion tokens) in fp16, and the model config they
were built with. ``search`` encodes the queries and scans the collection block by block with
``vcb_utils.scoring.maxsim``, keeping a running top-k, so memory stays bounded however many
videos there are; the hits come back with the token x vector similarities a heatmap draws.

Layout: padded ``[N, max_frames, D]`` (F) and ``[N, max_frames + E, D]`` (V) with bool masks.
Every video has at most ``max_frames`` frames, so padding costs space only for clips shorter
than that, while a block of the padded tensors is exactly what ``maxsim`` takes (a flat
layout with offsets would save those bytes but re-pad every block of every search).

On disk (format version 3) a save never changes a file that a reader may be reading::

    my_index/
      index.json        the pointer: {"format": ..., "version": 3, "current": "v000012"}
      v000012/          the current version: index.json (ids, paths, config) + index.safetensors
      .lock             taken by writers

``save`` writes and flushes a new version folder, replaces the pointer (an atomic rename), then
deletes the older versions: killed at any point, it leaves the previous version current, and
the next save deletes what it left. A version 2 folder (one version at the top) still loads;
saving to it converts it. Two processes may load, add to and save one folder at once: see
``VideoIndex.save``.
"""

from __future__ import annotations

import json
import numbers
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vcb_utils.cache import FrameCache
from vcb_utils.config import VALUE_ALIASES, ModelConfig
from vcb_utils.datasets import VideoDataset
from vcb_utils.encode import encode_videos, failed_videos
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding, real_token_mask
from vcb_utils.scoring import maxsim, token_shares, token_similarities
from vcb_utils.storage import (
    folder_lock,
    fsync_tree,
    read_json,
    remove,
    remove_temps,
    write_json_atomic,
)
from vcb_utils.video import VideoRef

Branch = Literal["both", "F", "V"]
BRANCHES = ("both", "F", "V")
"""Rank by MMS_F + MMS_V, MMS_F or MMS_V (``spatial``/``temporal``: old names of F/V)."""

FORMAT = "vcb-video-index"
VERSION = 3
READABLE_VERSIONS = (2, 3)
"""Manifest versions that load: 2 had one version at the top of the folder, 3 adds the pointer."""
POINTER_FILE = "index.json"
MANIFEST_FILE = "index.json"
TENSORS_FILE = "index.safetensors"
MANIFEST_KEYS = ("model", "framerate", "ids", "paths")
VERSION_NAME = re.compile(r"v\d{6}")
LEGACY = "."
"""The version "folder" of a version 2 index: the index folder itself."""
REBUILD = "rebuild the index: VideoIndex.build(model, paths).save(directory)"
DEFAULT_BLOCK_VIDEOS = 128
"""Videos per step of the scan (7 MB as fp32 at 26 x 512 per video): small blocks stay in cache
and reuse their buffers, the fastest on CPU in ``benchmarks/bench_search.py``."""

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


class VideoIndex:
    """F and V vectors (fp16, padded, with masks), ids and paths of N encoded videos."""

    def __init__(
        self,
        model_config: ModelConfig | dict,
        embedding: VideoEmbedding,
        ids: Sequence[str],
        paths: Sequence[str] | None = None,
        *,
        framerate: float = 1.0,
    ) -> None:
        config = asdict(model_config) if isinstance(model_config, ModelConfig) else model_config
        if config["mode"] == "meanP":
            raise ValueError("mode 'meanP' (a single-vector baseline) has no F/V vectors to index")
        self.config = json.loads(json.dumps(config))  # JSON types, as after a round trip
        self.framerate = float(framerate)
        self.ids: list[str] = []
        self.paths: list[str] = []
        self.F = self.F_mask = self.V = self.V_mask = None
        # (folder, version, rows) of the last load or save: the first `rows` are saved there
        self._origin: tuple[Path, str, int] | None = None
        self.add_embeddings(embedding, ids, paths)

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
    ) -> VideoIndex:
        """Encode videos once (progress bar). Ids default to the file names without suffix.

        An unreadable file raises ``VideoReadError`` naming it, or with ``on_error="skip"`` is
        left out with a warning that lists the files (each cause is logged as it happens).
        ``cache_dir``: decoded frames are read from (and added to) this frame cache.
        """
        paths, ids = _names(paths, "paths"), None if ids is None else _names(ids, "ids")
        embedding, ids, paths = _encode_files(
            model, paths, ids, framerate, batch_size, num_workers, on_error, cache_dir
        )
        return cls(model.cfg, embedding, ids, paths, framerate=framerate)

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
    ) -> None:
        """Encode more videos (at the index's framerate) and append them."""
        self.check_model(model)
        paths, ids = _names(paths, "paths"), None if ids is None else _names(ids, "ids")
        embedding, ids, paths = _encode_files(
            model, paths, ids, self.framerate, batch_size, num_workers, on_error, cache_dir
        )
        self.add_embeddings(embedding, ids, paths)

    def add_embeddings(
        self, embedding: VideoEmbedding, ids: Sequence[str], paths: Sequence[str] | None = None
    ) -> None:
        """Append precomputed vectors (any device and dtype; stored fp16 on the CPU)."""
        ids = _names(ids, "ids")
        paths = [""] * len(ids) if paths is None else _names(paths, "paths")
        count = embedding.frames.shape[0]
        if not len(ids) == len(paths) == count:
            raise ValueError(f"{count} videos but {len(ids)} ids and {len(paths)} paths")
        repeated = [i for i, n in Counter(self.ids + ids).items() if n > 1]
        if repeated:
            raise ValueError(f"duplicate video ids: {sorted(repeated)[:5]}")
        if (embedding.V is None) != (self.config["mode"] == "F"):
            raise ValueError(f"mode {self.config['mode']!r} and the embedding's V set disagree")
        new = _stored_tensors(embedding, self.config)
        if self.F is None:
            self.F, self.F_mask, self.V, self.V_mask = new
        else:
            old = (self.F, self.F_mask, self.V, self.V_mask)
            self.F, self.F_mask, self.V, self.V_mask = (
                None if a is None else torch.cat([a, b]) for a, b in zip(old, new, strict=True)
            )
        self.ids += ids
        self.paths += paths

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored vectors and masks."""
        tensors = (getattr(self, name) for name in FIELDS)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    # ---- saving and loading --------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Save as a new version of the index in ``directory`` (made if needed); return it.

        Nothing that another process saved there is lost: holding the folder's lock, ``save``
        reads the current version again, then

        - if this index was loaded from (or last saved to) ``directory``, appends the videos
          added here since to that version, which may hold videos that others added meanwhile;
          this index then holds the merged collection;
        - otherwise replaces that version, unless it holds an id that this index lacks.

        Those two errors (an id added both here and by another process, or an id this index
        lacks) are a ValueError, and nothing is written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with folder_lock(directory):
            current = _current_version(directory)
            _remove_versions(directory, keep=current)
            if current is not None:
                self._merge_saved(directory, current)
            name = f"v{1 if current in (None, LEGACY) else int(current[1:]) + 1:06d}"
            self._write_version(directory / name)
            pointer = {"format": FORMAT, "version": VERSION, "current": name}
            write_json_atomic(directory / POINTER_FILE, pointer)
            _remove_versions(directory, keep=name)
            self._origin = (directory.resolve(), name, len(self))
        return directory

    def _merge_saved(self, directory: Path, current: str) -> None:
        """Make this index what ``save`` writes over the saved version ``current``."""
        here = directory.resolve()
        if self._origin is not None and self._origin[:2] == (here, current):
            return  # nothing saved since this index was: it holds that version and more
        if self._origin is None or self._origin[0] != here:
            lost = set(_read_manifest(directory / current)["ids"]).difference(self.ids)
            if lost:
                raise ValueError(
                    f"{directory} holds {len(lost)} videos that this index lacks "
                    f"({sorted(lost)[:5]}): saving would lose them. Add to VideoIndex.load("
                    f"{str(directory)!r}) instead, or save to another folder"
                )
            return
        saved = VideoIndex._read(directory / current)
        if (saved.config, saved.framerate) != (self.config, self.framerate):
            raise ValueError(
                f"{directory} was saved with another model config or framerate since this "
                "index was loaded from it: load it again"
            )
        added = slice(self._origin[2], None)
        tensors = (getattr(self, name) for name in FIELDS)
        embedding = VideoEmbedding(*(None if t is None else t[added] for t in tensors))
        saved.add_embeddings(embedding, self.ids[added], self.paths[added])
        for name in (*FIELDS, "ids", "paths"):
            setattr(self, name, getattr(saved, name))

    def _write_version(self, folder: Path) -> None:
        """Write the vectors and the manifest into the new folder ``folder``, flushed to disk."""
        folder.mkdir()
        tensors = {name: getattr(self, name) for name in FIELDS}
        tensors = {name: t.contiguous() for name, t in tensors.items() if t is not None}
        save_file(tensors, str(folder / TENSORS_FILE))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": self.config,
            "framerate": self.framerate,
            "ids": self.ids,
            "paths": self.paths,
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
        fsync_tree(folder)

    @classmethod
    def load(cls, directory: str | Path, model: VideoColBERT | None = None) -> VideoIndex:
        """Read the current version saved by ``save``; with ``model``, refuse another config."""
        directory = Path(directory)
        while True:
            current = _current_version(directory)
            if current is None:
                raise FileNotFoundError(f"{directory}: not a video index ({POINTER_FILE} missing)")
            try:
                index = cls._read(directory / current)
                break
            except FileNotFoundError:
                if _current_version(directory) == current:
                    raise  # not deleted by a save that made a newer version meanwhile
        index._origin = (directory.resolve(), current, len(index))
        if model is not None:
            index.check_model(model, source=str(directory))
        return index

    @classmethod
    def _read(cls, folder: Path) -> VideoIndex:
        """The index in one version folder; ValueError naming the file if it is damaged."""
        manifest = _read_manifest(folder)
        path = folder / TENSORS_FILE
        try:
            tensors = load_file(str(path))
        except SafetensorError as err:
            raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err
        missing = [name for name in ("F", "F_mask") if name not in tensors]
        if missing:
            raise ValueError(f"{path} lacks the tensors {missing}; {REBUILD}")
        embedding = VideoEmbedding(*(tensors.get(name) for name in FIELDS))
        try:
            return cls(
                manifest["model"],
                embedding,
                manifest["ids"],
                manifest["paths"],
                framerate=manifest["framerate"],
            )
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{folder} is not a consistent index ({err}); {REBUILD}") from err

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
    ) -> list[QueryResult]:
        """The top-k videos of each query by MMS_F + MMS_V (``both``), MMS_F or MMS_V.

        A query longer than ``max_words`` tokens is truncated with a warning; an empty one is
        an error. The scan holds one block of ``block_videos`` videos in fp32 at a time.
        """
        self.check_model(model)
        branch = _branch(branch)
        queries = _check_queries(query)
        _warn_truncated(model, queries)
        text = model.encode_text(queries)
        text = TextEmbedding(text.vectors.float().cpu(), text.mask.cpu(), text.ids.cpu())
        _, rows = self.top_k(text, k, branch, block_videos)
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and rows ``[Q, min(k, N)]`` of the best videos, best first.

        ``text`` is on the CPU; each block of fp16 vectors is cast to ``text.vectors.dtype``
        (``search`` passes fp32: exact, and faster than fp16 on CPUs without fp16 arithmetic).
        """
        k = _check_k(k)
        parts = self._branch_vectors(branch)
        best = torch.empty(len(text.vectors), 0)
        rows = torch.empty(len(text.vectors), 0, dtype=torch.long)
        for start in range(0, len(self), block_videos):
            stop = min(start + block_videos, len(self))
            block = sum(
                maxsim(text.vectors, vectors[start:stop], text.mask, mask[start:stop])
                for vectors, mask in parts
            )
            best = torch.cat([best, block], dim=1)
            rows = torch.cat([rows, torch.arange(start, stop).expand(len(block), -1)], dim=1)
            best, order = best.topk(min(k, best.shape[1]), dim=1)
            rows = rows.gather(1, order)
        return best, rows

    def _branch_vectors(self, branch: Branch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        branch = _branch(branch)
        available = self._branches()
        wanted = list(available) if branch == "both" else [branch]
        if any(name not in available for name in wanted):
            raise ValueError(f"branch {branch!r}: mode {self.config['mode']!r} has no such scores")
        return [available[name] for name in wanted]

    def _branches(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        branches = {}
        if self.config["mode"] in ("both", "F"):
            branches["F"] = (self.F, self.F_mask)
        if self.V is not None:
            branches["V"] = (self.V, self.V_mask)
        return branches

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
        hits = [self._make_hit(rank, row, vectors) for rank, row in enumerate(rows, start=1)]
        return QueryResult(query, branch, tokens, expansion, hits)

    def _make_hit(self, rank: int, row: int, query: torch.Tensor) -> Hit:
        sims, scores = {}, {}
        for name, (vectors, mask) in self._branches().items():
            sims[name] = token_similarities(query, vectors[row][mask[row]].float())
            scores[name] = float(token_shares(sims[name]).sum())
        return Hit(
            rank=rank,
            row=row,
            id=self.ids[row],
            path=self.paths[row],
            score_total=sum(scores.values()),
            score_f=scores.get("F"),
            score_v=scores.get("V"),
            sim_f=sims.get("F"),
            sim_v=sims.get("V"),
        )


def token_labels(
    model: VideoColBERT, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[list[str], list[bool]]:
    """One label per scoring position of a tokenised query, and which are pad (expansion)."""
    real = real_token_mask(ids[None])[0]
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
    lengths = real_token_mask(longer).sum(dim=1)
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
    framerate: float,
    batch_size: int,
    num_workers: int,
    on_error: str,
    cache_dir: str | Path | None,
) -> tuple[VideoEmbedding, list[str], list[str]]:
    """Encode the readable files; returns their embedding, ids and paths in the given order."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    paths = [str(p) for p in paths]
    ids = [Path(p).stem for p in paths] if ids is None else [str(i) for i in ids]
    if not paths or len(ids) != len(paths):
        raise ValueError(f"need one id per video: {len(paths)} paths, {len(ids)} ids")
    videos = [VideoRef(i, Path(p)) for i, p in zip(ids, paths, strict=True)]
    prep = model.preprocessing
    cache = FrameCache(cache_dir, prep.sampling(framerate)) if cache_dir else None
    # uint8 frames, normalised by the model on its device
    source = prep.source(framerate, cache=cache, on_error=on_error, uint8=True)
    embedding = encode_videos(
        model, VideoDataset(videos, source), batch_size, num_workers=num_workers
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
    return (
        _select(embedding, keep),
        [i for i, ok in zip(ids, kept, strict=True) if ok],
        [p for p, ok in zip(paths, kept, strict=True) if ok],
    )


def _select(embedding: VideoEmbedding, keep: torch.Tensor) -> VideoEmbedding:
    tensors = (getattr(embedding, name) for name in FIELDS)
    return VideoEmbedding(*(None if t is None else t[keep.to(t.device)] for t in tensors))


def _stored_tensors(embedding: VideoEmbedding, config: dict) -> tuple:
    """fp16 CPU tensors padded to the index widths (no copy when they already are)."""
    f_width = config["max_frames"]
    v_width = f_width + config["n_visual_expansion"]
    f, f_mask = _pad(embedding.F, embedding.F_mask, f_width)
    if embedding.V is None:
        return f, f_mask, None, None
    return (f, f_mask, *_pad(embedding.V, embedding.V_mask, v_width))


def _pad(vectors: torch.Tensor, mask: torch.Tensor, width: int) -> tuple:
    if vectors.shape[1] > width:
        raise ValueError(f"{vectors.shape[1]} vectors per video; the model config allows {width}")
    vectors, mask = vectors.detach().to("cpu", torch.float16), mask.to("cpu", torch.bool)
    extra = width - vectors.shape[1]
    if extra == 0:
        return vectors, mask
    return F.pad(vectors, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not (path.is_file() and (folder / TENSORS_FILE).is_file()):
        raise FileNotFoundError(
            f"{folder}: not a video index ({MANIFEST_FILE} or {TENSORS_FILE} missing)"
        )
    manifest = read_json(path, REBUILD)
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r}; "
            f"this code reads {FORMAT!r} versions {READABLE_VERSIONS}: {REBUILD}"
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{path} lacks {missing}; {REBUILD}")
    return manifest


def _current_version(directory: Path) -> str | None:
    """The current version folder's name (``LEGACY`` for version 2); None if nothing is saved."""
    path = directory / POINTER_FILE
    if not path.is_file():
        return None
    pointer = read_json(path, REBUILD)
    if "current" not in pointer:
        return LEGACY
    current = pointer["current"]
    if (pointer.get("format"), pointer.get("version")) != (FORMAT, VERSION) or not (
        isinstance(current, str) and VERSION_NAME.fullmatch(current)
    ):
        raise ValueError(f"{path}: not a {FORMAT!r} version {VERSION} pointer; {REBUILD}")
    return current


def _remove_versions(directory: Path, keep: str | None) -> None:
    """Delete the versions other than ``keep`` and temporary files (holding the lock)."""
    remove_temps(directory)
    for entry in directory.iterdir():
        if VERSION_NAME.fullmatch(entry.name) and entry.name != keep:
            remove(entry)
    if keep not in (None, LEGACY):
        remove(directory / TENSORS_FILE)  # the vectors of a version 2 index, now converted


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
