"""VATEX (the HGR split): every English caption of every video of the split list is a query,
over the whole clip."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vcb_utils import safe_json
from vcb_utils.annotations.common import (
    Record,
    annotation_folder,
    caption_records,
    json_captions,
    need,
    split_file,
)
from vcb_utils.dataset_registry import Benchmark, Source

SPLITS = {"train": "train_list.txt", "val": "test_list.txt", "test": "test_list.txt"}
"""The HGR split; ``val`` is the test list, as in TS2-Net."""
CAPTIONS = ("ref_captions.json", "vatex_data.json")
"""``{id: [caption, ...]}`` (TS2-Net), else ``{id: {"enCap": [...], "chCap": [...]}}`` (English)."""
OFFICIAL = "https://eric-xw.github.io/vatex-website/data"


def merge_official(root: Path) -> None:
    """Merge the official VATEX lists into ``vatex_data.json`` = ``{videoID: {"enCap": ...}}``."""
    out = root / "vatex_data.json"
    if out.is_file():
        return
    merged = {}
    for name in ("vatex_training_v1.0.json", "vatex_validation_v1.0.json"):
        path = root / name
        try:
            for item in safe_json.load(path):
                merged[item["videoID"]] = {"enCap": item["enCap"], "chCap": item.get("chCap", [])}
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not the official VATEX format ({err!r})") from err
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(json.dumps(merged), encoding="utf-8")
    os.replace(tmp, out)


DOWNLOAD = Benchmark(
    [
        Source(
            f"{OFFICIAL}/vatex_training_v1.0.json",
            "vatex_training_v1.0.json",
            "25,991 training videos, 10 English captions each",
        ),
        Source(
            f"{OFFICIAL}/vatex_validation_v1.0.json",
            "vatex_validation_v1.0.json",
            "3,000 validation videos (the HGR val and test splits)",
        ),
    ],
    "vatex_data.json",
    prepare=merge_official,
)


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """Every English caption of every video of the split list; videos ``<videoID>.<ext>``."""
    anno_dir = annotation_folder(anno_path, "vatex")
    video_dir = Path(video_path) if video_path else anno_dir
    list_file = anno_dir / split_file(SPLITS, "vatex", split)
    caption_file = need(anno_dir, "vatex", split, [list_file.name], CAPTIONS)
    captions = json_captions(caption_file)
    return caption_records(list_file, caption_file, captions, video_dir, ".mp4")
