"""Frame sampling against the reference code, decord vs PyAV, preprocessing, decode errors."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from vcb_utils import video
from vcb_utils.synthetic import write_video
from vcb_utils.video import (
    SampleWindow,
    VideoReadError,
    VideoRef,
    is_constant_rate,
    normalize,
    pad_frames,
    preprocess_frames,
    read_clip,
    read_frames,
    resize_center_crop,
    sample_frame_indices,
)

MSRVTT_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrvtt" / "video7500.mp4"


def reference_indices(num_frames, fps, framerate, max_frames, start, end):
    """Transcribed from DRL's ``_get_rawvideo_dec`` (decord branch), float framerate allowed."""
    f_start = 0 if start is None else int(start * fps)
    f_end = int(min(1000000000 if end is None else end * fps, num_frames - 1))
    t_stride = max(1, int(round(float(fps) / framerate)))
    all_pos = list(range(f_start, f_end + 1, t_stride))
    if len(all_pos) > max_frames:
        return [all_pos[i] for i in np.linspace(0, len(all_pos) - 1, num=max_frames, dtype=int)]
    return all_pos


def test_sampling_matches_reference_on_many_combinations():
    combos = itertools.product(
        [0, 1, 2, 7, 30, 50, 301],  # frames
        [1.0, 2.5, 3.0, 24.0, 29.97, 30.0],  # fps
        [0.5, 1.0, 2.0, 5.0, 30.0],  # framerate
        [1, 2, 12, 64],  # max_frames
        [None, 0.0, 0.5, 3.0],  # start
        [None, 1.0, 2.7, 100.0],  # end
    )
    count = 0
    for n, fps, rate, most, start, end in combos:
        got = sample_frame_indices(n, fps, rate, most, start, end)
        assert got == reference_indices(n, fps, rate, most, start, end), (
            n,
            fps,
            rate,
            most,
            start,
            end,
        )
        count += 1
    assert count == 13440


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # the real MSR-VTT clip: 50 frames at 3 fps, 1 fps -> 17 positions, linspace to 12
        ((50, 3.0, 1.0, 12), [0, 3, 6, 12, 15, 21, 24, 30, 33, 39, 42, 48]),
        ((1, 30.0, 1.0, 12), [0]),  # a one-frame clip
        ((0, 30.0, 1.0, 12), []),  # no frames at all
        ((5, 2.0, 5.0, 12), [0, 1, 2, 3, 4]),  # fps below framerate: stride 1
        ((30, 10.0, 1.0, 12, None, 100.0), [0, 10, 20]),  # end beyond the clip
        ((30, 10.0, 1.0, 12, 1.5), [15, 25]),  # start inside the clip
        ((30, 10.0, 1.0, 12, 1.0, 2.0), [10, 20]),  # window [1 s, 2 s], both ends kept
        ((30, 10.0, 1.0, 12, 5.0), []),  # start past the end
        ((100, 1.0, 1.0, 4), [0, 33, 66, 99]),  # linspace with truncation
        ((100, 1.0, 1.0, 1), [0]),
        ((16, 8.0, 2.0, 8), [0, 4, 8, 12]),  # the tiny preset on a 2 s synthetic clip
        ((20, 5.0, 2.0, 12), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]),  # round(2.5) = 2
        ((300, 30.0, 0.5, 12), [0, 60, 120, 180, 240]),
    ],
)
def test_sampling_hand_computed_cases(args, expected):
    assert sample_frame_indices(*args) == expected


def test_sampling_rejects_bad_arguments():
    for kwargs in ({"fps": 0}, {"framerate": 0}, {"max_frames": 0}, {"start": -1.0}):
        with pytest.raises(ValueError):
            sample_frame_indices(**{"num_frames": 10, "fps": 10.0, **kwargs})


def test_jitter_stays_in_segments_and_is_seeded():
    base = sample_frame_indices(300, 30.0, 1.0, 4)  # [0, 90, 180, 270]; segments of 90/30
    stops = [90, 180, 270, 300]
    draws = set()
    for seed in range(20):
        got = sample_frame_indices(300, 30.0, 1.0, 4, jitter=True, rng=np.random.default_rng(seed))
        again = sample_frame_indices(
            300, 30.0, 1.0, 4, jitter=True, rng=np.random.default_rng(seed)
        )
        assert got == again
        assert all(lo <= g < hi for g, lo, hi in zip(got, base, stops, strict=True))
        draws.add(tuple(got))
    assert len(draws) > 10
    assert sample_frame_indices(300, 30.0, 1.0, 4, jitter=False) == base


def textured(count: int, height: int, width: int) -> np.ndarray:
    """Frames with smooth texture and a bright bar whose position encodes the frame number."""
    y, x = np.mgrid[0:height, 0:width]
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i, ..., 0] = 128 + 90 * np.sin((x + 3 * i) / 7.0)
        frames[i, ..., 1] = 128 + 90 * np.cos((y - 2 * i) / 5.0)
        frames[i, ..., 2] = (40 + 5 * i) % 256
        frames[i, :, (2 * i) % width] = 255
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    paths = {"landscape": root / "landscape.mp4", "portrait": root / "portrait.mp4"}
    write_video(paths["landscape"], textured(40, 48, 64), fps=30)
    write_video(paths["portrait"], textured(25, 70, 42), fps=25)
    return paths


@pytest.mark.parametrize("name", ["landscape", "portrait"])
@pytest.mark.parametrize("size", [None, 24, 33])
def test_decord_and_pyav_give_identical_frames(clips, name, size):
    indices = [0, 3, 4, 17, 24]
    a = read_frames(clips[name], indices, size=size, backend="decord")
    b = read_frames(clips[name], indices, size=size, backend="pyav")
    assert a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3
    if size is not None:
        assert min(a.shape[1:3]) == size
    np.testing.assert_array_equal(a, b)


def test_decoded_frames_are_the_written_ones(clips):
    written = textured(40, 48, 64).astype(np.float32)
    decoded = read_frames(clips["landscape"], [5, 17, 39]).astype(np.float32)
    for frame, index in zip(decoded, [5, 17, 39], strict=True):
        errors = np.abs(written - frame).mean(axis=(1, 2, 3))
        assert errors.argmin() == index and errors[index] < 6


@pytest.mark.skipif(not MSRVTT_CLIP.is_file(), reason="shared MSR-VTT clip not available")
@pytest.mark.parametrize("size", [None, 112])
def test_backends_agree_on_the_real_msrvtt_clip(size):
    a = read_clip(MSRVTT_CLIP, framerate=1.0, max_frames=12, size=size, backend="decord")
    b = read_clip(MSRVTT_CLIP, framerate=1.0, max_frames=12, size=size, backend="pyav")
    assert a.info.num_frames == b.info.num_frames == 50 and a.info.fps == b.info.fps == 3.0
    assert a.indices == b.indices == [0, 3, 6, 12, 15, 21, 24, 30, 33, 39, 42, 48]
    assert a.frames.shape == ((12, 224, 298, 3) if size is None else (12, 112, 149, 3))
    np.testing.assert_array_equal(a.frames, b.frames)


def test_read_clip_window_and_out_of_range(clips):
    clip = read_clip(clips["landscape"], framerate=10.0, max_frames=12, start=0.5, end=1.0)
    assert clip.indices == [15, 18, 21, 24, 27, 30]
    assert clip.frames.shape == (6, 48, 64, 3)
    with pytest.raises(VideoReadError, match="landscape.mp4: frame index 40 out of range"):
        read_frames(clips["landscape"], [0, 40])
    with pytest.raises(VideoReadError, match="no frame between"):
        read_clip(clips["landscape"], start=5.0)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("VCB_VIDEO_BACKEND", "pyav")
    assert video.default_backend() == "pyav"
    monkeypatch.setenv("VCB_VIDEO_BACKEND", "opencv")
    with pytest.raises(ValueError, match="unknown video backend"):
        video.default_backend()
    monkeypatch.delenv("VCB_VIDEO_BACKEND")
    assert video.default_backend() == "decord"
    real = video.importlib.util.find_spec
    monkeypatch.setattr(
        video.importlib.util, "find_spec", lambda name: None if name == "decord" else real(name)
    )
    assert video.default_backend() == "pyav"


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for _ in range(5):
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _faststart(path: Path) -> None:
    """An mp4 with its index first, so that a truncated copy opens but fails to decode."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(30):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def broken(tmp_path_factory, clips) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    files = {
        name: root / f"{name}.mp4"
        for name in ("missing", "empty", "random", "truncated", "cut_stream", "audio_only")
    }
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(np.random.default_rng(1).bytes(4000))
    files["truncated"].write_bytes(clips["landscape"].read_bytes()[:3000])
    _faststart(root / "whole.mp4")
    data = (root / "whole.mp4").read_bytes()
    files["cut_stream"].write_bytes(data[: len(data) // 2])
    _audio_only(files["audio_only"])
    return files


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("missing", "file not found"),
        ("empty", "empty file"),
        ("random", "corrupt or truncated"),
        ("truncated", "corrupt or truncated"),
        ("cut_stream", "(corrupt or truncated|could be decoded)"),
        ("audio_only", "no video stream"),
    ],
)
def test_unreadable_files_raise_video_read_error(broken, backend, name, cause):
    with pytest.raises(VideoReadError) as info:
        read_clip(broken[name], framerate=30.0, max_frames=30, backend=backend)
    message = str(info.value)
    assert f"{name}.mp4" in message and re.search(cause, message)
    assert info.value.path == str(broken[name])


def test_resize_center_crop_keeps_the_centre():
    frame = np.zeros((1, 40, 80, 3), np.uint8)
    frame[:, :, :20] = (255, 0, 0)
    frame[:, :, 20:60] = (0, 255, 0)
    frame[:, :, 60:] = (0, 0, 255)
    out = resize_center_crop(frame, 20)
    assert out.shape == (1, 3, 20, 20) and out.dtype == torch.uint8
    inner = out[0, :, :, 1:-1]  # the outer columns blend with the neighbours (bicubic)
    assert inner[1].min() >= 250 and inner[0].max() <= 5 and inner[2].max() <= 5


def test_resize_center_crop_is_close_to_pil_bicubic():
    """open_clip resizes with PIL (bicubic, short side) and centre-crops: within 2 levels."""
    frames = textured(2, 48, 64)
    out = resize_center_crop(frames, 24)
    pil = np.stack(
        [np.asarray(Image.fromarray(f).resize((32, 24), Image.BICUBIC))[:, 4:28] for f in frames]
    )
    difference = (out.permute(0, 2, 3, 1).int() - torch.from_numpy(pil).int()).abs()
    assert out.shape == (2, 3, 24, 24) and difference.max() <= 2
    same = resize_center_crop(frames[:, :, 8:56], 48)  # already 48 x 48: untouched
    assert torch.equal(same, torch.as_tensor(frames[:, :, 8:56]).permute(0, 3, 1, 2))


def test_normalize_and_padding():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 1.0)
    frames = np.full((3, 10, 10, 3), 255, np.uint8)
    out, mask = preprocess_frames(frames, 8, mean, std, max_frames=5)
    assert out.shape == (5, 3, 8, 8) and out.dtype == torch.float32
    assert mask.tolist() == [True, True, True, False, False]
    assert torch.allclose(out[:3, 0], torch.tensor(1.0))
    assert torch.allclose(out[:3, 1], torch.tensor(3.0))
    assert torch.allclose(out[:3, 2], torch.tensor(1.0))
    assert torch.count_nonzero(out[3:]) == 0
    assert torch.allclose(
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), mean, std)[0, 0], torch.tensor(-1.0)
    )
    same, full = pad_frames(torch.ones(4, 2), 4)
    assert full.all() and torch.equal(same, torch.ones(4, 2))
    with pytest.raises(ValueError, match="do not fit"):
        pad_frames(torch.ones(5, 2), 4)


def test_frame_sampling_load(clips):
    sampling = video.FrameSampling(max_frames=4, image_size=32, framerate=10.0)
    frames = sampling.load(VideoRef("landscape", clips["landscape"]))
    expected = resize_center_crop(read_frames(clips["landscape"], [0, 12, 24, 39]), 32)
    assert torch.equal(frames, expected)


VFR_TIMES = [i / 30 for i in range(30)] + [1 + k / 2 for k in range(18)]
"""Frame start times of the variable-frame-rate clip: 30 fps for 1 s, then 2 fps up to 9.5 s."""


def _write_vfr(path: Path, offset: float) -> None:
    """An mp4 whose frame i starts at ``offset + VFR_TIMES[i]`` and is flat grey ``10 + 5 i``."""
    time_base = Fraction(1, 600)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.options = {"crf": "4", "tune": "zerolatency"}
        for i, t in enumerate(VFR_TIMES):
            image = np.full((32, 32, 3), 10 + 5 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = round((offset + t) * 600), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def vfr_clips(tmp_path_factory) -> dict[str, Path]:
    """The clip starting at time 0, and the same clip starting at 0.5 s (first pts > 0)."""
    root = tmp_path_factory.mktemp("vfr")
    paths = {"zero": root / "vfr.mp4", "offset": root / "vfr_offset.mp4"}
    _write_vfr(paths["zero"], 0.0)
    _write_vfr(paths["offset"], 0.5)
    return paths


def _shown_times(frames: np.ndarray) -> list[float]:
    """The start times of decoded VFR frames, read back from their grey level."""
    numbers = np.rint((frames.mean(axis=(1, 2, 3)) - 10) / 5).astype(int)
    return [VFR_TIMES[i] for i in numbers]


@pytest.mark.parametrize("clip", ["zero", "offset"])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize(
    ("kwargs", "times"),
    [
        ({}, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),  # 1 fps: one frame a second
        ({"max_frames": 4}, [0.0, 3.0, 6.0, 9.0]),  # linspace(0, 9, 4) of the ten
        ({"start": 2.2, "end": 4.9}, [2.0, 3.0, 4.0]),  # from the frame shown at 2.2 s
        ({"framerate": 1.5, "start": 1.0, "end": 3.0}, [1.0, 1.5, 2.0, 3.0]),  # 1, 1.67, 2.33, 3
        ({"framerate": 4.0, "start": 0.25, "end": 0.9}, [7 / 30, 14 / 30, 22 / 30]),
        ({"framerate": 4.0, "start": 8.0}, [8.0, 8.5, 9.0, 9.5]),  # each 2 fps frame once
    ],
)
def test_variable_frame_rate_clips_are_sampled_by_time(vfr_clips, clip, backend, kwargs, times):
    got = read_clip(vfr_clips[clip], backend=backend, **kwargs)
    assert _shown_times(got.frames) == pytest.approx(times)
    assert got.indices == [VFR_TIMES.index(t) for t in _shown_times(got.frames)]


def test_variable_frame_rate_backends_agree(vfr_clips):
    a = read_clip(vfr_clips["zero"], framerate=2.0, max_frames=64, size=16, backend="decord")
    b = read_clip(vfr_clips["zero"], framerate=2.0, max_frames=64, size=16, backend="pyav")
    assert a.indices == b.indices == [0, 15, *range(30, 48)]  # 0.5 s apart from 0 to 9.5 s
    np.testing.assert_array_equal(a.frames, b.frames)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_constant_frame_rate_clips_keep_the_reference_indices(clips, backend):
    for framerate, most, start, end in itertools.product(
        [1.0, 7.0, 30.0], [4, 64], [None, 0.3], [None, 0.9]
    ):
        got = read_clip(clips["landscape"], framerate=framerate, max_frames=most, start=start,
                        end=end, size=8, backend=backend)
        assert got.indices == sample_frame_indices(40, 30.0, framerate, most, start, end)


def test_time_sampling_equals_index_sampling_on_whole_strides():
    """On a constant-rate clip whose fps is a multiple of the framerate, the two rules agree."""
    times = np.arange(300) / 30.0
    for rate, most, start, end in itertools.product(
        [1.0, 2.0, 5.0, 30.0], [4, 12, 400], [None, 0.0, 0.51, 3.0], [None, 2.7, 9.99, 100.0]
    ):
        expected = sample_frame_indices(300, 30.0, rate, most, start, end)
        assert SampleWindow(rate, most, start, end).by_time(times) == expected


def test_time_sampling_jitter_stays_in_segments():
    assert SampleWindow(1.0, 12, end=2.0).by_time(VFR_TIMES) == [0, 30, 32]
    draws = {
        tuple(SampleWindow(1.0, 12, end=2.0, jitter=True, rng=rng).by_time(VFR_TIMES))
        for rng in map(np.random.default_rng, range(30))
    }
    assert all(0 <= a < 30 and 30 <= b < 32 and c == 32 for a, b, c in draws)
    assert len(draws) > 10
    with pytest.raises(ValueError):
        SampleWindow(framerate=0.0).by_time(VFR_TIMES)


def test_constant_rate_detection():
    times = np.arange(100) / 25.0 + 0.7
    assert is_constant_rate(times, 25.0)
    assert is_constant_rate(times + np.resize([0.0, 0.015, -0.015], 100), 25.0)  # pts jitter
    assert not is_constant_rate(np.delete(times, 10), 25.0)  # a dropped frame
    assert not is_constant_rate(VFR_TIMES, 48 / 9.5)


@pytest.mark.parametrize("times", [None, np.zeros(48), np.arange(48.0)[::-1]])
def test_unusable_timestamps_fall_back_to_index_sampling(vfr_clips, monkeypatch, times):
    monkeypatch.setattr(video._DecordFile, "timestamps", lambda self: times)
    got = read_clip(vfr_clips["zero"], backend="decord")
    assert got.indices == sample_frame_indices(48, got.info.fps)
