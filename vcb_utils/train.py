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

import sys
from pathlib import Path

if __name__ == "__main__":  # parse the flags before torch loads: --help answers at once
    if not __package__:  # `python vcb_utils/train.py`, `accelerate launch vcb_utils/train.py`
        sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from vcb_utils.cli import main

    sys.exit(main())

import json
import logging
import math
import signal
from dataclasses import asdict

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm.auto import tqdm

from vcb_utils.config import Config, RunOptions
from vcb_utils.datasets import EvalSet, build_dataset, collate, read_annotations
from vcb_utils.distributed import check_world_size, gather_with_grad
from vcb_utils.evaluate import evaluate, load_eval_set, zero_shot
from vcb_utils.model import VideoColBERT, load_checkpoint, save_checkpoint
from vcb_utils.optim import build_optimizer, warmup_cosine

log = logging.getLogger("vcb_utils.train")

STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.jsonl"


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the state was saved first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


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
    if options.trains:
        model = train(accelerator, model, config, options)
    metrics: dict = {}
    if options.do_eval:
        checkpoint = options.init_model or (str(output_dir / "last") if options.trains else None)
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
    train_split = options.trains and not options.zero_shot
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
        # uint8 frames: normalised by the model, on its device
        dataset = build_dataset(
            config.data, "train", model.preprocessing, seed=config.train.seed, uint8=True
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
