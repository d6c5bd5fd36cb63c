"""Clustered synthetic F/V vectors and encoded queries that behave like CLIP's, at any scale.

Search at scale is measured without encoding a million videos: ``ClusteredVectors`` draws the
vectors a Video-ColBERT model would produce, with the structure that makes approximate search
hard or easy on real embeddings:

- one **global direction** shared by every video vector (CLIP's embeddings sit in a narrow
  cone), and a separate one for queries (the *modality gap*: text and image vectors are far
  apart even when they match);
- **topics** shared by ``videos_per_topic`` videos, so each target has close competitors;
- per video a centre, two **scenes** (first and second half of the frames) and frames that
  are highly similar to each other; V vectors are the frames mixed with the video's centre
  (the temporal transformer's context) followed by expansion tokens near the centre;
- clips of different lengths (masked frames);
- queries of ``query_words`` real tokens near their target video (one scene each, plus noise)
  and query-expansion tokens near their mean, ``query_len`` in all. ``query_noise`` sets how
  near: the default puts the target first for about half the queries (exact R@1 ~ 50%).

Video ``i`` is the same whatever range it is drawn in (``videos(start, stop)``), so a
collection can be made chunk by chunk and its rows drawn again later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vcb_utils.config import ModelConfig
from vcb_utils.model import TextEmbedding, VideoEmbedding

BLOCK = 1024
"""Videos drawn from one random stream: video i's vectors depend on ``i // BLOCK`` only."""


@dataclass(frozen=True)
class ClusteredVectors:
    """``n_videos`` synthetic videos (see the module docstring) and queries aimed at them."""

    n_videos: int
    dim: int = 512
    frames: int = 12
    expansion: int = 2
    query_len: int = 32
    query_words: int = 8
    videos_per_topic: int = 100
    min_frames: int = 6
    query_signal: float = 0.2
    query_noise: float = 1.0
    seed: int = 0
    _topics: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_videos < 1:
            raise ValueError(f"n_videos must be >= 1, not {self.n_videos}")
        g = torch.Generator().manual_seed(self.seed)
        n_topics = max(1, math.ceil(self.n_videos / self.videos_per_topic))
        object.__setattr__(self, "_topics", _unit(torch.randn(n_topics, self.dim, generator=g)))

    @property
    def model_config(self) -> ModelConfig:
        """A model config whose vectors have these shapes (ViT-B-32: 512 dimensions)."""
        if self.dim != 512:
            raise ValueError("model_config describes 512-dimensional vectors (ViT-B-32)")
        return ModelConfig(max_frames=self.frames, n_visual_expansion=self.expansion)

    @property
    def n_topics(self) -> int:
        return len(self._topics)

    def _directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unit directions shared by every video vector and by every query vector."""
        g = torch.Generator().manual_seed(self.seed + 1)
        video, text = _unit(torch.randn(2, self.dim, generator=g))
        return video, text

    def topic(self, rows: torch.Tensor) -> torch.Tensor:
        """The topic of each video (a fixed scramble of the row number)."""
        return (rows * 2654435761 + 12345) % self.n_topics

    def videos(self, start: int = 0, stop: int | None = None) -> VideoEmbedding:
        """Videos ``start`` to ``stop`` (fp16, padded to ``frames``/``frames + expansion``)."""
        stop = self.n_videos if stop is None else stop
        if not 0 <= start <= stop <= self.n_videos:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.n_videos}")
        parts = []
        for block in range(start // BLOCK, math.ceil(stop / BLOCK)):
            first = block * BLOCK
            drawn = self._block(block)
            lo, hi = max(start, first) - first, min(stop, first + BLOCK) - first
            parts.append([t[lo:hi] for t in drawn])
        if not parts:
            return self._block(0, count=0)
        return VideoEmbedding(*(torch.cat(tensors) for tensors in zip(*parts, strict=True)))

    def _block_centres(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centres ``[BLOCK, dim]`` and scenes ``[BLOCK, 2, dim]`` of one block of videos."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + block + 7)
        rows = torch.arange(block * BLOCK, (block + 1) * BLOCK)
        video_dir, _ = self._directions()
        own = _unit(torch.randn(BLOCK, self.dim, generator=g))
        topic = self._topics[self.topic(rows)]
        centre = _unit(0.55 * video_dir + 0.6 * topic + 0.6 * own)
        scenes = _unit(centre[:, None] + 0.45 * _unit(torch.randn(BLOCK, 2, self.dim, generator=g)))
        return centre, scenes

    def _block(self, block: int, count: int = BLOCK) -> list[torch.Tensor]:
        centre, scenes = self._block_centres(block)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + block + 11)
        t, e = self.frames, self.expansion
        lengths = torch.randint(self.min_frames, t + 1, (BLOCK,), generator=g)
        lengths = torch.where(torch.rand(BLOCK, generator=g) < 0.6, t, lengths)  # most clips full
        scene_of = (torch.arange(t)[None] >= (lengths[:, None] + 1) // 2).long()  # 0 then 1
        scene = scenes.gather(1, scene_of[..., None].expand(-1, -1, self.dim))
        noise = _unit(torch.randn(BLOCK, t, self.dim, generator=g))
        frames = _unit(scene + 0.3 * noise)
        jitter = _unit(torch.randn(frames.shape, generator=g))
        context = _unit(frames + 0.5 * centre[:, None] + 0.2 * jitter)
        extra = _unit(centre[:, None] + 0.35 * _unit(torch.randn(BLOCK, e, self.dim, generator=g)))
        f_mask = torch.arange(t)[None] < lengths[:, None]
        v_mask = F.pad(f_mask, (0, e), value=True)
        video = torch.cat([context, extra], dim=1)
        return [
            frames[:count].half(),
            f_mask[:count],
            video[:count].half(),
            v_mask[:count],
        ]

    def queries(self, targets: Sequence[int], seed: int = 1) -> TextEmbedding:
        """One encoded query per target video (fp32 ``[Q, query_len, dim]``, every row valid)."""
        targets = torch.as_tensor(list(targets), dtype=torch.long)
        g = torch.Generator().manual_seed(self.seed * 7919 + seed)
        _, text_dir = self._directions()
        n, w = len(targets), self.query_words
        scenes = torch.empty(n, 2, self.dim)
        for block in targets.div(BLOCK, rounding_mode="floor").unique().tolist():
            here = targets.div(BLOCK, rounding_mode="floor") == block
            scenes[here] = self._block_centres(block)[1][targets[here] - block * BLOCK]
        pick = torch.randint(0, 2, (n, w), generator=g)
        aim = scenes.gather(1, pick[..., None].expand(-1, -1, self.dim))
        noise = _unit(torch.randn(n, w, self.dim, generator=g))
        topic = self._topics[self.topic(targets)][:, None]
        words = _unit(self.query_signal * aim + topic + 0.6 * text_dir + self.query_noise * noise)
        pads = _unit(
            words.mean(dim=1, keepdim=True)
            + 0.1 * _unit(torch.randn(n, self.query_len - w, self.dim, generator=g))
        )
        vectors = torch.cat([words, pads], dim=1)
        mask = torch.ones(n, self.query_len, dtype=torch.bool)
        ids = torch.zeros(n, self.query_len, dtype=torch.long)
        return TextEmbedding(vectors, mask, ids)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
