"""Annotation readers: one record per query, from each dataset's own files.

``read_annotations(datatype, anno_path, split, video_path)`` is the one entry point:

- ``msrvtt`` (CLIP4Clip's layout), ``csv`` / ``jsonl`` (your own clips), ``synthetic``;
- ``msvd`` and ``vatex``: every caption of every video of the split is a query (duplicates
  kept), over the whole clip;
- ``didemo`` and ``activitynet``: paragraph-to-video, one query per video, all its sentences
  joined in file order, over the whole video (``start = end = None``).

The benchmark layouts and protocols are those of CLIP4Clip and its successors (``data/README.md``).
Their videos are found through one index per video folder (file name, and file name without
extension -> file, so any extension resolves); a video that is not there keeps the path it most
likely has, so ``check_videos`` reports it by name. A missing annotation file raises
``FileNotFoundError`` naming it and the files the split needs; a malformed one raises
``ValueError`` naming the file, and for the benchmarks up to ``MAX_PROBLEMS`` of its problems
at once. No record names a file outside its video folder (an id like ``../x`` is refused), and
nothing is read silently as something else: a CSV row must fit on its line with the header's
fields, a JSON key must not repeat. ``check_videos`` finds missing, empty or corrupt videos
before any work starts.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import pickle
import pickletools
import typing
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vcb_utils import safe_json, synthetic
from vcb_utils.config import Datatype
from vcb_utils.video import VideoReadError, VideoRef, probe

logger = logging.getLogger(__name__)

DATATYPES: tuple[str, ...] = typing.get_args(Datatype)
"""Every ``datatype`` that ``read_annotations`` reads (declared once, in ``config.Datatype``)."""
MSRVTT_DATA = "MSRVTT_data.json"
MSRVTT_SPLITS = {
    "train": "MSRVTT_train.9k.csv",
    "train9k": "MSRVTT_train.9k.csv",
    "train7k": "MSRVTT_train.7k.csv",
    "test": "MSRVTT_JSFUSION_test.csv",
    "val": "MSRVTT_JSFUSION_test.csv",
}
"""MSR-VTT has no separate validation set: ``val`` is the 1k-A test split, as in the reference."""
MSVD_SPLITS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
MSVD_CAPTIONS = ("raw-captions.pkl", "captions_msvd.json")
"""CLIP4Clip's pickle of token lists, else X-Pool's JSON of sentences: the first one present."""
VATEX_SPLITS = {"train": "train_list.txt", "val": "test_list.txt", "test": "test_list.txt"}
"""The HGR split; ``val`` is the test list, as in TS2-Net."""
VATEX_CAPTIONS = ("ref_captions.json", "vatex_data.json")
"""``{id: [caption, ...]}`` (TS2-Net), else ``{id: {"enCap": [...], "chCap": [...]}}`` (English)."""
DIDEMO_SPLITS = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
"""LocalizingMoments' files; an optional ``<split>_list.txt`` beside one keeps only its videos."""
ACTIVITYNET_SPLITS = {
    "train": ("train.json", "train_ids.json"),
    "val": ("val_1.json", "val_ids.json"),
    "test": ("val_1.json", "val_ids.json"),
}
"""(captions, optional id list) per split; there is no test split, so ``val`` and ``test`` are
``val_1`` as in CLIP4Clip, and ``val_2.json`` is never read."""
MAX_PROBLEMS = 10
"""How many problems of one annotation file an error lists."""
MAX_CAPTION_CHARS = 1 << 28
"""Cap on the characters of an MSVD pickle's captions once joined (the real file has about 5
million): a small pickle that references one list many times would expand far past memory."""
NOT_VIDEOS = frozenset(
    {".csv", ".json", ".jsonl", ".md", ".part", ".pickle", ".pkl", ".tmp", ".txt", ".ytdl"}
)
"""Extensions the video index skips (annotations beside the videos, partial downloads)."""


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
    """One record per query of ``split`` (a caption, or a paragraph for DiDeMo and ActivityNet).

    - ``msrvtt``: ``anno_path`` is the folder with ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``
      (``MSRVTT_train.7k.csv`` for ``train7k``) and ``MSRVTT_JSFUSION_test.csv``; ``video_path``
      the folder of ``<video_id>.mp4`` (default: ``anno_path``). ``train`` gives every caption of
      every train video, ``test`` (and ``val``) the 1000 pairs of the 1k-A split.
    - ``csv`` / ``jsonl``: ``anno_path`` is the file, with ``video`` (relative to ``video_path``,
      default the file's folder), ``caption`` and optional ``start``, ``end``, ``split``.
    - ``synthetic``: a generated folder (created on first use; default under ``data/synthetic``).
    - ``msvd``, ``vatex``, ``didemo``, ``activitynet``: ``anno_path`` is the benchmark's annotation
      folder (``MSVD_SPLITS`` ... ``ACTIVITYNET_SPLITS`` name its files), ``video_path`` the folder
      of its videos, any extension (default: ``anno_path``). MSVD and VATEX give one record per
      caption, DiDeMo and ActivityNet one per video (the paragraph); all cover whole videos.
    """
    if datatype == "msrvtt":
        return _read_msrvtt(_required(anno_path, datatype), split, video_path)
    if datatype in ("csv", "jsonl"):
        path = _required(anno_path, datatype)
        return _read_own(path, datatype, split, Path(video_path) if video_path else path.parent)
    if datatype == "synthetic":
        return _read_synthetic(anno_path, split, video_path)
    if datatype in _BENCHMARKS:
        anno_dir = _required(anno_path, datatype)
        if not anno_dir.is_dir():
            raise NotADirectoryError(f"{anno_dir}: {datatype} anno_path must be a folder")
        return _BENCHMARKS[datatype](anno_dir, split, Path(video_path) if video_path else anno_dir)
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
        _check_ids([r["video_id"] for _, r in rows], split_file)
        return [
            Record(
                r["video_id"],
                video_dir / f"{r['video_id']}.mp4",
                _caption(r["sentence"], split_file, line),
            )
            for line, r in rows
        ]
    ids = [r["video_id"] for _, r in _csv_rows(split_file, ("video_id",))]
    _check_ids(ids, split_file)
    return _msrvtt_train(ids, _msrvtt_captions(anno_dir / MSRVTT_DATA), video_dir, split_file)


def _msrvtt_captions(path: Path) -> dict[str, list[str]]:
    """Captions per video id from ``MSRVTT_data.json``, in file order."""
    data = _load_json(path)
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
    """Your own CSV/JSONL file: every row's problems are collected and reported together."""
    problems = _Problems(path)
    rows = _csv_rows(path, ("video", "caption")) if kind == "csv" else _jsonl_rows(path, problems)
    if any(r.get("split") not in (None, "") for _, r in rows):
        present = sorted({str(r.get("split")) for _, r in rows})
        rows = [(line, r) for line, r in rows if r.get("split") == split]
        if not rows:
            raise ValueError(f"{path}: no rows with split {split!r} (splits present: {present})")
    records = [_own_record(root, line, row, problems) for line, row in rows]
    problems.raise_any()
    return [r for r in records if r is not None]


def _own_record(root: Path, line: int, row: dict, problems: _Problems) -> Record | None:
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


def _check_ids(ids: Sequence[str], source: Path) -> None:
    """A benchmark's video id names one file of the video folder: no folder, no way out."""
    bad = [i for i in ids if not i or i in (".", "..") or "/" in i or "\\" in i]
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} video id(s) are not plain file names, so they would name "
            f"files outside the video folder: {_first([repr(i) for i in bad], ', ')}"
        )


def _csv_rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header; the columns must be present, once each.

    Each row must have the header's number of fields and fit on its line: a quoted field that
    runs over lines (or past the csv module's size limit) is nearly always a stray quote that
    swallowed the rows after it.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(reader, [])
    absent = [c for c in columns if c not in header]
    if absent:
        raise ValueError(f"{path}: missing column(s) {absent} (header: {header})")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ValueError(f"{path}:1: column(s) {repeated} appear more than once in the header")
    rows, line = [], reader.line_num
    try:
        for fields in reader:
            start, line = line + 1, reader.line_num
            if fields:
                _check_row(path, start, line, len(fields), len(header))
                rows.append((start, dict(zip(header, fields, strict=True))))
    except csv.Error as err:
        raise ValueError(
            f"{path}:{line + 1}: unreadable row ({err}); a quote left open there swallows "
            "every row after it: close it, or quote the whole field and double inner quotes"
        ) from err
    return rows


def _check_row(path: Path, start: int, end: int, fields: int, columns: int) -> None:
    if end > start:
        raise ValueError(
            f"{path}:{start}: a quoted field runs on to line {end}: a quote left open there "
            "swallows the rows after it (a field must fit on its line)"
        )
    if fields != columns:
        raise ValueError(
            f"{path}:{start}: {fields} fields, the header has {columns} "
            "(a comma inside an unquoted field, or a field missing?)"
        )


def _lines(text: str) -> list[str]:
    """``text`` cut at line feeds only (``str.splitlines`` also cuts at U+2028 and others,
    which may appear inside a JSON string)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _jsonl_rows(path: Path, problems: _Problems) -> list[tuple[int, dict]]:
    rows = []
    for line, text in enumerate(_lines(_read_text(path)), start=1):
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


def _caption(text: object, path: Path, where: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{path}:{where}: empty or missing caption")
    return text.strip()


def _seconds(value: object, where: str, problems: _Problems) -> float | None:
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


# ---------------------------------------------------------------- the four benchmarks


def _read_msvd(anno_dir: Path, split: str, video_dir: Path) -> list[Record]:
    """Every caption of every video of the split list; videos ``<id>.<ext>`` (ids may start
    with ``-``)."""
    list_file = anno_dir / _split_file(MSVD_SPLITS, "msvd", split)
    caption_file = _need(anno_dir, "msvd", split, [list_file.name], MSVD_CAPTIONS)
    if caption_file.suffix == ".pkl":
        captions = _msvd_pickle_captions(caption_file)
    else:
        captions = _json_captions(caption_file)
    return _caption_records(list_file, caption_file, captions, video_dir, ".avi")


def _read_vatex(anno_dir: Path, split: str, video_dir: Path) -> list[Record]:
    """Every English caption of every video of the split list; videos ``<videoID>.<ext>``."""
    list_file = anno_dir / _split_file(VATEX_SPLITS, "vatex", split)
    caption_file = _need(anno_dir, "vatex", split, [list_file.name], VATEX_CAPTIONS)
    captions = _json_captions(caption_file)
    return _caption_records(list_file, caption_file, captions, video_dir, ".mp4")


def _read_didemo(anno_dir: Path, split: str, video_dir: Path) -> list[Record]:
    """One paragraph per video, of the split list's videos when ``<split>_list.txt`` exists.

    Videos: ``<video>`` as downloaded (``x.mov``), ``<video>.<ext>`` (``x.mov.mp4``) or
    ``<stem>.<ext>`` (``x.mp4``). The whole file, not CLIP4Clip's ``0..31`` s: the same frames
    for the usual video of at most 31 s, and the paragraph describes the whole video.
    """
    data_file = anno_dir / _split_file(DIDEMO_SPLITS, "didemo", split)
    _need(anno_dir, "didemo", split, [data_file.name])
    paragraphs = _didemo_paragraphs(data_file)
    ids = _split_ids(anno_dir / f"{split}_list.txt", _read_list, paragraphs, data_file)
    videos = _VideoFolder(video_dir)
    return [
        Record(video, videos.find([video, os.path.splitext(video)[0]], video), paragraphs[video])
        for video in ids
    ]


def _read_activitynet(anno_dir: Path, split: str, video_dir: Path) -> list[Record]:
    """One paragraph per video, of the videos of ``train_ids.json`` / ``val_ids.json`` if present.

    Videos: ``v_<id>.<ext>`` (official crawler) or ``<id>.<ext>`` (CLIP4Clip). The whole file, as
    CLIP4Clip's ``0..ceil(duration)``.
    """
    data_name, ids_name = _split_file(ACTIVITYNET_SPLITS, "activitynet", split)
    data_file = anno_dir / data_name
    _need(anno_dir, "activitynet", split, [data_name])
    paragraphs = _activitynet_paragraphs(data_file)
    ids = _split_ids(anno_dir / ids_name, _json_ids, paragraphs, data_file)
    videos = _VideoFolder(video_dir)
    return [Record(v, videos.find(_activitynet_names(v), f"{v}.mp4"), paragraphs[v]) for v in ids]


def _activitynet_names(video_id: str) -> list[str]:
    """``v_<id>``, then ``<id>``: the prefix cut by position, since ids may start with ``v`` or
    ``_`` (``v__jxpaVW4_cE``), which ``lstrip("v_")`` would eat."""
    return [video_id, video_id[2:]] if video_id.startswith("v_") else [video_id]


_BENCHMARKS: dict[str, Callable[[Path, str, Path], list[Record]]] = {
    "msvd": _read_msvd,
    "vatex": _read_vatex,
    "didemo": _read_didemo,
    "activitynet": _read_activitynet,
}


# ---------------------------------------------------------------- benchmark file helpers


def _split_file(table: dict, datatype: str, split: str):
    """The file(s) that ``table`` names for ``split``."""
    if split not in table:
        raise ValueError(f"unknown {datatype} split {split!r}; choose one of {sorted(table)}")
    return table[split]


def _need(
    anno_dir: Path, datatype: str, split: str, needed: Sequence[str], one_of: Sequence[str] = ()
) -> Path | None:
    """Check that the split's files exist; the first of ``one_of`` present (if any is asked)."""
    missing = [name for name in needed if not (anno_dir / name).is_file()]
    found = next((anno_dir / name for name in one_of if (anno_dir / name).is_file()), None)
    alternatives = [" or ".join(one_of)] if one_of else []
    if one_of and found is None:
        missing += alternatives
    if missing:
        raise FileNotFoundError(
            f"{anno_dir}: missing {datatype} file(s) {'; '.join(missing)} for split {split!r} "
            f"(it needs {'; '.join([*needed, *alternatives])}; see data/README.md)"
        )
    return found


class _Problems:
    """The problems found in one file, raised together as one ``ValueError``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.found.append(f"{where}: {what}")

    def raise_any(self) -> None:
        if self.found:
            raise ValueError(f"{self.path}: {len(self.found)} problem(s): {_first(self.found)}")


def _first(items: Sequence[str], sep: str = "; ") -> str:
    more = len(items) - MAX_PROBLEMS
    return sep.join(items[:MAX_PROBLEMS]) + (f"{sep}and {more} more" if more > 0 else "")


def _read_text(path: Path) -> str:
    """A UTF-8 file's text, without its byte-order mark if it has one."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({err.reason})") from err


def _load_json(path: Path) -> object:
    return safe_json.loads(_read_text(path), path)


def _read_list(path: Path) -> list[str]:
    """A split list: one id a line, in order; blank lines and repeats dropped."""
    ids = [line.strip() for line in _lines(_read_text(path)) if line.strip()]
    if not ids:
        raise ValueError(f"{path}: the split list is empty")
    return _unique(ids, path)


def _json_ids(path: Path) -> list[str]:
    """A JSON list of ids (ActivityNet's ``train_ids.json``), in order."""
    ids = _load_json(path)
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValueError(f'{path}: expected a non-empty JSON list of ids like "v_<youtube id>"')
    return _unique(ids, path)


def _unique(ids: list[str], path: Path) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        logger.warning("%s: %d repeated id(s) read once", path, len(ids) - len(unique))
    return unique


def _split_ids(
    list_file: Path, read: Callable[[Path], list[str]], known: dict, data_file: Path
) -> list[str]:
    """The ids of ``list_file`` if it exists (each must be in ``known``), else all of ``known``."""
    if not list_file.is_file():
        _check_ids(list(known), data_file)
        return list(known)
    ids = read(list_file)
    _check_ids(ids, list_file)
    missing = [video for video in ids if video not in known]
    if missing:
        raise ValueError(
            f"{list_file}: {len(missing)} of its {len(ids)} videos have no captions in "
            f"{data_file.name}: {_first(missing, ', ')}"
        )
    return ids


# ---------------------------------------------------------------- benchmark captions


def _caption_records(
    list_file: Path, caption_file: Path, captions: dict[str, list[str]], video_dir: Path, ext: str
) -> list[Record]:
    """One record per caption of each video of ``list_file``, in list order."""
    videos = _VideoFolder(video_dir)
    records = []
    for video_id in _split_ids(list_file, _read_list, captions, caption_file):
        path = videos.find([video_id], f"{video_id}{ext}")
        records += [Record(video_id, path, text) for text in captions[video_id]]
    return records


def _json_captions(path: Path) -> dict[str, list[str]]:
    """``{id: [caption, ...]}``, or VATEX's ``{id: {"enCap": [...], "chCap": [...]}}`` read in
    English (``enCap``) only."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video id: [caption, ...]}}")
    problems = _Problems(path)
    captions = {}
    for video_id, value in data.items():
        if isinstance(value, dict):
            value = value.get("enCap")
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            problems.add(repr(video_id), "expected a list of caption strings (or an 'enCap' one)")
            continue
        captions[video_id] = _clean_captions(value, problems, video_id)
    problems.raise_any()
    return captions


def _msvd_pickle_captions(path: Path) -> dict[str, list[str]]:
    """CLIP4Clip's ``raw-captions.pkl``: ``{id: [[token, ...], ...]}``, tokens joined by spaces."""
    data = _load_plain_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a pickled dict {{video id: [[token, ...], ...]}}, "
            f"not {type(data).__name__}"
        )
    problems = _Problems(path)
    sizes: dict[tuple[int, int], int | None] = {}
    captions, total = {}, 0
    for video_id, value in data.items():
        size = _joined_size(value, sizes)
        if not isinstance(video_id, str):
            problems.add(repr(video_id), "the video id is not a string")
            continue
        if size is None:
            problems.add(repr(video_id), "expected a list of token lists [[token, ...], ...]")
            continue
        total += size
        if total > MAX_CAPTION_CHARS:
            raise ValueError(
                f"{path}: its captions would take over {MAX_CAPTION_CHARS} characters once "
                "joined (it references the same lists over and over): not MSVD's captions"
            )
        captions[video_id] = _clean_captions([" ".join(t) for t in value], problems, video_id)
    problems.raise_any()
    return captions


def _joined_size(value: object, sizes: dict[tuple[int, int], int | None], depth: int = 2):
    """The characters of ``value``'s captions once their tokens are joined (``depth`` 2: a list
    of token lists, 1: a token list), or None if it is not one. Each list is measured once, by
    identity, however many times the pickle references it."""
    key = (id(value), depth)
    if key not in sizes:
        if not isinstance(value, list):
            sizes[key] = None
        elif depth == 1:
            ok = all(isinstance(token, str) for token in value)
            sizes[key] = sum(len(token) + 1 for token in value) if ok else None
        else:
            parts = [_joined_size(item, sizes, 1) for item in value]
            sizes[key] = None if None in parts else sum(parts)
    return sizes[key]


def _clean_captions(texts: list[str], problems: _Problems, video_id: str) -> list[str]:
    if not texts:
        problems.add(repr(video_id), "no captions")
    for i, text in enumerate(texts):
        if not text.strip():
            problems.add(f"{video_id!r} caption {i}", "empty caption")
    return [text.strip() for text in texts]


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds plain data only (dicts, lists, strings, numbers): every reference to a class or a
    function is refused, so loading cannot run code."""

    def find_class(self, module: str, name: str):
        raise _RefusedGlobal(f"{module}.{name}")


def _load_plain_pickle(path: Path) -> object:
    """The plain data in the pickle ``path``. Its opcodes are read first: every length the pickle
    declares must be present in the file, since the unpickler allocates a declared length before
    reading it (a 20 MB file declaring 8 GB would get them)."""
    data = path.read_bytes()
    try:
        for _ in pickletools.genops(data):
            pass
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as err:
        raise ValueError(
            f"{path}: refuses to load: it references {err}; MSVD captions are plain dicts of "
            "lists of strings, so no class or function may appear in the pickle"
        ) from None
    except Exception as err:  # a truncated or garbled pickle fails in many ways
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err


def _didemo_paragraphs(path: Path) -> dict[str, str]:
    """``[{video, description, ...}, ...]`` -> video -> its descriptions joined in file order."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{video, description, times}} entries")
    problems = _Problems(path)
    sentences: dict[str, list[str]] = defaultdict(list)
    for i, entry in enumerate(data):
        video = entry.get("video") if isinstance(entry, dict) else None
        if not isinstance(video, str) or not video.strip():
            problems.add(f"entry {i}", "no 'video' name")
        elif not isinstance(entry.get("description"), str):
            problems.add(f"entry {i} ({video})", "no 'description' string")
        else:
            sentences[video].append(entry["description"])
    return _paragraphs(sentences, problems)


def _activitynet_paragraphs(path: Path) -> dict[str, str]:
    """``{"v_<id>": {duration, timestamps, sentences}}`` -> id -> its sentences joined in order."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a JSON object {{"v_<id>": {{"sentences": [...]}}}}')
    problems = _Problems(path)
    sentences = {}
    for video_id, entry in data.items():
        texts = entry.get("sentences") if isinstance(entry, dict) else None
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            problems.add(repr(video_id), "no 'sentences' list of strings")
        else:
            sentences[video_id] = texts
    return _paragraphs(sentences, problems)


def _paragraphs(sentences: dict[str, list[str]], problems: _Problems) -> dict[str, str]:
    """Each video's sentences, stripped and joined by a space; a blank one is left out (and
    counted in a warning), a video with no sentence left is a problem."""
    paragraphs, blank = {}, 0
    for video_id, texts in sentences.items():
        kept = [text.strip() for text in texts if text.strip()]
        blank += len(texts) - len(kept)
        if kept:
            paragraphs[video_id] = " ".join(kept)
        else:
            problems.add(repr(video_id), "no non-empty sentence")
    problems.raise_any()
    if blank:
        logger.warning("%s: %d empty sentence(s) left out of paragraphs", problems.path, blank)
    return paragraphs


# ---------------------------------------------------------------- finding benchmark videos


class _VideoFolder:
    """The files of one video folder, listed once: file name, and file name without extension,
    -> path, so every extension resolves (``.mp4`` first when one name comes in several).

    Hidden files and ``NOT_VIDEOS`` (annotations, partial downloads) are left out.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            with os.scandir(folder) as entries:
                names = [entry.name for entry in entries if entry.is_file()]
        except (FileNotFoundError, NotADirectoryError):
            logger.warning("video folder %s not found: every video of the split is missing", folder)
            names = []
        names = [
            name
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() not in NOT_VIDEOS
        ]
        stems: dict[str, Path] = {}
        for name in sorted(names, key=lambda name: (not name.lower().endswith(".mp4"), name)):
            stems.setdefault(os.path.splitext(name)[0], folder / name)
        self.index = {**stems, **{name: folder / name for name in names}}

    def find(self, names: Sequence[str], expected: str) -> Path:
        """The file of the first of ``names`` (with or without extension) in the folder, else
        ``folder / expected``, the path it most likely has (for ``check_videos`` to report)."""
        return next((self.index[n] for n in names if n in self.index), self.folder / expected)


# ---------------------------------------------------------------- checking videos


def check_videos(
    videos: Sequence[VideoRef],
    on_error: str = "raise",
    *,
    source: str = "",
    workers: int = 2,
    open_files: bool | None = None,
) -> dict[str, str]:
    """Problems with the videos, before any training: path -> reason.

    Every file must exist and not be empty; with ``open_files`` (default: with ``skip`` only)
    each is also opened (header only) to find corrupt ones. ``raise``: one error listing every
    problem. ``skip``: each problem is logged once, with a summary.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    unique = list(dict.fromkeys(v.path for v in videos))
    check = _open_problem if (on_error == "skip" if open_files is None else open_files) else None
    if check is None:
        problems = {str(p): why for p in unique if (why := _file_problem(Path(p)))}
    else:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            found = list(
                tqdm(
                    pool.map(check, unique),
                    total=len(unique),
                    unit="video",
                    desc="checking videos",
                    disable=len(unique) < 100,
                )
            )
        problems = {str(p): why for p, why in zip(unique, found, strict=True) if why}
    if problems and on_error == "raise":
        raise FileNotFoundError(_problem_summary(problems, len(unique), source))
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
