"""Settings shared by the tutorial notebooks: one call gives the fast or the full run's Config.

The fast mode (the default) is the ``tiny`` preset on the synthetic clips, offline, on a CPU;
the full run (CLIP ViT-B/32 on MSR-VTT, GPUs, downloads) is an explicit choice: ``VCB_FULL=1``
in the environment, or ``FAST = False`` in a notebook's parameters cell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vcb_utils.config import Config, preset

FAST_PRESET = "tiny"
FAST_SETTINGS: dict[str, dict[str, Any]] = {"train": {"epochs": 6}}
"""The fast mode's changes to the tiny preset: 6 epochs of 62 steps, so that notebooks 3-5 and
``benchmarks/make_figures.py`` train a model that works in a minute or two."""
FULL_PRESET = "msrvtt-vit-b32"
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


def fast_mode() -> bool:
    """True unless ``VCB_FULL=1`` is set: the full run downloads data and wants GPUs."""
    return os.environ.get("VCB_FULL") != "1"


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
    taken from the repository root, so every notebook finds what the others made.
    """
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
