"""Train and evaluate Video-ColBERT with accelerate: one CPU, one GPU, many GPUs, many machines.

    python vcb_utils/train.py                        # the main job: tiny model, synthetic data
    accelerate launch vcb_utils/train.py --preset msrvtt-clip-b32 \\
        --anno_path data/msrvtt/annotations --video_path data/msrvtt/videos
    accelerate launch --multi_gpu --num_processes 2 vcb_utils/train.py --cpu   # 2 CPU processes
    python vcb_utils/train.py --do_train 0 --do_eval 1 --init_model outputs/tiny/best

``python -m vcb_utils.train`` and the installed ``vcb-train`` take the same flags
(``vcb_utils.train_cli``). The run reads top to bottom: parse flags into a Config, build the
accelerator, model and data, train (checkpoint every epoch, best by validation R@1, resumable),
then evaluate.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # parse the flags before torch loads: --help answers at once
    if not __package__:  # `python vcb_utils/train.py`, `accelerate launch vcb_utils/train.py`:
        # the script's folder would come first on the path, and its modules would hide the
        # installed packages of the same name (datasets, evaluate) from the libraries
        sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from vcb_utils.train_cli import main

    sys.exit(main())

import json
import logging
import math
from dataclasses import asdict

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from vcb_utils.annotations import check_videos, read_annotations
from vcb_utils.checkpoints import load_checkpoint
from vcb_utils.config import Config, RunOptions
from vcb_utils.datasets import GroupedShuffle, Preprocessing, build_dataset, collate
from vcb_utils.distributed import check_world_size, free_port, gather_with_grad, set_cpu_threads
from vcb_utils.evaluate import METRICS_FILE, evaluate, load_eval_set, zero_shot
from vcb_utils.gradcache import cached_backward
from vcb_utils.model import VideoColBERT
from vcb_utils.optim import build_optimizer, warmup_cosine
from vcb_utils.order import order_training_set
from vcb_utils.training_session import TrainingSession

log = logging.getLogger("vcb_utils.train")


# ---- the run -----------------------------------------------------------------------------------
def run(config: Config, options: RunOptions) -> dict:
    """Train and/or evaluate; returns the evaluation metrics (empty without --do_eval).

    Creates its own Accelerator, so it is also the function to hand to
    ``accelerate.notebook_launcher``.
    """
    accelerator = make_accelerator(config, options)
    check_world_size(accelerator.num_processes)
    if accelerator.device.type == "cpu":
        set_cpu_threads()
    if options.world_size and accelerator.num_processes != options.world_size:
        raise RuntimeError(
            f"--world_size {options.world_size} asked for, but {accelerator.num_processes} "
            "process(es) started (note: `accelerate launch --cpu --num_processes N` starts one; "
            "use --multi_gpu --num_processes N with --cpu)"
        )
    check_batch(config, accelerator.num_processes)
    check_data(config, options)
    set_seed(config.train.seed)
    output_dir = Path(config.train.output_dir)
    if options.zero_shot:
        return zero_shot(config, accelerator, split="test", output_dir=output_dir)
    model, config = _initial_model(config, options)
    if options.do_train:
        model = train(accelerator, model, config, options)
    metrics: dict = {}
    if options.do_eval:
        checkpoint = options.init_model or (str(output_dir / "last") if options.do_train else None)
        metrics = evaluate(
            model,
            config,
            accelerator=accelerator,
            split="test",
            output_dir=output_dir,
            checkpoint=checkpoint,
            postprocessing=options.postprocessing,
        )
    if accelerator.is_main_process:
        log.info(summary(output_dir, options, metrics))
    accelerator.end_training()
    return metrics


def summary(output_dir: Path, options: RunOptions, metrics: dict) -> str:
    """Where the run left its results: the best epoch, checkpoints and metrics files."""
    lines = []
    best_file = output_dir / "best" / "val_metrics.json"
    if options.do_train and best_file.is_file():
        best = json.loads(best_file.read_text())
        r1 = best["val"]["t2v"]["both"]["R1"]
        lines.append(f"best: epoch {best['epoch']}, validation R@1 {r1:.1f}: {output_dir / 'best'}")
    if options.do_train:
        lines.append(
            f"last epoch's weights: {output_dir / 'last'} (resume: {output_dir / 'state'})"
        )
    if metrics:
        lines.append(f"test R@1 {metrics['t2v']['both']['R1']:.1f}: {output_dir / METRICS_FILE}")
    return "\n".join(lines)


def make_accelerator(config: Config, options: RunOptions) -> Accelerator:
    cpu = options.cpu or not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.grad_accum,
        log_with=None if options.report_to == "none" else options.report_to,
        project_dir=config.train.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def check_batch(config: Config, processes: int) -> None:
    """The global batch must split evenly over the processes; ValueError otherwise."""
    if config.train.batch_size % processes:
        raise ValueError(
            f"--batch_size {config.train.batch_size} is the global batch; it must be divisible "
            f"by the {processes} processes"
        )


def check_data(config: Config, options: RunOptions) -> None:
    """Read every split the run will use and, unless bad videos are to be skipped, open each
    of its videos, before any model is built: a bad path or a missing or corrupt video stops the
    run now, not after an epoch (skipped videos are reported when their split is loaded)."""
    splits = (["train"] if options.do_train and not options.zero_shot else []) + (
        ["test"] if options.do_eval or options.do_train else []  # training validates on test
    )
    data = config.data
    for split in splits:
        records = read_annotations(data.datatype, data.anno_path, split, data.video_path)
        source = f"{data.datatype} split {split!r}"
        if not records:
            raise ValueError(f"{source} at {data.anno_path} is empty")
        if data.on_error == "raise":
            videos = [r.video for r in records]
            check_videos(videos, source=source, workers=max(1, data.workers), open_files=True)


def _initial_model(config: Config, options: RunOptions) -> tuple[VideoColBERT, Config]:
    if not options.init_model:
        return VideoColBERT(config.model), config
    model, saved = load_checkpoint(options.init_model)
    log.info(
        "loaded %s (backbone %s, mode %s)",
        options.init_model,
        saved.model.backbone,
        saved.model.mode,
    )
    return model, config.updated(model=asdict(saved.model))


# ---- training ----------------------------------------------------------------------------------
def train(
    accelerator: Accelerator, model: VideoColBERT, config: Config, options: RunOptions
) -> VideoColBERT:
    """The training loop, in the shape of accelerate's ``nlp_example.py``; returns the model.

    A non-finite loss or gradient norm stops the run before the optimiser touches the weights.
    Validation after each epoch runs on the test split, as in the reference code (DRL,
    CLIP4Clip): ``best/`` is chosen on the split that is reported.
    """
    cfg = config.train
    loader = train_loader(accelerator, model.preprocessing, config)
    optimizer = build_optimizer(model, cfg)
    model.clip.set_grad_checkpointing(cfg.grad_checkpointing)  # text and image towers
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    # a prepared scheduler advances once per process at every optimiser step
    total = cfg.epochs * steps_per_epoch * accelerator.num_processes
    scheduler = accelerator.prepare(warmup_cosine(optimizer, total, cfg.warmup_ratio))
    session = TrainingSession(accelerator, config, options, steps_per_epoch)  # resume, log, save
    max_norm, val_set = cfg.grad_clip or math.inf, None
    for epoch in session.epochs():
        model.train()
        for batch in session.batches(loader, epoch):
            with accelerator.accumulate(model):
                if cfg.chunk_size:  # GradCache: the same gradients, one chunk's activations
                    losses = cached_backward(accelerator, model, batch, cfg.chunk_size)
                    session.check_finite("loss", losses["loss"])
                else:
                    losses = model(*batch, gather=gather_with_grad)  # B x B, global batch
                    session.check_finite("loss", losses["loss"])
                    accelerator.backward(losses["loss"])
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                    if cfg.mixed_precision != "fp16":  # fp16's loss scaler skips such steps
                        session.check_finite("gradient norm", norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            session.batch_done(losses, model, optimizer, epoch)
        if session.stopped_early:
            break
        plain = accelerator.unwrap_model(model)
        val_set = val_set or load_eval_set(plain, config, "test", accelerator)  # read once
        metrics = evaluate(plain, config, accelerator, "test", eval_set=val_set, report=False)
        session.end_epoch(model, metrics, epoch)
    session.close(model)
    return accelerator.unwrap_model(model)


def train_loader(
    accelerator: Accelerator, prep: Preprocessing, config: Config
) -> torch.utils.data.DataLoader:
    """Each process's share of the global batch; the main process fills the frame cache first."""
    with accelerator.main_process_first():
        # uint8 frames: normalised by the model, on its device
        dataset = build_dataset(config.data, "train", prep, seed=config.train.seed, uint8=True)
    batch_size = config.train.batch_size
    if len(dataset) < batch_size:
        raise ValueError(f"{len(dataset)} training pairs are fewer than one batch of {batch_size}")
    local_batch, sampler = batch_size // accelerator.num_processes, None
    if config.data.datatype == "synthetic":  # order twins and backward clips, batched together
        dataset, groups = order_training_set(dataset, config.data, config.train.seed)
        sampler = GroupedShuffle(len(dataset), groups, local_batch, seed=config.train.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=local_batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,  # every process must gather the same number of pairs
        num_workers=config.data.workers,
        collate_fn=collate,
        persistent_workers=config.data.workers > 0,
    )


# ---- entry points ------------------------------------------------------------------------------
def notebook_train(config: Config, options: RunOptions | None = None, num_processes: int = 1):
    """Run ``run`` from a notebook through ``accelerate.notebook_launcher``."""
    from accelerate import notebook_launcher

    port = str(free_port())  # not accelerate's fixed 29500: another run may hold it
    options = options or RunOptions()
    notebook_launcher(run, args=(config, options), num_processes=num_processes, use_port=port)
