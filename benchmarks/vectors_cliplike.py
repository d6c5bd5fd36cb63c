"""Synthetic videos and queries with the hardships of real CLIP libraries.

What makes approximate late-interaction search hard on real embeddings, each on purpose:

- a **strong common component**: every video vector leans on one direction, so two random
  videos have cosine about 0.5 (0.75 within a topic), and every text vector on another (the
  modality gap: matches have small cross-modal cosines, and **margins are small**);
- **topics** of about 200 videos, so a target has many close competitors;
- **hubs**: 1% of the videos lean on a direction that every query also contains a little of,
  so they score high for many queries;
- **near-duplicates**: 5% of the videos are re-uploads of another video of their block (its
  frames plus a little noise, sometimes trimmed);
- **1-4 scenes** per video, cut at random frames;
- query **word tokens at cosine 0.7-0.9 to each other** (the text common component plus the
  query's own gist) and **query-expansion pad tokens** up to ``query_len``, near copies of
  the mean of the words.

Video ``i`` depends only on ``seed`` and ``i // BLOCK``: any range can be drawn on its own (a
million videos chunk by chunk), and a query's target block is drawn again to aim at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024
"""Videos drawn from one random stream (a near-duplicate copies a video of its own block)."""
HUB_SHARE = 0.01
DUPLICATE_SHARE = 0.05


@dataclass(frozen=True)
class ClipLikeVideos:
    """``n_videos`` CLIP-like videos (see the module docstring) and queries aimed at them."""

    n_videos: int
    dim: int = 512
    frames: int = 12
    expansion: int = 2
    query_len: int = 32
    videos_per_topic: int = 200
    seed: int = 0

    @property
    def width(self) -> int:
        """Stored vectors per video: ``frames`` F vectors, then ``frames + expansion`` V."""
        return 2 * self.frames + self.expansion

    @property
    def n_topics(self) -> int:
        return max(1, -(-self.n_videos // self.videos_per_topic))

    def _shared(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1 << 40])
        video, text, hub = _unit(rng.standard_normal((3, self.dim), dtype=np.float32))
        topics = _unit(rng.standard_normal((self.n_topics, self.dim), dtype=np.float32))
        return {"video": video, "text": text, "hub": hub, "topics": topics}

    def videos(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Vectors ``[n, width, dim]`` (fp16, unit, F then V, padding zero) and their mask."""
        stop = self.n_videos if stop is None else stop
        if not 0 <= start <= stop <= self.n_videos:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.n_videos}")
        shared = self._shared()
        vectors, masks = [], []
        for block in range(start // BLOCK, -(-stop // BLOCK)):
            first = block * BLOCK
            drawn = self._block(block, shared)
            lo, hi = max(start, first) - first, min(stop, first + BLOCK) - first
            vectors.append(drawn["vectors"][lo:hi])
            masks.append(drawn["mask"][lo:hi])
        if not vectors:
            return np.zeros((0, self.width, self.dim), np.float16), np.zeros((0, self.width), bool)
        return np.concatenate(vectors), np.concatenate(masks)

    def _block(self, block: int, shared: dict) -> dict:
        rng = np.random.default_rng([self.seed, block])
        n, t, e, d = BLOCK, self.frames, self.expansion, self.dim
        rows = np.arange(block * BLOCK, (block + 1) * BLOCK)
        topic = (rows * 2654435761 + 97) % self.n_topics
        hub = rng.random(n) < HUB_SHARE
        own = _unit(rng.standard_normal((n, d), dtype=np.float32))
        centre = _unit(
            1.1 * shared["video"]
            + 0.7 * shared["topics"][topic]
            + 0.7 * own
            + 0.9 * hub[:, None] * shared["hub"]
        )
        n_scenes = rng.integers(1, 5, n)
        lengths = np.where(rng.random(n) < 0.6, t, rng.integers(4, t + 1, n))
        scenes = _unit(centre[:, None] + 0.5 * _unit(rng.standard_normal((n, 4, d), np.float32)))
        scene_of = _scene_of_frames(rng, n_scenes, lengths, t)
        frames = scenes[np.arange(n)[:, None], scene_of]
        frames = _unit(frames + 0.2 * _unit(rng.standard_normal((n, t, d), dtype=np.float32)))
        # near-duplicates: a video of the block (drawn earlier in it) again, a little changed
        copy_of = np.where(rng.random(n) < DUPLICATE_SHARE, rng.integers(0, n, n), np.arange(n))
        copy_of = np.minimum(copy_of, np.arange(n))
        again = copy_of < np.arange(n)
        frames[again] = _unit(
            frames[copy_of[again]]
            + 0.1 * _unit(rng.standard_normal((int(again.sum()), t, d), np.float32))
        )
        lengths[again] = np.minimum(lengths[copy_of[again]], lengths[again] + 2)
        centre[again] = centre[copy_of[again]]
        scenes[again] = scenes[copy_of[again]]
        scene_of[again] = scene_of[copy_of[again]]
        f_mask = np.arange(t)[None] < lengths[:, None]
        frames *= f_mask[..., None]
        jitter = _unit(rng.standard_normal((n, t, d), dtype=np.float32))
        context = _unit(frames + 0.6 * centre[:, None] + 0.2 * jitter) * f_mask[..., None]
        extra = _unit(centre[:, None] + 0.25 * _unit(rng.standard_normal((n, e, d), np.float32)))
        vectors = np.concatenate([frames, context, extra], axis=1).astype(np.float16)
        mask = np.concatenate([f_mask, f_mask, np.ones((n, e), bool)], axis=1)
        present = np.zeros((n, 4), bool)
        rows_of = np.broadcast_to(np.arange(n)[:, None], scene_of.shape)
        present[rows_of[f_mask], scene_of[f_mask]] = True
        return {"vectors": vectors, "mask": mask, "scenes": scenes, "present": present}

    def queries(self, targets, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One query per target video: vectors ``[Q, query_len, dim]`` (fp32, unit) and a mask
        (every vector valid: the expansion tokens count, as the model's do)."""
        targets = np.asarray(targets, dtype=np.int64)
        shared = self._shared()
        rng = np.random.default_rng([self.seed, seed, 1 << 41])
        out = np.empty((len(targets), self.query_len, self.dim), np.float32)
        blocks = {b: self._block(b, shared) for b in np.unique(targets // BLOCK).tolist()}
        for q, target in enumerate(targets.tolist()):
            drawn, row = blocks[target // BLOCK], target % BLOCK
            shown = np.nonzero(drawn["present"][row])[0]
            named = rng.choice(shown, size=min(len(shown), rng.integers(1, 3)), replace=False)
            words = int(rng.integers(6, 15))
            aim = drawn["scenes"][row, named[np.arange(words) % len(named)]]
            gist = _unit(rng.standard_normal(self.dim, dtype=np.float32))
            noise = _unit(rng.standard_normal((words, self.dim), dtype=np.float32))
            word = _unit(
                0.9 * shared["text"] + 0.35 * aim + 0.2 * shared["hub"] + 0.35 * gist + 0.45 * noise
            )
            pads = _unit(
                word.mean(axis=0)
                + 0.05 * _unit(rng.standard_normal((self.query_len - words, self.dim), np.float32))
            )
            out[q] = np.concatenate([word, pads])
        return out, np.ones(out.shape[:2], bool)


def _scene_of_frames(
    rng: np.random.Generator, n_scenes: np.ndarray, lengths: np.ndarray, t: int
) -> np.ndarray:
    """``[n, t]`` the scene of each frame: scenes in order, cut before ``n_scenes - 1`` frames
    drawn at random among frames 1 to length - 1 (frames past the clip: its last scene)."""
    keys = rng.random((len(lengths), t))
    keys[:, 0] = 2.0  # never cut before the first frame
    keys[np.arange(t)[None] >= lengths[:, None]] = 3.0  # nor past the clip
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    cut = rank < (np.minimum(n_scenes, lengths) - 1)[:, None]
    return np.cumsum(cut, axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
