"""Annotations (MSR-VTT, own CSV/JSONL, synthetic), the training Dataset and the evaluation layout.

Training items are ``(text_ids [L], text_mask [L], video [T, 3, S, S], video_mask [T])`` with
``T = max_frames``; frames past the end of a short clip are zero and masked False. The
evaluation layout keeps each distinct video once and maps every caption to its video.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from vcb_utils import synthetic
from vcb_utils.cache import FrameCache
from vcb_utils.config import DataConfig
from vcb_utils.video import (
    FrameSampling,
    VideoReadError,
    VideoRef,
    normalize,
    pad_frames,
    probe,
)

logger = logging.getLogger(__name__)

DATATYPES = ("msrvtt", "csv", "jsonl", "synthetic")
Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
"""``tokenize(texts) -> (ids LongTensor [B, L], mask BoolTensor [B, L])``."""

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
        return [Record(r["video_id"], video_dir / f"{r['video_id']}.mp4",
                       _caption(r["sentence"], split_file, line)) for line, r in rows]
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
        raise ValueError(f"{split_file}: none of its {len(ids)} videos has a caption in "
                         f"{MSRVTT_DATA}")
    if without:
        logger.warning("%s: %d of %d videos have no caption in %s (first: %s)", split_file,
                       len(without), len(ids), MSRVTT_DATA, ", ".join(without[:3]))
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
    return _read_own(folder / "annotations.jsonl", "jsonl", split,
                     Path(video_path) if video_path else folder)


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
        found = list(tqdm(pool.map(_open_problem, unique), total=len(unique), unit="video",
                          desc="checking videos", disable=len(unique) < 100))
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


# ---------------------------------------------------------------- datasets


class ClipSource:
    """Turns a ``VideoRef`` into ``(video float [T, 3, S, S], mask [T])``, cache first.

    Decoding errors follow ``on_error``; files that failed are remembered (per process), logged
    once and listed in ``failed``. With ``jitter``, sampled positions move within their segments,
    drawn from ``(seed, index, a draw from torch's generator)``: torch seeds each loader worker
    and its generator moves on, so every epoch differs and a seeded run repeats (persistent
    workers included). The cache holds unjittered frames, so it is not used then.
    With ``uint8``, videos stay uint8 and unnormalised (4x less data through the loader): apply
    ``vcb_utils.video.normalize(video, mean, std)`` on the accelerator.
    """

    def __init__(
        self,
        sampling: FrameSampling,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        cache: FrameCache | None = None,
        on_error: str = "raise",
        jitter: bool = False,
        seed: int = 0,
        backend: str | None = None,
        uint8: bool = False,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        if cache is not None and jitter:
            logger.warning("frame jitter is on: the frame cache is not used")
            cache = None
        self.sampling, self.mean, self.std = sampling, tuple(mean), tuple(std)
        self.cache, self.on_error, self.jitter, self.seed = cache, on_error, jitter, seed
        self.backend, self.uint8 = backend, uint8
        self.failed: dict[str, str] = {}

    def frames(self, video: VideoRef, index: int) -> torch.Tensor:
        """uint8 ``[t, 3, S, S]`` from the cache when it has the video, else decoded."""
        if str(video.path) in self.failed:
            raise VideoReadError(self.failed[str(video.path)], path=str(video.path))
        cached = self.cache.load(video) if self.cache is not None else None
        if cached is not None:
            return cached
        rng = None
        if self.jitter:
            rng = np.random.default_rng([self.seed, index, int(torch.randint(2**31, ()))])
        try:
            return self.sampling.load(video, jitter=self.jitter, rng=rng, backend=self.backend)
        except VideoReadError as err:
            if self.on_error == "skip":
                self.failed[str(video.path)] = str(err)
                logger.warning("skipping %s", err)
            raise

    def __call__(self, video: VideoRef, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames = self.frames(video, index)
        if not self.uint8:
            frames = normalize(frames, self.mean, self.std)
        return pad_frames(frames, self.sampling.max_frames)


class VideoTextDataset(Dataset):
    """Training pairs, one item per caption: ``(text_ids, text_mask, video, video_mask)``.

    With ``on_error="skip"``, an item whose video cannot be decoded is replaced by the next
    readable item (logged once per file), so batches keep their size.
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        tokenize: Tokenize,
        max_frames: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        framerate: float = 1.0,
        decode_size: int | None = None,
        jitter: bool = False,
        seed: int = 0,
        on_error: str = "raise",
        cache: FrameCache | None = None,
        backend: str | None = None,
        uint8: bool = False,
    ) -> None:
        if not records:
            raise ValueError("no records: the annotation split is empty")
        self.records = list(records)
        self.tokenize = tokenize
        sampling = FrameSampling(max_frames, image_size, framerate, decode_size)
        self.source = ClipSource(sampling, mean, std, cache=cache, on_error=on_error,
                                 jitter=jitter, seed=seed, backend=backend, uint8=uint8)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def failed(self) -> dict[str, str]:
        """Videos that could not be decoded in this process: path -> error."""
        return self.source.failed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records")
        for offset in range(len(self.records)):
            current = (index + offset) % len(self.records)
            record = self.records[current]
            try:
                video, video_mask = self.source(record.video, current)
            except VideoReadError:
                if self.source.on_error == "raise":
                    raise
                continue
            text_ids, text_mask = _tokenize_one(self.tokenize, record.caption)
            return text_ids, text_mask, video, video_mask
        raise VideoReadError(f"no readable video among {len(self.records)} records")


class VideoDataset(Dataset):
    """Evaluation videos, each once: ``(video, video_mask)``.

    With ``on_error="skip"``, a video that fails to decode comes back as zero frames with an
    all-False mask (logged once), so captions keep their targets.
    """

    def __init__(self, videos: Sequence[VideoRef], source: ClipSource) -> None:
        self.videos, self.source = list(videos), source

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self.source(self.videos[index], index)
        except VideoReadError:
            if self.source.on_error == "raise":
                raise
            size, count = self.source.sampling.image_size, self.source.sampling.max_frames
            dtype = torch.uint8 if self.source.uint8 else torch.float32
            frames = torch.zeros(count, 3, size, size, dtype=dtype)
            return frames, torch.zeros(count, dtype=torch.bool)


class CaptionDataset(Dataset):
    """Evaluation captions: ``(text_ids, text_mask)``."""

    def __init__(self, captions: Sequence[str], tokenize: Tokenize) -> None:
        self.captions, self.tokenize = list(captions), tokenize

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _tokenize_one(self.tokenize, self.captions[index])


def _tokenize_one(tokenize: Tokenize, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize([text])
    return ids[0], mask[0]


def collate(items: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Stack the items' tensors: ``(text_ids, text_mask, video, video_mask)`` or the eval pairs.

    Inside a loader worker, the batch is stacked straight into shared memory (torch's default
    collate), which saves a copy of every video batch.
    """
    return tuple(default_collate(list(items)))


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    workers: int = 0,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A DataLoader with ``collate`` and a seeded shuffle."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        collate_fn=collate, drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


@dataclass
class EvalSet:
    """Each distinct video once; every caption mapped to its video's index."""

    videos: list[VideoRef]
    captions: list[str]
    caption_to_video: torch.Tensor
    """Long ``[num_captions]``: the index in ``videos`` of each caption's video."""
    video_dataset: VideoDataset
    caption_dataset: CaptionDataset

    def video_loader(self, batch_size: int, workers: int = 0) -> DataLoader:
        return make_loader(self.video_dataset, batch_size, workers=workers)

    def caption_loader(self, batch_size: int) -> DataLoader:
        return make_loader(self.caption_dataset, batch_size)


def eval_layout(records: Sequence[Record]) -> tuple[list[VideoRef], list[str], torch.Tensor]:
    """Distinct videos (first-seen order), captions (record order) and caption -> video."""
    index: dict[VideoRef, int] = {}
    for record in records:
        index.setdefault(record.video, len(index))
    targets = torch.tensor([index[r.video] for r in records], dtype=torch.long)
    return list(index), [r.caption for r in records], targets


def make_eval_set(
    records: Sequence[Record],
    *,
    tokenize: Tokenize,
    max_frames: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    framerate: float = 1.0,
    decode_size: int | None = None,
    on_error: str = "raise",
    cache: FrameCache | None = None,
    backend: str | None = None,
    uint8: bool = False,
) -> EvalSet:
    """The evaluation layout of ``records`` with its video and caption datasets."""
    if not records:
        raise ValueError("no records: the annotation split is empty")
    videos, captions, targets = eval_layout(records)
    sampling = FrameSampling(max_frames, image_size, framerate, decode_size)
    source = ClipSource(sampling, mean, std, cache=cache, on_error=on_error, backend=backend,
                        uint8=uint8)
    return EvalSet(videos, captions, targets, VideoDataset(videos, source),
                   CaptionDataset(captions, tokenize))


# ---------------------------------------------------------------- from a DataConfig


def build_dataset(
    cfg: DataConfig,
    split: str,
    *,
    tokenize: Tokenize,
    max_frames: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool = True,
    seed: int = 0,
    uint8: bool = False,
) -> VideoTextDataset:
    """The training Dataset of a split: annotations read, videos checked, frame cache filled.

    Frame jitter is on when ``train`` and ``cfg.frame_jitter``. With ``cfg.cache_dir`` set (and
    no jitter) missing cache entries are decoded first; under data parallelism call this on the
    main process first (``accelerator.main_process_first()``) so that the others find them.
    ``uint8`` keeps videos unnormalised uint8 (see ``ClipSource``).
    """
    jitter = train and cfg.frame_jitter
    records, cache = _prepare(cfg, split, max_frames, image_size, use_cache=not jitter)
    return VideoTextDataset(
        records, tokenize=tokenize, max_frames=max_frames, image_size=image_size, mean=mean,
        std=std, framerate=cfg.video_framerate, jitter=jitter, seed=seed,
        on_error=cfg.on_error, cache=cache, uint8=uint8,
    )


def build_eval_set(
    cfg: DataConfig,
    split: str,
    *,
    tokenize: Tokenize,
    max_frames: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    uint8: bool = False,
) -> EvalSet:
    """The evaluation layout of a split, prepared like ``build_dataset`` (no jitter)."""
    records, cache = _prepare(cfg, split, max_frames, image_size, use_cache=True)
    return make_eval_set(
        records, tokenize=tokenize, max_frames=max_frames, image_size=image_size, mean=mean,
        std=std, framerate=cfg.video_framerate, on_error=cfg.on_error, cache=cache, uint8=uint8,
    )


def _prepare(
    cfg: DataConfig, split: str, max_frames: int, image_size: int, use_cache: bool
) -> tuple[list[Record], FrameCache | None]:
    """Records whose videos are usable, and the filled frame cache (when configured)."""
    records = read_annotations(cfg.datatype, cfg.anno_path, split, cfg.video_path)
    source = f"{cfg.datatype} split {split!r}"
    problems = check_videos([r.video for r in records], cfg.on_error, source=source,
                            workers=cfg.workers)
    cache = None
    if cfg.cache_dir and use_cache:
        cache = FrameCache(cfg.cache_dir, FrameSampling(max_frames, image_size,
                                                        cfg.video_framerate))
        usable = [r.video for r in records if str(r.path) not in problems]
        report = cache.build(usable, workers=cfg.workers, on_error=cfg.on_error)
        problems = {**problems, **report.failed}
    kept = [r for r in records if str(r.path) not in problems]
    if not kept:
        raise ValueError(f"{source}: no usable videos ({len(problems)} unusable)")
    return kept, cache
