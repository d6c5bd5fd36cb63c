"""Annotation readers: one record per caption, from each dataset's own files.

``read_annotations(datatype, anno_path, split, video_path)`` is the one entry point; a missing
or malformed file raises an error that names it. ``check_videos`` finds missing, empty or
corrupt videos before any work starts.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vcb_utils import synthetic
from vcb_utils.video import VideoReadError, VideoRef, probe

logger = logging.getLogger(__name__)

DATATYPES = ("msrvtt", "csv", "jsonl", "synthetic")
MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_SPLITS = {
    "train": "MSRVTT_train.9k.csv",
    "train9k": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
    "val": "MSRVTT_JSFUSION_test.csv",
}
"""MSR-VTT has no separate validation set: ``val`` is the 1k-A test split, as in the reference."""


@dataclass(frozen=True)
class Record:
    """One caption of one video (``start``/``end`` in seconds, None = whole file)."""

    video_id: str
    path: Path
    caption: str
    start: float | None = None
    end: float | None = None

    @property
    def video(self) -> VideoRef:
        return VideoRef(self.video_id, self.path, self.start, self.end)


# ---------------------------------------------------------------- annotations


def read_annotations(
    datatype: str,
    anno_path: str | os.PathLike | None,
    split: str,
    video_path: str | os.PathLike | None = None,
) -> list[Record]:
    """One record per caption of ``split``.

    - ``msrvtt``: ``anno_path`` is the folder with ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``
      (``MSRVTT_train.7k.csv`` for ``train7k``) and ``MSRVTT_JSFUSION_test.csv``; ``video_path``
      the folder of ``<video_id>.mp4`` (default: ``anno_path``). ``train`` gives every caption of
      every train video, ``test`` (and ``val``) the 1000 pairs of the 1k-A split.
    - ``csv`` / ``jsonl``: ``anno_path`` is the file, with ``video`` (relative to ``video_path``,
      default the file's folder), ``caption`` and optional ``start``, ``end``, ``split``.
    - ``synthetic``: a generated folder (created on first use; default under ``data/synthetic``).
    """
    if datatype == "msrvtt":
        return _read_msrvtt(_required(anno_path, datatype), split, video_path)
    if datatype in ("csv", "jsonl"):
        path = _required(anno_path, datatype)
        return _read_own(path, datatype, split, Path(video_path) if video_path else path.parent)
    if datatype == "synthetic":
        return _read_synthetic(anno_path, split, video_path)
    raise ValueError(f"unknown datatype {datatype!r}; choose one of {DATATYPES}")


def _required(anno_path: str | os.PathLike | None, datatype: str) -> Path:
    if anno_path is None:
        raise ValueError(f"datatype {datatype!r} needs anno_path")
    path = Path(anno_path)
    if not path.exists():
        raise FileNotFoundError(f"annotation path not found: {path}")
    return path


def _read_msrvtt(anno_dir: Path, split: str, video_path: str | os.PathLike | None) -> list[Record]:
    if split not in MSRVTT_SPLITS:
        raise ValueError(f"unknown MSR-VTT split {split!r}; choose one of {sorted(MSRVTT_SPLITS)}")
    if not anno_dir.is_dir():
        raise NotADirectoryError(f"{anno_dir}: MSR-VTT anno_path must be the annotation folder")
    needed = [MSRVTT_SPLITS[split]] + ([MSRVTT_DATA] if split.startswith("train") else [])
    missing = [name for name in needed if not (anno_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{anno_dir}: missing MSR-VTT file(s) {', '.join(missing)} for split {split!r} "
            f"(expected {', '.join(needed)}; see data/README.md)"
        )
    video_dir = Path(video_path) if video_path else anno_dir
    split_file = anno_dir / MSRVTT_SPLITS[split]
    if split in ("test", "val"):
        rows = _csv_rows(split_file, ("video_id", "sentence"))
        return [
            Record(
                r["video_id"],
                video_dir / f"{r['video_id']}.mp4",
                _caption(r["sentence"], split_file, line),
            )
            for line, r in rows
        ]
    ids = [r["video_id"] for _, r in _csv_rows(split_file, ("video_id",))]
    return _msrvtt_train(ids, _msrvtt_captions(anno_dir / MSRVTT_DATA), video_dir, split_file)


def _msrvtt_captions(path: Path) -> dict[str, list[str]]:
    """Captions per video id from ``MSRVTT_data.json``, in file order."""
    try:
        data = json.loads(path.read_text())
        sentences = data["sentences"]
        pairs = [(s["video_id"], s["caption"]) for s in sentences]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not an MSR-VTT data file ({type(err).__name__}: {err})") from err
    captions: dict[str, list[str]] = defaultdict(list)
    for i, (video_id, text) in enumerate(pairs):
        captions[video_id].append(_caption(text, path, f"sentence {i}"))
    return captions


def _msrvtt_train(
    ids: list[str], captions: dict[str, list[str]], video_dir: Path, split_file: Path
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
    return [Record(v, video_dir / f"{v}.mp4", text) for v in ids for text in captions.get(v, [])]


def _read_own(path: Path, kind: str, split: str, root: Path) -> list[Record]:
    rows = _csv_rows(path, ("video", "caption")) if kind == "csv" else _jsonl_rows(path)
    if any(r.get("split") not in (None, "") for _, r in rows):
        present = sorted({str(r.get("split")) for _, r in rows})
        rows = [(line, r) for line, r in rows if r.get("split") == split]
        if not rows:
            raise ValueError(f"{path}: no rows with split {split!r} (splits present: {present})")
    return [_own_record(path, line, row, root) for line, row in rows]


def _own_record(path: Path, line: int, row: dict, root: Path) -> Record:
    if not row.get("video"):
        raise ValueError(f"{path}:{line}: missing 'video'")
    start, end = _seconds(row.get("start"), path, line), _seconds(row.get("end"), path, line)
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{path}:{line}: end {end} is not after start {start}")
    video = str(row["video"])
    return Record(video, root / video, _caption(row.get("caption"), path, line), start, end)


def _csv_rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header; the columns must be present."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise ValueError(f"{path}: missing column(s) {absent} (header: {reader.fieldnames})")
        return [(reader.line_num, row) for row in reader]


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line}: expected a JSON object")
            rows.append((line, row))
    return rows


def _caption(text: object, path: Path, where: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{path}:{where}: empty or missing caption")
    return text.strip()


def _seconds(value: object, path: Path, line: int) -> float | None:
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}:{line}: {value!r} is not a time in seconds") from err
    if seconds < 0:
        raise ValueError(f"{path}:{line}: negative time {seconds}")
    return seconds


def _read_synthetic(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """A generated folder (``annotations.jsonl``), or a root to generate the default one in."""
    folder = Path(anno_path) if anno_path else None
    if folder is None or not (folder / "annotations.jsonl").is_file():
        folder = synthetic.ensure_synthetic(folder)
    split = "test" if split == "val" else split
    return _read_own(
        folder / "annotations.jsonl", "jsonl", split, Path(video_path) if video_path else folder
    )


# ---------------------------------------------------------------- checking videos


def check_videos(
    videos: Sequence[VideoRef], on_error: str = "raise", *, source: str = "", workers: int = 2
) -> dict[str, str]:
    """Problems with the videos, before any training: path -> reason.

    ``raise``: one error listing every missing or empty file. ``skip``: each file is also
    opened (header only) to find corrupt ones; each problem is logged once with a summary.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    unique = list(dict.fromkeys(v.path for v in videos))
    if on_error == "raise":
        problems = {str(p): why for p in unique if (why := _file_problem(Path(p)))}
        if problems:
            raise FileNotFoundError(_problem_summary(problems, len(unique), source))
        return problems
    with ThreadPoolExecutor(max(1, workers)) as pool:
        found = list(
            tqdm(
                pool.map(_open_problem, unique),
                total=len(unique),
                unit="video",
                desc="checking videos",
                disable=len(unique) < 100,
            )
        )
    problems = {str(p): why for p, why in zip(unique, found, strict=True) if why}
    for path, why in problems.items():
        logger.warning("skipping video %s: %s", path, why)
    if problems:
        logger.warning(_problem_summary(problems, len(unique), source))
    return problems


def _file_problem(path: Path) -> str | None:
    if not path.is_file():
        return "file not found"
    return "empty file (0 bytes)" if path.stat().st_size == 0 else None


def _open_problem(path: Path) -> str | None:
    try:
        probe(path, backend="pyav")
    except VideoReadError as err:
        return err.cause or str(err)
    return None


def _problem_summary(problems: dict[str, str], total: int, source: str) -> str:
    reasons: dict[str, int] = defaultdict(int)
    for why in problems.values():
        reasons[why.split(" (")[0]] += 1
    counts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    first = ", ".join(list(problems)[:5])
    where = f" referenced by {source}" if source else ""
    return f"{len(problems)} of {total} videos{where} are unusable ({counts}); first: {first}"
