"""Text-to-video and video-to-text evaluation (protocol of DRL / CLIP4Clip, ties counted).

Every distinct video and every caption is encoded once (``vcb_utils.encode``), then scored
with the chunked ``maxsim``: the full 4-D similarity tensor never exists. The three score
variants come from one encoding pass: ``both`` (MMS_F + MMS_V), ``F`` (MMS_F) and ``V`` (MMS_V).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator

from vcb_utils.config import Config
from vcb_utils.datasets import EvalSet, build_eval_set
from vcb_utils.encode import (
    default_accelerator,
    drop_failed,
    encode_captions,
    encode_videos,
    failed_videos,
)
from vcb_utils.metrics import V2TRule, format_metrics_table, multi_caption_metrics
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding, mean_frame
from vcb_utils.storage import write_json_atomic

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
    report: bool = True,
) -> dict:
    """Metrics ``{"t2v"|"v2t": {"both"|"F"|"V": {R1 R5 R10 MdR MnR}}}``.

    Prints a table on the main process and, with ``output_dir``, writes ``metrics.json``
    with the checkpoint, dataset, split and settings the numbers came from.
    ``postprocessing`` (dual / inverted softmax) uses the other test queries: off by default
    and labelled wherever it is reported. ``eval_set`` (from ``load_eval_set``) saves
    reading and checking the split again when evaluating repeatedly; ``report=False`` prints
    no table and no progress bar (training prints one line per epoch instead).
    """
    accelerator = accelerator or default_accelerator()
    model.to(accelerator.device).eval()
    eval_set = eval_set or load_eval_set(model, config, split, accelerator)
    texts, videos, targets, dropped = encode_split(model, config, eval_set, accelerator, report)
    matrices = score_variants(model, texts, videos)
    metrics = compute_metrics(matrices, targets, postprocessing, config.data.v2t_rule)
    if report:
        _report(metrics, accelerator, split, len(texts.vectors), len(videos.F), postprocessing)
    if output_dir is not None and accelerator.is_main_process:
        _write_metrics(
            Path(output_dir), metrics, config, split, checkpoint, postprocessing, dropped
        )
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
    plain = dataclasses.replace(config.model, mode="F", query_expansion=False)
    model = VideoColBERT(plain).to(accelerator.device).eval()
    eval_set = load_eval_set(model, config, split, accelerator)
    texts, videos, targets, dropped = encode_split(model, config, eval_set, accelerator)
    matrices = zero_shot_matrices(model, texts, videos)
    metrics = compute_metrics(matrices, targets, "none", config.data.v2t_rule)
    _report(
        metrics,
        accelerator,
        f"{split} (zero-shot {config.model.backbone})",
        len(texts.vectors),
        len(videos.F),
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
            dropped,
        )
    return metrics


def zero_shot_matrices(
    model: VideoColBERT, texts: TextEmbedding, videos: VideoEmbedding
) -> dict[str, torch.Tensor]:
    """``mean`` and ``maxsim`` score matrices of an F-only, non-expanded model's encodings."""
    end = texts.mask.sum(dim=1) - 1
    sentence = texts.vectors[torch.arange(len(end), device=end.device), end].float()
    with torch.no_grad():
        mms_f = model.score(texts, videos).F
    return {"mean": (sentence @ mean_frame(videos).float().T).cpu(), "maxsim": mms_f.float().cpu()}


def load_eval_set(
    model: VideoColBERT, config: Config, split: str, accelerator: Accelerator
) -> EvalSet:
    """A split's annotations, videos checked and frame cache filled (main process first)."""
    with accelerator.main_process_first():  # the main process fills the frame cache
        # uint8 frames: normalised by the model, on its device
        return build_eval_set(config.data, split, model.preprocessing, uint8=True)


def encode_split(
    model: VideoColBERT,
    config: Config,
    eval_set: EvalSet,
    accelerator: Accelerator,
    progress: bool = True,
) -> tuple[TextEmbedding, VideoEmbedding, torch.Tensor, dict]:
    """Every caption and every distinct video of an evaluation set, encoded once.

    Returns the caption vectors, the video vectors, each caption's video index and what was
    left out: ``{"videos": n, "captions": m, "files": {path: why}}``, the videos found unusable
    before encoding and those that failed to decode (``on_error="skip"``), with their captions.
    """
    batch = config.train.batch_size_val
    videos = encode_videos(
        model, eval_set.video_dataset, batch, accelerator, config.data.workers, progress
    )
    texts = encode_captions(model, eval_set.captions, batch, accelerator)
    failed = failed_videos(videos).cpu()
    files = dict(eval_set.skipped)
    for row in failed.nonzero().flatten().tolist():
        files[str(eval_set.videos[row].path)] = "could not be decoded"
    captions = eval_set.skipped_captions + int(failed[eval_set.caption_to_video].sum())
    dropped = {"videos": len(files), "captions": captions, "files": files}
    return (*drop_failed(texts, videos, eval_set.caption_to_video), dropped)


def compute_metrics(
    matrices: dict[str, torch.Tensor],
    targets: torch.Tensor,
    postprocessing: str,
    v2t_rule: V2TRule,
) -> dict:
    """``{"t2v": {name: metrics}, "v2t": {name: metrics}}`` for each score matrix.

    ``v2t_rule`` (``DataConfig.v2t_rule``): see ``multi_caption_metrics``."""
    metrics: dict = {"t2v": {}, "v2t": {}}
    for name, sim in matrices.items():
        result = multi_caption_metrics(
            sim, targets, postprocessing=postprocessing, v2t_rule=v2t_rule
        )
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
    if scores.F is not None and scores.V is not None:
        variants.update(F=scores.F, V=scores.V)
    return {name: sim.float().cpu() for name, sim in variants.items()}


def _write_metrics(
    output_dir: Path,
    metrics: dict,
    config: Config,
    split: str,
    checkpoint: str | None,
    postprocessing: str,
    dropped: dict,
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "metrics": metrics,
        "checkpoint": checkpoint,
        "split": split,
        "dropped": dropped,
        "dataset": asdict(config.data),
        "model": asdict(config.model),
        "postprocessing": postprocessing,
        "protocol": "rank = other columns scoring >= the target (ties count against the model)",
    }
    write_json_atomic(output_dir / METRICS_FILE, record)
