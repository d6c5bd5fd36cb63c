"""ActivityNet Captions: paragraph to video. One query per video, its sentences joined in order,
against the whole video; ``val`` and ``test`` are both ``val_1`` (there is no test split)."""

from __future__ import annotations

import os
from pathlib import Path

from vcb_utils.annotations.common import (
    Problems,
    Record,
    VideoFolder,
    annotation_folder,
    load_json,
    need,
    paragraphs,
    split_file,
    split_ids,
    unique_ids,
)
from vcb_utils.dataset_registry import Benchmark, Source

SPLITS = {
    "train": ("train.json", "train_ids.json"),
    "val": ("val_1.json", "val_ids.json"),
    "test": ("val_1.json", "val_ids.json"),
}
"""(captions, optional id list) per split; there is no test split, so ``val`` and ``test`` are
``val_1`` as in CLIP4Clip, and ``val_2.json`` is never read."""
DOWNLOAD = Benchmark(
    [
        Source(
            "https://cs.stanford.edu/people/ranjaykrishna/densevid/captions.zip",
            "captions.zip",
            "train.json, val_1.json and the id lists (ActivityNet Captions)",
        )
    ],
    "val_1.json",
)


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """One paragraph per video, of the videos of ``train_ids.json`` / ``val_ids.json`` if present.

    Videos: ``v_<id>.<ext>`` (official crawler) or ``<id>.<ext>`` (CLIP4Clip). The whole file, as
    CLIP4Clip's ``0..ceil(duration)``.
    """
    anno_dir = annotation_folder(anno_path, "activitynet")
    video_dir = Path(video_path) if video_path else anno_dir
    data_name, ids_name = split_file(SPLITS, "activitynet", split)
    data_file = anno_dir / data_name
    need(anno_dir, "activitynet", split, [data_name])
    paragraphs = _paragraphs_of(data_file)
    ids = split_ids(anno_dir / ids_name, _json_ids, paragraphs, data_file)
    videos = VideoFolder(video_dir)
    return [Record(v, videos.find(_names(v), f"{v}.mp4"), paragraphs[v]) for v in ids]


def _names(video_id: str) -> list[str]:
    """``v_<id>``, then ``<id>``: the prefix cut by position, since ids may start with ``v`` or
    ``_`` (``v__jxpaVW4_cE``), which ``lstrip("v_")`` would eat."""
    return [video_id, video_id[2:]] if video_id.startswith("v_") else [video_id]


def _json_ids(path: Path) -> list[str]:
    """A JSON list of ids (ActivityNet's ``train_ids.json``), in order."""
    ids = load_json(path)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError(f'{path}: expected a non-empty JSON list of ids like "v_<youtube id>"')
    return unique_ids(ids, path)


def _paragraphs_of(path: Path) -> dict[str, str]:
    """``{"v_<id>": {duration, timestamps, sentences}}`` -> id -> its sentences joined in order."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a JSON object {{"v_<id>": {{"sentences": [...]}}}}')
    problems = Problems(path)
    sentences = {}
    for video_id, entry in data.items():
        texts = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            problems.add(repr(video_id), "no 'sentences' list of strings")
        else:
            sentences[video_id] = texts
    return paragraphs(sentences, problems)
