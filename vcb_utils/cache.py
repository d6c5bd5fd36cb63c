"""A disk cache of decoded frames: each video's sampled frames, once, at the model's input size.

Storage: one uncompressed uint8 ``.npy`` file per video (``[t, 3, S, S]``) in a folder named
after the sampling settings. Reading one is a single sequential read with no decoding, which
is what makes the cache an order of magnitude faster than decoding; one file per video makes
writes atomic (temporary file + rename), so parallel workers need no coordination and an
interrupted build resumes where it stopped. Entries are keyed by the video's path, window,
size and modification time, so a replaced video is decoded again; changing the sampling
settings selects another folder, so stale frames are never read. A damaged entry (unreadable, or
not uint8 ``[1..max_frames, 3, S, S]``) is logged, deleted and decoded again, never returned;
entries are never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vcb_utils.video import FrameSampling, VideoReadError, VideoRef

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Bump when the decoding or preprocessing changes, so that old entries are not read.

2: variable-frame-rate clips are sampled by timestamps.
"""
STALE_TMP_SECONDS = 3600
_DAMAGED = (OSError, EOFError, ValueError, SyntaxError, tokenize.TokenError)
"""What ``np.load`` raises on a damaged file (and ``FrameCache._check`` on a wrong array)."""


@dataclass
class CacheReport:
    """What a build did: videos asked for, already cached, decoded now, and failures."""

    total: int = 0
    cached: int = 0
    built: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    """Video path -> why it could not be decoded."""


class FrameCache:
    """Decoded frames of videos under ``root``, for one ``FrameSampling``."""

    def __init__(self, root: str | os.PathLike, sampling: FrameSampling) -> None:
        self.sampling = sampling
        settings = {"version": CACHE_VERSION, **dataclasses.asdict(sampling)}
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
        name = f"{sampling.image_size}px-{sampling.max_frames}f-{sampling.framerate:g}fps-{digest}"
        self.dir = Path(root) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.dir / "settings.json"
        if not settings_file.is_file():
            settings_file.write_text(json.dumps(settings, indent=2) + "\n")

    def entry(self, video: VideoRef) -> Path | None:
        """The entry file of a video (None when the video file does not exist)."""
        try:
            stat = Path(video.path).stat()
        except OSError:
            return None
        raw = json.dumps(
            [
                str(Path(video.path).resolve()),
                video.start,
                video.end,
                stat.st_size,
                stat.st_mtime_ns,
            ]
        )
        return self.dir / f"{hashlib.sha1(raw.encode()).hexdigest()}.npy"

    def load(self, video: VideoRef, *, backend: str | None = None) -> torch.Tensor | None:
        """The cached frames (uint8 ``[t, 3, S, S]``), or None when not cached.

        A damaged entry is logged, deleted and rebuilt from the video; None when the video
        cannot be decoded (the caller's own decoding then says why).
        """
        path = self.entry(video)
        if path is None or not path.is_file():
            return None
        try:
            return torch.from_numpy(np.array(self._check(path)))
        except _DAMAGED as err:
            self._discard(path, video, err)
        try:
            frames = self.sampling.load(video, backend=backend)
        except VideoReadError:
            return None
        self.store(video, frames)
        return frames

    def _check(self, path: Path) -> np.ndarray:
        """An entry's frames, memory-mapped (not read yet), once its header and size are sound.

        Raises one of ``_DAMAGED`` when the file is unreadable, truncated, pickled, or not uint8
        ``[t, 3, S, S]`` with ``1 <= t <= max_frames``.
        """
        frames = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(frames, np.ndarray):
            raise ValueError("not a .npy file")
        size, most = self.sampling.image_size, self.sampling.max_frames
        shape_ok = frames.ndim == 4 and frames.shape[1:] == (3, size, size)
        if frames.dtype != np.uint8 or not (shape_ok and 1 <= len(frames) <= most):
            raise ValueError(
                f"{frames.dtype} {list(frames.shape)}, not uint8 [1..{most}, 3, {size}, {size}]"
            )
        return frames

    def _discard(self, path: Path, video: VideoRef, err: Exception) -> None:
        logger.warning(
            "frame cache: deleting damaged entry %s of %s (%s: %s); decoding it again",
            path,
            video.path,
            type(err).__name__,
            err,
        )
        path.unlink(missing_ok=True)

    def store(self, video: VideoRef, frames: torch.Tensor) -> None:
        """Write an entry atomically (a temporary file renamed into place)."""
        path = self.entry(video)
        if path is None:
            raise VideoReadError.at(video.path, "file not found")
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, frames.numpy())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def build(
        self,
        videos: Sequence[VideoRef],
        *,
        workers: int = 2,
        on_error: str = "raise",
        backend: str | None = None,
    ) -> CacheReport:
        """Decode and store every video not cached yet, in parallel, with a progress bar.

        Resumable: entries already written are kept. ``on_error="raise"`` stops at the first
        unreadable video; ``"skip"`` logs each one and lists it in ``report.failed``.
        """
        self._remove_stale_tmp()
        unique = list(dict.fromkeys(videos))
        todo = [v for v in unique if not self._cached(v)]
        report = CacheReport(total=len(unique), cached=len(unique) - len(todo))
        if not todo:
            return report
        jobs = _BuildJobs(self, todo, backend)
        loader = DataLoader(jobs, batch_size=None, num_workers=workers, collate_fn=_identity)
        for path, error in tqdm(loader, total=len(todo), desc="frame cache", unit="video"):
            if error is None:
                report.built += 1
            elif on_error == "raise":
                raise VideoReadError(error, path=path)
            else:
                logger.warning("frame cache: skipping %s", error)
                report.failed[path] = error
        logger.info(
            "frame cache %s: %d cached, %d decoded, %d failed",
            self.dir,
            report.cached,
            report.built,
            len(report.failed),
        )
        return report

    def _cached(self, video: VideoRef) -> bool:
        """Whether a sound entry exists (header and size checked, frames not read)."""
        path = self.entry(video)
        if path is None or not path.is_file():
            return False
        try:
            self._check(path)
        except _DAMAGED as err:
            self._discard(path, video, err)
            return False
        return True

    def _remove_stale_tmp(self) -> None:
        """Temporary files of builds that were killed (older than an hour)."""
        limit = time.time() - STALE_TMP_SECONDS
        for tmp in self.dir.glob("*.tmp"):
            if tmp.stat().st_mtime < limit:
                tmp.unlink(missing_ok=True)


class _BuildJobs(Dataset):
    """Data-loader items that decode one video each and store it; they return errors as text."""

    def __init__(self, cache: FrameCache, videos: list[VideoRef], backend: str | None) -> None:
        self.cache, self.videos, self.backend = cache, videos, backend

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[str, str | None]:
        video = self.videos[index]
        try:
            self.cache.store(video, self.cache.sampling.load(video, backend=self.backend))
        except VideoReadError as err:
            return str(video.path), str(err)
        return str(video.path), None


def _identity(item: tuple[str, str | None]) -> tuple[str, str | None]:
    return item
