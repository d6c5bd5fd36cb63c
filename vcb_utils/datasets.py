"""The training Dataset and the evaluation layout (annotation readers live in ``annotations``).

Training items are ``(text_ids [L], text_mask [L], video [T, 3, S, S], video_mask [T])`` with
``T = max_frames``; frames past the end of a short clip are zero and masked False. The
evaluation layout keeps each distinct video once and maps every caption to its video.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from vcb_utils.annotations import Record, check_videos, read_annotations
from vcb_utils.cache import FrameCache
from vcb_utils.config import DataConfig
from vcb_utils.preprocessing import Preprocessing, Tokenize
from vcb_utils.video import (
    FrameSampling,
    VideoReadError,
    VideoRef,
    normalize,
    pad_frames,
)

logger = logging.getLogger(__name__)

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

    def __init__(self, records: Sequence[Record], tokenize: Tokenize, source: ClipSource) -> None:
        if not records:
            raise ValueError("no records: the annotation split is empty")
        self.records, self.tokenize, self.source = list(records), tokenize, source

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


class GroupedShuffle(Sampler[int]):
    """A shuffle that keeps each group's items inside one batch of ``batch_size``.

    Every epoch (``set_epoch``, which accelerate calls) the groups are shuffled and laid out in
    batches; a group that does not fit in what is left of a batch waits for the next one. Items
    in no group are groups of one, so without groups this is a plain seeded shuffle.
    """

    def __init__(
        self, n: int, groups: Sequence[Sequence[int]], batch_size: int, seed: int = 0
    ) -> None:
        grouped = [i for group in groups for i in group]
        if len(set(grouped)) < len(grouped) or not all(0 <= i < n for i in grouped):
            raise ValueError(f"groups must be disjoint indices below {n}")
        if any(len(group) > batch_size for group in groups):
            raise ValueError(f"a group is larger than the batch size {batch_size}")
        alone = sorted(set(range(n)) - set(grouped))
        self.groups = [list(g) for g in groups if g] + [[i] for i in alone]
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = [self.groups[i] for i in torch.randperm(len(self.groups), generator=generator)]
        order: list[int] = []
        waiting: list[list[int]] = []
        for group in shuffled:
            waiting.append(group)
            for held in list(waiting):
                if len(held) <= self.batch_size - len(order) % self.batch_size:
                    order.extend(held)
                    waiting.remove(held)
        order.extend(i for held in waiting for i in held)
        return iter(order)


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
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate,
        drop_last=drop_last,
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
    skipped: dict[str, str] = field(default_factory=dict)
    """Video path -> why, for the split's videos left out before encoding (``on_error="skip"``)."""
    skipped_captions: int = 0
    """How many captions were left out with them."""

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


def make_eval_set(records: Sequence[Record], tokenize: Tokenize, source: ClipSource) -> EvalSet:
    """The evaluation layout of ``records`` with its video and caption datasets."""
    if not records:
        raise ValueError("no records: the annotation split is empty")
    videos, captions, targets = eval_layout(records)
    return EvalSet(
        videos, captions, targets, VideoDataset(videos, source), CaptionDataset(captions, tokenize)
    )


# ---------------------------------------------------------------- from a DataConfig


def build_dataset(
    cfg: DataConfig,
    split: str,
    prep: Preprocessing,
    *,
    train: bool = True,
    seed: int = 0,
    uint8: bool = False,
) -> VideoTextDataset:
    """The training Dataset of a split: annotations read, videos checked, frame cache filled.

    ``prep`` is the model's ``preprocessing``. Frame jitter is on when ``train`` and
    ``cfg.frame_jitter``. With ``cfg.cache_dir`` set (and no jitter) missing cache entries are
    decoded first; under data parallelism call this on the main process first
    (``accelerator.main_process_first()``) so that the others find them. ``uint8`` keeps videos
    unnormalised uint8 (see ``ClipSource``).
    """
    jitter = train and cfg.frame_jitter
    records, cache, _, _ = _prepare(cfg, split, prep, use_cache=not jitter)
    source = prep.source(
        cfg.video_framerate,
        cache=cache,
        on_error=cfg.on_error,
        jitter=jitter,
        seed=seed,
        uint8=uint8,
    )
    return VideoTextDataset(records, prep.tokenize, source)


def build_eval_set(
    cfg: DataConfig, split: str, prep: Preprocessing, *, uint8: bool = False
) -> EvalSet:
    """The evaluation layout of a split, prepared like ``build_dataset`` (no jitter)."""
    records, cache, problems, dropped = _prepare(cfg, split, prep, use_cache=True)
    source = prep.source(cfg.video_framerate, cache=cache, on_error=cfg.on_error, uint8=uint8)
    eval_set = make_eval_set(records, prep.tokenize, source)
    eval_set.skipped, eval_set.skipped_captions = problems, dropped
    return eval_set


def _prepare(
    cfg: DataConfig, split: str, prep: Preprocessing, use_cache: bool
) -> tuple[list[Record], FrameCache | None, dict[str, str], int]:
    """Records whose videos are usable, the filled frame cache (when configured), the
    unusable videos (path -> why) and how many records were dropped with them."""
    records = read_annotations(cfg.datatype, cfg.anno_path, split, cfg.video_path)
    source = f"{cfg.datatype} split {split!r}"
    problems = check_videos(
        [r.video for r in records], cfg.on_error, source=source, workers=cfg.workers
    )
    cache = None
    if cfg.cache_dir and use_cache:
        cache = FrameCache(cfg.cache_dir, prep.sampling(cfg.video_framerate))
        usable = [r.video for r in records if str(r.path) not in problems]
        report = cache.build(usable, workers=cfg.workers, on_error=cfg.on_error)
        problems = {**problems, **report.failed}
    kept = [r for r in records if str(r.path) not in problems]
    if not kept:
        raise ValueError(f"{source}: no usable videos ({len(problems)} unusable)")
    return kept, cache, problems, len(records) - len(kept)
