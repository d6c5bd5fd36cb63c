"""Your own clips: a CSV or JSONL file, one row per caption, with ``video`` (relative to the
video folder), ``caption`` and optional ``start``, ``end`` (seconds) and ``split``. Every row's
problems are collected and reported together."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vcb_utils import safe_json
from vcb_utils.annotations.common import Problems, Record, csv_rows, lines, read_text, required


def read_csv(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """The rows of the CSV file ``anno_path`` (of ``split`` if it has a ``split`` column)."""
    path = required(anno_path, "csv")
    return read_rows(path, "csv", split, Path(video_path) if video_path else path.parent)


def read_jsonl(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """The rows of the JSONL file ``anno_path`` (of ``split`` if they have a ``split`` key)."""
    path = required(anno_path, "jsonl")
    return read_rows(path, "jsonl", split, Path(video_path) if video_path else path.parent)


def read_rows(path: Path, kind: str, split: str, root: Path) -> list[Record]:
    """Your own CSV/JSONL file: every row's problems are collected and reported together."""
    problems = Problems(path)
    rows = csv_rows(path, ("video", "caption")) if kind == "csv" else _jsonl_rows(path, problems)
    if any(r.get("split") not in (None, "") for _, r in rows):
        present = sorted({str(r.get("split")) for _, r in rows})
        rows = [(line, r) for line, r in rows if r.get("split") == split]
        if not rows:
            raise ValueError(f"{path}: no rows with split {split!r} (splits present: {present})")
    records = [_own_record(root, line, row, problems) for line, row in rows]
    problems.raise_any()
    return [r for r in records if r is not None]


def _own_record(root: Path, line: int, row: dict, problems: Problems) -> Record | None:
    where = f"{problems.path.name}:{line}"
    found = len(problems.found)
    video = row.get("video")
    if video is None or video == "":
        problems.add(where, "missing 'video'")
    elif not isinstance(video, str):
        problems.add(where, f"'video' must be a file path, not a {type(video).__name__}")
    elif _outside(video):
        problems.add(where, f"video {video!r} is not inside the video folder {root}")
    caption = row.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        problems.add(where, "empty or missing caption")
    start = _seconds(row.get("start"), where, problems)
    end = _seconds(row.get("end"), where, problems)
    if start is not None and end is not None and end <= start:
        problems.add(where, f"end {end} is not after start {start}")
    if len(problems.found) > found:
        return None
    return Record(video, root / video, caption.strip(), start, end)


def _outside(name: str) -> bool:
    """Whether the relative path ``name`` leads out of its folder (absolute, or up past it)."""
    normal = os.path.normpath(name)
    return os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep)


def _jsonl_rows(path: Path, problems: Problems) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(lines(read_text(path)), start=1):
        if not text.strip():
            continue
        try:
            row = safe_json.parse(text)
        except safe_json.InvalidJSON as err:
            problems.add(f"{path.name}:{line}", f"invalid JSON ({err.reason})")
            continue
        if not isinstance(row, dict):
            problems.add(f"{path.name}:{line}", "expected a JSON object")
            continue
        rows.append((line, row))
    return rows


def _seconds(value: object, where: str, problems: Problems) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        problems.add(where, f"{str(value)[:40]!r} is not a time in seconds")
        return None
    if not math.isfinite(seconds) or seconds < 0:
        problems.add(where, f"{value!r} is not a time in seconds (finite, >= 0)")
        return None
    return seconds
