"""The frame cache: same frames as decoding, resumable, invalidated by settings and sources."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vcb_utils import video as video_module
from vcb_utils.cache import FrameCache
from vcb_utils.config import DataConfig
from vcb_utils.datasets import Preprocessing, Record, VideoTextDataset, build_dataset
from vcb_utils.synthetic import write_video
from vcb_utils.video import FrameSampling, VideoReadError, VideoRef

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SAMPLING = FrameSampling(max_frames=4, image_size=32, framerate=2.0)


@pytest.fixture
def clips(tmp_path) -> list[VideoRef]:
    """Four 3 s clips at 8 fps with different content, plus one with a window."""
    refs = []
    for i in range(4):
        rng = np.random.default_rng(i)
        frames = np.repeat(rng.integers(0, 256, (24, 12, 16, 3), dtype=np.uint8), 4, axis=1)
        write_video(tmp_path / f"clip{i}.mp4", np.repeat(frames, 4, axis=2), fps=8)
        refs.append(VideoRef(f"clip{i}", tmp_path / f"clip{i}.mp4"))
    refs.append(VideoRef("clip0-window", tmp_path / "clip0.mp4", 1.0, 2.0))
    return refs


def test_cached_frames_equal_decoded_frames(tmp_path, clips):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    report = cache.build(clips, workers=2)
    assert (report.total, report.cached, report.built, report.failed) == (5, 0, 5, {})
    assert len(list(cache.dir.glob("*.npy"))) == 5
    for ref in clips:
        stored = cache.load(ref)
        assert stored.dtype == torch.uint8 and torch.equal(stored, SAMPLING.load(ref))
    assert cache.load(clips[4]).shape == (3, 3, 32, 32)  # the window holds 3 positions


def test_dataset_reads_the_cache_transparently(tmp_path, clips, monkeypatch):
    records = [
        Record(r.video_id, r.path, f"caption {i}", r.start, r.end) for i, r in enumerate(clips)
    ]
    prep = _preprocessing()
    decoded = [item[2:] for item in VideoTextDataset(records, _tokenize, prep.source(2.0))]
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips, workers=0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(video_module, "read_clip", no_decoding)
    source = prep.source(2.0, cache=cache)
    cached = [item[2:] for item in VideoTextDataset(records, _tokenize, source)]
    for (v1, m1), (v2, m2) in zip(decoded, cached, strict=True):
        assert torch.equal(v1, v2) and torch.equal(m1, m2)


def _tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 0]] * len(texts))
    return ids, ids > 0


def _preprocessing() -> Preprocessing:
    return Preprocessing(_tokenize, SAMPLING.max_frames, SAMPLING.image_size, MEAN, STD)


def test_an_interrupted_build_resumes(tmp_path, clips, monkeypatch):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    calls = []
    real_store = FrameCache.store

    def store_then_stop(self, ref, frames):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(ref)
        real_store(self, ref, frames)

    monkeypatch.setattr(FrameCache, "store", store_then_stop)
    with pytest.raises(KeyboardInterrupt):
        cache.build(clips, workers=0)
    monkeypatch.undo()
    stale = cache.dir / "leftover.123.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200,) * 2)
    written = {p: p.stat().st_mtime_ns for p in cache.dir.glob("*.npy")}
    assert len(written) == 2
    report = cache.build(clips, workers=2)
    assert (report.cached, report.built) == (2, 3)
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # not rewritten
    assert not stale.exists()
    assert FrameCache(tmp_path / "cache", SAMPLING).build(clips).built == 0


def test_settings_and_changed_sources_invalidate(tmp_path, clips):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips, workers=0)
    for changed in (
        FrameSampling(4, 32, 1.0),
        FrameSampling(3, 32, 2.0),
        FrameSampling(4, 24, 2.0),
        FrameSampling(4, 32, 2.0, decode_size=16),
    ):
        other = FrameCache(tmp_path / "cache", changed)
        assert other.dir != cache.dir and other.load(clips[1]) is None
    old = cache.load(clips[1])
    frames = np.random.default_rng(9).integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    write_video(clips[1].path, frames, fps=8)  # the source changes: its entry is stale
    os.utime(clips[1].path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.load(clips[1]) is None
    report = cache.build(clips, workers=0)
    assert (report.cached, report.built) == (4, 1)
    assert not torch.equal(cache.load(clips[1]), old)
    assert torch.equal(cache.load(clips[1]), SAMPLING.load(clips[1]))


class _Tripwire:
    """Unpickling it creates ``marker``: proves whether a cache entry was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _damage(entry: Path, how: str) -> None:
    """Damage a cache entry of SAMPLING (4 frames of 3 x 32 x 32) in one of several ways."""
    data = entry.read_bytes()
    if how == "zero_bytes":
        entry.write_bytes(b"")
    elif how == "truncated":  # a partial write
        entry.write_bytes(data[: len(data) // 2])
    elif how == "not_npy":
        entry.write_bytes(b"not numpy" * 100)
    elif how == "header_bit_flip":  # shape (4, 3, 32, 32) becomes (5, 3, 32, 32)
        at = data.index(b"'shape': (") + len(b"'shape': (")
        entry.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    elif how == "pickled":
        np.save(entry, np.array([_Tripwire(entry.with_suffix(".unpickled"))], dtype=object))
    else:
        frames = {
            "wrong_size": np.zeros((4, 3, 8, 8), np.uint8),
            "wrong_dtype": np.zeros((4, 3, 32, 32), np.float32),
            "no_frames": np.zeros((0, 3, 32, 32), np.uint8),
            "too_many_frames": np.zeros((5, 3, 32, 32), np.uint8),
        }[how]
        np.save(entry, frames)


DAMAGE = [
    "zero_bytes", "truncated", "not_npy", "header_bit_flip", "pickled",
    "wrong_size", "wrong_dtype", "no_frames", "too_many_frames",
]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("route", ["load", "build"])
def test_damaged_entries_are_rebuilt(tmp_path, clips, caplog, how, route):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips[:2], workers=0)
    entry, other = cache.entry(clips[0]), cache.entry(clips[1])
    untouched = other.stat().st_mtime_ns
    _damage(entry, how)
    with caplog.at_level(logging.WARNING, logger="vcb_utils.cache"):
        if route == "load":
            frames = cache.load(clips[0])
        else:
            report = cache.build(clips[:2], workers=0)
            assert (report.cached, report.built) == (1, 1)
            frames = cache.load(clips[0])
        assert cache.load(clips[0]) is not None  # the rebuilt entry is not reported again
    expected = SAMPLING.load(clips[0])
    assert frames.dtype == torch.uint8 and torch.equal(frames, expected)
    assert torch.equal(torch.from_numpy(np.load(entry)), expected)  # the entry is rewritten
    assert other.stat().st_mtime_ns == untouched
    assert not entry.with_suffix(".unpickled").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and entry.name in warnings[0]


def test_a_damaged_entry_of_an_undecodable_video_is_dropped(tmp_path, clips, monkeypatch):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips[:1], workers=0)
    _damage(cache.entry(clips[0]), "truncated")

    def fail(self, video, **kwargs):
        raise VideoReadError.at(video.path, "decoding failed")

    monkeypatch.setattr(FrameSampling, "load", fail)
    assert cache.load(clips[0]) is None and not cache.entry(clips[0]).exists()


def test_build_errors_follow_on_error(tmp_path, clips):
    bad = VideoRef("bad", tmp_path / "bad.mp4")
    Path(bad.path).write_bytes(b"garbage" * 100)
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    with pytest.raises(VideoReadError, match="bad.mp4"):
        cache.build([clips[0], bad], workers=0)
    report = cache.build([clips[0], bad, clips[1]], workers=2, on_error="skip")
    assert list(report.failed) == [str(bad.path)] and report.built + report.cached == 2


def test_build_dataset_fills_the_cache_and_skips_it_with_jitter(tmp_path, clips):
    table = tmp_path / "anno.csv"
    table.write_text("video,caption\n" + "".join(f"clip{i}.mp4,caption {i}\n" for i in range(4)))
    cfg = DataConfig(
        datatype="csv",
        anno_path=str(table),
        video_framerate=2.0,
        workers=0,
        cache_dir=str(tmp_path / "cache"),
    )
    dataset = build_dataset(cfg, "train", _preprocessing())
    assert dataset.source.cache is not None
    assert len(list(dataset.source.cache.dir.glob("*.npy"))) == 4
    cfg.frame_jitter = True
    assert build_dataset(cfg, "train", _preprocessing()).source.cache is None
