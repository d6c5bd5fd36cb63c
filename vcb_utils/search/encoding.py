"""Encoding video files into the vectors an index stores (the readable ones, in order)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from vcb_utils.cache import FrameCache
from vcb_utils.datasets import VideoDataset
from vcb_utils.encode import encode_videos, failed_videos
from vcb_utils.model import VideoColBERT, VideoEmbedding
from vcb_utils.search.collection import FIELDS
from vcb_utils.video import VideoRef


def encode_files(
    model: VideoColBERT,
    paths: Sequence[str | Path],
    ids: Sequence[str] | None,
    captions: Sequence[str] | None,
    framerate: float,
    batch_size: int,
    num_workers: int,
    on_error: str,
    cache_dir: str | Path | None,
    accelerator=None,
) -> tuple[VideoEmbedding, list[str], list[str], list[str]]:
    """Encode the readable files; their embedding, ids, paths and captions in the given order.

    Ids default to the file names without suffix. ``on_error="skip"`` leaves unreadable files
    out with a warning that lists them; ``"raise"`` raises ``VideoReadError`` naming the first.
    ``cache_dir``: decoded frames are read from (and added to) this frame cache.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    paths = [str(p) for p in paths]
    ids = [Path(p).stem for p in paths] if ids is None else [str(i) for i in ids]
    captions = [""] * len(paths) if captions is None else [str(c) for c in captions]
    if not paths or not len(ids) == len(paths) == len(captions):
        raise ValueError(
            f"need one id (and caption) per video: {len(paths)} paths, {len(ids)} ids, "
            f"{len(captions)} captions"
        )
    videos = [VideoRef(i, Path(p)) for i, p in zip(ids, paths, strict=True)]
    prep = model.preprocessing
    cache = FrameCache(cache_dir, prep.sampling(framerate)) if cache_dir else None
    # uint8 frames, normalised by the model on its device
    source = prep.source(framerate, cache=cache, on_error=on_error, uint8=True)
    embedding = encode_videos(
        model, VideoDataset(videos, source), batch_size, accelerator, num_workers=num_workers
    )
    keep = ~failed_videos(embedding).cpu()
    if not bool(keep.all()):
        skipped = [p for p, ok in zip(paths, keep.tolist(), strict=True) if not ok]
        warnings.warn(
            f"skipped {len(skipped)} unreadable videos (causes logged above):\n"
            + "\n".join(skipped),
            stacklevel=3,
        )
    kept = keep.tolist()

    def chosen(values: list[str]) -> list[str]:
        return [v for v, ok in zip(values, kept, strict=True) if ok]

    return _select(embedding, keep), chosen(ids), chosen(paths), chosen(captions)


def _select(embedding: VideoEmbedding, keep: torch.Tensor) -> VideoEmbedding:
    tensors = (getattr(embedding, name) for name in FIELDS)
    return VideoEmbedding(*(None if t is None else t[keep.to(t.device)] for t in tensors))
