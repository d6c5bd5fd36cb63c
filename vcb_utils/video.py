"""Video decoding, frame sampling and CLIP preprocessing on tensors.

Two decoders give identical frames: decord (the default, fast random access) and PyAV (the
fallback, chosen with ``backend="pyav"``, the ``VCB_VIDEO_BACKEND`` environment variable, or
automatically when decord is not importable). Frame sampling follows the reference code
(DRL, TS2-Net) on constant-frame-rate clips: one position every ``round(fps / framerate)`` frames
between ``start`` and ``end``, then ``linspace`` down to ``max_frames``. Variable-frame-rate clips
are sampled by presentation time instead (``SampleWindow.by_time``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav")
DECODE_CHUNK = 4
"""Frames decoded at a time when shrinking them (bounds memory on large videos)."""
TIME_TOLERANCE = 1e-3
"""Seconds of slack when comparing timestamps (decord reports them as float32)."""


class VideoReadError(RuntimeError):
    """A video file is missing, empty, corrupt, has no frames, or lacks a requested frame.

    ``path`` and ``cause`` hold the two parts of the message (None when the error was re-raised
    from a data-loader worker, which keeps only the message).
    """

    def __init__(self, message: str, *, path: str | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.cause = cause

    @classmethod
    def at(cls, path: str | os.PathLike, cause: str) -> VideoReadError:
        """The error for ``path``: ``cannot read video <path>: <cause>``."""
        return cls(f"cannot read video {path}: {cause}", path=str(path), cause=cause)


@dataclass(frozen=True)
class VideoRef:
    """A video to sample frames from: the file, and optionally a window in seconds."""

    video_id: str
    path: Path
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class FrameSampling:
    """How a video becomes model frames: sampling rate and count, input size, decode size."""

    max_frames: int = 12
    image_size: int = 224
    framerate: float = 1.0
    decode_size: int | None = None
    """Shrink decoded frames to this short side (None = full size) before the CLIP resize."""

    def load(
        self,
        video: VideoRef,
        *,
        jitter: bool = False,
        rng: np.random.Generator | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Sampled frames after resize and centre crop: uint8 ``[t, 3, S, S]``, t <= max_frames."""
        clip = read_clip(
            video.path,
            framerate=self.framerate,
            max_frames=self.max_frames,
            start=video.start,
            end=video.end,
            size=self.decode_size,
            jitter=jitter,
            rng=rng,
            backend=backend,
        )
        return resize_center_crop(clip.frames, self.image_size)


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder reports about a file: frame count and frames per second."""

    num_frames: int
    fps: float


@dataclass(frozen=True)
class Clip:
    """Frames read from one video (uint8 ``[T, H, W, 3]``), the frame indices and the file info."""

    frames: np.ndarray
    indices: list[int]
    info: VideoInfo


def default_backend() -> str:
    """``VCB_VIDEO_BACKEND`` when set, else decord when importable, else PyAV."""
    name = os.environ.get("VCB_VIDEO_BACKEND")
    if name:
        return _check_backend(name)
    return "decord" if importlib.util.find_spec("decord") is not None else "pyav"


def _check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown video backend {name!r}; choose one of {BACKENDS}")
    return name


@dataclass(frozen=True)
class SampleWindow:
    """Which frames of a clip to take: one every ``1 / framerate`` seconds from ``start`` to
    ``end`` (seconds; None: the clip's ends), thinned to at most ``max_frames``; with ``jitter``
    (training only), each kept position moves to a random frame of its segment, drawn from
    ``rng``. ``by_index`` applies it to a constant frame rate, ``by_time`` to timestamps."""

    framerate: float = 1.0
    max_frames: int = 12
    start: float | None = None
    end: float | None = None
    jitter: bool = False
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.framerate <= 0 or self.max_frames < 1:
            raise ValueError(
                f"need framerate > 0 and max_frames >= 1; got framerate={self.framerate}, "
                f"max_frames={self.max_frames}"
            )
        if (self.start is not None and self.start < 0) or (self.end is not None and self.end < 0):
            raise ValueError(f"start and end must be >= 0 seconds (got {self.start}, {self.end})")

    def by_index(self, num_frames: int, fps: float) -> list[int]:
        """The reference semantics (``sample_frame_indices``) on ``num_frames`` at ``fps``.

        Positions run from ``start`` to ``end`` (``end`` clipped to the last frame) every
        ``round(fps / framerate)`` frames (at least 1); when there are more than ``max_frames``,
        ``linspace(0, n - 1, max_frames)`` of them are kept (truncated to int). An empty list
        means the window holds no frame. A jittered position stays within its segment, the
        frames up to the next kept position (or one stride past the last).
        """
        if fps <= 0:
            raise ValueError(f"need fps > 0; got fps={fps}")
        first = 0 if self.start is None else int(self.start * fps)
        last = num_frames - 1 if self.end is None else int(min(self.end * fps, num_frames - 1))
        stride = max(1, int(round(fps / self.framerate)))
        positions = _thin(list(range(first, last + 1, stride)), self.max_frames)
        if self.jitter and positions:
            positions = _jitter(positions, min(positions[-1] + stride, last + 1), self.rng)
        return positions

    def by_time(self, timestamps: Sequence[float] | np.ndarray) -> list[int]:
        """Frame indices by presentation time, for variable-frame-rate clips.

        ``timestamps`` are the frames' start times in seconds, ascending (shifted so that the
        first frame starts at 0). Each target time takes the frame on screen then: the last one
        starting at or before it (within ``TIME_TOLERANCE``). The targets run every
        ``1 / framerate`` seconds from the start of the frame on screen at ``start`` (default 0)
        up to ``end`` (default, and at most, the last frame's start). A frame taken twice is kept
        once, then thinned and jittered as in ``by_index``, which gives the same indices on a
        constant-frame-rate clip when ``fps / framerate`` is a whole number.
        """
        times = np.asarray(timestamps, dtype=np.float64)
        if times.size == 0:
            return []
        times = times - times[0]
        first = 0.0 if self.start is None else self.start
        last = times[-1] if self.end is None else min(self.end, times[-1])
        if first > last + TIME_TOLERANCE:
            return []
        origin = times[_shown_at(times, first)]
        steps = int((last - origin + TIME_TOLERANCE) * self.framerate) + 1
        targets = origin + np.arange(steps) / self.framerate
        shown = _shown_at(times, targets).tolist()
        positions = _thin(list(dict.fromkeys(shown)), self.max_frames)
        if self.jitter:  # the last segment ends a step after its frame, or with the window
            step_after = int(_shown_at(times, times[positions[-1]] + 1 / self.framerate))
            stop = min(max(step_after, positions[-1] + 1), int(_shown_at(times, last)) + 1)
            positions = _jitter(positions, stop, self.rng)
        return positions


def sample_frame_indices(
    num_frames: int,
    fps: float,
    framerate: float = 1.0,
    max_frames: int = 12,
    start: float | None = None,
    end: float | None = None,
    *,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Frame indices to sample from a clip, with the reference semantics (``SampleWindow``)."""
    window = SampleWindow(framerate, max_frames, start, end, jitter, rng)
    return window.by_index(num_frames, fps)


def is_constant_rate(timestamps: Sequence[float] | np.ndarray, fps: float) -> bool:
    """Whether every frame starts within half a frame of ``i / fps`` (from the first frame)."""
    times = np.asarray(timestamps, dtype=np.float64)
    nominal = np.arange(times.size) / fps
    return times.size == 0 or bool(np.abs(times - times[0] - nominal).max() < 0.5 / fps)


def _thin(positions: list[int], max_frames: int) -> list[int]:
    """``linspace(0, n - 1, max_frames)`` of the positions when there are more than that."""
    if len(positions) <= max_frames:
        return positions
    keep = np.linspace(0, len(positions) - 1, num=max_frames, dtype=int)
    return [positions[k] for k in keep]


def _shown_at(times: np.ndarray, targets: float | np.ndarray) -> np.ndarray:
    """Index of the last frame starting at or before each target time (times[0] <= target)."""
    return np.searchsorted(times, np.asarray(targets) + TIME_TOLERANCE, side="right") - 1


def _jitter(positions: list[int], stop: int, rng: np.random.Generator | None) -> list[int]:
    rng = rng if rng is not None else np.random.default_rng()
    bounds = [*positions[1:], stop]
    return [int(rng.integers(lo, hi)) for lo, hi in zip(positions, bounds, strict=True)]


def probe(path: str | os.PathLike, backend: str | None = None) -> VideoInfo:
    """Frame count and fps of a video, as the chosen backend sees them."""
    with _open(path, backend) as video:
        return video.info


def read_frames(
    path: str | os.PathLike,
    indices: Sequence[int],
    *,
    size: int | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` as uint8 RGB ``[T, H, W, 3]``.

    ``size`` shrinks frames as they are decoded, a few at a time, so that the short side is
    ``size`` pixels (bilinear, antialiased; smaller frames are left as they are): memory stays
    that of the small frames. Raises ``VideoReadError`` naming the file for a missing, empty,
    corrupt or too short file.
    """
    with _open(path, backend) as video:
        return video.read(indices, size)


def read_clip(
    path: str | os.PathLike,
    *,
    framerate: float = 1.0,
    max_frames: int = 12,
    start: float | None = None,
    end: float | None = None,
    size: int | None = None,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
    backend: str | None = None,
) -> Clip:
    """Open a video once, sample its frame indices and decode them.

    Variable-frame-rate clips are sampled by time (``SampleWindow.by_time``); constant-frame-rate
    ones (``is_constant_rate``, or timestamps missing or out of order) by index, the reference
    semantics (``SampleWindow.by_index``, ``sample_frame_indices``).
    """
    with _open(path, backend) as video:
        info, times = video.info, video.timestamps()
        window = SampleWindow(framerate, max_frames, start, end, jitter, rng)
        if _variable_rate(times, info.fps):
            indices = window.by_time(times)
        else:
            indices = window.by_index(info.num_frames, info.fps)
        if not indices:
            raise VideoReadError.at(
                path,
                f"no frame between start={start} and end={end} "
                f"({info.num_frames} frames at {info.fps:g} fps)",
            )
        return Clip(video.read(indices, size), indices, info)


def _variable_rate(times: np.ndarray | None, fps: float) -> bool:
    """Whether there are usable (strictly increasing) timestamps and they vary in rate."""
    return (
        times is not None and bool(np.all(np.diff(times) > 0)) and not is_constant_rate(times, fps)
    )


def _open(path: str | os.PathLike, backend: str | None) -> _DecordFile | _PyAVFile:
    path = Path(path)
    if not path.is_file():
        raise VideoReadError.at(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoReadError.at(path, "empty file (0 bytes)")
    name = _check_backend(backend or default_backend())
    return _DecordFile(path) if name == "decord" else _PyAVFile(path)


def _check_indices(path: Path, indices: Sequence[int], num_frames: int) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise VideoReadError.at(path, "no frame indices requested")
    bad = [i for i in indices if not 0 <= i < num_frames]
    if bad:
        raise VideoReadError.at(path, f"frame index {bad[0]} out of range ({num_frames} frames)")
    return indices


def _shrink(frames: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` with the short side brought down to ``size`` (bilinear)."""
    height, width = frames.shape[1:3]
    if size is None or min(height, width) <= size:
        return frames
    if height <= width:
        new = (size, max(1, round(width * size / height)))
    else:
        new = (max(1, round(height * size / width)), size)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    video = F.interpolate(video, size=new, mode="bilinear", antialias=True, align_corners=False)
    return video.permute(0, 2, 3, 1).numpy()


class _DecordFile:
    """A decord reader (single-threaded: data-loader workers parallelise across files)."""

    def __init__(self, path: Path) -> None:
        import decord

        self.path = path
        try:
            self.reader = decord.VideoReader(str(path), num_threads=1)
        except Exception as err:  # decord raises bare RuntimeError / DECORDError
            raise VideoReadError.at(path, _open_cause(path, err)) from err
        if len(self.reader) == 0:
            raise VideoReadError.at(path, "no video frames")
        self.info = VideoInfo(len(self.reader), float(self.reader.get_avg_fps()))

    def __enter__(self) -> _DecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.reader

    def timestamps(self) -> np.ndarray:
        """Every frame's start time in seconds (from decord's frame index, no decoding)."""
        return self.reader.get_frame_timestamp(range(self.info.num_frames))[:, 0].astype(float)

    def read(self, indices: Sequence[int], size: int | None = None) -> np.ndarray:
        indices = _check_indices(self.path, indices, self.info.num_frames)
        step = len(indices) if size is None else DECODE_CHUNK
        try:
            chunks = [
                self.reader.get_batch(indices[i : i + step]).asnumpy()
                for i in range(0, len(indices), step)
            ]
        except Exception as err:
            raise VideoReadError.at(self.path, f"decoding failed: {_short(err)}") from err
        return np.concatenate([_shrink(chunk, size) for chunk in chunks])


def _open_cause(path: Path, err: Exception) -> str:
    """Why decord could not open a file ("Error reading x..." says nothing): PyAV's reason."""
    try:
        _PyAVFile(path).container.close()
    except VideoReadError as pyav_err:
        return pyav_err.cause or _short(err)
    return _short(err)


class _PyAVFile:
    """A PyAV reader that decodes sequentially from the start (frame-exact, like decord)."""

    def __init__(self, path: Path) -> None:
        import av

        self.path = path
        try:
            self.container = av.open(str(path))
        except (av.FFmpegError, OSError) as err:
            raise VideoReadError.at(path, _short(err)) from err
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError.at(path, "no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._pts: list[int | None] | None = None
        self.info = self._info()

    def _info(self) -> VideoInfo:
        num_frames = self.stream.frames or len(self._packet_pts())
        rate = self.stream.average_rate or self.stream.guessed_rate
        if num_frames == 0 or not rate:
            self.container.close()
            raise VideoReadError.at(self.path, "no video frames" if rate else "unknown frame rate")
        return VideoInfo(num_frames, float(rate))

    def _packet_pts(self) -> list[int | None]:
        """The video packets' presentation times (demuxed once, without decoding)."""
        if self._pts is None:
            self._pts = [p.pts for p in self.container.demux(self.stream) if p.size]
            self.container.seek(0)
        return self._pts

    def timestamps(self) -> np.ndarray | None:
        """Every frame's start time in seconds, or None when packets lack them or miscount."""
        pts = self._packet_pts()
        if None in pts or len(pts) != self.info.num_frames:
            return None
        return np.sort(np.array(pts, dtype=np.int64)) * float(self.stream.time_base)

    def __enter__(self) -> _PyAVFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.container.close()

    def read(self, indices: Sequence[int], size: int | None = None) -> np.ndarray:
        import av

        indices = _check_indices(self.path, indices, self.info.num_frames)
        wanted, last = set(indices), max(indices)
        frames: dict[int, np.ndarray] = {}
        decoded = 0
        try:
            for frame in self.container.decode(self.stream):
                if decoded in wanted:
                    frames[decoded] = _shrink(frame.to_ndarray(format="rgb24")[None], size)[0]
                decoded += 1
                if decoded > last:
                    break
        except av.FFmpegError as err:
            raise VideoReadError.at(self.path, f"decoding failed: {_short(err)}") from err
        if len(frames) < len(wanted):
            raise VideoReadError.at(
                self.path, f"only {decoded} of {self.info.num_frames} frames could be decoded"
            )
        return np.stack([frames[i] for i in indices])


def _short(err: BaseException) -> str:
    """A one-line cause: no decord log prefix, and FFmpeg's invalid-data code in words."""
    lines = str(err).strip().splitlines()
    text = _LOG_PREFIX.sub("", lines[0]) if lines else type(err).__name__
    if "1094995529" in text or "Invalid data found" in text:
        return "corrupt or truncated file (FFmpeg: invalid data found)"
    return text


_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Error: )?")


def resize_center_crop(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """CLIP's geometry on uint8 ``[T, H, W, 3]``: bicubic short side to ``image_size``, centre crop.

    Returns uint8 ``[T, 3, image_size, image_size]``; frames already at the size are not resampled.
    The antialiased resize runs on uint8 (torch's fast path), within 2 levels of PIL's bicubic,
    which open_clip's own preprocessing uses.
    """
    video = torch.as_tensor(frames).permute(0, 3, 1, 2)
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short != image_size:
        new_long = int(image_size * long / short)
        new_size = (image_size, new_long) if height <= width else (new_long, image_size)
        video = F.interpolate(
            video, size=new_size, mode="bicubic", antialias=True, align_corners=False
        )
    height, width = video.shape[-2:]
    top = int(round((height - image_size) / 2.0))
    left = int(round((width - image_size) / 2.0))
    return video[..., top : top + image_size, left : left + image_size].contiguous()


def normalize(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` to float ``(x / 255 - mean) / std`` per channel."""
    std_t = torch.tensor(std, dtype=torch.float32, device=video.device).view(3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=video.device).view(3, 1, 1)
    return video.float().mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


def pad_frames(video: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``[T, ...]`` to ``max_frames`` frames; the mask is True for the real frames."""
    count = video.shape[0]
    if count > max_frames:
        raise ValueError(f"{count} frames do not fit in max_frames={max_frames}")
    mask = torch.arange(max_frames) < count
    if count == max_frames:
        return video, mask
    padding = video.new_zeros((max_frames - count, *video.shape[1:]))
    return torch.cat([video, padding]), mask


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    max_frames: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[T, H, W, 3]`` to normalised float ``[F, 3, S, S]`` and its bool frame mask.

    ``F`` is ``max_frames`` (zero frames, masked False, pad short clips) or ``T`` when None.
    """
    video = normalize(resize_center_crop(frames, image_size), mean, std)
    return pad_frames(video, max_frames or video.shape[0])
