"""Train and evaluate Video-ColBERT with accelerate: one CPU, one GPU, many GPUs, many machines.

    python vcb_utils/train.py                        # the main job: tiny model, synthetic data
    accelerate launch vcb_utils/train.py --preset msrvtt-vit-b32 \\
        --anno_path data/msrvtt/annotations --video_path data/msrvtt/videos
    accelerate launch --multi_gpu --num_processes 2 vcb_utils/train.py --cpu   # 2 CPU processes
    python vcb_utils/train.py --do_train 0 --do_eval 1 --init_model outputs/tiny/best

The run reads top to bottom: parse flags into a Config, build the accelerator, model and
data, train (checkpoint every epoch, best by validation R@1, resumable), then evaluate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python vcb_utils/train.py` and `accelerate launch vcb_utils/...`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from vcb_utils.config import PRESETS, Config, load_config, preset
from vcb_utils.datasets import EvalSet, build_dataset, collate, read_annotations
from vcb_utils.distributed import check_world_size, gather_with_grad
from vcb_utils.evaluate import evaluate, load_eval_set, zero_shot
from vcb_utils.model import VideoColBERT, load_checkpoint, save_checkpoint
from vcb_utils.optim import build_optimizer, warmup_cosine

log = logging.getLogger("vcb_utils.train")

STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.jsonl"


@dataclass
class RunOptions:
    """What to do in this run (the Config says how)."""

    do_train: bool = True
    do_eval: bool = True
    init_model: str | None = None
    """A Video-ColBERT checkpoint folder to start from (or to evaluate)."""
    resume: str | None = None
    """A training-state folder (``<output_dir>/state``) to continue from exactly."""
    cpu: bool = False
    report_to: str = "none"
    """``none``, ``tensorboard``, ``wandb`` or ``all`` (accelerate trackers)."""
    world_size: int | None = None
    """Fail unless this many processes train together (catches launcher mistakes)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = all epochs); for smoke tests."""
    zero_shot: bool = False
    """Only evaluate the plain open_clip backbone (no Video-ColBERT training)."""
    postprocessing: str = "none"
    """Final evaluation only: ``dual_softmax`` / ``inverted_softmax`` (uses other queries)."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the state was saved first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ---- command line ------------------------------------------------------------------------------
# flag -> (config section, field); flags left unset keep the preset's / config file's value
FLAG_FIELDS = {
    "datatype": ("data", "datatype"),
    "anno_path": ("data", "anno_path"),
    "video_path": ("data", "video_path"),
    "video_framerate": ("data", "video_framerate"),
    "workers": ("data", "workers"),
    "on_error": ("data", "on_error"),
    "cache_dir": ("data", "cache_dir"),
    "max_words": ("model", "max_words"),
    "max_frames": ("model", "max_frames"),
    "base_encoder": ("model", "backbone"),
    "pretrained": ("model", "pretrained"),
    "mode": ("model", "mode"),
    "loss": ("model", "loss"),
    "query_expansion": ("model", "query_expansion"),
    "n_visual_expansion": ("model", "n_visual_expansion"),
    "temporal_layers": ("model", "temporal_layers"),
    "batch_size": ("train", "batch_size"),
    "batch_size_val": ("train", "batch_size_val"),
    "epochs": ("train", "epochs"),
    "lr": ("train", "lr"),
    "coef_lr": ("train", "coef_lr"),
    "weight_decay": ("train", "weight_decay"),
    "warmup_ratio": ("train", "warmup_ratio"),
    "grad_clip": ("train", "grad_clip"),
    "grad_accum": ("train", "grad_accum"),
    "seed": ("train", "seed"),
    "mixed_precision": ("train", "mixed_precision"),
    "output_dir": ("train", "output_dir"),
    "save_every_steps": ("train", "save_every_steps"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcb_utils/train.py",
        description="Train and evaluate Video-ColBERT (flags of the reference code, plus more). "
        "With no flags: the tiny preset on the synthetic dataset, on CPU, in a few minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run = parser.add_argument_group("what to run")
    run.add_argument(
        "--do_train",
        type=int,
        choices=(0, 1),
        default=None,
        help="train (default 1, or 0 when --init_model is given)",
    )
    run.add_argument("--do_eval", type=int, choices=(0, 1), default=1, help="evaluate at the end")
    run.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="named settings; default tiny, or the method.md defaults when "
        "--base_encoder, a non-synthetic --datatype or --config is given",
    )
    run.add_argument("--config", help="a .yaml/.json file with model/data/train sections")
    run.add_argument("--output_dir", help="checkpoints, logs and metrics go here")
    run.add_argument("--init_model", help="Video-ColBERT checkpoint folder to start from")
    run.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue an interrupted run from its saved state (default: <output_dir>/state)",
    )
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--zero_shot",
        action="store_true",
        help="only evaluate the plain open_clip backbone, as a starting point",
    )
    run.add_argument(
        "--postprocessing",
        default="none",
        choices=("none", "dual_softmax", "inverted_softmax"),
        help="final evaluation only; uses the other test queries, so the numbers "
        "are not comparable to plain ones (labelled in the table and metrics.json)",
    )

    data = parser.add_argument_group("data")
    data.add_argument("--datatype", choices=("synthetic", "msrvtt", "csv", "jsonl"))
    data.add_argument("--anno_path", help="MSR-VTT annotation folder, or a CSV/JSONL file")
    data.add_argument("--video_path", help="folder of the video files")
    data.add_argument("--max_words", type=int, help="text tokens (and query expansion length)")
    data.add_argument("--max_frames", type=int, help="frames per video")
    data.add_argument("--video_framerate", type=float, help="frames per second to sample")
    data.add_argument("--workers", type=int, help="data loader workers per process")
    data.add_argument("--on_error", choices=("raise", "skip"), help="what a bad video does")
    data.add_argument("--cache_dir", help="decoded-frame cache folder")

    model = parser.add_argument_group("model")
    model.add_argument("--base_encoder", help="open_clip model, e.g. ViT-B-32 (ViT-B/32 works too)")
    model.add_argument(
        "--pretrained",
        help="open_clip tag, local file, or 'none' (default 'openai' with "
        "--base_encoder, as in the reference code)",
    )
    model.add_argument("--mode", choices=("both", "spatial", "temporal", "meanP"))
    model.add_argument("--loss", choices=("sigmoid", "infonce"))
    model.add_argument("--query_expansion", type=int, choices=(0, 1))
    model.add_argument("--n_visual_expansion", type=int)
    model.add_argument("--temporal_layers", type=int)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=int, help="global training batch (all processes)")
    optim.add_argument("--batch_size_val", type=int, help="evaluation batch per process")
    optim.add_argument("--epochs", type=int)
    optim.add_argument("--lr", type=float, help="learning rate of the new modules")
    optim.add_argument("--coef_lr", type=float, help="CLIP weights train at lr * coef_lr")
    optim.add_argument("--weight_decay", type=float)
    optim.add_argument("--warmup_ratio", type=float)
    optim.add_argument("--grad_clip", type=float, help="max gradient norm (0 = off)")
    optim.add_argument("--grad_accum", type=int, help="batches per optimiser step")
    optim.add_argument("--save_every_steps", type=int, help="also checkpoint every N steps")
    optim.add_argument("--max_steps", type=int, default=0, help="stop after N steps (smoke tests)")

    hardware = parser.add_argument_group("hardware and logging")
    hardware.add_argument("--cpu", action="store_true", help="run on CPU (gloo) even with GPUs")
    hardware.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"))
    hardware.add_argument(
        "--report_to", default="none", choices=("none", "tensorboard", "wandb", "all")
    )
    hardware.add_argument(
        "--world_size", type=int, help="fail unless this many processes train together"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Config, RunOptions]:
    """Flags -> (Config, RunOptions): preset, then config file, then explicit flags."""
    args = build_parser().parse_args(argv)
    config = _base_config(args)
    overrides: dict[str, dict] = {"model": {}, "data": {}, "train": {}}
    for flag, (section, name) in FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[section][name] = value
    model = overrides["model"]
    if "backbone" in model:
        model["backbone"] = model["backbone"].replace("/", "-")
        model.setdefault("pretrained", "openai")
    if "pretrained" in model and model["pretrained"].lower() == "none":
        model["pretrained"] = None
    if "query_expansion" in model:
        model["query_expansion"] = bool(model["query_expansion"])
    config = config.updated(**overrides)
    do_train = bool(args.do_train) if args.do_train is not None else args.init_model is None
    options = RunOptions(
        do_train=do_train,
        do_eval=bool(args.do_eval),
        init_model=args.init_model,
        resume=args.resume,
        cpu=args.cpu,
        report_to=args.report_to,
        world_size=args.world_size,
        max_steps=args.max_steps,
        zero_shot=args.zero_shot,
        postprocessing=args.postprocessing,
    )
    return config, options


def _base_config(args: argparse.Namespace) -> Config:
    if args.config:
        config = load_config(args.config)
        return preset(args.preset).updated(**config.to_dict()) if args.preset else config
    if args.preset:
        return preset(args.preset)
    paper_scale = args.base_encoder or args.datatype not in (None, "synthetic")
    return Config() if paper_scale else preset("tiny")


# ---- the run -----------------------------------------------------------------------------------
def run(config: Config, options: RunOptions) -> dict:
    """Train and/or evaluate; returns the evaluation metrics (empty without --do_eval).

    Creates its own Accelerator, so it is also the function to hand to
    ``accelerate.notebook_launcher``.
    """
    accelerator = make_accelerator(config, options)
    check_world_size(accelerator.num_processes)
    if options.world_size and accelerator.num_processes != options.world_size:
        raise RuntimeError(
            f"--world_size {options.world_size} asked for, but {accelerator.num_processes} "
            "process(es) started (note: `accelerate launch --cpu --num_processes N` starts one; "
            "use --multi_gpu --num_processes N with --cpu)"
        )
    _check_batch(config, accelerator.num_processes)
    _check_annotations(config, options)
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
    accelerator.end_training()
    return metrics


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


def _check_batch(config: Config, processes: int) -> None:
    if config.train.batch_size % processes:
        raise ValueError(
            f"--batch_size {config.train.batch_size} is the global batch; it must be divisible "
            f"by the {processes} processes"
        )


def _check_annotations(config: Config, options: RunOptions) -> None:
    """Read the annotations of every split the run needs: bad paths fail before any work."""
    train_split = options.do_train and not options.zero_shot
    splits = (["train"] if train_split else []) + (["test"] if options.do_eval else [])
    data = config.data
    for split in splits:
        if not read_annotations(data.datatype, data.anno_path, split, data.video_path):
            raise ValueError(
                f"{data.datatype} data at {data.anno_path}: the {split} split is empty"
            )


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
def train(accelerator: Accelerator, model: VideoColBERT, config: Config, options: RunOptions):
    """The training loop; returns the (unwrapped) trained model."""
    cfg = config.train
    output_dir = Path(cfg.output_dir)
    loader = _train_loader(accelerator, model, config)
    optimizer = build_optimizer(model, cfg)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
    # a prepared scheduler advances once per process at every optimiser step
    total = cfg.epochs * steps_per_epoch * accelerator.num_processes
    scheduler = accelerator.prepare(warmup_cosine(optimizer, total, cfg.warmup_ratio))
    progress = {"epoch": 0, "batch": 0, "step": 0, "best_r1": -1.0}
    if options.resume:
        progress = _load_state(accelerator, _resume_dir(options.resume, output_dir))
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    if options.report_to != "none":
        accelerator.init_trackers("videocolbert", config=_flat(config.to_dict()))
    stop = _StopFlag()
    logbook = _Logbook(output_dir / LOG_FILE, accelerator)
    logbook.start(progress, steps_per_epoch)
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=progress["step"],
        desc="train",
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    done, val_set = False, None
    for epoch in range(progress["epoch"], cfg.epochs):
        model.train()
        loader.set_epoch(epoch)
        resumed = progress["batch"] > 0
        for batch in (
            accelerator.skip_first_batches(loader, progress["batch"]) if resumed else loader
        ):
            losses = _train_step(accelerator, model, optimizer, scheduler, batch, config, progress)
            progress["batch"] += 1
            if accelerator.sync_gradients:
                progress["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
                logbook.step(progress, epoch, losses, optimizer, accelerator.unwrap_model(model))
                if cfg.save_every_steps and progress["step"] % cfg.save_every_steps == 0:
                    _save_state(accelerator, output_dir, progress)
            if stop.requested(accelerator):
                _save_state(accelerator, output_dir, _window_start(progress, cfg.grad_accum))
                raise TrainingInterrupted(
                    f"interrupted at epoch {epoch}, step {progress['step']}; state saved in "
                    f"{output_dir / STATE_DIR}. Resume with the same command plus --resume",
                    stop.signal,
                )
            done = bool(options.max_steps) and progress["step"] >= options.max_steps
            if done:
                break
        if done:
            _save_weights(accelerator, model, config, progress)  # a smoke test: no validation
            break
        progress.update(epoch=epoch + 1, batch=0)
        # validation on the test split, as in the reference code (DRL / CLIP4Clip); read once
        val_set = val_set or load_eval_set(
            accelerator.unwrap_model(model), config, "test", accelerator
        )
        _end_epoch(accelerator, model, config, progress, logbook, epoch, val_set)
    bar.close()
    stop.restore()
    return accelerator.unwrap_model(model)


def _train_loader(accelerator: Accelerator, model: VideoColBERT, config: Config):
    with accelerator.main_process_first():  # the main process fills the frame cache
        dataset = build_dataset(
            config.data,
            "train",
            tokenize=model.tokenize,
            max_frames=config.model.max_frames,
            image_size=model.image_size,
            mean=model.image_mean,
            std=model.image_std,
            train=True,
            seed=config.train.seed,
            uint8=True,  # normalised by the model, on its device
        )
    batch_size = config.train.batch_size
    if len(dataset) < batch_size:
        raise ValueError(f"{len(dataset)} training pairs are fewer than one batch of {batch_size}")
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size // accelerator.num_processes,
        shuffle=True,
        drop_last=True,  # every process must gather the same number of pairs
        num_workers=config.data.workers,
        collate_fn=collate,
        persistent_workers=config.data.workers > 0,
    )


def _train_step(accelerator, model, optimizer, scheduler, batch, config: Config, progress: dict):
    """Forward on the global batch, backward, clip, step.

    A non-finite loss, or (outside fp16, whose loss scaler skips such steps by design) a
    non-finite gradient norm, stops the run before the optimiser touches the weights, so the
    state saved then is the last good one.
    """
    cfg = config.train
    with accelerator.accumulate(model):
        losses = model(*batch, gather=gather_with_grad)
        if not torch.isfinite(losses["loss"]).all():
            _stop_non_finite(accelerator, config, progress, f"loss {losses['loss'].item()}")
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients:
            limit = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            norm = accelerator.clip_grad_norm_(model.parameters(), limit)
            if cfg.mixed_precision != "fp16" and not torch.isfinite(torch.as_tensor(norm)):
                _stop_non_finite(accelerator, config, progress, f"gradient norm {norm}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return losses


def _stop_non_finite(accelerator, config: Config, progress: dict, what: str) -> None:
    output_dir = Path(config.train.output_dir)
    _save_state(accelerator, output_dir, _window_start(progress, config.train.grad_accum))
    raise FloatingPointError(
        f"non-finite {what} at step {progress['step'] + 1}; the weights were not updated and the "
        f"last good state is in {output_dir / STATE_DIR}"
    )


def _window_start(progress: dict, grad_accum: int) -> dict:
    """Progress rewound to the first batch of the current accumulation window.

    Gradients accumulated inside a window are not saved, so a resumed run replays the window.
    """
    return {**progress, "batch": progress["batch"] - progress["batch"] % grad_accum}


def _end_epoch(
    accelerator, model, config: Config, progress: dict, logbook, epoch: int, val_set: EvalSet
) -> None:
    """Validate, keep the best weights by text-to-video R@1, save the weights and full state."""
    output_dir = Path(config.train.output_dir)
    plain = accelerator.unwrap_model(model)
    metrics = evaluate(plain, config, accelerator=accelerator, split="test", eval_set=val_set)
    r1 = metrics["t2v"]["both"]["R1"]
    if accelerator.is_main_process and r1 > progress["best_r1"]:
        progress["best_r1"] = r1
        save_checkpoint(plain, output_dir / "best", config)
        (output_dir / "best" / "val_metrics.json").write_text(json.dumps(metrics, indent=2))
    logbook.epoch(epoch, progress["step"], metrics)
    _save_weights(accelerator, model, config, progress)


def _save_weights(accelerator, model, config: Config, progress: dict) -> None:
    """``last/``: the weights and config (a checkpoint to evaluate); ``state/``: to resume."""
    output_dir = Path(config.train.output_dir)
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(model), output_dir / "last", config)
    _save_state(accelerator, output_dir, progress)


# ---- state, logs, signals ----------------------------------------------------------------------
def _save_state(accelerator: Accelerator, output_dir: Path, progress: dict) -> None:
    state_dir = output_dir / STATE_DIR
    accelerator.wait_for_everyone()
    accelerator.save_state(str(state_dir))
    if accelerator.is_main_process:
        (state_dir / PROGRESS_FILE).write_text(json.dumps(progress) + "\n")
    accelerator.wait_for_everyone()


def _resume_dir(resume: str, output_dir: Path) -> Path:
    state_dir = output_dir / STATE_DIR if resume == "auto" else Path(resume)
    if not (state_dir / PROGRESS_FILE).is_file():
        raise FileNotFoundError(f"--resume: no saved training state in {state_dir}")
    return state_dir


def _load_state(accelerator: Accelerator, state_dir: Path) -> dict:
    accelerator.load_state(str(state_dir))
    progress = json.loads((state_dir / PROGRESS_FILE).read_text())
    log.info("resumed from %s at epoch %d, step %d", state_dir, progress["epoch"], progress["step"])
    return progress


class _Logbook:
    """Step losses, learning rates and epoch metrics as JSON lines (and trackers)."""

    def __init__(self, path: Path, accelerator: Accelerator) -> None:
        self.path, self.accelerator = path, accelerator

    def start(self, progress: dict, steps_per_epoch: int) -> None:
        self._write(
            {
                "step": progress["step"],
                "event": "resume" if progress["step"] else "start",
                "world_size": self.accelerator.num_processes,
                "steps_per_epoch": steps_per_epoch,
            }
        )

    def step(self, progress: dict, epoch: int, losses: dict, optimizer, model) -> None:
        record = {"step": progress["step"], "epoch": epoch}
        record.update(
            {k: self.accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
        )
        record.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
        for branch in ("loss_f", "loss_v"):
            module = getattr(model, branch)
            if module is not None:
                record[f"t_{branch[-1]}"] = module.log_scale.exp().item()
                if hasattr(module, "bias"):
                    record[f"b_{branch[-1]}"] = module.bias.item()
        self._write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def epoch(self, epoch: int, step: int, metrics: dict) -> None:
        self._write({"step": step, "epoch": epoch, "val": metrics})
        flat = {f"val/{d}/{m}/R1": r["R1"] for d, rows in metrics.items() for m, r in rows.items()}
        self.accelerator.log(flat, step=step)

    def _write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop after the current batch."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def requested(self, accelerator: Accelerator) -> bool:
        flag = torch.tensor(float(self.signal is not None), device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, "max")
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _flat(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = (
                value if isinstance(value, int | float | str | bool) else str(value)
            )
    return out


# ---- entry points ------------------------------------------------------------------------------
def notebook_train(config: Config, options: RunOptions | None = None, num_processes: int = 1):
    """Run ``run`` from a notebook through ``accelerate.notebook_launcher``."""
    from accelerate import notebook_launcher

    notebook_launcher(run, args=(config, options or RunOptions()), num_processes=num_processes)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config, options = parse_args(argv)
    try:
        run(config, options)
    except TrainingInterrupted as stop:
        log.error("%s", stop)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
