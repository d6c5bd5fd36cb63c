"""A searchable collection of encoded videos: encode once, save, load, search by text.

``VideoIndex`` keeps, for N videos, their ids, paths and captions, the F vectors (one per
frame) and the V vectors (contextualised frames + visual expansion tokens) in fp16, and the
model config they were built with. ``search`` ranks videos by MMS_F + MMS_V (or one branch)
and returns the hits with the token x vector similarities a heatmap draws.

It is the front of the rooms of ``vcb_utils.search``: the collection (``collection``), its
storage (``persistence``, ``store``, ``catalogue``, ``cleanup``, ``guard``), the candidate
stage (``stage`` over an ``engine``), the searcher (``searcher``, ``hits``). Exact search
scores every video; once a candidate stage is built (``build_ann``, or ``save`` from
``ANN_MIN_VIDEOS`` videos on) search runs in two stages whose scores are still exact.
``settings`` trade recall for speed; a budget of ``candidates >= len(index)`` scores
everything, as the exact search does.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch

from vcb_utils.branches import branch_name
from vcb_utils.config import ModelConfig
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding
from vcb_utils.search import calibration, encoding, persistence, searcher, store
from vcb_utils.search.calibration import Calibration
from vcb_utils.search.collection import Collection, strings
from vcb_utils.search.engine import (
    DEFAULT_ENGINE,
    CandidateEngine,
    Settings,
    engine_class,
    updated_settings,
)
from vcb_utils.search.hits import (
    Branch,
    QueryResult,
    check_queries,
    query_result,
    warn_truncated,
)
from vcb_utils.search.searcher import DEFAULT_BLOCK_VIDEOS, check_k, score_names
from vcb_utils.search.stage import ANN_MIN_VIDEOS, GROWTH_WARNING, CandidateStage

log = logging.getLogger(__name__)


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
        self._start(model_config, framerate)
        self.add_embeddings(embedding, ids, paths, captions=captions)

    @classmethod
    def empty(cls, model_config: ModelConfig | dict, framerate: float = 1.0) -> VideoIndex:
        """An index of no video yet, for vectors of ``model_config``."""
        index = cls.__new__(cls)
        index._start(model_config, framerate)
        return index

    def _start(self, model_config: ModelConfig | dict, framerate: float) -> None:
        self.collection = Collection(model_config, framerate)
        self.stage: CandidateStage | None = None
        """The candidate stage of two-stage search (None: search is exact)."""
        self.settings: Settings = engine_class(DEFAULT_ENGINE).settings_type()
        """Two-stage search settings of the candidate engine (``candidates``: videos reranked)."""

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
        large collection on several processes, resumable, see ``vcb_utils.search.build``.
        """
        paths, ids = strings(paths, "paths"), None if ids is None else strings(ids, "ids")
        embedding, ids, paths, captions = encoding.encode_files(
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
        paths, ids = strings(paths, "paths"), None if ids is None else strings(ids, "ids")
        embedding, ids, paths, captions = encoding.encode_files(
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
        part, columns = self.collection.checked_part(embedding, ids, paths, captions)
        if self.stage is not None and len(part):  # encoded now: the new videos are found at once
            self.stage.add(part, first_row=len(self))
        self.collection.append(part, columns)

    # ---- the collection ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.collection)

    config = property(lambda self: self.collection.config, doc="the vectors' model config")
    framerate = property(lambda self: self.collection.framerate, doc="frames per second sampled")

    @property
    def ids(self) -> list[str]:
        """Every video's id, in row order."""
        return self.collection.column("id")

    @property
    def paths(self) -> list[str]:
        """Every video's path ("" when none was given), in row order."""
        return self.collection.column("path")

    @property
    def captions(self) -> list[str]:
        """Every video's caption ("" when none was given), in row order."""
        return self.collection.column("caption")

    def records(self, rows: Sequence[int]) -> list[dict]:
        """``{"row", "id", "path", "caption"}`` of each of ``rows``; saved rows are read from
        the catalogue (only those rows), unless its columns are already in memory."""
        return self.collection.records(rows)

    F = property(lambda self: self.collection.field("F"), doc="F vectors ``[N, max_frames, D]``")
    F_mask = property(lambda self: self.collection.field("F_mask"), doc="valid frames ``[N, T]``")
    V = property(lambda self: self.collection.field("V"), doc="V vectors ``[N, T + E, D]`` or None")
    V_mask = property(lambda self: self.collection.field("V_mask"), doc="valid V vectors or None")
    """The whole collection as tensors (memory-mapped when it is one saved segment, else
    copied): for small indexes and tests; search reads only what it scores."""

    @property
    def nbytes(self) -> int:
        """Bytes of the stored vectors and masks (on disk once saved)."""
        return self.collection.nbytes

    def vectors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored fp16 vectors ``[n, F + V width, D]`` (F, then V) and bool mask of ``rows``
        (any order), read from memory-mapped segments where saved."""
        return self.collection.read_rows(rows)

    def check_model(self, model: VideoColBERT, source: str = "the index") -> None:
        """ValueError naming every vector-changing config field where ``model`` differs."""
        self.collection.check_model(model, source)

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
        on, an index without a candidate stage gets one (``build_ann``), saved as a further
        version, unless ``auto_ann=False`` (a bulk build that trains it once at the end).
        """
        directory = Path(directory)
        persistence.save_version(self, directory)
        if auto_ann and self.stage is None and len(self) >= ANN_MIN_VIDEOS:
            log.info("%d videos: building the candidate index for two-stage search", len(self))
            self.build_ann()
            self.save(directory)
        elif self.stage is not None and self.stage.growth() >= GROWTH_WARNING:
            warnings.warn(
                f"{directory}: {len(self)} videos, {self.stage.growth():.0f}x "
                "those the candidate index was trained on: retrain it for recall and speed "
                "(index.build_ann(); index.save(...), or `python -m vcb_utils.index_cli "
                "reindex`)",
                stacklevel=2,
            )
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, model: VideoColBERT | None = None, *, ann: bool = True
    ) -> VideoIndex:
        """Read the current version saved by ``save``; with ``model``, refuse another config.

        ``ann=False`` leaves the candidate stage on disk (search is then exact: no RAM for
        codes); a later ``save`` still keeps it up to date.
        """
        directory = Path(directory)
        index = persistence.load(cls, directory, ann)
        if model is not None:
            index.check_model(model, source=str(directory))
        return index

    def verify(self) -> tuple[int, int]:
        """Read every saved segment and compare it with the CRC-32 recorded when it was
        written (a full read of the vectors: ``index_cli info --verify``); return the number of
        segments verified and of those written without a checksum. ValueError naming a file
        whose bytes changed."""
        return persistence.verify(self.collection)

    # ---- the candidate stage ---------------------------------------------------------------------
    def build_ann(
        self,
        nlist: int | None = None,
        m: int | None = None,
        seed: int = 0,
        engine: str = DEFAULT_ENGINE,
    ) -> CandidateEngine:
        """(Re)build the candidate stage of two-stage search over every stored vector.

        Trains ``engine`` (``vcb_utils.search.engine.ENGINES``) with ``nlist`` coarse lists
        (default: the engine's, for this many vectors) and ``m`` PQ sub-quantizers (default
        ``D / 8``) on a sample of the vectors, then compresses them all; ``settings`` get the
        engine's defaults for that size. Saved by the next ``save``.
        """
        self.stage = CandidateStage.build(self.collection, nlist, m, seed, engine)
        self.settings = self.stage.engine.default_settings(self.stage.engine.nlist)
        return self.stage.engine

    @property
    def ann(self) -> CandidateEngine | None:
        """The candidate engine (None: search is exact)."""
        return self.stage.engine if self.stage is not None else None

    def calibrate(
        self,
        target_recall: float = 0.95,
        queries: Sequence[str] | TextEmbedding | None = None,
        *,
        model: VideoColBERT | None = None,
        sample: int = calibration.SAMPLE_QUERIES,
        seed: int = 0,
    ) -> Calibration:
        """Estimate the two stages' recall@10 against the exact scan, and keep the cheapest
        settings that reach ``target_recall`` (or, if none does, those of highest recall).

        The sample: ``queries`` (text, encoded by ``model``, or encoded), else ``sample`` of the
        index's captions (with ``model``), else held-out stored videos (settings only grow).
        ``settings`` become the chosen ones, saved with the estimate and the measured curve by
        the next ``save``. Costs one exact scan of the sample and one two-stage pass per
        setting tried. Without a candidate stage search is exact: recall 1, nothing kept.
        """
        if self.stage is None:  # the exact scan: nothing to measure
            return Calibration(
                target_recall, 1.0, asdict(self.settings), 0, "exact scan", len(self), []
            )
        if model is not None:
            self.check_model(model)
        texts = queries if queries is None or isinstance(queries, TextEmbedding) else list(queries)
        measured = calibration.calibrate(
            self.collection, self.stage, self.settings, target_recall, model, texts, sample, seed
        )
        self.stage.calibration, self.stage.tuned = measured, True
        self.settings = self.stage.engine.settings_type(**measured.settings)
        return measured

    @property
    def calibration(self) -> Calibration | None:
        """What ``calibrate`` measured on this candidate stage (None: never calibrated)."""
        return self.stage.calibration if self.stage is not None else None

    def settings_for(self, recall: float) -> Settings | None:
        """The cheapest calibrated settings whose estimated recall@10 reaches ``recall`` (the
        best measured where none does); None (the exact scan) for a recall of 1 or an index
        without a candidate stage. ValueError if the stage was never calibrated."""
        if not 0 < recall <= 1:
            raise ValueError(f"recall must be in (0, 1], not {recall!r}")
        if recall >= 1 or self.stage is None:
            return None
        return self.stage.settings_for(recall)

    def stats(self) -> dict:
        """Sizes: videos, stored vectors, bytes on disk (when saved) and in RAM, per video."""
        collection, stage = self.collection, self.stage
        n = len(self)
        pending = sum(p.nbytes for p in collection.parts if p.segment is None)
        ann = stage.engine.nbytes if stage is not None else 0
        info = {
            "videos": n,
            "vectors": collection.vector_count(),
            "vector_bytes": self.nbytes,
            "ram_bytes": ann + pending,
            "ann_bytes": ann,
            "ann": None if stage is None else stage.stats(self.settings),
        }
        if collection.origin is not None:
            disk = store.disk_bytes(collection.origin[0])
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
        recall: float | None = None,
    ) -> list[QueryResult]:
        """The top-k videos of each query by MMS_F + MMS_V (``both``), MMS_F or MMS_V.

        Two-stage when the index has a candidate stage, exact with ``exact=True``, without
        one, or with ``recall=1.0``. ``recall``: the calibrated settings whose estimated
        recall@10 reaches it (``settings_for``), else ``settings``; ``nprobe`` and
        ``candidates`` override either. A query longer than ``max_words`` tokens is truncated
        with a warning; an empty one is an error.
        """
        self.check_model(model)
        branch = branch_name(branch)
        queries = check_queries(query)
        warn_truncated(model, queries)
        text = model.encode_text(queries)
        text = TextEmbedding(text.vectors.float().cpu(), text.mask.cpu(), text.ids.cpu())
        _, rows = self.top_k(
            text,
            k,
            branch,
            block_videos,
            exact=exact,
            nprobe=nprobe,
            candidates=candidates,
            recall=recall,
        )
        return [
            query_result(self.collection, model, queries[i], text, i, branch, rows[i].tolist())
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
        recall: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact scores and rows ``[Q, min(k, N)]`` of the best videos, best first (the
        arguments as ``search``'s).

        ``text`` is on the CPU; fp16 vectors are cast to ``text.vectors.dtype`` to be scored
        (``search`` passes fp32: exact, and faster than fp16 on CPUs without fp16 arithmetic).
        """
        k = check_k(k)
        names = score_names(self.collection, branch_name(branch))
        chosen = self.settings if recall is None else self.settings_for(recall)
        exact = exact or chosen is None
        settings = updated_settings(chosen or self.settings, nprobe=nprobe, candidates=candidates)
        if not self.is_two_stage(exact, settings.candidates):
            return searcher.scan(self.collection, text, k, names, block_videos)
        if recall is None and self.calibration is None and not self.stage.warned:
            self.stage.warned = True
            warnings.warn(
                f"{len(self)} videos: the two-stage search settings were never calibrated on "
                "this index, so its recall is unknown: index.calibrate() (`python -m "
                "vcb_utils.index_cli calibrate`) estimates it and picks settings for a target",
                stacklevel=2,
            )
        return searcher.two_stage(
            self.collection, self.stage, text, k, names, settings, block_videos
        )

    def is_two_stage(self, exact: bool = False, candidates: int | None = None) -> bool:
        """Whether ``top_k`` with these arguments runs the two stages (else the exact scan):
        not ``exact``, a candidate stage, and fewer candidates than videos."""
        candidates = candidates or self.settings.candidates
        return not exact and self.stage is not None and candidates < len(self)

    def score(
        self, text: TextEmbedding, rows: torch.Tensor, branch: Branch = "both"
    ) -> torch.Tensor:
        """Exact scores ``[Q, len(rows)]`` of the videos at ``rows`` (``text`` on the CPU)."""
        vectors, mask = self.vectors(rows)
        names = score_names(self.collection, branch_name(branch))
        return searcher.score(self.collection, text, vectors, mask, names)
