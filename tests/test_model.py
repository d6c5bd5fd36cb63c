import dataclasses

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vcb_utils.backbone import register_model_configs, text_token_features
from vcb_utils.checkpoints import load_checkpoint, save_checkpoint
from vcb_utils.config import Config, preset
from vcb_utils.model import VideoColBERT
from vcb_utils.scoring import maxsim

CAPTIONS = ["a red circle moves left", "a blue square appears, then it turns green", "hi!"]


def build(cfg, **changes) -> VideoColBERT:
    torch.manual_seed(0)
    return VideoColBERT(dataclasses.replace(cfg, **changes)).eval()


def test_end_of_text_row_equals_open_clip_encode_text(tiny_cfg):
    model = build(tiny_cfg)
    ids, mask = model.tokenize(CAPTIONS)
    per_token = text_token_features(model.clip, ids)
    end = mask.sum(dim=1) - 1
    pooled = per_token[torch.arange(len(ids)), end]
    register_model_configs()  # open_clip's own tokenizer for the repository's backbone
    full = open_clip.get_tokenizer("vcb-tiny")(CAPTIONS)  # the backbone's whole 32-token context
    torch.testing.assert_close(pooled, model.clip.encode_text(full), atol=1e-5, rtol=1e-5)


def test_end_of_text_row_equals_encode_text_for_a_vit_b32_layout():
    clip = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    ids = open_clip.get_tokenizer("ViT-B-32", context_length=32)(CAPTIONS)
    per_token = text_token_features(clip, ids)
    pooled = per_token[torch.arange(len(ids)), ids.argmax(dim=1)]
    full = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)  # 77-token context
    torch.testing.assert_close(pooled, clip.encode_text(full), atol=1e-4, rtol=1e-4)


def test_query_expansion_controls_which_vectors_score(tiny_cfg):
    expanded = build(tiny_cfg).encode_text(CAPTIONS)
    assert expanded.mask.all()
    plain = build(tiny_cfg, query_expansion=False).encode_text(CAPTIONS)
    ids = plain.ids
    expected = torch.arange(ids.shape[1])[None] <= ids.argmax(dim=1, keepdim=True)
    assert torch.equal(plain.mask, expected)
    assert plain.mask[2].sum() == 4  # start, "hi", "!", end
    torch.testing.assert_close(expanded.vectors, plain.vectors)
    torch.testing.assert_close(expanded.vectors.norm(dim=-1), torch.ones(3, 24))


def test_padded_frames_change_nothing(tiny_cfg, frames):
    model = build(tiny_cfg)
    text = model.encode_text(CAPTIONS)
    clip = frames[:1, :5]
    padded = torch.cat([clip, torch.randn(1, 7, 3, 64, 64)], dim=1)  # garbage in the padding
    mask = torch.arange(12)[None] < 5
    alone = model.score(text, model.encode_video(clip))
    with_padding = model.score(text, model.encode_video(padded, mask))
    torch.testing.assert_close(with_padding.F, alone.F, atol=1e-6, rtol=0)
    torch.testing.assert_close(with_padding.V, alone.V, atol=1e-6, rtol=0)


def test_score_is_meanmaxsim_of_both_branches(tiny_cfg, frames):
    model = build(tiny_cfg, n_visual_expansion=3)
    text = model.encode_text(CAPTIONS)
    video = model.encode_video(frames)
    assert video.F.shape == (3, 12, 64) and video.V.shape == (3, 15, 64)
    assert video.frames is video.F and video.video_mask is video.V_mask  # the old names read
    scores = model.score(text, video)
    expected_f = maxsim(text.vectors, video.F)
    expected_v = maxsim(text.vectors, video.V)
    torch.testing.assert_close(scores.total, expected_f + expected_v)
    f_only = build(tiny_cfg, mode="F")
    assert f_only.temporal is None and f_only.loss_v is None
    s = f_only.score(f_only.encode_text(CAPTIONS), f_only.encode_video(frames))
    torch.testing.assert_close(s.total, s.F)


def test_mean_pooled_baseline(tiny_cfg, frames):
    model = build(tiny_cfg, mode="meanP")
    text = model.encode_text(CAPTIONS)
    assert text.vectors.shape == (3, 1, 64)
    torch.testing.assert_close(
        text.vectors[:, 0],
        torch.nn.functional.normalize(
            model.clip.encode_text(open_clip.tokenize(CAPTIONS, 32)), dim=-1
        ),
        atol=1e-5,
        rtol=1e-5,
    )
    video = model.encode_video(frames)
    mean = torch.nn.functional.normalize(video.F.mean(dim=1), dim=-1)
    torch.testing.assert_close(model.score(text, video).total, text.vectors[:, 0] @ mean.T)


def test_gradients_reach_every_part_and_loss_goes_down(tiny_cfg, frames):
    model = build(tiny_cfg).train()
    ids, mask = model.tokenize(CAPTIONS)
    video_mask = torch.ones(3, 12, dtype=torch.bool)
    video_mask[2, 7:] = False
    out = model(ids, mask, frames, video_mask)
    out["loss"].backward()
    for name in [
        "loss_f.log_scale",
        "loss_f.bias",
        "loss_v.log_scale",
        "loss_v.bias",
        "temporal.expansion",
        "temporal.frame_position",
        "temporal.encoder.layers.0.linear1.weight",
        "clip.visual.transformer.resblocks.0.mlp.c_fc.weight",
        "clip.transformer.resblocks.0.mlp.c_fc.weight",
        "clip.text_projection",
    ]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert not model.clip.token_embedding.weight.requires_grad  # frozen as in method.md
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = out["loss"].item()
    for _ in range(5):
        optimizer.zero_grad()
        loss = model(ids, mask, frames, video_mask)["loss"]
        loss.backward()
        optimizer.step()
    assert model(ids, mask, frames, video_mask)["loss"].item() < 0.7 * first


def test_temporal_layers_start_from_text_layers_when_widths_match(tiny_cfg):
    model = build(tiny_cfg, temporal_width=128, temporal_layers=2)
    layer = model.temporal.encoder.layers[1]
    block = model.clip.transformer.resblocks[1]
    assert torch.equal(layer.linear1.weight, block.mlp.c_fc.weight)
    assert torch.equal(layer.self_attn.in_proj_weight, block.attn.in_proj_weight)
    narrow = build(tiny_cfg)  # width 64 != text width 128: random init
    assert narrow.temporal.encoder.layers[0].linear1.weight.shape == (256, 64)


@pytest.mark.parametrize("std", [0.01, 0.1])
def test_random_frame_positions_start_at_the_configured_scale(tiny_cfg, std):
    positions = build(tiny_cfg, frame_position_std=std).temporal.frame_position
    assert positions.std().item() == pytest.approx(std, rel=0.2)  # 12 x 64 draws: about 3% off


def test_save_then_load_gives_identical_scores(tiny_cfg, frames, tmp_path):
    model = build(tiny_cfg)
    config = Config(model=model.cfg)
    save_checkpoint(model, tmp_path / "ckpt", config)
    loaded, loaded_config = load_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    loaded.eval()
    before = model.score(model.encode_text(CAPTIONS), model.encode_video(frames)).total
    after = loaded.score(loaded.encode_text(CAPTIONS), loaded.encode_video(frames)).total
    assert torch.equal(before, after)


def test_load_rejects_a_mismatched_checkpoint(tiny_cfg, tmp_path):
    save_checkpoint(build(tiny_cfg), tmp_path)
    config = (
        (tmp_path / "config.json")
        .read_text()
        .replace('"n_visual_expansion": 2', '"n_visual_expansion": 0')
    )
    (tmp_path / "config.json").write_text(config.replace('"mode": "both"', '"mode": "spatial"'))
    with pytest.raises(ValueError, match="does not match its config"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a Video-ColBERT checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_backbone_file_loads(tiny_cfg, tmp_path, suffix):
    torch.manual_seed(1)
    register_model_configs()
    source = open_clip.create_model("vcb-tiny", pretrained=None)
    state = source.state_dict()
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build(tiny_cfg, pretrained=str(path))
    assert torch.equal(model.clip.visual.conv1.weight, source.visual.conv1.weight)
    with pytest.raises(FileNotFoundError, match="backbone checkpoint not found"):
        build(tiny_cfg, pretrained=str(tmp_path / "missing.pt"))


def test_unknown_backbone_and_bad_sizes(tiny_cfg, frames):
    with pytest.raises(ValueError, match="unknown open_clip model"):
        build(tiny_cfg, backbone="ViT-Nope")
    with pytest.raises(ValueError, match="exceeds"):
        build(tiny_cfg, max_words=40)
    with pytest.raises(ValueError, match="built for 4"):
        build(tiny_cfg, max_frames=4).encode_video(frames)


def test_presets():
    assert preset("tiny").model.backbone == "vcb-tiny"
    assert preset("msrvtt-clip-b32").model.pretrained == "openai"
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_uint8_frames_are_normalised_by_the_model(tiny_cfg):
    model = build(tiny_cfg)
    raw = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    mean = torch.tensor(model.image_mean).view(3, 1, 1)
    std = torch.tensor(model.image_std).view(3, 1, 1)
    by_hand = (raw.float() / 255 - mean) / std
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    a, b = model.encode_video(raw, mask), model.encode_video(by_hand, mask)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.video, b.video, atol=1e-5, rtol=1e-5)


def test_building_without_a_tag_never_touches_the_network(tiny_cfg, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access during model creation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = build(tiny_cfg)
    assert model.encode_text(["offline"]).vectors.shape == (1, 24, 64)


def test_a_bfloat16_model_takes_float32_frames(tiny_cfg, frames):
    model = build(tiny_cfg).to(torch.bfloat16)
    video = model.encode_video(frames[:1, :4])
    assert video.frames.dtype == torch.bfloat16 and video.frames.shape == (1, 4, 64)


def test_default_frozen_parts_and_a_prefix_that_matches_nothing(tiny_cfg):
    model = build(tiny_cfg)
    frozen = {n for n, p in model.clip.named_parameters() if not p.requires_grad}
    assert frozen == {
        "token_embedding.weight",
        "positional_embedding",
        "visual.conv1.weight",  # "patch_embedding"
        "logit_scale",
    }
    old = build(tiny_cfg, frozen=("token_embedding", "visual.conv1"))  # old checkpoints' value
    assert not old.clip.visual.conv1.weight.requires_grad
    with pytest.raises(ValueError, match="'visual.trunk' matches no parameter of vcb-tiny"):
        build(tiny_cfg, frozen=("visual.trunk",))


def test_the_tokenizer_keeps_the_interface_other_modules_use(tiny_cfg):
    model = build(tiny_cfg)
    tokenizer = model.tokenizer
    ids = tokenizer(CAPTIONS, context_length=25)
    assert ids.shape == (3, 25) and ids.dtype == torch.long
    assert tokenizer(CAPTIONS).shape == (3, tiny_cfg.max_words)
    assert tokenizer.decode(tokenizer.encode("a red circle")).strip() == "a red circle"
    assert (tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id) == (49406, 49407, 0)
    assert tokenizer.real_token_mask(ids).sum(dim=1).tolist() == [7, 11, 4]  # start, words, end
    assert model.text_length == tiny_cfg.max_words  # causal: no padding to the context
