"""A local weights file loaded as a named open_clip tag (``--pretrained TAG=FILE``): the tag's
QuickGELU and frame preprocessing, the file's weights, and no network."""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from vcb_utils.backbone import create_backbone
from vcb_utils.config import ModelConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
"""The frame normalisation of OpenAI's CLIP (its repository's ``_transform``)."""
CHECKED = "visual.transformer.resblocks.0.attn.in_proj_weight"
"""One tensor compared between the file and the loaded model."""


def saved_backbone(name: str, path: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised ``name`` saved to ``path`` in half precision (half the bytes to
    write and read); returns what was saved."""
    torch.manual_seed(0)
    state = {k: v.half().contiguous() for k, v in open_clip.create_model(name).state_dict().items()}
    save_file(state, str(path))
    return state


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI's activation, x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def activations(clip: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP activation of the first block of the image and the text tower."""
    return [tower.resblocks[0].mlp.gelu for tower in (clip.visual.transformer, clip.transformer)]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: any download attempt fails at once."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def b32(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("weights") / "open_clip_model.safetensors"
    return path, saved_backbone("ViT-B-32", path)


def test_a_file_named_as_openai_runs_quick_gelu_on_openai_frames(b32):
    path, state = b32
    clip = create_backbone(ModelConfig(backbone="ViT-B-32", pretrained=f"openai={path}"))
    x = torch.linspace(-4, 4, 17)
    for activation in activations(clip):
        torch.testing.assert_close(activation(x), quick_gelu(x))
    preprocess = clip.visual.preprocess_cfg
    assert preprocess["mean"] == pytest.approx(OPENAI_MEAN)
    assert preprocess["std"] == pytest.approx(OPENAI_STD)
    assert torch.equal(clip.state_dict()[CHECKED], state[CHECKED].float())  # the file's weights


def test_a_bare_file_keeps_gelu_and_warns_once_what_it_lacks(b32, caplog):
    path, state = b32
    cfg = ModelConfig(backbone="ViT-B-32", pretrained=str(path))
    with caplog.at_level(logging.WARNING, logger="vcb_utils.pretrained"):
        clip = create_backbone(cfg)
        create_backbone(cfg)
    x = torch.linspace(-4, 4, 17)
    for activation in activations(clip):
        torch.testing.assert_close(activation(x), torch.nn.functional.gelu(x))
    assert torch.equal(clip.state_dict()[CHECKED], state[CHECKED].float())
    warned = [r.getMessage() for r in caplog.records if "names no weight tag" in r.getMessage()]
    assert len(warned) == 1  # once, though the backbone was built twice
    assert "QuickGELU of openai" in warned[0] and f"--pretrained TAG={path}" in warned[0]


def test_a_checkpoint_trained_from_a_tagged_file_rebuilds_without_it(tmp_path):
    """A Video-ColBERT checkpoint stores ``openai=FILE``; rebuilding it elsewhere needs the tag's
    settings, not the file."""
    missing = tmp_path / "gone.safetensors"
    cfg = ModelConfig(backbone="ViT-B-32", pretrained=f"openai={missing}")
    clip = create_backbone(cfg, load_weights=False)
    x = torch.linspace(-4, 4, 17)
    torch.testing.assert_close(activations(clip)[0](x), quick_gelu(x))


def test_a_siglip_file_named_as_webli_gets_siglip_frames(tmp_path):
    path = tmp_path / "open_clip_model.safetensors"
    state = saved_backbone("ViT-B-16-SigLIP", path)
    cfg = ModelConfig(
        backbone="ViT-B-16-SigLIP", pretrained=f"webli={path}", tokenizer="vcb:synthetic"
    )
    clip = create_backbone(cfg)
    preprocess = clip.visual.preprocess_cfg
    assert preprocess["mean"] == pytest.approx((0.5, 0.5, 0.5))
    assert preprocess["std"] == pytest.approx((0.5, 0.5, 0.5))
    assert (preprocess["resize_mode"], preprocess["interpolation"]) == ("squash", "bicubic")
    key = "visual.trunk.patch_embed.proj.weight"
    assert torch.equal(clip.state_dict()[key], state[key].float())
