"""Encoding for evaluation and indexing: every video and caption once, sharded over processes.

Each process encodes a contiguous shard (batched, no gradient, eval mode, autocast on GPU);
the shards are gathered back in the original order without the padding duplicates. One
failure policy for clips that cannot be decoded: the data pipeline (``ClipSource`` with
``on_error="skip"``) hands them over with an all-False mask, ``encode_videos`` keeps them as
rows without a valid vector, and ``failed_videos`` / ``drop_failed`` find and remove them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding, map_tensors

log = logging.getLogger(__name__)


def default_accelerator() -> Accelerator:
    return Accelerator(cpu=not torch.cuda.is_available())


def _inference(encode):
    """Run an encoder without gradients and in eval mode (no dropout), then restore the mode."""

    @functools.wraps(encode)
    def wrapper(model: VideoColBERT, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return encode(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


@_inference
def encode_videos(
    model: VideoColBERT,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> VideoEmbedding:
    """Encode a dataset of ``(video [T, 3, H, W], mask [T])`` items, in dataset order (with a
    progress bar on the main process unless ``progress=False``)."""
    accelerator = accelerator or default_accelerator()
    shard = _shard(len(dataset), accelerator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size, num_workers=num_workers
    )
    parts: list[VideoEmbedding] = []
    bar = tqdm(
        loader, desc="encode videos", disable=not (progress and accelerator.is_local_main_process)
    )
    for video, mask in bar:
        failed = ~mask.any(dim=1)  # a clip that could not be decoded (on_error="skip")
        mask[failed, 0] = True  # encode one blank frame in its place, then mask it out
        with _autocast(accelerator):
            part = model.encode_video(video.to(model.device), mask.to(model.device))
        for field in (part.F_mask, part.V_mask):
            if field is not None:
                field[failed.to(field.device)] = False
        parts.append(part)
    return _gather_parts(parts, len(dataset), accelerator)


@_inference
def encode_captions(
    model: VideoColBERT,
    captions: Sequence[str],
    batch_size: int,
    accelerator: Accelerator | None = None,
) -> TextEmbedding:
    """Encode captions once each, in order."""
    accelerator = accelerator or default_accelerator()
    shard = _shard(len(captions), accelerator)
    parts: list[TextEmbedding] = []
    for start in range(shard.start, shard.stop, batch_size):
        with _autocast(accelerator):
            parts.append(model.encode_text(captions[start : min(start + batch_size, shard.stop)]))
    return _gather_parts(parts, len(captions), accelerator)


def _shard(n: int, accelerator: Accelerator) -> range:
    """This process's contiguous slice of ``range(n)``.

    A process left without items re-encodes the last one: its block lies past ``n`` in the
    gathered order, so ``_gather_ordered`` drops it.
    """
    size = math.ceil(n / accelerator.num_processes)
    start = min(n, accelerator.process_index * size)
    return range(start, min(n, start + size)) if start < n else range(n - 1, n)


def _gather_parts(parts: list, n: int, accelerator: Accelerator):
    """Concatenate this process's batch embeddings, then gather all processes' in order."""
    names = [f.name for f in dataclasses.fields(parts[0])]
    local = {name: _cat([getattr(p, name) for p in parts]) for name in names}
    return type(parts[0])(**{k: _gather_ordered(t, n, accelerator) for k, t in local.items()})


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    parts = [p for p in parts if p is not None]
    return torch.cat(parts) if parts else None


def _gather_ordered(tensor: torch.Tensor | None, n: int, accelerator: Accelerator):
    """Gather contiguous shards in rank order and drop the padding (it is all at the end)."""
    if tensor is None or accelerator.num_processes == 1:
        return tensor
    dtype = tensor.dtype
    if dtype == torch.bool:
        tensor = tensor.to(torch.uint8)  # gloo cannot gather bool
    padded = accelerator.pad_across_processes(tensor, dim=0)
    return accelerator.gather(padded)[:n].to(dtype)


def _autocast(accelerator: Accelerator):
    if accelerator.device.type == "cuda":
        return accelerator.autocast()
    return contextlib.nullcontext()


def failed_videos(videos: VideoEmbedding) -> torch.Tensor:
    """Bool ``[N]``: the videos without a valid frame (they could not be decoded)."""
    return ~videos.F_mask.any(dim=1)


def drop_failed(
    texts: TextEmbedding, videos: VideoEmbedding, targets: torch.Tensor
) -> tuple[TextEmbedding, VideoEmbedding, torch.Tensor]:
    """Remove the videos that failed to decode, with their captions, loudly.

    Returns the kept captions, videos and each kept caption's new video index.
    """
    ok = ~failed_videos(videos).cpu()
    if bool(ok.all()):
        return texts, videos, targets
    keep = ok[targets]
    log.warning(
        "%d video(s) failed to decode: dropped with their %d caption(s) from the metrics",
        int((~ok).sum()),
        int((~keep).sum()),
    )
    new_index = torch.cumsum(ok.long(), dim=0) - 1
    videos = map_tensors(videos, lambda t: t[ok.to(t.device)])
    texts = map_tensors(texts, lambda t: t[keep.to(t.device)])
    return texts, videos, new_index[targets[keep]]
