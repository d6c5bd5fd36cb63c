"""Everything a training run keeps beside its loop: where it is, what it saved, its log, signals.

``TrainingSession`` owns the run's folder (``<output_dir>``):

- ``state/``: the full training state (model, optimiser, scheduler, random states) and
  ``progress.json``, to continue exactly with ``--resume``. Each save fills a temporary folder
  and swaps it in whole, so a crash leaves the previous state; ``progress.json`` lists every
  file with its size and the settings that fix the model, the data and the schedule, and a
  resume checks both (and that every file loads as plain data, the weights finite);
- ``last/`` and ``best/``: the weights and config after the last epoch and at the best
  validation R@1 (Video-ColBERT checkpoints, for ``--init_model``);
- ``log.jsonl``: one JSON line per optimiser step and per epoch; ``config.json``.

It also turns SIGINT/SIGTERM into "save the state, then stop" and prints one line per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load
from tqdm.auto import tqdm

from vcb_utils import safe_json
from vcb_utils.checkpoints import save_checkpoint
from vcb_utils.config import Config, RunOptions
from vcb_utils.model import VideoColBERT
from vcb_utils.safe_weights import check_finite, file_tensors
from vcb_utils.storage import (
    remove,
    remove_temps,
    replace_folder,
    saved_folder,
    write_json_atomic,
)

log = logging.getLogger(__name__)

STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
LOG_FILE = "log.jsonl"


SCHEDULE_FIELDS = ("batch_size", "grad_accum", "epochs", "lr", "coef_lr", "warmup_ratio", "seed")
"""Training settings a resumed run must share with the saved one (with the process count)."""
DATA_FIELDS = ("datatype", "anno_path", "video_path", "video_framerate", "frame_jitter")
"""Data settings a resumed run must share with the saved one: the same pairs, the same frames.
Every model setting must be the same too."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; the state was saved first."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class Progress:
    """Where a run is: the next epoch and batch, optimiser steps done, the best epoch so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_r1: float = -1.0
    best_epoch: int = -1


class TrainingSession:
    """Resumes, counts, logs, saves and listens for signals around a training loop."""

    def __init__(
        self, accelerator: Accelerator, config: Config, options: RunOptions, steps_per_epoch: int
    ) -> None:
        self.accelerator, self.config, self.options = accelerator, config, options
        self.output_dir = Path(config.train.output_dir)
        self.progress = Progress()
        if options.resume:
            self.progress = self._load_state(_resume_dir(options.resume, self.output_dir))
        else:
            self._start_afresh()
        self.accelerator.wait_for_everyone()  # no process may see the logs this run writes next
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.output_dir / "config.json", config.to_dict())
        if options.report_to != "none":
            accelerator.init_trackers("videocolbert", config=_flat(config.to_dict()))
        self.logbook = Logbook(self.output_dir / LOG_FILE, accelerator)
        self.logbook.start(self.progress.step, steps_per_epoch)
        self.stop = StopFlag()
        self.bar = tqdm(
            total=config.train.epochs * steps_per_epoch,
            initial=self.progress.step,
            desc="train",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        self.epoch_started = time.perf_counter()

    @property
    def stopped_early(self) -> bool:
        """``--max_steps`` reached (a smoke test: no validation)."""
        return 0 < self.options.max_steps <= self.progress.step

    def epochs(self) -> range:
        return range(self.progress.epoch, self.config.train.epochs)

    def batches(self, loader, epoch: int) -> Iterator:
        """The epoch's batches, past those a resumed run already did; stops at ``max_steps``."""
        loader.set_epoch(epoch)
        done = self.progress.batch
        self.epoch_started = time.perf_counter()
        for batch in self.accelerator.skip_first_batches(loader, done) if done else loader:
            yield batch
            if self.stopped_early:
                return

    def batch_done(self, losses: dict[str, torch.Tensor], model, optimizer, epoch: int) -> None:
        """Count the batch; at each optimiser step log it and save when due; stop on a signal."""
        self.progress.batch += 1
        if self.accelerator.sync_gradients:
            self.progress.step += 1
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{losses['loss'].item():.3f}")
            plain = self.accelerator.unwrap_model(model)
            self.logbook.step(self.progress.step, epoch, losses, optimizer, plain)
            every = self.config.train.save_every_steps
            if every and self.progress.step % every == 0:
                self.save_state(self.progress)
        if self.stop.requested(self.accelerator):
            self.save_state(window_start(self.progress, self.config.train.grad_accum))
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch}, step {self.progress.step}; state saved in "
                f"{self.output_dir / STATE_DIR}. Resume with the same command plus --resume",
                self.stop.signal,
            )

    def check_finite(self, what: str, value: torch.Tensor | float) -> None:
        """Stop before the optimiser touches the weights: the state saved is the last good one."""
        number = float(torch.as_tensor(value).detach())
        if math.isfinite(number):
            return
        self.save_state(window_start(self.progress, self.config.train.grad_accum))
        raise FloatingPointError(
            f"non-finite {what} {number} at step {self.progress.step + 1}; the weights "
            f"were not updated and the last good state is in {self.output_dir / STATE_DIR}"
        )

    def end_epoch(self, model, metrics: dict, epoch: int) -> None:
        """Keep the best weights by text-to-video R@1, save ``last/`` and the state, one line."""
        self.progress.epoch, self.progress.batch = epoch + 1, 0
        plain = self.accelerator.unwrap_model(model)
        r1 = metrics["t2v"]["both"]["R1"]
        if r1 > self.progress.best_r1:
            self.progress.best_r1, self.progress.best_epoch = r1, epoch
            if self.accelerator.is_main_process:
                notes = {"val_metrics.json": {"epoch": epoch + 1, "val": metrics}}
                save_checkpoint(plain, self.output_dir / "best", self.config, notes)
        losses = self.logbook.epoch(epoch, self.progress.step, metrics)
        self.save_weights(plain)
        seconds = time.perf_counter() - self.epoch_started
        parts = [f"{name} {value:.3f}" for name, value in losses.items()]
        self.say(
            f"epoch {epoch + 1}/{self.config.train.epochs}  {'  '.join(parts)}  "
            f"val R@1 {r1:.1f}  ({seconds:.0f} s)"
        )
        if self.stop.requested(self.accelerator):  # a signal during validation or the save
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch + 1}; state saved in "
                f"{self.output_dir / STATE_DIR}. Resume with the same command plus --resume",
                self.stop.signal,
            )

    def close(self, model) -> None:
        """Save the weights of a run stopped by ``max_steps``; restore the signal handlers."""
        if self.stopped_early:
            self.save_weights(self.accelerator.unwrap_model(model))
        self.bar.close()
        self.stop.restore()

    def save_weights(self, model: VideoColBERT) -> None:
        """``last/``: the weights and config (a checkpoint to evaluate); ``state/``: to resume."""
        if self.accelerator.is_main_process:
            save_checkpoint(model, self.output_dir / "last", self.config)
        self.save_state(self.progress)

    def save_state(self, progress: Progress) -> None:
        """Every process writes its part into one temporary folder, which then replaces
        ``state/`` whole: a crash at any moment leaves the previous complete state."""
        state_dir = self.output_dir / STATE_DIR
        temp = state_dir.with_name(f".tmp-{progress.step % 2**32:08x}-{STATE_DIR}")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            remove_temps(self.output_dir, STATE_DIR)  # left by a killed run
            temp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(temp))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            record = {
                "progress": asdict(progress),
                "settings": self._settings(),
                "files": _file_sizes(temp),
            }
            (temp / PROGRESS_FILE).write_text(json.dumps(record, indent=1) + "\n")
            replace_folder(temp, state_dir)
        self.accelerator.wait_for_everyone()

    def _settings(self) -> dict:
        """What a resumed run must share with the saved one, as JSON values."""
        train, data = asdict(self.config.train), asdict(self.config.data)
        for name in ("anno_path", "video_path"):  # the same files, however they are named
            data[name] = data[name] and str(Path(data[name]).resolve())
        settings = {
            "processes": self.accelerator.num_processes,
            **{name: train[name] for name in SCHEDULE_FIELDS},
            **{name: data[name] for name in DATA_FIELDS},
            **asdict(self.config.model),
        }
        return json.loads(json.dumps(settings))  # tuples as lists, as the record has them

    def _start_afresh(self) -> None:
        """Refuse to mix a new run into the log and state of an earlier one (``--overwrite``
        deletes them first)."""
        earlier = [
            self.output_dir / n for n in (LOG_FILE, STATE_DIR) if (self.output_dir / n).exists()
        ]
        if not earlier:
            return
        if not self.options.overwrite:
            raise FileExistsError(
                f"{self.output_dir} already holds a run ({', '.join(p.name for p in earlier)}): "
                "continue it with --resume, start it again with --overwrite, or choose another "
                "--output_dir"
            )
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            for path in earlier:
                remove(path)
        self.accelerator.wait_for_everyone()

    def say(self, line: str) -> None:
        """One line for the user, from the main process, below the progress bar."""
        if self.accelerator.is_main_process:
            self.bar.clear()
            log.info(line)
            self.bar.refresh()

    def _load_state(self, state_dir: Path) -> Progress:
        """Load a saved state after checking it is whole and was saved with these settings."""
        record = check_state(state_dir)
        saved = record["settings"]
        changed = [  # a setting the record lacks was not recorded by the version that saved it
            f"{name} {saved[name]!r} -> {now!r}"
            for name, now in self._settings().items()
            if name in saved and saved[name] != now
        ]
        if changed:
            raise ValueError(
                f"--resume: {state_dir} was saved with other settings ("
                + ", ".join(changed)
                + "); resume with the same settings, or start afresh with --overwrite"
            )
        try:
            self.accelerator.load_state(str(state_dir))
        except RuntimeError as err:  # a state saved before the model settings were recorded
            raise ValueError(
                f"--resume: {state_dir} does not fit this model ({str(err).splitlines()[0]} "
                f"...); resume with the settings it was saved with, or --overwrite"
            ) from err
        progress = Progress(**record["progress"])
        log.info("resumed from %s at epoch %d, step %d", state_dir, progress.epoch, progress.step)
        return progress


def check_state(state_dir: Path) -> dict:
    """The ``progress.json`` record of a saved state, after checking that every file it lists
    is there with its size (ValueError naming the first that is not)."""
    path = state_dir / PROGRESS_FILE
    try:
        record = safe_json.parse(path.read_bytes())
        files = dict(record["files"])
        Progress(**record["progress"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"--resume: {path} is not a training state of this version ({err}); "
            "start afresh with --overwrite"
        ) from err
    sizes = _file_sizes(state_dir)
    for name, size in files.items():
        if sizes.get(name) != size:
            raise ValueError(
                f"--resume: {state_dir / name} is missing or has another size than when the "
                "state was saved: the state is incomplete; start afresh with --overwrite"
            )
    for path in sorted(state_dir.glob("*.safetensors")):
        try:
            check_finite(path, file_tensors(path))
        except ValueError as err:
            raise ValueError(f"--resume: {err}; start afresh with --overwrite") from err
    for path in sorted([*state_dir.glob("*.bin"), *state_dir.glob("*.pkl")]):
        try:
            load(path, map_location="cpu")  # accelerate's loader: no code, numpy arrays allowed
        except Exception as err:  # an UnpicklingError, or anything a forged file raises
            raise ValueError(
                f"--resume: {path} cannot be loaded as plain data ({type(err).__name__}): it may "
                "hold code to run, so the saved state cannot be trusted; start afresh with "
                "--overwrite"
            ) from None  # torch's own message suggests loading it anyway
    return record


def _file_sizes(folder: Path) -> dict[str, int]:
    """Size of every file under ``folder`` except ``progress.json``, by relative path."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != PROGRESS_FILE
    }


def window_start(progress: Progress, grad_accum: int) -> Progress:
    """Progress rewound to the first batch of the current accumulation window.

    Gradients accumulated inside a window are not saved, so a resumed run replays it.
    """
    return Progress(**{**asdict(progress), "batch": progress.batch - progress.batch % grad_accum})


def _resume_dir(resume: str, output_dir: Path) -> Path:
    state_dir = saved_folder(output_dir / STATE_DIR if resume == "auto" else Path(resume))
    if not (state_dir / PROGRESS_FILE).is_file():
        raise FileNotFoundError(f"--resume: no saved training state in {state_dir}")
    return state_dir


class Logbook:
    """Step losses, learning rates and epoch metrics as JSON lines (and trackers)."""

    def __init__(self, path: Path, accelerator: Accelerator) -> None:
        self.path, self.accelerator = path, accelerator
        self.sums: dict[str, float] = {}
        self.steps = 0

    def start(self, step: int, steps_per_epoch: int) -> None:
        self._write(
            {
                "step": step,
                "event": "resume" if step else "start",
                "world_size": self.accelerator.num_processes,
                "steps_per_epoch": steps_per_epoch,
            }
        )

    def step(self, step: int, epoch: int, losses: dict, optimizer, model: VideoColBERT) -> None:
        record = {"step": step, "epoch": epoch}
        record.update(
            {k: self.accelerator.reduce(v.detach(), "mean").item() for k, v in losses.items()}
        )
        for name, value in record.items():
            if name.startswith("loss_"):
                self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        record.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
        for branch in ("loss_f", "loss_v"):
            module = getattr(model, branch)
            if module is not None:
                record[f"t_{branch[-1]}"] = module.log_scale.exp().item()
                if hasattr(module, "bias"):
                    record[f"b_{branch[-1]}"] = module.bias.item()
        self._write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def epoch(self, epoch: int, step: int, metrics: dict) -> dict[str, float]:
        """Log the epoch's validation metrics; returns its mean loss per branch."""
        self._write({"step": step, "epoch": epoch, "val": metrics})
        flat = {f"val/{d}/{m}/R1": r["R1"] for d, rows in metrics.items() for m, r in rows.items()}
        self.accelerator.log(flat, step=step)
        means = {name: total / max(self.steps, 1) for name, total in self.sums.items()}
        self.sums, self.steps = {}, 0
        return means

    def _write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


class StopFlag:
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
