"""DiDeMo: paragraph to video. One query per video, its descriptions joined in file order,
against the whole video (``docs/datasets.md`` says how this differs from CLIP4Clip's 0-31 s)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from vcb_utils.annotations.common import (
    Problems,
    Record,
    VideoFolder,
    annotation_folder,
    load_json,
    need,
    paragraphs,
    read_list,
    split_file,
    split_ids,
)
from vcb_utils.dataset_registry import Benchmark, Source

SPLITS = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
"""LocalizingMoments' files; an optional ``<split>_list.txt`` beside one keeps only its videos."""
LOCALIZING_MOMENTS = "https://raw.githubusercontent.com/LisaAnne/LocalizingMoments/master/data"
SPLIT_LISTS = (
    "https://raw.githubusercontent.com/albanie/collaborative-experts/master/misc/datasets/didemo"
)
DOWNLOAD = Benchmark(
    [
        Source(f"{LOCALIZING_MOMENTS}/{s}_data.json", f"{s}_data.json", f"{s} moments")
        for s in ("train", "val", "test")
    ]
    + [
        Source(f"{SPLIT_LISTS}/{s}_list.txt", f"{s}_list.txt", f"{s} videos (coll. experts)")
        for s in ("train", "val", "test")
    ],
    "train_data.json",
)


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """One paragraph per video, of the split list's videos when ``<split>_list.txt`` exists.

    Videos: ``<video>`` as downloaded (``x.mov``), ``<video>.<ext>`` (``x.mov.mp4``) or
    ``<stem>.<ext>`` (``x.mp4``). The whole file, not CLIP4Clip's ``0..31`` s: the same frames
    for the usual video of at most 31 s, and the paragraph describes the whole video.
    """
    anno_dir = annotation_folder(anno_path, "didemo")
    video_dir = Path(video_path) if video_path else anno_dir
    data_file = anno_dir / split_file(SPLITS, "didemo", split)
    need(anno_dir, "didemo", split, [data_file.name])
    paragraphs = _paragraphs_of(data_file)
    ids = split_ids(anno_dir / f"{split}_list.txt", read_list, paragraphs, data_file)
    videos = VideoFolder(video_dir)
    return [
        Record(video, videos.find([video, os.path.splitext(video)[0]], video), paragraphs[video])
        for video in ids
    ]


def _paragraphs_of(path: Path) -> dict[str, str]:
    """``[{video, description, ...}, ...]`` -> video -> its descriptions joined in file order."""
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{video, description, times}} entries")
    problems = Problems(path)
    sentences: dict[str, list[str]] = defaultdict(list)
    for i, entry in enumerate(data):
        video = entry.get("video") if isinstance(entry, dict) else None
        if not isinstance(video, str) or not video.strip():
            problems.add(f"entry {i}", "no 'video' name")
        elif not isinstance(entry.get("description"), str):
            problems.add(f"entry {i} ({video})", "no 'description' string")
        else:
            sentences[video].append(entry["description"])
    return paragraphs(sentences, problems)
