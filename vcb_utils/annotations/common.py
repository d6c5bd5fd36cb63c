"""What the annotation readers share: the record, one file's problems, safe text, CSV and JSON
reading, split lists, and the index of a video folder."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vcb_utils import safe_json
from vcb_utils.video import VideoRef

logger = logging.getLogger(__name__)

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


def required(anno_path: str | os.PathLike | None, datatype: str) -> Path:
    """``anno_path`` as a path that exists; a clear error when it is missing or not given."""
    if anno_path is None:
        raise ValueError(f"datatype {datatype!r} needs anno_path")
    path = Path(anno_path)
    if not path.exists():
        raise FileNotFoundError(f"annotation path not found: {path}")
    return path


def annotation_folder(anno_path: str | os.PathLike | None, datatype: str) -> Path:
    """A benchmark's annotation folder (``required``, and a folder)."""
    anno_dir = required(anno_path, datatype)
    if not anno_dir.is_dir():
        raise NotADirectoryError(f"{anno_dir}: {datatype} anno_path must be a folder")
    return anno_dir


def check_ids(ids: Sequence[str], source: Path) -> None:
    """A benchmark's video id names one file of the video folder: no folder, no way out."""
    bad = [i for i in ids if not i or i in (".", "..") or "/" in i or "\\" in i]
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} video id(s) are not plain file names, so they would name "
            f"files outside the video folder: {first_few([repr(i) for i in bad], ', ')}"
        )


def csv_rows(path: Path, columns: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header; the columns must be present, once each.

    Each row must have the header's number of fields and fit on its line: a quoted field that
    runs over lines (or past the csv module's size limit) is nearly always a stray quote that
    swallowed the rows after it.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
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


def lines(text: str) -> list[str]:
    """``text`` cut at line feeds only (``str.splitlines`` also cuts at U+2028 and others,
    which may appear inside a JSON string)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def split_file(table: dict, datatype: str, split: str):
    """The file(s) that ``table`` names for ``split``."""
    if split not in table:
        raise ValueError(f"unknown {datatype} split {split!r}; choose one of {sorted(table)}")
    return table[split]


def need(
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


class Problems:
    """The problems found in one file, raised together as one ``ValueError``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.found.append(f"{where}: {what}")

    def raise_any(self) -> None:
        if self.found:
            raise ValueError(f"{self.path}: {len(self.found)} problem(s): {first_few(self.found)}")


def first_few(items: Sequence[str], sep: str = "; ") -> str:
    more = len(items) - MAX_PROBLEMS
    return sep.join(items[:MAX_PROBLEMS]) + (f"{sep}and {more} more" if more > 0 else "")


def read_text(path: Path) -> str:
    """A UTF-8 file's text, without its byte-order mark if it has one."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({err.reason})") from err


def load_json(path: Path) -> object:
    return safe_json.loads(read_text(path), path)


def read_list(path: Path) -> list[str]:
    """A split list: one id a line, in order; blank lines and repeats dropped."""
    ids = [line.strip() for line in lines(read_text(path)) if line.strip()]
    if not ids:
        raise ValueError(f"{path}: the split list is empty")
    return unique_ids(ids, path)


def unique_ids(ids: list[str], path: Path) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if len(unique) < len(ids):
        logger.warning("%s: %d repeated id(s) read once", path, len(ids) - len(unique))
    return unique


def split_ids(
    list_file: Path, read: Callable[[Path], list[str]], known: dict, data_file: Path
) -> list[str]:
    """The ids of ``list_file`` if it exists (each must be in ``known``), else all of ``known``."""
    if not list_file.is_file():
        check_ids(list(known), data_file)
        return list(known)
    ids = read(list_file)
    check_ids(ids, list_file)
    missing = [video for video in ids if video not in known]
    if missing:
        raise ValueError(
            f"{list_file}: {len(missing)} of its {len(ids)} videos have no captions in "
            f"{data_file.name}: {first_few(missing, ', ')}"
        )
    return ids


def caption_records(
    list_file: Path, caption_file: Path, captions: dict[str, list[str]], video_dir: Path, ext: str
) -> list[Record]:
    """One record per caption of each video of ``list_file``, in list order."""
    videos = VideoFolder(video_dir)
    records = []
    for video_id in split_ids(list_file, read_list, captions, caption_file):
        path = videos.find([video_id], f"{video_id}{ext}")
        records += [Record(video_id, path, text) for text in captions[video_id]]
    return records


def json_captions(path: Path) -> dict[str, list[str]]:
    """``{id: [caption, ...]}``, or VATEX's ``{id: {"enCap": [...], "chCap": [...]}}`` read in
    English (``enCap``) only."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{video id: [caption, ...]}}")
    problems = Problems(path)
    captions = {}
    for video_id, value in data.items():
        if isinstance(value, dict):
            value = value.get("enCap")
        if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
            problems.add(repr(video_id), "expected a list of caption strings (or an 'enCap' one)")
            continue
        captions[video_id] = clean_captions(value, problems, video_id)
    problems.raise_any()
    return captions


def clean_captions(texts: list[str], problems: Problems, video_id: str) -> list[str]:
    if not texts:
        problems.add(repr(video_id), "no captions")
    for i, text in enumerate(texts):
        if not text.strip():
            problems.add(f"{video_id!r} caption {i}", "empty caption")
    return [text.strip() for text in texts]


def paragraphs(sentences: dict[str, list[str]], problems: Problems) -> dict[str, str]:
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


class VideoFolder:
    """The video files under one folder and its subfolders, listed in one walk: file name, and
    file name without extension, -> path.

    ``extensions`` are the dataset's accepted ones, most preferred first (None: any extension,
    ``.mp4`` first). A file directly in the folder wins over one further down; two at the same
    depth in different folders are ambiguous, and finding that video raises ``ValueError``
    naming both. Hidden files and folders and ``NOT_VIDEOS`` (annotations, partial downloads)
    are left out; a folder reached twice through symbolic links is listed once.
    """

    def __init__(self, folder: Path, extensions: Sequence[str] | None = None) -> None:
        self.folder = folder
        self.extensions = [ext.lower() for ext in extensions] if extensions else None
        self.by_name: dict[str, list[tuple[int, int, Path]]] = defaultdict(list)
        self.by_stem: dict[str, list[tuple[int, int, Path]]] = defaultdict(list)
        for path, depth in _files_under(folder):
            rank = self._rank(path.name)
            if rank is not None:
                self.by_name[path.name].append((depth, rank, path))
                self.by_stem[os.path.splitext(path.name)[0]].append((depth, rank, path))

    def _rank(self, name: str) -> int | None:
        """The file's place in the extension preference, None when it is not a video."""
        ext = os.path.splitext(name)[1].lower()
        if name.startswith(".") or ext in NOT_VIDEOS:
            return None
        if self.extensions is None:
            return int(ext != ".mp4")
        return self.extensions.index(ext) if ext in self.extensions else None

    def find(self, names: Sequence[str], expected: str) -> Path:
        """The file of the first of ``names`` (with or without extension) in the folder, else
        ``folder / expected``, the path it most likely has (for ``check_videos`` to report)."""
        for name in names:
            for index in (self.by_name, self.by_stem):
                if name in index:
                    return self._choose(name, index[name])
        return self.folder / expected

    def _choose(self, name: str, candidates: list[tuple[int, int, Path]]) -> Path:
        """The shallowest candidate, by extension preference then name within its folder."""
        depth = min(candidate[0] for candidate in candidates)
        nearest = sorted((rank, str(path), path) for d, rank, path in candidates if d == depth)
        if len({path.parent for _, _, path in nearest}) > 1:
            found = sorted(str(path.relative_to(self.folder)) for _, _, path in nearest)
            raise ValueError(
                f"{self.folder}: video {name!r} is ambiguous: {len(found)} files at the same "
                f"depth in different subfolders ({first_few(found, ', ')}); keep one of them, "
                "or move the others into a deeper subfolder"
            )
        return nearest[0][2]


def _files_under(folder: Path) -> Iterator[tuple[Path, int]]:
    """Every file under ``folder`` outside hidden folders, with its depth (0: directly in it);
    each folder once, by its shortest route, however many symbolic links lead to it."""
    pending, seen = deque([(folder, 0)]), set()
    while pending:
        current, depth = pending.popleft()
        try:
            info = current.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):
            logger.warning("video folder %s not found: its videos are missing", current)
            continue
        except OSError as err:
            logger.warning("video folder %s unreadable (%s): its videos are missing", current, err)
            continue
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                pending.append((Path(entry.path), depth + 1))
            elif entry.is_file():
                yield Path(entry.path), depth
