"""Settings shared by the tutorial notebooks: one call gives the fast or the full run's Config.

The fast mode (the default) is the ``tiny`` preset on the synthetic clips, offline, on a CPU;
the full run (CLIP ViT-B/32 on MSR-VTT, GPUs, downloads) is an explicit choice: ``VCB_FULL=1``
in the environment, or ``FAST = False`` in a notebook's parameters cell. Without a GPU or
without the data, ``choose_mode`` says so and falls back to the fast path.

Also here: the notebooks' logging (``notebook_logging``) and their "try this" exercises
(``EXERCISES``, ``exercise_config``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vcb_utils.backbone import register_model_configs
from vcb_utils.config import Config, preset

FAST_PRESET = "tiny"
FAST_SETTINGS: dict[str, dict[str, Any]] = {"train": {"epochs": 10}}
"""The fast mode's settings over the tiny preset: its own 10 epochs, spelled out, so that
notebooks 3-5 and ``benchmarks/make_figures.py`` train what ``python vcb_utils/train.py``
trains. An epoch there holds 1.25x the captions (a quarter of them again as backward clips,
``DataConfig.backward_share``), so 10 epochs take about the steps 12 took without them."""
FULL_PRESET = "msrvtt-clip-b32"
MSRVTT_DIR = "data/msrvtt"
"""Where ``vcb_utils.download.download_msrvtt`` unpacks MSR-VTT in the full run."""
FULL_SETTINGS: dict[str, dict[str, Any]] = {
    "data": {
        "anno_path": f"{MSRVTT_DIR}/msrvtt_data",
        "video_path": f"{MSRVTT_DIR}/MSRVTT/videos/all",
    }
}
"""The full run's changes to its preset: MSR-VTT where ``download_msrvtt`` puts it."""
CACHE_DIR = "data/cache"
OUTPUT_DIR = "outputs/notebooks"
"""Everything the notebooks write (both modes); notebook 3 trains into ``train-<preset>``."""


EXERCISES: dict[str, dict[str, dict[str, Any]]] = {
    "no_query_expansion": {"model": {"query_expansion": False}},
    "no_visual_expansion": {"model": {"n_visual_expansion": 0}},
    "F_only": {"model": {"mode": "F"}},
}
"""The "try this" exercises of notebook 4: each trains the notebooks' model with one change."""
QUIET_WARNINGS = ("OMP_NUM_THREADS/MKL_NUM_THREADS unset",)
"""Warnings that say nothing to a reader (accelerate's, once per training process)."""


def fast_mode() -> bool:
    """True unless ``VCB_FULL=1`` is set: the full run downloads data and wants GPUs."""
    return os.environ.get("VCB_FULL") != "1"


def choose_mode(fast: bool, *, needs_gpu: bool = True, needs_data: bool = True) -> bool:
    """The mode a notebook runs in: ``fast`` itself, or the fast mode, with a printed reason,
    when the full run is asked for where it cannot run (no GPU; no MSR-VTT where
    ``FULL_SETTINGS`` expects it, see notebook 1)."""
    if fast:
        return True
    import torch

    missing = []
    if needs_gpu and not torch.cuda.is_available():
        missing.append("no GPU")
    anno = notebook_config(False)[0].data.anno_path
    if needs_data and not (Path(anno) / "MSRVTT_JSFUSION_test.csv").is_file():
        missing.append(
            f"no MSR-VTT in {anno} (notebook 1 downloads it: FAST = False and DOWNLOAD = True "
            "in its parameters cell)"
        )
    if missing:
        print(
            f"The full run was asked for, but this machine has {' and '.join(missing)}: "
            "running the fast mode instead."
        )
        return True
    return False


def notebook_logging() -> None:
    """The library's messages (epoch lines, metrics tables) as plain notebook output: to
    stdout, the message alone; INFO for ``vcb_utils``, warnings only for other libraries; the
    ``QUIET_WARNINGS`` silenced. Training processes started from the notebook inherit it."""
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s", force=True)
    logging.getLogger("vcb_utils").setLevel(logging.INFO)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def exercise_config(
    name: str, fast: bool, overrides: dict[str, dict[str, Any]] | None = None
) -> tuple[Config, Path]:
    """The notebooks' Config with the change of exercise ``name`` (``EXERCISES``), and the run
    folder it trains into: ``try-<name>`` beside notebook 3's."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(EXERCISES)}")
    config, run_dir = notebook_config(fast, overrides)
    folder = run_dir.parent / f"try-{name}"
    return config.updated(**EXERCISES[name]).updated(train={"output_dir": str(folder)}), folder


def repo_root(start: Path | None = None) -> Path:
    """The repository checkout around ``start`` (default: the working directory)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no repository (pyproject.toml) at or above {start}")


def notebook_config(
    fast: bool, overrides: dict[str, dict[str, Any]] | None = None
) -> tuple[Config, Path]:
    """The Config of a notebook and the run folder that notebook 3 trains into.

    Fast: the ``tiny`` preset with ``FAST_SETTINGS``; full: ``FULL_PRESET`` with
    ``FULL_SETTINGS``; then ``overrides`` (``{"train": {"epochs": 3}}``). Relative paths are
    taken from the repository root, so every notebook finds what the others made. open_clip learns
    the repository's backbones (``register_model_configs``): a notebook may ask it about them.
    """
    register_model_configs()
    root = repo_root()
    name = FAST_PRESET if fast else FULL_PRESET
    config = preset(name).updated(**(FAST_SETTINGS if fast else FULL_SETTINGS))
    config = config.updated(**(overrides or {}))
    run_dir = root / (overrides or {}).get("train", {}).get(
        "output_dir", f"{OUTPUT_DIR}/train-{name}"
    )
    data = {"cache_dir": str(root / (config.data.cache_dir or CACHE_DIR))}
    for field in ("anno_path", "video_path"):
        value = getattr(config.data, field)
        if value is not None:
            data[field] = str(root / value)
    return config.updated(data=data, train={"output_dir": str(run_dir)}), run_dir


def launch_training(config: Config, processes: int, *, cpu: bool) -> None:
    """Train ``config`` as the command line does: ``accelerate launch`` of ``vcb_utils.train``
    with ``processes`` processes, in child processes whose output shows as it comes.

    A notebook kernel that has already run torch (and accelerate) itself trains this way as fast
    as the command line: the children start clean, with the library's thread settings. The
    config goes to ``launch.json`` inside the run folder, whose earlier run is replaced.
    """
    output_dir = Path(config.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_file = output_dir / "launch.json"  # nothing written outside the run folder
    config_file.write_text(json.dumps(config.to_dict(), indent=2))
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--num_processes", str(processes)] + (["--multi_gpu"] if processes > 1 else [])
    command += ["-m", "vcb_utils.train", "--config", str(config_file), "--overwrite", "1"]
    command += ["--world_size", str(processes)] + (["--cpu"] if cpu else [])
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        for line in child.stdout:
            print(line, end="", flush=True)
    if child.returncode:
        raise RuntimeError(f"training failed (exit {child.returncode}): {' '.join(command)}")


def finished_run(output_dir: Path, config: Config) -> bool:
    """Whether ``output_dir`` holds a run of ``config`` that ended (its final ``metrics.json``
    records this model): an interrupted or different run is never taken for it."""
    metrics = output_dir / "metrics.json"
    if not metrics.is_file():
        return False
    saved = json.loads(metrics.read_text()).get("model")
    return saved == json.loads(json.dumps(asdict(config.model)))
