"""The open_clip backbone: the repository's model configs, the factory, and the text tower read
token by token.

``register_model_configs()`` tells open_clip about the configs in ``vcb_utils/model_configs``
(``vcb-tiny``, ``vcb-tiny-siglip``); ``create_backbone`` calls it, and so must code that asks
open_clip about those names before a backbone exists. ``text_token_features`` is open_clip's
``encode_text`` without the pooling: one projected vector per token position.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import open_clip
import torch
from torch import nn

from vcb_utils.config import ModelConfig
from vcb_utils.pretrained import FRAME_SETTINGS, check_pretrained, parse_weights, warn_untagged

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
"""open_clip model configs of this repository (the tiny CPU backbones)."""
CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}
"""Endings that make ``--pretrained`` surely a file (missing: FileNotFoundError, not a tag)."""


@functools.cache
def register_model_configs() -> None:
    """Add ``MODEL_CONFIG_DIR`` to open_clip's model configs (once per process)."""
    open_clip.add_model_config(MODEL_CONFIG_DIR)


def create_backbone(cfg: ModelConfig, load_weights: bool = True) -> nn.Module:
    """The open_clip CLIP model named by ``cfg.backbone``.

    ``cfg.pretrained`` is an open_clip tag (downloads), a local checkpoint file, ``TAG=FILE`` (the
    file's weights with the tag's settings) or None (random init). With ``load_weights=False``
    nothing is loaded or downloaded: the weights are about to come from a Video-ColBERT
    checkpoint.
    """
    register_model_configs()
    if cfg.backbone not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {cfg.backbone!r} (see open_clip.list_models())")
    weights = parse_weights(cfg.backbone, cfg.pretrained)
    file = weights.file if load_weights else None
    if file and Path(file).suffix in CHECKPOINT_SUFFIXES and not Path(file).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {file}")
    # offline: fail fast, say how
    check_pretrained(cfg.backbone, cfg.pretrained if load_weights else None, cfg.tokenizer)
    if file and not weights.tag:
        warn_untagged(cfg.backbone, file)
    # The tag's settings whether its weights download, come from a file or from a Video-ColBERT
    # checkpoint next: QuickGELU (openai) and the frame mean/std/resize (SigLIP's 0.5 differ
    # from CLIP's), so that the model computes and sees frames as the weights were trained.
    tag = open_clip.get_pretrained_cfg(cfg.backbone, weights.tag) if weights.tag else {}
    source = weights.source if load_weights else None
    with _quiet_random_init() if source is None else contextlib.nullcontext():
        return open_clip.create_model(
            cfg.backbone,
            pretrained=source,
            force_quick_gelu=tag.get("quick_gelu", False),
            force_preprocess_cfg={key: tag[key] for key in FRAME_SETTINGS if key in tag},
        )


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning when no weights were asked for (none,
    or they come from a Video-ColBERT checkpoint next)."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def text_tower(clip: nn.Module) -> nn.Module:
    """The module holding the text transformer (the CLIP itself, or ``clip.text``)."""
    tower = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, name) for name in needed):
        raise ValueError(
            f"{type(tower).__name__}: per-token text features need an open_clip text "
            "transformer (Hugging Face text towers are not supported)"
        )
    if getattr(tower, "cls_emb", None) is not None:
        raise NotImplementedError(
            f"{type(tower).__name__} appends a class token (CoCa): per-token features of such "
            "towers are not supported"
        )
    return tower


def is_causal(clip: nn.Module) -> bool:
    """Whether the text tower's attention is causal (CLIP) or bidirectional (SigLIP)."""
    return text_tower(clip).attn_mask is not None


def text_token_features(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Projected text features at every token position ``[B, L, D]`` (not normalised).

    The same computation as open_clip's ``encode_text`` without the pooling (token and
    position embeddings, the transformer with the tower's attention mask: causal for CLIP,
    none for SigLIP, plus the pad mask of towers built with one; final norm; projection),
    so the row that ``encode_text`` pools (``pooled_positions``) equals ``encode_text``.
    """
    tower = text_tower(clip)
    length = ids.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(ids).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    attn_mask = tower.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    if getattr(tower, "use_pad_mask", False):  # open_clip >= 3: keys at pad ids are masked
        keys = (ids == tower.pad_id)[:, None, :].expand(-1, length, -1)
        pad_mask = torch.zeros(keys.shape, dtype=x.dtype, device=x.device)
        pad_mask = pad_mask.masked_fill(keys, float("-inf"))
        pad_mask = pad_mask.repeat_interleave(tower.heads, 0)
        attn_mask = pad_mask if attn_mask is None else attn_mask.to(x.dtype)[None] + pad_mask
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    projection = tower.text_projection
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x if projection is None else x @ projection


def pooled_positions(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The position whose output open_clip's ``encode_text`` returns, per row ``[B]``.

    Follows the tower's ``pool_type``: ``argmax`` the largest id (CLIP's end-of-text),
    ``eos`` the first end-of-text id, ``first`` position 0, ``last`` the last position.
    """
    tower = text_tower(clip)
    pool = getattr(tower, "pool_type", None) or getattr(clip, "text_pool_type", "argmax")
    rows, length = ids.shape
    if pool == "argmax":
        return ids.argmax(dim=1)
    if pool == "eos":
        eos = getattr(tower, "eos_id", None) or getattr(clip, "text_eos_id", None)
        return (ids == eos).int().argmax(dim=1)
    if pool in ("first", "last"):
        position = 0 if pool == "first" else length - 1
        return torch.full((rows,), position, dtype=torch.long, device=ids.device)
    raise ValueError(f"text pool_type {pool!r} has no single pooled position")
