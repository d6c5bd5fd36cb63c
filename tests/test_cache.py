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
from vcb_utils.datasets import Record, VideoTextDataset, build_dataset
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
    kwargs = dict(
        tokenize=_tokenize, max_frames=4, image_size=32, mean=MEAN, std=STD, framerate=2.0
    )
    decoded = [item[2:] for item in VideoTextDataset(records, **kwargs)]
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips, workers=0)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(video_module, "read_clip", no_decoding)
    cached = [item[2:] for item in VideoTextDataset(records, cache=cache, **kwargs)]
    for (v1, m1), (v2, m2) in zip(decoded, cached, strict=True):
        assert torch.equal(v1, v2) and torch.equal(m1, m2)


def _tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 0]] * len(texts))
    return ids, ids > 0


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


def test_damaged_entries_are_ignored(tmp_path, clips, caplog):
    cache = FrameCache(tmp_path / "cache", SAMPLING)
    cache.build(clips[:2], workers=0)
    cache.entry(clips[0]).write_bytes(b"not numpy")
    np.save(cache.entry(clips[1]), np.zeros((2, 3, 8, 8), np.uint8))
    with caplog.at_level(logging.WARNING):
        assert cache.load(clips[0]) is None and cache.load(clips[1]) is None
    assert "unreadable cache entry" in caplog.text and "shape (2, 3, 8, 8)" in caplog.text


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
    kwargs = dict(tokenize=_tokenize, max_frames=4, image_size=32, mean=MEAN, std=STD)
    dataset = build_dataset(cfg, "train", **kwargs)
    assert dataset.source.cache is not None
    assert len(list(dataset.source.cache.dir.glob("*.npy"))) == 4
    cfg.frame_jitter = True
    assert build_dataset(cfg, "train", **kwargs).source.cache is None
