"""One configuration object for model, data and training, plus named presets.

A config is plain data: dataclasses that round-trip through JSON/YAML. A checkpoint
stores its config, so evaluation and the widget rebuild the right model from the
checkpoint alone. Defaults follow ``docs/method.md``; where the paper's text could not
be checked, the default is the one stated there and the field says so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Mode = Literal["both", "spatial", "temporal", "meanP"]
LossKind = Literal["sigmoid", "infonce"]


@dataclass
class ModelConfig:
    """The VideoColBERT model: backbone, expansion, temporal transformer, score and loss."""

    backbone: str = "ViT-B-32"
    """Any open_clip model name (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ``vcb-tiny``)."""
    pretrained: str | None = None
    """open_clip tag (``openai``, downloads), a local ``.pt``/``.safetensors`` file, or None."""
    max_words: int = 32
    """Text length in tokens (start + words + end + pads); also the query-expansion length."""
    max_frames: int = 12
    """Frames per video; sets the number of learned frame position embeddings."""
    query_expansion: bool = True
    """Pad positions up to ``max_words`` take part in the score (ColBERT's [MASK] expansion)."""
    n_visual_expansion: int = 2
    """Learnable tokens appended at the temporal transformer input (26 = 12 + 12 + 2 vectors)."""
    temporal_layers: int = 4
    temporal_heads: int = 8
    temporal_width: int | None = None
    """Temporal transformer width; None = the joint embedding size (512 for ViT-B)."""
    temporal_mlp_ratio: float = 4.0
    temporal_dropout: float = 0.1
    init_temporal_from_text: bool = True
    """Copy the first CLIP text layers into the temporal transformer when widths match."""
    mode: Mode = "both"
    """``both`` = MMS_F + MMS_V, ``spatial`` = F only, ``temporal`` = V only,
    ``meanP`` = mean-pooled single-vector baseline (CLIP4Clip)."""
    loss: LossKind = "sigmoid"
    lambda_f: float = 1.0
    lambda_v: float = 1.0
    logit_scale_init: float = 10.0
    """Initial t (stored as log t). SigLIP's 10; trained SigLIP ends near exp(4.77) = 118."""
    logit_bias_init: float = -10.0
    """Initial b of the sigmoid loss. SigLIP's -10; trained SigLIP ends near -12.93."""
    frozen: tuple[str, ...] = ("token_embedding", "positional_embedding", "visual.conv1")
    """Prefixes of open_clip parameter names kept frozen (method.md: embeddings, patch conv)."""


@dataclass
class DataConfig:
    """Which dataset, and how frames are sampled and decoded."""

    datatype: str = "synthetic"
    """``synthetic``, ``msrvtt``, ``csv`` or ``jsonl``."""
    anno_path: str | None = None
    video_path: str | None = None
    video_framerate: float = 1.0
    """Frames per second sampled before the linspace down to ``max_frames``."""
    frame_jitter: bool = False
    """Training only: jitter each sampled position within its segment (seeded)."""
    workers: int = 2
    on_error: Literal["raise", "skip"] = "raise"
    cache_dir: str | None = None
    """Decoded-frame cache folder; None reads the videos directly."""


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints."""

    batch_size: int = 128
    """Global batch (all processes together), as in the reference code."""
    batch_size_val: int = 128
    epochs: int = 5
    lr: float = 1e-4
    coef_lr: float = 1e-3
    """CLIP weights train at ``lr * coef_lr``; new modules at ``lr``."""
    weight_decay: float = 0.2
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    seed: int = 42
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    output_dir: str = "outputs/run"
    save_every_steps: int = 0
    """Also checkpoint every N optimiser steps (0 = once per epoch only)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        unknown = set(raw) - {"model", "data", "train"}
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(
            model=_build(ModelConfig, raw.get("model", {})),
            data=_build(DataConfig, raw.get("data", {})),
            train=_build(TrainConfig, raw.get("train", {})),
        )

    def updated(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields replaced: ``cfg.updated(model={"mode": "spatial"})``."""
        raw = self.to_dict()
        for name, values in sections.items():
            if name not in raw:
                raise ValueError(f"unknown config section {name!r}")
            raw[name].update(values)
        return Config.from_dict(raw)


def _build(kind: type, values: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind.__name__} fields: {sorted(unknown)}")
    values = dict(values)
    if "frozen" in values:
        values["frozen"] = tuple(values["frozen"])
    return kind(**values)


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "model": {
            "backbone": "vcb-tiny",
            "max_words": 24,
            "max_frames": 8,
            "temporal_layers": 1,
            "temporal_heads": 2,
            "temporal_dropout": 0.0,
        },
        "data": {
            "datatype": "synthetic",
            "video_framerate": 2.0,
            "workers": 0,
            "cache_dir": "data/cache",
        },
        "train": {
            "batch_size": 32,
            "batch_size_val": 64,
            "epochs": 12,
            "lr": 1e-3,
            "coef_lr": 1.0,
            "weight_decay": 0.01,
            "output_dir": "outputs/tiny",
        },
    },
    "msrvtt-vit-b32": {
        "model": {"backbone": "ViT-B-32", "pretrained": "openai"},
        "data": {"datatype": "msrvtt", "video_framerate": 1.0, "workers": 8},
        "train": {"batch_size": 128, "output_dir": "outputs/msrvtt_vit_b32"},
    },
    "msrvtt-vit-b16": {
        "model": {"backbone": "ViT-B-16", "pretrained": "openai"},
        "data": {"datatype": "msrvtt", "video_framerate": 1.0, "workers": 8},
        "train": {"batch_size": 128, "output_dir": "outputs/msrvtt_vit_b16"},
    },
}


def preset(name: str) -> Config:
    """The named preset as a Config (``tiny``, ``msrvtt-vit-b32``, ``msrvtt-vit-b16``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return Config().updated(**PRESETS[name])


def load_config(path: str | Path) -> Config:
    """Read a Config from a ``.json`` or ``.yaml``/``.yml`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in {".yaml", ".yml"}:
        import yaml

        raw = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        raw = json.loads(text)
    else:
        raise ValueError(f"{path}: config files must be .json, .yaml or .yml")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with model/data/train sections")
    try:
        return Config.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err
