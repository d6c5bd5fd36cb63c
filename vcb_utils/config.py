"""One configuration object for model, data and training, plus named presets.

A config is plain data: dataclasses that round-trip through JSON/YAML and check their values
when they are built (types from the annotations, ranges from ``BOUNDS``, choices from the
``Literal`` types). A checkpoint stores its config, so evaluation and the widget rebuild the
right model from the checkpoint alone. The command line (``vcb_utils.train_cli``) is generated from
these classes: a field's docstring is its ``--help`` text. Defaults follow ``docs/method.md``;
where the paper's text could not be checked, the default is the one stated there and the field
says so.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vcb_utils import safe_json
from vcb_utils.dataset_registry import BENCHMARKS, DATATYPES, Protocol

Mode = Literal["both", "F", "V", "meanP"]
LossKind = Literal["sigmoid", "infonce"]
Datatype = Literal[DATATYPES]  # every dataset of vcb_utils.dataset_registry

VALUE_ALIASES: dict[str, dict[str, str]] = {"mode": {"spatial": "F", "temporal": "V"}}
"""Old names still accepted from configs, checkpoints and flags: ``spatial`` is F, ``temporal``
is V."""

BOUNDS: dict[str, tuple[float, float | None]] = {
    "max_words": (2, 1024),
    "max_frames": (1, 4096),
    "n_visual_expansion": (0, 1024),
    "temporal_layers": (1, 64),
    "temporal_heads": (1, 256),
    "temporal_width": (1, 16384),
    "temporal_mlp_ratio": (0, 64),
    "temporal_dropout": (0, 1),
    "frame_position_std": (0, 16),
    "lambda_f": (0, None),
    "lambda_v": (0, None),
    "logit_scale_init": (0, None),
    "video_framerate": (0, None),
    "workers": (0, None),
    "backward_share": (0, 1),
    "batch_size": (1, None),
    "batch_size_val": (1, None),
    "epochs": (1, None),
    "lr": (0, None),
    "coef_lr": (0, None),
    "weight_decay": (0, None),
    "warmup_ratio": (0, 1),
    "grad_clip": (0, None),
    "grad_accum": (1, None),
    "chunk_size": (0, None),
    "save_every_steps": (0, None),
    "world_size": (1, None),
    "max_steps": (0, None),
}
"""Inclusive ranges of the numeric fields (None = no upper bound); floats must be finite. The
model's upper bounds are far past any sensible value: they stop a hand-edited or forged config
(``max_frames=1e9``) from asking for hundreds of gigabytes."""
POSITIVE = frozenset({"lr", "video_framerate", "logit_scale_init", "temporal_mlp_ratio"})
"""Fields that must be strictly greater than zero."""


class _Validated:
    """Checks (and normalises) every field when the dataclass is built; ValueError otherwise."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{type(self).__name__}.{f.name}"
            value = _check_value(where, f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)


def _check_value(where: str, name: str, value: Any, hint: Any) -> Any:
    options = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(option for option in options if option is not type(None))
        options = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is Literal:
        value = VALUE_ALIASES.get(name, {}).get(value, value)
        if value not in options:
            raise ValueError(f"{where}: {value!r} is not one of {list(options)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list of strings, got {value!r}")
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    value = _check_scalar(where, value, hint)
    if isinstance(value, int | float) and not isinstance(value, bool):
        _check_range(where, name, value)
    return value


def _check_scalar(where: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ValueError(f"{where}: must be a finite number, got {value!r}")
            return float(value)
    elif isinstance(value, kind):
        return value
    raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")


def _check_range(where: str, name: str, value: float) -> None:
    low, high = BOUNDS.get(name, (None, None))
    if name in POSITIVE and value <= 0:
        raise ValueError(f"{where}: must be > 0, got {value!r}")
    if low is not None and value < low or high is not None and value > high:
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{where}: must be {span}, got {value!r}")


@dataclass
class ModelConfig(_Validated):
    """The VideoColBERT model: backbone, expansion, temporal transformer, score and loss."""

    backbone: str = "ViT-B-32"
    """Any open_clip model name (ViT-B-32, ViT-B-16, ViT-B-16-SigLIP, vcb-tiny; ViT-B/32 too)."""
    pretrained: str | None = None
    """open_clip tag (openai, webli; downloads), a local .pt/.safetensors file, TAG=FILE (a file
    holding the tag's weights: the tag's QuickGELU and frame settings apply), or none."""
    tokenizer: str | None = None
    """HF tokenizer name or local folder replacing the backbone's (vcb:synthetic: built offline)."""
    max_words: int = 32
    """Text length in tokens (start + words + end + pads); also the query-expansion length."""
    max_frames: int = 12
    """Frames per video; sets the number of learned frame position embeddings."""
    query_expansion: bool = True
    """Pad positions up to max_words take part in the score (ColBERT's [MASK] expansion)."""
    n_visual_expansion: int = 2
    """Learnable tokens appended at the temporal transformer input (26 = 12 + 12 + 2 vectors)."""
    temporal_layers: int = 4
    """Layers of the temporal transformer that contextualises the frames (V)."""
    temporal_heads: int = 8
    """Attention heads of the temporal transformer."""
    temporal_width: int | None = None
    """Temporal transformer width; none = the joint embedding size (512 for ViT-B)."""
    temporal_mlp_ratio: float = 4.0
    """Feed-forward width of the temporal transformer, as a multiple of its width."""
    temporal_dropout: float = 0.1
    """Dropout inside the temporal transformer."""
    frame_position_std: float = 0.01
    """Standard deviation of the random initial frame position embeddings (our choice; CLIP
    starts its position embeddings at 0.01). Unused when they are copied from the text tower."""
    init_temporal_from_text: bool = True
    """Copy the first CLIP text layers into the temporal transformer when widths match."""
    mode: Mode = "both"
    """both = MMS_F + MMS_V, F = the frame branch only, V = the video branch only, meanP = the
    mean-pooled single-vector baseline (CLIP4Clip). spatial/temporal are old names of F/V."""
    loss: LossKind = "sigmoid"
    """sigmoid (the paper's, one per branch) or infonce (the ablation)."""
    lambda_f: float = 1.0
    """Weight of the F branch's loss."""
    lambda_v: float = 1.0
    """Weight of the V branch's loss."""
    logit_scale_init: float = 10.0
    """Initial t (stored as log t). SigLIP's 10; trained SigLIP ends near exp(4.77) = 118."""
    logit_bias_init: float = -10.0
    """Initial b of the sigmoid loss. SigLIP's -10; trained SigLIP ends near -12.93."""
    frozen: tuple[str, ...] = ("token_embedding", "positional_embedding", "patch_embedding")
    """Prefixes of open_clip parameter names kept frozen; patch_embedding: any image tower's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.backbone = self.backbone.replace("/", "-")  # the reference code's ViT-B/32


@dataclass
class DataConfig(_Validated):
    """Which dataset, and how frames are sampled and decoded."""

    datatype: Datatype = "synthetic"
    """Annotation layout: the generated synthetic set, a benchmark, or your own csv/jsonl."""
    anno_path: str | None = None
    """The dataset's annotation folder, or your CSV/JSONL file."""
    video_path: str | None = None
    """Folder of the video files (default: anno_path)."""
    video_framerate: float = 1.0
    """Frames per second sampled before the linspace down to max_frames."""
    frame_jitter: bool = False
    """Training only: jitter each sampled position within its segment (seeded)."""
    workers: int = 2
    """Data loader workers per process."""
    on_error: Literal["raise", "skip"] = "raise"
    """What a video that cannot be decoded does: stop the run, or be reported and left out."""
    v2t_rule: Literal["all_captions", "clip4clip"] = "all_captions"
    """Video to text with several captions per video: a video's best caption ranks against every
    other video's captions, or (clip4clip) against each other video's best caption, as
    CLIP4Clip and the papers after it report (vcb_utils.metrics.multi_caption_metrics)."""
    cache_dir: str | None = None
    """Decoded-frame cache folder; none reads the videos directly."""
    twin_batches: bool = True
    """Synthetic data only: each caption shares its training batch with its order twin (the
    clip with the two events swapped, and that clip's caption) as a hard negative."""
    backward_share: float = 0.0
    """Synthetic data only: this share of the training captions also comes played backwards
    (the real frames reversed, with the caption of what they show), in the same batch."""


@dataclass
class TrainConfig(_Validated):
    """Optimisation, schedule, checkpoints."""

    batch_size: int = 128
    """Global training batch (all processes together), as in the reference code."""
    batch_size_val: int = 128
    """Evaluation batch per process."""
    epochs: int = 5
    """Passes over the training pairs."""
    lr: float = 1e-4
    """Learning rate of the new modules (peak, after warmup)."""
    coef_lr: float = 1e-3
    """CLIP weights train at lr * coef_lr."""
    weight_decay: float = 0.2
    """AdamW weight decay (DRL's 0.2)."""
    warmup_ratio: float = 0.1
    """Fraction of the steps spent in linear warmup before the cosine decay."""
    grad_clip: float = 1.0
    """Max gradient norm (0 = off)."""
    grad_accum: int = 1
    """Batches per optimiser step."""
    chunk_size: int = 0
    """GradCache: embed each process's batch this many pairs at a time (both losses still see
    the whole batch, gradients are exact); bounds activation memory. 0 = the whole batch at once."""
    grad_checkpointing: bool = False
    """Recompute the text and image towers' activations in the backward pass (less memory)."""
    seed: int = 42
    """Seed of the model init, shuffling and frame jitter."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision on GPUs."""
    output_dir: str = "outputs/run"
    """Checkpoints, logs and metrics go here."""
    save_every_steps: int = 0
    """Also checkpoint every N optimiser steps (0 = once per epoch only)."""


@dataclass
class RunOptions(_Validated):
    """What to do in this run (the Config says how)."""

    do_train: bool = True
    """Train (on the command line: 1 unless --init_model is given)."""
    do_eval: bool = True
    """Evaluate on the test split at the end."""
    init_model: str | None = None
    """A Video-ColBERT checkpoint folder to start from (or to evaluate)."""
    resume: str | None = None
    """Continue an interrupted run from its saved state (alone: <output_dir>/state)."""
    overwrite: bool = False
    """Start afresh in an output_dir that holds an earlier run (its log and state are deleted)."""
    cpu: bool = False
    """Run on the CPU (gloo) even when GPUs are present."""
    report_to: Literal["none", "tensorboard", "wandb", "all"] = "none"
    """Experiment trackers (through accelerate)."""
    world_size: int | None = None
    """Fail unless this many processes train together (catches launcher mistakes)."""
    max_steps: int = 0
    """Stop after this many optimiser steps (0 = all epochs); for smoke tests."""
    zero_shot: bool = False
    """Only evaluate the plain open_clip backbone (no Video-ColBERT training)."""
    postprocessing: Literal["none", "dual_softmax", "inverted_softmax"] = "none"
    """Final evaluation only; uses the other test queries, so its numbers are not comparable
    to plain ones (labelled in the table and metrics.json)."""
    verbose: bool = False
    """Also show the libraries' INFO lines and every file saved."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resume and self.overwrite:
            raise ValueError(
                "--resume and --overwrite contradict each other: --resume continues the saved "
                "run, --overwrite deletes it to start afresh; give one of them"
            )
        if self.zero_shot and self.init_model:
            raise ValueError(
                "--zero_shot evaluates the plain backbone, so --init_model would be ignored; "
                "to evaluate a checkpoint, use --init_model with --do_train 0"
            )
        if not (self.do_train or self.do_eval):
            raise ValueError("--do_train 0 and --do_eval 0 leave nothing to do")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclass
class Config:
    """Model, data and training settings together: what a run and a checkpoint store."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        return cls(**{name: _build(kind, raw.get(name, {})) for name, kind in SECTIONS.items()})

    def updated(self, **sections: dict[str, Any]) -> Config:
        """A copy with some fields replaced: ``cfg.updated(model={"mode": "F"})``."""
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
            "frame_position_std": 0.1,
        },
        "data": {
            "datatype": "synthetic",
            "video_framerate": 2.0,
            "workers": 0,
            "cache_dir": "data/cache",
            "backward_share": 0.25,
        },
        "train": {
            "batch_size": 32,
            "batch_size_val": 64,
            "epochs": 10,
            "lr": 1e-3,
            "coef_lr": 1.0,
            "weight_decay": 0.01,
            "output_dir": "outputs/tiny",
        },
    },
}
"""Named configs: ``tiny`` and ``tiny-siglip`` (CPU, synthetic data), one per published
benchmark row (``<dataset>-<backbone>``, below) and the old names ``msrvtt-vit-b32``/``-b16``."""



def _protocol_settings(datatype: str, protocol: Protocol) -> dict[str, dict[str, Any]]:
    settings: dict[str, dict[str, Any]] = {
        "data": {"datatype": datatype},
        "model": {"max_words": protocol.max_words, "max_frames": protocol.max_frames},
    }
    if protocol.batch_size_val:  # the global training batch stays 128 for every benchmark
        settings["train"] = {"batch_size_val": protocol.batch_size_val}
    return settings


PAPER_DATASETS: dict[str, dict[str, dict[str, Any]]] = {
    name: _protocol_settings(name, spec.protocol) for name, spec in BENCHMARKS.items()
}
"""Each benchmark's protocol (``vcb_utils.dataset_registry``, docs/datasets.md): annotation
layout, query and video length."""
CLIP_FROZEN = (
    "token_embedding",
    "positional_embedding",
    "patch_embedding",
    "visual.positional_embedding",
    "visual.class_embedding",
)
"""What the seed's code freezes in CLIP: the text token and position embeddings, the patch
convolution, and the image tower's position and class embeddings (docs/method.md)."""
SIGLIP_FROZEN = (
    "token_embedding",
    "positional_embedding",
    "patch_embedding",
    "visual.trunk.pos_embed",
)
"""The same parts of SigLIP's towers; its timm image tower has no class token."""
PAPER_BACKBONES: dict[str, dict[str, Any]] = {
    "clip-b32": {"backbone": "ViT-B-32", "pretrained": "openai", "frozen": CLIP_FROZEN},
    "clip-b16": {"backbone": "ViT-B-16", "pretrained": "openai", "frozen": CLIP_FROZEN},
    "siglip-b16": {"backbone": "ViT-B-16-SigLIP", "pretrained": "webli", "frozen": SIGLIP_FROZEN},
}
"""The paper's backbones as open_clip names, weight tags (the tags download) and frozen parts."""
PAPER_COMMON: dict[str, dict[str, Any]] = {
    "data": {"video_framerate": 1.0, "workers": 8},
    "train": {"batch_size": 128},
}
"""What every benchmark preset shares; the rest are the defaults of docs/method.md."""


def _paper_preset(dataset: str, backbone: str) -> dict[str, dict[str, Any]]:
    parts = [PAPER_COMMON, PAPER_DATASETS[dataset], {"model": PAPER_BACKBONES[backbone]}]
    merged: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    for part in parts:
        for section, values in part.items():
            merged[section].update(values)
    merged["train"]["output_dir"] = f"outputs/{dataset}_{backbone.replace('-', '_')}"
    return merged


PRESETS["tiny-siglip"] = {  # tiny with a SigLIP-shaped backbone and a word-level tokenizer
    "model": {
        **PRESETS["tiny"]["model"],
        "backbone": "vcb-tiny-siglip",
        "tokenizer": "vcb:synthetic",
    },
    "data": dict(PRESETS["tiny"]["data"]),
    "train": {**PRESETS["tiny"]["train"], "output_dir": "outputs/tiny_siglip"},
}
PRESETS.update({f"{d}-{b}": _paper_preset(d, b) for d in PAPER_DATASETS for b in PAPER_BACKBONES})
PRESETS["msrvtt-vit-b32"] = PRESETS["msrvtt-clip-b32"]  # the old names, kept
PRESETS["msrvtt-vit-b16"] = PRESETS["msrvtt-clip-b16"]


def preset(name: str) -> Config:
    """The named preset as a Config (``tiny``, ``tiny-siglip``, ``msrvtt-clip-b16``, ...)."""
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
        raw = _load_yaml(text, path) or {}
    elif path.suffix == ".json":
        raw = safe_json.loads(text, path)
    else:
        raise ValueError(f"{path}: config files must be .json, .yaml or .yml")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with model/data/train sections")
    try:
        return Config.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice in one mapping (PyYAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, path: Path) -> Any:
    """The YAML document in ``text``; a ValueError naming ``path`` and the line otherwise."""
    try:
        return yaml.load(text, Loader=_YamlLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML ({err.problem or err.context})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML ({err})") from None
    except RecursionError:
        raise ValueError(f"{path}: invalid YAML (nested too deeply)") from None
