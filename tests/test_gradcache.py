"""GradCache: chunked training steps give the whole batch's gradients (tiny model, CPU)."""

import json
import math

import pytest
import torch
from accelerate import Accelerator

from vcb_utils.config import RunOptions
from vcb_utils.gradcache import cached_backward
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding
from vcb_utils.train import run
from vcb_utils.train_cli import parse_args

CAPTIONS = [
    "a red circle moves left",
    "a blue square appears, then a green triangle moves up",
    "a yellow star turns red",
    "a green circle disappears",
    "a red square moves right, then a blue circle appears",
    "a blue triangle moves down",
    "a yellow circle appears",
]


TEXT_FIELDS = ("vectors", "mask", "ids")
VIDEO_FIELDS = ("F", "F_mask", "V", "V_mask")


def batch(model: VideoColBERT) -> tuple[torch.Tensor, ...]:
    """7 captions and clips; the last two clips are short (padded, masked frames)."""
    ids, text_mask = model.tokenize(CAPTIONS)
    g = torch.Generator().manual_seed(1)
    frames = model.cfg.max_frames
    video = torch.randint(0, 256, (len(CAPTIONS), frames, 3, 64, 64), generator=g).to(torch.uint8)
    video_mask = torch.ones(len(CAPTIONS), frames, dtype=torch.bool)
    video_mask[-2:, frames // 2 :] = False
    return ids, text_mask, video, video_mask


def tiny(tiny_cfg, dropout: float) -> VideoColBERT:
    torch.manual_seed(0)
    model = VideoColBERT(tiny_cfg.__class__(**{**tiny_cfg.__dict__, "temporal_dropout": dropout}))
    return model.train()


def grads(model: VideoColBERT) -> dict[str, torch.Tensor]:
    found = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return found


def assert_same_gradients(expected: dict, got: dict) -> float:
    assert expected.keys() == got.keys()
    assert {"loss_f.log_scale", "loss_f.bias", "loss_v.log_scale", "loss_v.bias"} <= got.keys()
    worst = max(float((expected[n] - got[n]).abs().max()) for n in expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    return worst


@pytest.mark.parametrize("chunk_size", [1, 3, 7])
def test_chunks_give_the_plain_steps_gradients_without_dropout(tiny_cfg, chunk_size):
    model = tiny(tiny_cfg, dropout=0.0)
    data = batch(model)
    plain_loss = model(*data)["loss"]  # the whole batch in one graph
    plain_loss.backward()
    expected = grads(model)
    losses = cached_backward(Accelerator(cpu=True), model, data, chunk_size)
    torch.testing.assert_close(losses["loss"], plain_loss.detach())
    assert_same_gradients(expected, grads(model))


def test_chunks_give_the_whole_batch_gradients_with_dropout(tiny_cfg):
    """With dropout, the reference is the whole batch's graph with the same dropout masks: each
    chunk embedded with its graph kept, in order, from the same seed; one loss, one backward."""
    model = tiny(tiny_cfg, dropout=0.5)
    ids, text_mask, video, video_mask = batch(model)
    parts = [slice(0, 3), slice(3, 6), slice(6, 7)]
    torch.manual_seed(7)
    texts, clips = [], []
    for p in parts:
        texts.append(model.encode_text(ids[p], text_mask[p]))
        clips.append(model.encode_video(video[p], video_mask[p]))
    text = TextEmbedding(*(torch.cat([getattr(t, f) for t in texts]) for f in TEXT_FIELDS))
    clip = VideoEmbedding(*(torch.cat([getattr(c, f) for c in clips]) for f in VIDEO_FIELDS))
    reference = model.loss(model.score(text, clip))["loss"]
    reference.backward()
    expected = grads(model)

    torch.manual_seed(7)
    losses = cached_backward(Accelerator(cpu=True), model, (ids, text_mask, video, video_mask), 3)
    torch.testing.assert_close(losses["loss"], reference.detach())
    assert_same_gradients(expected, grads(model))
    assert model.temporal.training  # dropout was on: the V branch saw different masks per chunk


def test_training_runs_with_chunks_and_checkpointing(tmp_path, small_synthetic):
    config, _ = parse_args(
        ["--anno_path", small_synthetic, "--output_dir", str(tmp_path), "--batch_size", "8"]
        + ["--workers", "0", "--chunk_size", "3", "--grad_checkpointing", "1"]
    )
    assert (config.train.chunk_size, config.train.grad_checkpointing) == (3, True)
    run(config, RunOptions(do_train=True, do_eval=False, max_steps=2))
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
