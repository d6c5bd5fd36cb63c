"""The generated synthetic clips (``vcb_utils.synthetic``): created on first use, then read as
own-data JSONL; ``val`` is the test split."""

from __future__ import annotations

import os
from pathlib import Path

from vcb_utils import synthetic
from vcb_utils.annotations.common import Record
from vcb_utils.annotations.files import read_rows


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """A generated folder (``annotations.jsonl``), or a root to generate the default one in."""
    folder = Path(anno_path) if anno_path else None
    if folder is None or not (folder / "annotations.jsonl").is_file():
        folder = synthetic.ensure_synthetic(folder)
    split = "test" if split == "val" else split
    return read_rows(
        folder / "annotations.jsonl", "jsonl", split, Path(video_path) if video_path else folder
    )
