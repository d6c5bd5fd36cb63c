"""Annotation readers, the training Dataset, the evaluation layout and on_error handling."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import av
import numpy as np
import open_clip
import pytest
import torch

from vcb_utils import annotations
from vcb_utils.config import DataConfig
from vcb_utils.datasets import (
    GroupedShuffle,
    Preprocessing,
    Record,
    VideoTextDataset,
    build_dataset,
    build_eval_set,
    collate,
    eval_layout,
    make_eval_set,
    make_loader,
    read_annotations,
)
from vcb_utils.synthetic import write_video
from vcb_utils.video import VideoReadError, normalize, read_frames, resize_center_crop

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrvtt"
FIXTURE_JSON = Path(__file__).parent / "fixtures" / "msrvtt" / "MSRVTT_data.json"
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
needs_shared = pytest.mark.skipif(
    not (SHARED / "MSRVTT_JSFUSION_test.csv").is_file(),
    reason="shared MSR-VTT split files not available",
)


@pytest.fixture(scope="module")
def tokenize():
    tok = open_clip.get_tokenizer("ViT-B-32", context_length=16)

    def run(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tok(texts)
        return ids, torch.arange(ids.shape[1]) <= ids.argmax(-1, keepdim=True)

    return run


def frames_for(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:64]
    phase = rng.uniform(0, 6, 3)
    return np.stack(
        [
            np.stack([128 + 100 * np.sin(x / (6 + c) + i / 3 + phase[c]) for c in range(3)], -1)
            for i in range(count)
        ]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three 3 s clips at 8 fps (24 frames, 64 x 48) plus broken files, under one root."""
    root = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(["a", "b", "c"]):
        write_video(root / f"{name}.mp4", frames_for(24, i), fps=8)
    (root / "empty.mp4").write_bytes(b"")
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    with av.open(str(root / "whole.mp4"), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for image in np.random.default_rng(1).integers(0, 256, (24, 48, 64, 3), np.uint8):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    data = (root / "whole.mp4").read_bytes()
    (root / "cut.mp4").write_bytes(data[: len(data) // 2])  # opens, then fails to decode
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- MSR-VTT


@pytest.fixture
def msrvtt_dir(tmp_path) -> Path:
    """The real split files (linked) and the fixture MSRVTT_data.json, in the real layout."""
    anno = tmp_path / "msrvtt_data"
    anno.mkdir()
    for name in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        if (SHARED / name).is_file():
            os.symlink(SHARED / name, anno / name)
    os.symlink(FIXTURE_JSON, anno / "MSRVTT_data.json")
    return anno


@needs_shared
def test_msrvtt_test_split_is_the_1000_pairs_of_1k_a(msrvtt_dir, tmp_path):
    with open(SHARED / "MSRVTT_JSFUSION_test.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    records = read_annotations("msrvtt", msrvtt_dir, "test", tmp_path / "videos")
    assert len(rows) == len(records) == 1000
    assert len({r.video_id for r in records}) == 1000
    assert records[0] == Record(
        "video9770",
        tmp_path / "videos" / "video9770.mp4",
        "a person is connecting something to system",
    )
    assert [(r.video_id, r.caption) for r in records] == [(row[2], row[3]) for row in rows]
    assert read_annotations("msrvtt", msrvtt_dir, "val", tmp_path / "videos") == records


@needs_shared
def test_msrvtt_train_split_takes_every_caption(msrvtt_dir, caplog):
    with caplog.at_level(logging.WARNING):
        records = read_annotations("msrvtt", msrvtt_dir, "train")
    counts = {"video0": 20, "video1": 3, "video2": 1, "video3": 5, "video4": 2}
    assert [r.video_id for r in records] == [v for v, n in counts.items() for _ in range(n)]
    assert records[4].caption == "video0 caption number 4"
    assert records[0].path == msrvtt_dir / "video0.mp4"  # videos default to anno_path
    assert "8995 of 9000 videos have no caption" in caplog.text


def test_msrvtt_train7k_and_errors(tmp_path):
    anno = tmp_path / "anno"
    anno.mkdir()
    with pytest.raises(FileNotFoundError, match="MSRVTT_JSFUSION_test.csv"):
        read_annotations("msrvtt", anno, "test")
    (anno / "MSRVTT_train.7k.csv").write_text("video_id\nvideo3\nvideo1\n")
    with pytest.raises(FileNotFoundError, match="MSRVTT_data.json"):
        read_annotations("msrvtt", anno, "train7k")
    os.symlink(FIXTURE_JSON, anno / "MSRVTT_data.json")
    records = read_annotations("msrvtt", anno, "train7k", tmp_path / "v")
    assert [r.video_id for r in records] == ["video3"] * 5 + ["video1"] * 3
    with pytest.raises(FileNotFoundError, match=r"MSRVTT_train\.9k\.csv"):
        read_annotations("msrvtt", anno, "train")
    with pytest.raises(ValueError, match="unknown MSR-VTT split"):
        read_annotations("msrvtt", anno, "dev")
    (anno / "MSRVTT_data.json").unlink()
    (anno / "MSRVTT_data.json").write_text('{"videos": []}')
    with pytest.raises(ValueError, match="MSRVTT_data.json: not an MSR-VTT data file"):
        read_annotations("msrvtt", anno, "train7k")


@needs_shared
def test_msrvtt_missing_videos_are_listed_before_training(msrvtt_dir, tmp_path, tokenize):
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    os.symlink(SHARED / "video7500.mp4", video_dir / "video7500.mp4")
    cfg = DataConfig(
        datatype="msrvtt", anno_path=str(msrvtt_dir), video_path=str(video_dir), workers=1
    )
    prep = Preprocessing(tokenize, 12, 32, MEAN, STD)
    with pytest.raises(FileNotFoundError, match=r"999 of 1000 videos .*\(999 file not found\)"):
        build_dataset(cfg, "test", prep)
    cfg.on_error = "skip"
    dataset = build_dataset(cfg, "test", prep)
    assert len(dataset) == 1 and dataset.records[0].video_id == "video7500"
    text_ids, text_mask, video, video_mask = dataset[0]
    assert video.shape == (12, 3, 32, 32) and video_mask.all()


# ---------------------------------------------------------------- own data


def test_own_csv_and_jsonl(tmp_path):
    rows = [
        {"video": "a.mp4", "caption": "a first caption", "start": "", "end": "", "split": "train"},
        {
            "video": "a.mp4",
            "caption": " a second one ",
            "start": "0.5",
            "end": "1.5",
            "split": "train",
        },
        {"video": "sub/b.mp4", "caption": "held out", "start": "", "end": "", "split": "test"},
    ]
    table = write_csv(tmp_path / "anno.csv", rows)
    lines = tmp_path / "anno.jsonl"
    lines.write_text("\n".join(json.dumps({k: v for k, v in r.items() if v}) for r in rows))
    expected = [
        Record("a.mp4", tmp_path / "a.mp4", "a first caption"),
        Record("a.mp4", tmp_path / "a.mp4", "a second one", 0.5, 1.5),
    ]
    assert read_annotations("csv", table, "train") == expected
    assert read_annotations("jsonl", lines, "train") == expected
    test = read_annotations("csv", table, "test", video_path=tmp_path / "root")
    assert test == [Record("sub/b.mp4", tmp_path / "root" / "sub" / "b.mp4", "held out")]
    no_split = write_csv(tmp_path / "plain.csv", [{"video": "x.mp4", "caption": "c"}])
    assert len(read_annotations("csv", no_split, "anything")) == 1


@pytest.mark.parametrize(
    ("kind", "content", "message"),
    [
        ("csv", "video,caption\na.mp4,fine\nb.mp4,\n", r"anno\.csv:3: empty or missing caption"),
        ("csv", "video,text\na.mp4,x\n", r"anno\.csv: missing column\(s\) \['caption'\]"),
        ("csv", "video,caption,start\na.mp4,x,soon\n", r"anno\.csv:2: 'soon' is not a time"),
        ("csv", "video,caption,start,end\na.mp4,x,2,1\n", r"anno\.csv:2: end 1\.0 is not after"),
        ("csv", "video,caption,split\na.mp4,x,train\n", r"no rows with split 'test'.*\['train'\]"),
        (
            "jsonl",
            '{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4",\n',
            r"anno\.jsonl:2: invalid JSON",
        ),
        ("jsonl", '{"caption": "x"}\n', r"anno\.jsonl:1: missing 'video'"),
        ("jsonl", '["a.mp4", "x"]\n', r"anno\.jsonl:1: expected a JSON object"),
    ],
)
def test_malformed_own_files_name_file_and_line(tmp_path, kind, content, message):
    path = tmp_path / f"anno.{kind}"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_annotations(kind, path, "test")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown datatype 'avi'"):
        read_annotations("avi", tmp_path, "train")
    with pytest.raises(ValueError, match="needs anno_path"):
        read_annotations("csv", None, "train")
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_annotations("csv", tmp_path / "nothing.csv", "train")


# ---------------------------------------------------------------- items and layouts


def test_training_items_and_collate(videos, tokenize):
    records = [
        Record("a", videos / "a.mp4", "a red circle moves left"),
        Record("b", videos / "b.mp4", "a clip with a window", 1.0, 2.0),
    ]
    prep = Preprocessing(tokenize, 8, 32, MEAN, STD)
    dataset = VideoTextDataset(records, tokenize, prep.source(2.0))
    text_ids, text_mask, video, video_mask = dataset[0]
    ids = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a red circle moves left"])[0]
    assert torch.equal(text_ids, ids) and text_ids.dtype == torch.long
    assert text_mask.tolist() == [True] * 7 + [False] * 9  # start, 5 words, end
    # 24 frames at 8 fps sampled at 2 fps: every 4th frame, 6 of them, then 2 padded
    assert video_mask.tolist() == [True] * 6 + [False] * 2
    manual = normalize(
        resize_center_crop(read_frames(videos / "a.mp4", range(0, 24, 4)), 32), MEAN, STD
    )
    assert torch.equal(video[:6], manual)
    assert torch.count_nonzero(video[6:]) == 0
    windowed = dataset[1][2:]
    expected = normalize(
        resize_center_crop(read_frames(videos / "b.mp4", [8, 12, 16]), 32), MEAN, STD
    )
    assert torch.equal(windowed[0][:3], expected) and windowed[1].sum() == 3
    as_uint8 = VideoTextDataset(records, tokenize, prep.source(2.0, uint8=True))[0][2]
    assert as_uint8.dtype == torch.uint8 and torch.equal(
        normalize(as_uint8[:6], MEAN, STD), video[:6]
    )
    batch = next(iter(make_loader(dataset, 2)))
    assert [tuple(t.shape) for t in batch] == [(2, 16), (2, 16), (2, 8, 3, 32, 32), (2, 8)]
    assert [t.dtype for t in batch] == [torch.long, torch.bool, torch.float32, torch.bool]
    assert all(
        torch.equal(a, b) for a, b in zip(batch, collate([dataset[0], dataset[1]]), strict=True)
    )


def test_eval_layout_keeps_each_video_once(videos, tokenize):
    a, b, c = (videos / f"{n}.mp4" for n in "abc")
    records = [
        Record("b", b, "b one"),
        Record("a", a, "a one"),
        Record("b", b, "b two"),
        Record("c", c, "c one"),
        Record("b", b, "b three"),
        Record("a", a, "a two"),
    ]
    refs, captions, targets = eval_layout(records)
    assert [v.video_id for v in refs] == ["b", "a", "c"]
    assert captions == [r.caption for r in records]
    assert targets.tolist() == [0, 1, 0, 2, 0, 1]
    evalset = make_eval_set(
        records, tokenize, Preprocessing(tokenize, 4, 32, MEAN, STD).source(2.0)
    )
    video, mask = next(iter(evalset.video_loader(8)))
    assert video.shape == (3, 4, 3, 32, 32) and mask.all()
    ids, text_mask = next(iter(evalset.caption_loader(8)))
    assert ids.shape == (6, 16) and text_mask.dtype == torch.bool


# ---------------------------------------------------------------- on_error


def _cfg(tmp_path, videos, names, on_error, **extra) -> DataConfig:
    rows = [{"video": f"{n}.mp4", "caption": f"caption of {n}", "split": "test"} for n in names]
    table = write_csv(tmp_path / "anno.csv", rows)
    return DataConfig(
        datatype="csv",
        anno_path=str(table),
        video_path=str(videos),
        video_framerate=2.0,
        workers=1,
        on_error=on_error,
        **extra,
    )


def small(tokenize) -> Preprocessing:
    """4 frames of 32 px."""
    return Preprocessing(tokenize, 4, 32, MEAN, STD)


def test_raise_lists_missing_and_empty_files(tmp_path, videos, tokenize):
    cfg = _cfg(tmp_path, videos, ["a", "missing", "empty", "b"], "raise")
    with pytest.raises(FileNotFoundError) as info:
        build_dataset(cfg, "test", small(tokenize))
    message = str(info.value)
    assert "2 of 4 videos referenced by csv split 'test'" in message
    assert "1 empty file, 1 file not found" in message and "missing.mp4" in message


def test_raise_on_corrupt_file_names_it_even_from_a_worker(tmp_path, videos, tokenize):
    cfg = _cfg(tmp_path, videos, ["random"], "raise")
    dataset = build_dataset(cfg, "test", small(tokenize))
    with pytest.raises(VideoReadError, match="random.mp4: corrupt or truncated"):
        dataset[0]
    with pytest.raises(VideoReadError, match="random.mp4"):
        next(iter(make_loader(dataset, 1, workers=1)))


def test_skip_drops_bad_videos_and_reports_them(tmp_path, videos, tokenize, caplog):
    names = ["a", "missing", "empty", "random", "cut", "b"]
    cfg = _cfg(tmp_path, videos, names, "skip")
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset(cfg, "test", small(tokenize))
    assert [r.video_id for r in dataset.records] == ["a.mp4", "cut.mp4", "b.mp4"]
    assert "3 of 6 videos referenced by csv split 'test' are unusable" in caplog.text
    for name in ("missing", "empty", "random"):
        assert f"{name}.mp4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(3)] + [dataset[1]]
    # the cut file passes the header check, fails to decode, and is replaced by the next item
    assert torch.equal(items[1][2], items[2][2]) and torch.equal(items[1][0], items[2][0])
    assert list(dataset.failed) == [str(videos / "cut.mp4")]
    assert caplog.text.count("cut.mp4") == 1


def test_skip_in_evaluation_masks_the_video_out(tmp_path, videos, tokenize):
    cfg = _cfg(tmp_path, videos, ["a", "cut", "b"], "skip")
    evalset = build_eval_set(cfg, "test", small(tokenize))
    assert evalset.caption_to_video.tolist() == [0, 1, 2]
    video, mask = next(iter(evalset.video_loader(3)))
    assert mask[0].all() and not mask[1].any() and mask[2].all()
    assert torch.count_nonzero(video[1]) == 0


# ---------------------------------------------------------------- jitter


def test_frame_jitter_follows_torch_seeding(tmp_path, videos, tokenize):
    cfg = _cfg(tmp_path, videos, ["a", "b"], "raise", frame_jitter=True)
    train = build_dataset(cfg, "test", small(tokenize), train=True, seed=5)
    plain = build_dataset(cfg, "test", small(tokenize), train=False)

    def two_epochs(workers: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(
            train,
            batch_size=2,
            num_workers=workers,
            collate_fn=collate,
            persistent_workers=workers > 0,
        )
        return [batch[2] for _ in range(2) for batch in loader]

    first, second = two_epochs(0)
    assert not torch.equal(first, second)  # each epoch draws new positions
    assert all(torch.equal(a, b) for a, b in zip(two_epochs(0), (first, second), strict=True))
    in_workers = two_epochs(1)
    assert not torch.equal(*in_workers)
    assert all(torch.equal(a, b) for a, b in zip(two_epochs(1), in_workers, strict=True))
    # unjittered: 6 positions at 2 fps (every 4th frame), linspace down to 4: 0, 4, 12, 20
    unjittered = resize_center_crop(read_frames(videos / "a.mp4", [0, 4, 12, 20]), 32)
    assert torch.equal(plain[0][2], normalize(unjittered, MEAN, STD))


def test_synthetic_datatype_reads_a_generated_folder(tmp_path, tokenize):
    from vcb_utils.synthetic import SyntheticConfig, generate

    folder = generate(tmp_path / "syn", SyntheticConfig(n_train=3, n_test=2), workers=1)
    cfg = DataConfig(datatype="synthetic", anno_path=str(folder), video_framerate=2.0, workers=0)
    dataset = build_dataset(cfg, "train", Preprocessing(tokenize, 8, 64, MEAN, STD))
    assert len(dataset) == 6
    evalset = build_eval_set(cfg, "val", Preprocessing(tokenize, 8, 64, MEAN, STD))
    assert len(evalset.videos) == len(evalset.captions) == 2
    assert {"msrvtt", "csv", "jsonl", "synthetic"} <= set(annotations.DATATYPES)


def test_own_files_accept_a_bom_and_report_every_problem(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("video,caption\na.mp4,a red circle\n".encode("utf-8-sig"))
    assert [r.caption for r in read_annotations("csv", bom, "test")] == ["a red circle"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"video": "a.mp4", "caption": "ok"}\n'
        '{"video": "b.mp4", "caption": ""}\n'
        '{"video": "c.mp4", "caption": "x", "start": "nan"}\n'
        '{"video": "d.mp4", "caption": "x", "end": Infinity}\n'
        "not json\n"
    )
    with pytest.raises(ValueError) as info:
        read_annotations("jsonl", bad, "test")
    message = str(info.value)
    assert "bad.jsonl: 4 problem(s)" in message
    for expected in ("bad.jsonl:2: empty", "bad.jsonl:3: 'nan'", "bad.jsonl:4: inf", "bad.jsonl:5"):
        assert expected in message
    latin = tmp_path / "latin.csv"
    latin.write_bytes("video,caption\na.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv"):
        read_annotations("csv", latin, "test")


def test_grouped_shuffle_keeps_each_group_in_one_batch():
    groups = [[0, 1], [2, 3], [4, 5], [8, 9]]
    sampler = GroupedShuffle(11, groups, batch_size=3, seed=5)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(11)) and len(sampler) == 11
        batch = {item: position // 3 for position, item in enumerate(order)}
        assert all(batch[a] == batch[b] for a, b in groups)  # none waits past the end here
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 4  # a new shuffle every epoch
    sampler.set_epoch(2)
    assert list(sampler) == orders[2]  # and the same one for the same seed and epoch
    with pytest.raises(ValueError, match="disjoint"):
        GroupedShuffle(4, [[0, 1], [1, 2]], batch_size=3)
    with pytest.raises(ValueError, match="larger than the batch size"):
        GroupedShuffle(4, [[0, 1, 2]], batch_size=2)
