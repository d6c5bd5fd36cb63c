"""The paper presets' settings that come from the reference code: batch sizes and frozen parts."""

import pytest

from vcb_utils.config import PAPER_BACKBONES, PAPER_DATASETS, preset
from vcb_utils.model import VideoColBERT


@pytest.mark.parametrize("dataset", list(PAPER_DATASETS))
def test_every_benchmark_trains_with_clip4clips_global_batch(dataset):
    config = preset(f"{dataset}-clip-b16")  # CLIP4Clip's README: --batch_size=128 for all five
    assert config.train.batch_size == 128
    paragraphs = dataset in ("didemo", "activitynet")
    assert config.train.batch_size_val == (16 if paragraphs else 128)


def test_clip_presets_freeze_what_the_seed_code_freezes():
    cfg = preset("tiny").updated(model={"frozen": preset("msrvtt-clip-b16").model.frozen}).model
    model = VideoColBERT(cfg)  # vcb-tiny: the CLIP image tower's parameter names
    frozen = {n for n, p in model.clip.named_parameters() if not p.requires_grad}
    assert {
        "token_embedding.weight",
        "positional_embedding",
        "visual.conv1.weight",
        "visual.positional_embedding",
        "visual.class_embedding",
    } <= frozen
    assert not frozen & {"visual.transformer.resblocks.0.attn.in_proj_weight", "ln_final.weight"}


def test_siglip_presets_name_the_timm_tower_parts():
    assert "visual.trunk.pos_embed" in PAPER_BACKBONES["siglip-b16"]["frozen"]
    assert "visual.class_embedding" not in PAPER_BACKBONES["siglip-b16"]["frozen"]
