"""The candidate stage of an index: a trained candidate engine over the collection's vectors.

``CandidateStage.build`` trains an engine (``vcb_utils.search.engine``) on a sample of the
stored vectors and encodes every part; rows added later are encoded as they come (``encode``
with their first row number), so they are found at once. The codes of each part are kept on
the part, in ``collection.segment_ids`` order, for the next save to write.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm

from vcb_utils.search.calibration import Calibration
from vcb_utils.search.collection import Collection, Part, branch_columns, vector_ids
from vcb_utils.search.engine import DEFAULT_ENGINE, CandidateEngine, Settings, engine_class

log = logging.getLogger(__name__)

ANN_MIN_VIDEOS = 5000
"""``save`` builds the candidate stage (two-stage search) once an index has this many videos;
below it the exact scan takes a few tens of milliseconds."""
ENCODE_BLOCK_VIDEOS = 4096
"""Videos whose vectors are compressed at once (about 50 MB as fp32)."""
GROWTH_WARNING = 8
"""``save`` warns when an index holds this many times the videos its candidate stage was
trained on: the coarse lists are then too few and too long (``build_ann`` retrains)."""


class CandidateStage:
    """An engine, the number of videos it was trained on, whether it is saved yet, and what
    ``calibrate`` measured of it."""

    def __init__(
        self,
        collection: Collection,
        engine: CandidateEngine,
        trained_rows: int,
        fresh: bool,
        calibration: Calibration | None = None,
    ) -> None:
        self.collection = collection
        self.engine = engine
        self.trained_rows = trained_rows
        self.fresh = fresh
        """Built here and not saved yet (a save writes its trained engine and every code)."""
        self.calibration = calibration
        self.tuned = False
        """Calibrated here since the last load or save (a save records the new settings)."""
        self.warned = False
        """Whether a search said that the stage was never calibrated."""

    @classmethod
    def build(
        cls,
        collection: Collection,
        nlist: int | None = None,
        m: int | None = None,
        seed: int = 0,
        engine: str = DEFAULT_ENGINE,
    ) -> CandidateStage:
        """Train ``engine`` on a sample of every stored vector, then encode them all (the
        parts keep their codes)."""
        kind = engine_class(engine)
        total = collection.vector_count()
        if total == 0:
            raise ValueError("the index has no vectors to build a candidate index from")
        nlist = nlist or kind.default_nlist(total)
        sample = sample_vectors(collection, kind.train_points(nlist), seed)
        trained = kind.train(sample, nlist, seed, **({"m": m} if m else {}))
        stage = cls(collection, trained, len(collection), fresh=True)
        parts, start = [], 0
        quiet = len(collection) < ANN_MIN_VIDEOS
        with tqdm(
            total=len(collection), desc="candidate index", unit="video", disable=quiet
        ) as bar:
            for part in collection.parts:
                part.codes = stage.encode(part)
                part.codes_generation = trained.generation
                parts.append((part.codes, collection.part_ids(part, start)))
                start += len(part)
                bar.update(len(part))
        trained.rebuild(parts)
        log.info("candidate index: %d vectors of %d videos in %d lists", total, start, nlist)
        return stage

    @property
    def generation(self) -> str:
        return self.engine.generation

    def encode(self, part: Part, first_row: int | None = None) -> np.ndarray:
        """Codes of a part's valid vectors in ``segment_ids`` order, a block of rows at a time;
        with ``first_row`` (the part's first row number), the vectors are also added to the
        engine."""
        runs = []
        frames = self.collection.frames
        for branch in self.collection.branches:
            columns = branch_columns(branch, frames)
            for lo in range(0, len(part), ENCODE_BLOCK_VIDEOS):
                mask = part.mask[lo : lo + ENCODE_BLOCK_VIDEOS, columns]
                vectors = part.vectors[lo : lo + ENCODE_BLOCK_VIDEOS, columns][mask].float().numpy()
                videos = np.nonzero(mask.numpy())[0]
                codes = self.engine.encode(vectors, videos=videos)
                runs.append(codes)
                if first_row is not None:
                    rows = videos + first_row + lo
                    self.engine.add_vectors(vectors, vector_ids(rows, branch), codes)
        if not runs:
            return np.empty((0, self.engine.code_size), np.uint8)
        return np.concatenate(runs)

    def add(self, part: Part, first_row: int) -> None:
        """Encode the new rows of ``part`` (rows ``first_row...``): found by the next search."""
        part.codes = self.encode(part, first_row)
        part.codes_generation = self.generation

    def codes_of(self, parts: list[Part]) -> np.ndarray:
        """The codes of ``parts`` stored as one run of rows, encoding those without codes of
        this engine's generation."""
        codes = [
            p.codes
            if p.codes is not None and p.codes_generation == self.generation
            else self.encode(p)
            for p in parts
        ]
        return self.collection.join_codes(codes, parts)

    def growth(self) -> float:
        """Videos now per video the engine was trained on."""
        return len(self.collection) / max(self.trained_rows, 1)

    def manifest_entry(self, settings: Settings) -> dict:
        """What a manifest records of this stage (its codes are files of its generation)."""
        entry = {
            "engine": self.engine.name,
            "generation": self.generation,
            "settings": asdict(settings),
            "trained_rows": self.trained_rows,
            **self.engine.describe(),
        }
        if self.calibration is not None:
            entry["calibration"] = self.calibration.to_json()
        return entry

    def settings_for(self, recall: float) -> Settings:
        """The cheapest calibrated settings whose recall@10 reaches ``recall`` (the best
        measured, with a warning, where none does); ValueError if never calibrated."""
        if self.calibration is None:
            raise ValueError(
                f"recall={recall}: this index's search settings were never calibrated: "
                "index.calibrate() (or `python -m vcb_utils.index_cli calibrate`) first, "
                "or recall=1.0 for the exact scan"
            )
        settings, reached = self.calibration.settings_for(recall)
        if reached < recall:
            warnings.warn(
                f"recall={recall}: the calibration measured at most {reached:.3f}; "
                "searching with those settings (recall=1.0 scans every video)",
                stacklevel=4,
            )
        return self.engine.settings_type(**settings)

    def stats(self, settings: Settings) -> dict:
        """The engine's sizes, the settings and what ``calibrate`` measured (no curve)."""
        measured = self.calibration
        return {
            "engine": self.engine.name,
            **self.engine.describe(),
            "trained_on_videos": self.trained_rows,
            **asdict(settings),
            "calibration": None if measured is None else measured.summary(),
        }

    def find(
        self, queries: list[np.ndarray], names: list[str], settings: Settings, want: int
    ) -> list[np.ndarray]:
        """Candidate rows of each query (its valid vectors), at least ``want`` where found."""
        return self.engine.find(queries, tuple(names), settings, max(settings.candidates, want))


def sample_vectors(collection: Collection, count: int, seed: int) -> np.ndarray:
    """About ``count`` valid vectors from rows drawn at random (all when there are fewer)."""
    rows_total = len(collection)
    per_row = max(1.0, collection.vector_count() / max(rows_total, 1))
    g = torch.Generator().manual_seed(seed)
    n_rows = min(rows_total, math.ceil(count / per_row))
    rows = torch.randperm(rows_total, generator=g)[:n_rows]
    vectors = []
    for lo in range(0, n_rows, ENCODE_BLOCK_VIDEOS):
        block, mask = collection.read_rows(rows[lo : lo + ENCODE_BLOCK_VIDEOS])
        for branch in collection.branches:
            columns = branch_columns(branch, collection.frames)
            vectors.append(block[:, columns][mask[:, columns]].float())
    sample = torch.cat(vectors)
    if len(sample) > count:
        sample = sample[torch.randperm(len(sample), generator=g)[:count]]
    return sample.numpy()
