"""SigLIP-shaped backbones: bidirectional text tower, Hugging Face tokenizer, timm image tower.

Every tokenizer here is built offline in tmp_path (``build_word_tokenizer``); nothing downloads.
"""

import dataclasses
import json
import time
from pathlib import Path

import open_clip
import pytest
import torch
from test_viz import random_index

from vcb_utils.backbone import pooled_positions, text_token_features
from vcb_utils.checkpoints import load_checkpoint, save_checkpoint
from vcb_utils.config import ModelConfig, RunOptions, preset
from vcb_utils.index import PAD_TOKEN
from vcb_utils.model import VideoColBERT
from vcb_utils.tokenizer import (
    CLIP_END_ID,
    TextTokenizer,
    build_word_tokenizer,
    synthetic_tokenizer_folder,
    synthetic_vocabulary,
)

CAPTIONS = ["a red circle moves left, then it turns blue", "a square appears", "zork"]


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> str:
    """A SigLIP-like word-level tokenizer of the synthetic captions' words (pad = end = 1)."""
    folder = tmp_path_factory.mktemp("tokenizer") / "synthetic-words"
    return str(build_word_tokenizer(synthetic_vocabulary(), folder))


@pytest.fixture
def siglip_cfg(word_tokenizer) -> ModelConfig:
    """The tiny-siglip preset's model with the test's tokenizer folder, deterministic."""
    model = preset("tiny-siglip").model
    return dataclasses.replace(model, tokenizer=word_tokenizer, temporal_dropout=0.0)


def build(cfg: ModelConfig, **changes) -> VideoColBERT:
    torch.manual_seed(0)
    return VideoColBERT(dataclasses.replace(cfg, **changes)).eval()


# ---- tokenizer and masks -----------------------------------------------------------------------
def test_word_tokenizer_folder_is_small_and_siglip_like(word_tokenizer, siglip_cfg):
    size = sum(f.stat().st_size for f in Path(word_tokenizer).iterdir())
    assert size < 100_000
    tokenizer = build(siglip_cfg).tokenizer
    assert (tokenizer.pad_id, tokenizer.end_id, tokenizer.start_id) == (1, 1, None)
    ids = tokenizer(CAPTIONS, context_length=6)
    assert ids.shape == (3, 6)
    assert ids[0, -1] == 1  # cut to fit, the end token kept
    assert ids[2].tolist() == [2, 1, 1, 1, 1, 1]  # <unk>, end, pads (= end)
    assert tokenizer.decode(tokenizer.encode("A Red circle")) == "a red circle"


def test_real_token_mask_uses_the_tokenizer_ids_not_the_largest_id(word_tokenizer, tmp_path):
    clip = TextTokenizer.for_backbone("ViT-B-32", 16)
    clip_ids = open_clip.tokenize(CAPTIONS, context_length=16)
    old_rule = torch.arange(16)[None] <= clip_ids.argmax(dim=1, keepdim=True)
    assert torch.equal(clip.real_token_mask(clip_ids), old_rule)  # CLIP's BPE: up to its end
    assert clip.real_token_mask(torch.tensor([[49406, 320, CLIP_END_ID, 0]])).sum() == 3
    # pad = end (SigLIP): only the first end token is real
    siglip = TextTokenizer.for_backbone("vcb-tiny-siglip", 5, word_tokenizer)
    ids = torch.tensor([[7, 9, 1, 1, 1], [5, 1, 1, 1, 1]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(siglip.real_token_mask(ids), expected)
    # its own pad (0) after the end (1): a word id larger than the end id changes nothing
    folder = build_word_tokenizer(synthetic_vocabulary(), tmp_path / "tok", pad_with_end=False)
    padded = TextTokenizer.for_backbone("vcb-tiny-siglip", 5, str(folder))
    ids = torch.tensor([[3, 31999, 1, 0, 0]])
    assert padded.real_token_mask(ids).tolist() == [[True, True, True, False, False]]
    # a row without an end token: everything but the pads
    assert padded.real_token_mask(torch.tensor([[4, 5, 0]])).tolist() == [[True, True, False]]


def test_search_labels_and_truncation_warning_use_the_siglip_ids(siglip_cfg, recwarn):
    model = build(siglip_cfg)
    index = random_index(model)
    result = index.search("a red circle", k=1, model=model)[0]
    assert not [w for w in recwarn if "truncated" in str(w.message)]  # pads are not words
    rows = model.text_length  # query expansion: every position of the context scores
    assert result.tokens == ["a", "red", "circle", "</s>"] + [PAD_TOKEN] * (rows - 4)
    assert result.expansion == [False] * 4 + [True] * (rows - 4)
    long = " ".join(["red"] * model.cfg.max_words)
    with pytest.warns(UserWarning, match="query truncated to max_words"):
        index.search(long, k=1, model=model)


def test_a_hugging_face_tokenizer_with_its_own_pad(tmp_path, siglip_cfg):
    folder = build_word_tokenizer(synthetic_vocabulary(), tmp_path / "tok", pad_with_end=False)
    model = build(siglip_cfg, tokenizer=str(folder))
    ids, mask = model.tokenize(["a red circle"])
    assert ids[0, :5].tolist()[3:] == [1, 0]  # words, end (1), pad (0)
    assert mask.sum() == 4


def test_tokenizer_pieces_mark_whole_words(siglip_cfg, tiny_cfg):
    siglip = build(siglip_cfg).tokenizer
    assert siglip.pieces("A red circle") == [("a", True), ("red", True), ("circle", True)]
    clip = build(tiny_cfg).tokenizer
    pieces = clip.pieces("a circle zqxv")
    assert pieces[:2] == [("a ", True), ("circle ", True)]
    assert not all(whole for _, whole in pieces[2:])  # an unknown word is split into pieces


def test_a_clip_backbone_takes_a_hugging_face_tokenizer(tiny_cfg, word_tokenizer):
    model = build(tiny_cfg, tokenizer=word_tokenizer, query_expansion=False)
    text = model.encode_text(CAPTIONS)
    assert text.ids.shape == (3, tiny_cfg.max_words)  # causal: runs on max_words positions
    assert text.mask.sum(dim=1).tolist() == [11, 4, 2]  # words (the comma too) + end


def test_bad_tokenizers_fail_clearly(siglip_cfg, tmp_path):
    with pytest.raises(ValueError, match="could not be loaded"):
        build(siglip_cfg, tokenizer=str(tmp_path / "no-such-folder"))
    words = [f"word{i:03d}" for i in range(100)]  # more tokens than the tiny tower embeds
    model = build(siglip_cfg, tokenizer=str(build_word_tokenizer(words, tmp_path / "big")))
    assert model.encode_text(["word000 word050"]).vectors.shape == (1, 32, 64)
    with pytest.raises(ValueError, match="token id 102 has no embedding in vcb-tiny-siglip"):
        model.encode_text(["word099"])


def test_the_preset_tokenizer_is_built_offline_once(monkeypatch, tmp_path, small_synthetic):
    monkeypatch.setenv("VCB_DATA_DIR", str(tmp_path))
    model = build(preset("tiny-siglip").model)
    (folder,) = (tmp_path / "tokenizers").iterdir()
    assert folder == synthetic_tokenizer_folder()  # found again, not rebuilt
    lines = (Path(small_synthetic) / "annotations.jsonl").read_text()
    captions = [json.loads(line)["caption"] for line in lines.splitlines()]
    ids, _ = model.tokenize(captions)
    assert not (ids == 2).any()  # no <unk>: the vocabulary covers every synthetic caption


# ---- text tower ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["last", "argmax", "first"])
def test_pooled_row_equals_encode_text_for_a_bidirectional_tower(siglip_cfg, pool):
    model = build(siglip_cfg)
    model.clip.text.pool_type = pool  # what open_clip's encode_text reads
    ids, _ = model.tokenize(CAPTIONS)
    assert ids.shape == (3, 32)  # the tower's whole context, not max_words (24)
    per_token = text_token_features(model.clip, ids)
    rows = pooled_positions(model.clip, ids)
    expected = {"last": [31] * 3, "first": [0] * 3, "argmax": ids.argmax(dim=1).tolist()}[pool]
    assert rows.tolist() == expected
    torch.testing.assert_close(
        per_token[torch.arange(3), rows], model.clip.encode_text(ids), atol=1e-5, rtol=1e-5
    )


def test_bidirectional_text_is_cut_at_max_words_and_padded_to_the_context(siglip_cfg):
    model = build(siglip_cfg, max_words=6)
    ids, mask = model.tokenize(CAPTIONS)
    assert ids.shape == (3, 32)
    assert ids[0, 5] == 1 and (ids[0, 5:] == 1).all()  # 5 words, end, then pads (= end)
    assert mask.sum(dim=1).tolist() == [6, 4, 2]
    text = model.encode_text(CAPTIONS)
    assert text.vectors.shape == (3, 32, 64) and text.mask.all()  # every position expands
    plain = build(siglip_cfg, max_words=6, query_expansion=False).encode_text(CAPTIONS)
    assert torch.equal(plain.mask, mask)
    # real tokens see the pads: ids shorter than the context are padded, same result
    short = model.encode_text(ids[:, :6])
    torch.testing.assert_close(short.vectors, text.vectors)


def test_mean_pooled_baseline_is_siglip_encode_text(siglip_cfg):
    model = build(siglip_cfg, mode="meanP")
    text = model.encode_text(CAPTIONS)
    ids, _ = model.tokenize(CAPTIONS)
    expected = torch.nn.functional.normalize(model.clip.encode_text(ids), dim=-1)
    torch.testing.assert_close(text.vectors[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_temporal_layers_start_from_bidirectional_text_layers(siglip_cfg):
    model = build(siglip_cfg, temporal_width=128, temporal_layers=2, temporal_heads=2)
    layer, block = model.temporal.encoder.layers[1], model.clip.text.transformer.resblocks[1]
    assert torch.equal(layer.linear1.weight, block.mlp.c_fc.weight)
    assert torch.equal(layer.self_attn.in_proj_weight, block.attn.in_proj_weight)
    assert layer.norm1.eps == block.ln_1.eps == 1e-6
    narrow = build(siglip_cfg)  # width 64 != text width 128: random init, no crash
    assert narrow.temporal.encoder.layers[0].linear1.weight.shape == (256, 64)


def test_training_step_and_checkpoint_round_trip(siglip_cfg, frames, tmp_path):
    model = build(siglip_cfg).train()
    ids, mask = model.tokenize(CAPTIONS)
    out = model(ids, mask, frames[:, :8], torch.ones(3, 8, dtype=torch.bool))
    out["loss"].backward()
    text_block = model.clip.text.transformer.resblocks[0].mlp.c_fc.weight
    assert text_block.grad is not None and text_block.grad.abs().sum() > 0
    assert not model.clip.text.token_embedding.weight.requires_grad
    assert not model.clip.visual.conv1.weight.requires_grad  # "patch_embedding"
    model.eval()
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    video = frames[:2, :8]
    before = model.score(model.encode_text(CAPTIONS), model.encode_video(video)).total
    after = loaded.score(loaded.encode_text(CAPTIONS), loaded.encode_video(video)).total
    torch.testing.assert_close(before, after)


def test_building_never_touches_the_network(siglip_cfg, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access during model creation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert build(siglip_cfg).encode_text(["offline"]).vectors.shape == (1, 32, 64)


# ---- timm image tower ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timm_backbone(tmp_path_factory) -> str:
    """A registered open_clip config with a tiny timm image tower (timm's test_vit, 160 px)."""
    config = open_clip.get_model_config("vcb-tiny-siglip")  # a copy
    config["vision_cfg"] = {
        "image_size": 160,
        "timm_model_name": "test_vit",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
    }
    folder = tmp_path_factory.mktemp("configs")
    (folder / "vcb-test-timm.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "vcb-test-timm.json")
    return "vcb-test-timm"


def test_a_timm_image_tower(siglip_cfg, timm_backbone):
    model = build(siglip_cfg, backbone=timm_backbone)
    assert type(model.clip.visual).__name__ == "TimmModel"
    assert model.embed_dim == 64 and model.image_size == 160
    frozen = {n for n, p in model.clip.named_parameters() if not p.requires_grad}
    assert {"visual.trunk.patch_embed.proj.weight", "text.token_embedding.weight"} <= frozen
    video = model.to(torch.bfloat16).encode_video(torch.randn(1, 2, 3, 160, 160))
    assert video.F.dtype == torch.bfloat16 and video.V.shape == (1, 4, 64)
    with pytest.raises(ValueError, match="'visual.conv1' matches no parameter"):
        build(siglip_cfg, backbone=timm_backbone, frozen=("visual.conv1",))


# ---- the tiny SigLIP main job --------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_siglip_learns_the_synthetic_clips(tmp_path, word_tokenizer):
    """tiny-siglip on the default synthetic data, as ``--preset tiny-siglip`` runs it."""
    from vcb_utils.train import run

    config = preset("tiny-siglip").updated(
        model={"tokenizer": word_tokenizer}, train={"output_dir": str(tmp_path)}
    )
    start = time.perf_counter()
    metrics = run(config, RunOptions())
    print(f"tiny-siglip: {time.perf_counter() - start:.0f} s, t2v {metrics['t2v']['both']}")
    assert metrics["t2v"]["both"]["R1"] >= 50.0, metrics["t2v"]["both"]  # chance: 1%
