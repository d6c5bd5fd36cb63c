"""Video-ColBERT checkpoints: a folder with ``model.safetensors`` and ``config.json``.

``save_checkpoint`` replaces the folder whole (a killed save leaves the previous one loadable);
``load_checkpoint`` rebuilds the model from the folder alone, without downloading or unpickling
anything, and refuses a config or weights it cannot trust, naming the file. The training run's
own state (resume, log, signals) is ``vcb_utils.training_session``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from vcb_utils import safe_json
from vcb_utils.config import Config
from vcb_utils.safe_weights import check_finite, check_shapes, tensor_shapes
from vcb_utils.storage import saved_folder, writing_folder

if TYPE_CHECKING:
    from vcb_utils.model import VideoColBERT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_checkpoint(
    model: VideoColBERT,
    path: str | Path,
    config: Config | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the full run config) as the folder ``path``.

    ``notes``: more JSON files to keep beside them (``{"val_metrics.json": {...}}``). The folder
    is replaced whole (``storage.writing_folder``; other files in it go): a save that is killed
    leaves the previous checkpoint loadable.
    """
    path = Path(path)
    config = config or Config(model=model.cfg)
    raw = config.to_dict()
    raw["model"] = asdict(model.cfg)
    with writing_folder(path) as folder:
        save_model(model, str(folder / WEIGHTS_FILE))
        for name, data in {CONFIG_FILE: raw, **(notes or {})}.items():
            (folder / name).write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[VideoColBERT, Config]:
    """Rebuild the model saved by ``save_checkpoint`` (no download, no unpickling).

    A checkpoint whose save was killed mid-swap is read from ``<path>.old``, with a warning.
    Its config must be plausible and its weights of the shapes that config builds, and finite.
    """
    path = saved_folder(Path(path))
    resave = "save the checkpoint again (save_checkpoint) or use another one"
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a Video-ColBERT checkpoint ({name} is missing)")
    config_file = path / CONFIG_FILE
    try:
        raw = safe_json.parse(config_file.read_bytes())
        if not isinstance(raw, dict):
            raise safe_json.InvalidJSON("not a JSON object")
    except safe_json.InvalidJSON as err:
        line = f"line {err.line}: " if err.line else ""
        raise ValueError(f"{config_file} is corrupt ({line}{err.reason}); {resave}") from None
    try:
        config = Config.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_file}: {err}; {resave}") from err
    from vcb_utils.model import VideoColBERT  # vcb_utils.model re-exports this module's names

    model = VideoColBERT(config.model, load_backbone_weights=False)
    weights = path / WEIGHTS_FILE
    try:
        found = tensor_shapes(weights)
    except ValueError as err:
        raise ValueError(f"{err}; {resave}") from err
    expected = {name: value.shape for name, value in model.state_dict().items()}
    check_shapes(weights, found, expected, f"its {CONFIG_FILE}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{weights} is corrupt ({err}); {resave}") from err
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    check_finite(weights, model.state_dict().items())
    return model.to(device).eval(), config

