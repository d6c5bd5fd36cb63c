"""How much of the exact top-10 the two-stage search finds on this index, and the cheapest
settings that find enough.

``calibrate`` draws sample queries (text given, or the index's own captions, encoded by the
model; otherwise *held-out* stored videos: a video's own vectors as the query, the video itself
left out of both rankings), takes their exact top-10 from the exact scan, and measures the
recall@10 of the two stages under each of the engine's ``grid`` settings, cheapest first by the
engine's ``cost``, until one reaches the target (and ``CURVE_TOP``, so that ``settings_for``
can serve higher recalls too). The estimate is a mean over the sample, and picking the
cheapest of many noisy points favours a lucky one: on 100k CLIP-like videos, settings estimated
at 0.958 on 64 queries measured 0.927 on 100 others. So a setting *reaches* a recall when its
estimate minus one standard error over the sample's queries does (``lower_bound``).

A video's own vectors are not a caption: they stress other parts of a candidate stage than text
does (on ``benchmarks/vectors_multiscene.py`` at 5,000 videos they called for a larger exact
rerank and no more lists probed, where its text queries needed the lists; on
``vectors_cliplike.py`` they estimated 1.000 where its text queries reached 0.938). So without
text the settings only ever grow: the grid is cut to the settings at least as generous as the
current ones in every field.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vcb_utils.model import TextEmbedding, VideoColBERT
from vcb_utils.search import searcher
from vcb_utils.search.collection import Collection, branch_columns
from vcb_utils.search.engine import Settings

if TYPE_CHECKING:
    from vcb_utils.search.stage import CandidateStage

log = logging.getLogger(__name__)

K = 10
"""Calibration measures recall@K against the exact top-K."""
SAMPLE_QUERIES = 64
CURVE_TOP = 0.99
"""The curve is measured at least until a setting reaches this recall (or the grid ends)."""


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured: the chosen settings' recall@10 and the curve behind it."""

    target: float
    recall: float
    """Estimated recall@10 (against the exact scan) of ``settings``."""
    settings: dict
    queries: int
    source: str
    """``captions`` or ``stored vectors`` (held-out videos as pseudo-queries)."""
    videos: int
    """Videos in the index when it was measured."""
    curve: list[dict]
    """Every measured point: ``{"settings": {...}, "recall": ..., "stderr": ..., "cost": ...}``
    (``stderr``: of the recall over the sample's queries)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        """ValueError (TypeError, KeyError) if ``data`` is not what ``to_json`` wrote."""
        calibration = cls(**data)
        if not (0 < calibration.recall <= 1 and isinstance(calibration.curve, list)):
            raise ValueError(f"calibration {data!r}")
        return calibration

    def summary(self) -> dict:
        """Everything but the curve."""
        return {k: v for k, v in self.to_json().items() if k != "curve"}

    def settings_for(self, recall: float) -> tuple[dict, float]:
        """The cheapest measured settings that reach ``recall`` (``lower_bound``; else the best
        measured) and their estimated recall."""
        point = cheapest_reaching(self.curve, recall)
        return point["settings"], point["recall"]


def lower_bound(point: dict) -> float:
    """A curve point's recall minus one standard error (curves saved without one: the recall)."""
    return point["recall"] - point.get("stderr", 0.0)


def cheapest_reaching(curve: list[dict], target: float) -> dict:
    """The cheapest point whose ``lower_bound`` reaches ``target``, else the best measured.

    A cheaper fallback was tried and dropped: the cheapest point within one standard error of
    the best's per-query recalls (a paired comparison). On a million multi-scene videos it
    chose a point estimated at 0.938 against the best's 0.950 +- 0.014, and on 50 other
    queries it measured 0.954 against 0.972."""
    reaching = [p for p in curve if lower_bound(p) >= target]
    if reaching:
        return min(reaching, key=lambda p: p["cost"])
    return max(curve, key=lambda p: (p["recall"], -p["cost"]))


def calibrate(
    collection: Collection,
    stage: CandidateStage,
    current: Settings,
    target: float,
    model: VideoColBERT | None = None,
    queries: list[str] | TextEmbedding | None = None,
    sample: int = SAMPLE_QUERIES,
    seed: int = 0,
) -> Calibration:
    """Measure recall@10 along the engine's settings and pick the cheapest reaching ``target``
    (or, if none does, the one of highest recall)."""
    if not 0 < target <= 1:
        raise ValueError(f"target_recall must be in (0, 1], not {target!r}")
    text, held_out, source = sample_queries(collection, model, queries, sample, seed)
    truth = top_rows(collection, stage, text, held_out, None)
    engine = stage.engine
    per_video = collection.vector_count() / max(len(collection), 1)
    query_vectors = float(text.mask.sum(dim=1).float().mean())
    grid = {dataclasses.astuple(s): s for s in [*engine.grid(engine.nlist), current]}
    if held_out is not None:  # no text: only settings at least as generous as the current ones
        grid = {key: s for key, s in grid.items() if _generous(s, current)}
    curve = []
    for settings in sorted(grid.values(), key=lambda s: engine.cost(s, query_vectors, per_video)):
        got = top_rows(collection, stage, text, held_out, settings)
        recalls = [len(g & t) / len(t) for g, t in zip(got, truth, strict=True)]
        point = {
            "settings": dataclasses.asdict(settings),
            "recall": float(np.mean(recalls)),
            "stderr": float(np.std(recalls) / np.sqrt(len(recalls))),
            "cost": engine.cost(settings, query_vectors, per_video),
        }
        curve.append(point)
        log.info("calibration: %s recall@%d %.3f", settings, K, point["recall"])
        if lower_bound(point) >= max(target, CURVE_TOP):
            break
    best = cheapest_reaching(curve, target)
    return Calibration(
        target, best["recall"], best["settings"], len(truth), source, len(collection), curve
    )


def _generous(settings: Settings, current: Settings) -> bool:
    """Whether every field of ``settings`` is at least the one of ``current``."""
    pairs = zip(dataclasses.astuple(settings), dataclasses.astuple(current), strict=True)
    return all(a >= b for a, b in pairs)


def sample_queries(
    collection: Collection,
    model: VideoColBERT | None,
    queries: list[str] | TextEmbedding | None,
    count: int,
    seed: int,
) -> tuple[TextEmbedding, list[int] | None, str]:
    """Encoded sample queries, the rows held out of each one's rankings, and their source."""
    if isinstance(queries, TextEmbedding):
        return queries, None, "encoded queries"
    g = torch.Generator().manual_seed(seed)
    if queries is None and model is not None:
        captions = [c for c in collection.column("caption") if c.strip()]
        if captions:
            chosen = torch.randperm(len(captions), generator=g)[:count].tolist()
            queries = [captions[i] for i in chosen]
    if queries:
        if model is None:
            raise ValueError("calibrating on text queries needs the model that encodes them")
        with torch.no_grad():
            text = model.encode_text(list(queries))
        text = TextEmbedding(text.vectors.float().cpu(), text.mask.cpu(), text.ids.cpu())
        return text, None, "captions"
    rows = torch.randperm(len(collection), generator=g)[:count]
    vectors, mask = collection.read_rows(rows)
    columns = [branch_columns(b, collection.frames) for b in collection.branches]
    vectors = torch.cat([vectors[:, c] for c in columns], dim=1).float()
    mask = torch.cat([mask[:, c] for c in columns], dim=1)
    ids = torch.zeros(mask.shape, dtype=torch.long)
    return TextEmbedding(vectors, mask, ids), rows.tolist(), "stored vectors"


def top_rows(
    collection: Collection,
    stage: CandidateStage,
    text: TextEmbedding,
    held_out: list[int] | None,
    settings: Settings | None,
) -> list[set[int]]:
    """Each query's top-10 rows (without its held-out row): exact, or as ``top_k`` searches
    with ``settings`` (two-stage, or exact where the candidates cover every video)."""
    k = min(K + (held_out is not None), len(collection))
    names = list(collection.branches)
    if settings is None or settings.candidates >= len(collection):
        _, rows = searcher.scan(collection, text, k, names, searcher.DEFAULT_BLOCK_VIDEOS)
    else:
        _, rows = searcher.two_stage(
            collection, stage, text, k, names, settings, searcher.DEFAULT_BLOCK_VIDEOS
        )
    tops = []
    for i, row in enumerate(rows.tolist()):
        kept = [r for r in row if held_out is None or r != held_out[i]]
        tops.append(set(kept[:K]))
    return tops
