"""Text-to-video and video-to-text evaluation (protocol of DRL / CLIP4Clip, ties counted).

Every distinct video is encoded once and every caption once (batched, no grad, autocast on
GPU, sharded over processes and gathered back in order without the padding duplicates),
then scored with the chunked ``maxsim``: the full 4-D similarity tensor never exists. The
three score variants come from one encoding pass: ``both`` (MMS_F + MMS_V), ``spatial``
(MMS_F) and ``temporal`` (MMS_V).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from vcb_utils.config import Config
from vcb_utils.datasets import EvalSet, build_eval_set
from vcb_utils.metrics import format_metrics_table, multi_caption_metrics
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding, map_tensors

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def evaluate(
    model: VideoColBERT,
    config: Config,
    accelerator: Accelerator | None = None,
    split: str = "test",
    output_dir: str | Path | None = None,
    checkpoint: str | None = None,
    postprocessing: str = "none",
    eval_set: EvalSet | None = None,
) -> dict:
    """Metrics ``{"t2v"|"v2t": {"both"|"spatial"|"temporal": {R1 R5 R10 MdR MnR}}}``.

    Prints a table on the main process and, with ``output_dir``, writes ``metrics.json``
    with the checkpoint, dataset, split and settings the numbers came from.
    ``postprocessing`` (dual / inverted softmax) uses the other test queries: off by default
    and labelled wherever it is reported. ``eval_set`` (from ``load_eval_set``) saves
    reading and checking the split again when evaluating repeatedly.
    """
    accelerator = accelerator or default_accelerator()
    model.to(accelerator.device).eval()
    eval_set = eval_set or load_eval_set(model, config, split, accelerator)
    texts, videos, targets = encode_split(model, config, eval_set, accelerator)
    matrices = score_variants(model, texts, videos)
    metrics = compute_metrics(matrices, targets, postprocessing)
    _report(metrics, accelerator, split, len(texts.vectors), len(videos.frames), postprocessing)
    if output_dir is not None and accelerator.is_main_process:
        _write_metrics(Path(output_dir), metrics, config, split, checkpoint, postprocessing)
    return metrics


def zero_shot(
    config: Config,
    accelerator: Accelerator | None = None,
    split: str = "test",
    output_dir: str | Path | None = None,
) -> dict:
    """The starting point: the plain open_clip backbone of ``config``, without any training.

    ``mean``: the end-of-text vector against the mean of the frame vectors (the CLIP
    zero-shot baseline of CLIP4Clip); ``maxsim``: MeanMaxSim of the real tokens over the
    frames (Video-ColBERT's frame branch before training).
    """
    accelerator = accelerator or default_accelerator()
    plain = dataclasses.replace(config.model, mode="spatial", query_expansion=False)
    model = VideoColBERT(plain).to(accelerator.device).eval()
    eval_set = load_eval_set(model, config, split, accelerator)
    texts, videos, targets = encode_split(model, config, eval_set, accelerator)
    matrices = zero_shot_matrices(model, texts, videos)
    metrics = compute_metrics(matrices, targets, "none")
    _report(
        metrics,
        accelerator,
        f"{split} (zero-shot {config.model.backbone})",
        len(texts.vectors),
        len(videos.frames),
        "none",
    )
    if output_dir is not None and accelerator.is_main_process:
        _write_metrics(
            Path(output_dir),
            metrics,
            config.updated(model=dataclasses.asdict(plain)),
            split,
            f"zero-shot {config.model.backbone}/{config.model.pretrained}",
            "none",
        )
    return metrics


def zero_shot_matrices(
    model: VideoColBERT, texts: TextEmbedding, videos: VideoEmbedding
) -> dict[str, torch.Tensor]:
    """``mean`` and ``maxsim`` score matrices of a spatial, non-expanded model's encodings."""
    end = texts.mask.sum(dim=1) - 1
    sentence = texts.vectors[torch.arange(len(end), device=end.device), end].float()
    weights = videos.frame_mask.unsqueeze(-1).to(videos.frames.dtype)
    mean = F.normalize((videos.frames * weights).sum(dim=1), dim=-1).float()
    with torch.no_grad():
        frame_branch = model.score(texts, videos).frame
    return {"mean": (sentence @ mean.T).cpu(), "maxsim": frame_branch.float().cpu()}


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


def default_accelerator() -> Accelerator:
    return Accelerator(cpu=not torch.cuda.is_available())


def load_eval_set(
    model: VideoColBERT, config: Config, split: str, accelerator: Accelerator
) -> EvalSet:
    """A split's annotations, videos checked and frame cache filled (main process first)."""
    with accelerator.main_process_first():  # the main process fills the frame cache
        return build_eval_set(
            config.data,
            split,
            tokenize=model.tokenize,
            max_frames=config.model.max_frames,
            image_size=model.image_size,
            mean=model.image_mean,
            std=model.image_std,
            uint8=True,  # normalised by the model, on its device
        )


def encode_split(
    model: VideoColBERT, config: Config, eval_set: EvalSet, accelerator: Accelerator
) -> tuple[TextEmbedding, VideoEmbedding, torch.Tensor]:
    """Every caption and every distinct video of an evaluation set, encoded once.

    Returns the caption vectors, the video vectors and each caption's video index. Videos
    that failed to decode (``on_error="skip"``) are dropped with their captions, loudly.
    """
    batch = config.train.batch_size_val
    videos = encode_videos(model, eval_set.video_dataset, batch, accelerator, config.data.workers)
    texts = encode_captions(model, eval_set.captions, batch, accelerator)
    return _drop_failed(texts, videos, eval_set.caption_to_video)


def _drop_failed(
    texts: TextEmbedding, videos: VideoEmbedding, targets: torch.Tensor
) -> tuple[TextEmbedding, VideoEmbedding, torch.Tensor]:
    ok = videos.frame_mask.any(dim=1).cpu()
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


def compute_metrics(
    matrices: dict[str, torch.Tensor], targets: torch.Tensor, postprocessing: str
) -> dict:
    """``{"t2v": {name: metrics}, "v2t": {name: metrics}}`` for each score matrix."""
    metrics: dict = {"t2v": {}, "v2t": {}}
    for name, sim in matrices.items():
        result = multi_caption_metrics(sim, targets, postprocessing=postprocessing)
        for direction in ("t2v", "v2t"):
            metrics[direction][name] = result[direction]
    return metrics


def _report(
    metrics: dict,
    accelerator: Accelerator,
    split: str,
    n_captions: int,
    n_videos: int,
    postprocessing: str,
) -> None:
    if not accelerator.is_main_process:
        return
    rows = {f"{d} {name}": m for d, by_name in metrics.items() for name, m in by_name.items()}
    label = "" if postprocessing == "none" else f" (POST-PROCESSED: {postprocessing})"
    log.info(
        "%s split, %d captions x %d videos%s\n%s",
        split,
        n_captions,
        n_videos,
        label,
        format_metrics_table(rows),
    )


def score_variants(
    model: VideoColBERT, texts: TextEmbedding, videos: VideoEmbedding
) -> dict[str, torch.Tensor]:
    """The score matrices of every branch the model has, from one encoding."""
    with torch.no_grad():
        scores = model.score(texts, videos)
    variants = {"both": scores.total}
    if scores.frame is not None and scores.video is not None:
        variants.update(spatial=scores.frame, temporal=scores.video)
    return {name: sim.float().cpu() for name, sim in variants.items()}


@_inference
def encode_videos(
    model: VideoColBERT,
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    accelerator: Accelerator | None = None,
    num_workers: int = 0,
) -> VideoEmbedding:
    """Encode a dataset of ``(video [T, 3, H, W], mask [T])`` items, in dataset order."""
    accelerator = accelerator or default_accelerator()
    shard = _shard(len(dataset), accelerator)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, shard), batch_size=batch_size, num_workers=num_workers
    )
    parts: list[VideoEmbedding] = []
    bar = tqdm(loader, desc="encode videos", disable=not accelerator.is_local_main_process)
    for video, mask in bar:
        failed = ~mask.any(dim=1)  # a clip that could not be decoded (on_error="skip")
        mask[failed, 0] = True  # encode one blank frame in its place, then mask it out
        with _autocast(accelerator):
            part = model.encode_video(video.to(model.device), mask.to(model.device))
        for field in (part.frame_mask, part.video_mask):
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


def _write_metrics(
    output_dir: Path,
    metrics: dict,
    config: Config,
    split: str,
    checkpoint: str | None,
    postprocessing: str,
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "metrics": metrics,
        "checkpoint": checkpoint,
        "split": split,
        "dataset": asdict(config.data),
        "model": asdict(config.model),
        "postprocessing": postprocessing,
        "protocol": "rank = other columns scoring >= the target (ties count against the model)",
    }
    (output_dir / METRICS_FILE).write_text(json.dumps(record, indent=2) + "\n")
