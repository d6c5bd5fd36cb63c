"""Synthetic multi-scene videos and text queries, for testing search on data it was not tuned on.

Each video is 2-5 **scenes** in a row (cuts at random frames), each scene showing one
**concept** from a shared vocabulary whose popularity falls off like a power law (a few
concepts appear in thousands of videos, most in a few dozen), drawn in the video's own
**style**. Frames of a scene are near copies of each other; V vectors are the frames smoothed
over their neighbours and pulled towards the video's mean (the temporal transformer's
context), followed by ``expansion`` tokens near that mean. A query describes one to three of
its target's scenes (one word per concept it names, noisy), perhaps its style, and is padded
to ``query_len`` with query-expansion tokens near the mean of its words.

Video ``i`` depends only on ``seed`` and ``i // BLOCK``: any range can be drawn on its own, so a
million videos are made chunk by chunk, and a query's target is drawn again to aim at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 1024
"""Videos drawn from one random stream."""


@dataclass(frozen=True)
class MultiSceneVideos:
    """``n_videos`` multi-scene videos (see the module docstring) and queries aimed at them."""

    n_videos: int
    dim: int = 512
    frames: int = 12
    expansion: int = 2
    query_len: int = 32
    scenes_per_concept: int = 40
    seed: int = 0

    @property
    def width(self) -> int:
        """Stored vectors per video: ``frames`` F vectors, then ``frames + expansion`` V."""
        return 2 * self.frames + self.expansion

    @property
    def n_concepts(self) -> int:
        return max(16, self.n_videos * 7 // (2 * self.scenes_per_concept))

    def _shared(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The direction every video vector shares, the one every text vector shares, and the
        concept vocabulary."""
        rng = np.random.default_rng([self.seed, 1 << 40])
        video, text = _unit(rng.standard_normal((2, self.dim), dtype=np.float32))
        concepts = _unit(rng.standard_normal((self.n_concepts, self.dim), dtype=np.float32))
        return video, text, concepts

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

    def _block(self, block: int, shared: tuple) -> dict:
        video_dir, _, concepts = shared
        rng = np.random.default_rng([self.seed, block])
        n, t, e, d = BLOCK, self.frames, self.expansion, self.dim
        n_scenes = rng.integers(2, 6, n)
        lengths = np.where(rng.random(n) < 0.6, t, rng.integers(6, t + 1, n))
        # power-law popularity: concept = floor(K * u^3)
        concept = (self.n_concepts * rng.random((n, 5)) ** 3).astype(np.int64)
        style = _unit(rng.standard_normal((n, d), dtype=np.float32))
        noise = _unit(rng.standard_normal((n, 5, d), dtype=np.float32))
        scenes = _unit(
            0.45 * video_dir + 0.8 * concepts[concept] + 0.45 * style[:, None] + 0.35 * noise
        )
        scene_of = _scene_of_frames(rng, n_scenes, lengths, t)
        frames = scenes[np.arange(n)[:, None], scene_of]
        frames = _unit(frames + 0.25 * _unit(rng.standard_normal((n, t, d), dtype=np.float32)))
        f_mask = np.arange(t)[None] < lengths[:, None]
        frames *= f_mask[..., None]
        mean = _unit(frames.sum(axis=1))
        smoothed = frames.copy()
        smoothed[:, 1:] += 0.5 * frames[:, :-1]
        smoothed[:, :-1] += 0.5 * frames[:, 1:]
        jitter = _unit(rng.standard_normal((n, t, d), dtype=np.float32))
        context = _unit(smoothed + 0.6 * mean[:, None] + 0.15 * jitter) * f_mask[..., None]
        extra = _unit(mean[:, None] + 0.3 * _unit(rng.standard_normal((n, e, d), np.float32)))
        vectors = np.concatenate([frames, context, extra], axis=1).astype(np.float16)
        mask = np.concatenate([f_mask, f_mask, np.ones((n, e), bool)], axis=1)
        return {
            "vectors": vectors,
            "mask": mask,
            "concept": concept,
            "style": style,
            "present": _present(scene_of, f_mask, n_scenes),
        }

    def queries(self, targets, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """One query per target video: vectors ``[Q, query_len, dim]`` (fp32, unit) and a mask
        (every vector valid: the expansion tokens count, as the model's do)."""
        targets = np.asarray(targets, dtype=np.int64)
        shared = self._shared()
        _, text_dir, concepts = shared
        rng = np.random.default_rng([self.seed, seed, 1 << 41])
        out = np.empty((len(targets), self.query_len, self.dim), np.float32)
        blocks = {b: self._block(b, shared) for b in np.unique(targets // BLOCK).tolist()}
        for q, target in enumerate(targets.tolist()):
            drawn, row = blocks[target // BLOCK], target % BLOCK
            shown = np.nonzero(drawn["present"][row])[0]
            named = rng.choice(shown, size=min(len(shown), rng.integers(1, 4)), replace=False)
            words = int(rng.integers(5, 13))
            aim = concepts[drawn["concept"][row, named[np.arange(words) % len(named)]]]
            aim[-1] = drawn["style"][row] if words > 6 else aim[-1]
            noise = _unit(rng.standard_normal((words, self.dim), dtype=np.float32))
            word = _unit(0.5 * text_dir + 0.45 * aim + 0.85 * noise)
            pads = _unit(
                word.mean(axis=0)
                + 0.15 * _unit(rng.standard_normal((self.query_len - words, self.dim), np.float32))
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


def _present(scene_of: np.ndarray, f_mask: np.ndarray, n_scenes: np.ndarray) -> np.ndarray:
    """``[n, 5]`` which scenes have at least one valid frame."""
    present = np.zeros((len(scene_of), 5), bool)
    rows = np.broadcast_to(np.arange(len(scene_of))[:, None], scene_of.shape)
    present[rows[f_mask], scene_of[f_mask]] = True
    return present & (np.arange(5)[None] < n_scenes[:, None])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
