"""MSR-VTT (CLIP4Clip's layout): every caption of the 9k (or 7k) training videos, and the 1k-A
test split, one caption per video (``docs/datasets.md``)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from vcb_utils.annotations.common import (
    Record,
    VideoFolder,
    check_ids,
    csv_rows,
    load_json,
    required,
)
from vcb_utils.dataset_registry import Benchmark, Source

logger = logging.getLogger(__name__)

MSRVTT_DATA = "MSRVTT_data.json"
SPLITS = {
    "train": "MSRVTT_train.9k.csv",
    "train9k": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
    "val": "MSRVTT_JSFUSION_test.csv",
}
"""MSR-VTT has no separate validation set: ``val`` is the 1k-A test split, as in the reference."""
EXTENSIONS = (".mp4", ".webm")
"""A video's accepted files, preferred first: CLIP4Clip falls back on ``<id>.webm``."""
ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
"""The split files and ``MSRVTT_data.json`` (as in the CLIP4Clip README)."""
VIDEOS_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
"""The 10,000 raw clips (about 6.3 GB; ``MSRVTT/videos/all/video*.mp4``)."""
DOWNLOAD = Benchmark(
    [
        Source(ANNOTATIONS_URL, "msrvtt_data.zip", "splits and MSRVTT_data.json"),
        Source(VIDEOS_URL, "MSRVTT.zip", "the 10,000 clips (6.3 GB)", videos=True),
    ],
    "MSRVTT_JSFUSION_test.csv",
    "video0.mp4",
)


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """MSR-VTT in CLIP4Clip's layout (``read_annotations`` says which files each split needs);
    videos ``<id>.mp4``, else ``<id>.webm``, in ``video_path`` or a subfolder."""
    anno_dir = required(anno_path, "msrvtt")
    if split not in SPLITS:
        raise ValueError(f"unknown MSR-VTT split {split!r}; choose one of {sorted(SPLITS)}")
    if not anno_dir.is_dir():
        raise NotADirectoryError(f"{anno_dir}: MSR-VTT anno_path must be the annotation folder")
    needed = [SPLITS[split]] + ([MSRVTT_DATA] if split.startswith("train") else [])
    missing = [name for name in needed if not (anno_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{anno_dir}: missing MSR-VTT file(s) {', '.join(missing)} for split {split!r} "
            f"(expected {', '.join(needed)}; see data/README.md)"
        )
    video_dir = Path(video_path) if video_path else anno_dir
    split_file = anno_dir / SPLITS[split]
    if split in ("test", "val"):
        rows = csv_rows(split_file, ("video_id", "sentence"))
        check_ids([r["video_id"] for _, r in rows], split_file)
        videos = VideoFolder(video_dir, EXTENSIONS)
        return [
            Record(
                r["video_id"],
                videos.find([r["video_id"]], f"{r['video_id']}.mp4"),
                _caption(r["sentence"], split_file, line),
            )
            for line, r in rows
        ]
    ids = [r["video_id"] for _, r in csv_rows(split_file, ("video_id",))]
    check_ids(ids, split_file)
    captions = _msrvtt_captions(anno_dir / MSRVTT_DATA)
    return _msrvtt_train(ids, captions, VideoFolder(video_dir, EXTENSIONS), split_file)


def _msrvtt_captions(path: Path) -> dict[str, list[str]]:
    """Captions per video id from ``MSRVTT_data.json``, in file order."""
    data = load_json(path)
    try:
        pairs = [(s["video_id"], s["caption"]) for s in data["sentences"]]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an MSR-VTT data file ({type(err).__name__}: {err})") from err
    captions: dict[str, list[str]] = defaultdict(list)
    for i, (video_id, text) in enumerate(pairs):
        if not isinstance(video_id, str):
            raise ValueError(f"{path}:sentence {i}: video_id {video_id!r} is not a string")
        captions[video_id].append(_caption(text, path, f"sentence {i}"))
    return captions


def _msrvtt_train(
    ids: list[str], captions: dict[str, list[str]], videos: VideoFolder, split_file: Path
) -> list[Record]:
    without = [v for v in ids if v not in captions]
    if len(without) == len(ids):
        raise ValueError(
            f"{split_file}: none of its {len(ids)} videos has a caption in {MSRVTT_DATA}"
        )
    if without:
        logger.warning(
            "%s: %d of %d videos have no caption in %s (first: %s)",
            split_file,
            len(without),
            len(ids),
            MSRVTT_DATA,
            ", ".join(without[:3]),
        )
    paths = {v: videos.find([v], f"{v}.mp4") for v in ids if v in captions}
    return [Record(v, paths[v], text) for v in ids for text in captions.get(v, [])]


def _caption(text: object, path: Path, where: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{path}:{where}: empty or missing caption")
    return text.strip()
