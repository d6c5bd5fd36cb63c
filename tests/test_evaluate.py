import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from helpers import launch_env, launch_two
from test_viz import make_model

from vcb_utils.config import RunOptions, preset
from vcb_utils.datasets import read_annotations
from vcb_utils.encode import drop_failed, encode_videos
from vcb_utils.evaluate import zero_shot, zero_shot_matrices
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding, load_checkpoint
from vcb_utils.train import run
from vcb_utils.train_cli import parse_args
from vcb_utils.video import preprocess_frames, read_clip

REPO = Path(__file__).resolve().parents[1]


def loop_metrics(sim: np.ndarray) -> dict:
    """Ranks one row at a time: other columns scoring >= the target count against it."""
    ranks = np.array(
        [
            sum(sim[i, j] >= sim[i, i] for j in range(sim.shape[1]) if j != i)
            for i in range(sim.shape[0])
        ]
    )
    return {
        "R1": 100 * np.mean(ranks < 1),
        "R5": 100 * np.mean(ranks < 5),
        "R10": 100 * np.mean(ranks < 10),
        "MdR": float(np.median(ranks + 1)),
        "MnR": float(np.mean(ranks + 1)),
    }


def brute_force_scores(model: VideoColBERT, data: str, max_frames: int, framerate: float):
    """Every test caption against every test video, one clip at a time, the dense way."""
    records = read_annotations("synthetic", data, "test")
    text = model.encode_text([r.caption for r in records])
    f_scores, v_scores = [], []
    for record in records:
        clip = read_clip(record.path, framerate=framerate, max_frames=max_frames)
        video, mask = preprocess_frames(
            clip.frames, model.image_size, model.image_mean, model.image_std, max_frames
        )
        emb = model.encode_video(video[None], mask[None])
        for d, m, out in (
            (emb.frames, emb.frame_mask, f_scores),
            (emb.video, emb.video_mask, v_scores),
        ):
            sim = torch.einsum("qld,vd->qlv", text.vectors, d[0][m[0]])
            out.append(sim.amax(dim=-1).mean(dim=-1))  # query expansion: every position counts
    f, v = torch.stack(f_scores, dim=1), torch.stack(v_scores, dim=1)
    return {"both": (f + v).numpy(), "F": f.numpy(), "V": v.numpy()}


def evaluation_args(checkpoint: Path, data: str) -> list[str]:
    """Flags that evaluate ``checkpoint`` on the small synthetic test split."""
    return [
        "--init_model",
        str(checkpoint),
        "--datatype",
        "synthetic",
        "--anno_path",
        data,
        "--batch_size_val",
        "4",
        "--workers",
        "0",
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_synthetic) -> Path:
    out = tmp_path_factory.mktemp("trained")
    config, options = parse_args(
        [
            "--datatype",
            "synthetic",
            "--anno_path",
            small_synthetic,
            "--batch_size",
            "8",
            "--epochs",
            "1",
            "--max_steps",
            "3",
            "--do_eval",
            "0",
            "--workers",
            "0",
            "--output_dir",
            str(out),
        ]
    )
    run(config, options)
    return out / "last"


def test_metrics_json_equals_hand_computed_metrics(checkpoint, small_synthetic, tmp_path):
    config, options = parse_args(
        [*evaluation_args(checkpoint, small_synthetic), "--output_dir", str(tmp_path)]
    )
    assert not options.do_train
    returned = run(config, options)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == returned
    assert written["checkpoint"] == str(checkpoint) and written["split"] == "test"
    assert written["postprocessing"] == "none"

    model, saved = load_checkpoint(checkpoint)
    model.eval()
    with torch.no_grad():
        scores = brute_force_scores(
            model, small_synthetic, saved.model.max_frames, saved.data.video_framerate
        )
    for name, sim in scores.items():
        assert sim.shape == (11, 11)
        for key, value in loop_metrics(sim).items():
            assert returned["t2v"][name][key] == pytest.approx(value, abs=1e-9), (name, key)
        for key, value in loop_metrics(sim.T).items():
            assert returned["v2t"][name][key] == pytest.approx(value, abs=1e-9), (name, key)


@pytest.mark.slow
def test_one_and_two_processes_give_identical_metrics(checkpoint, small_synthetic, tmp_path):
    args = [*evaluation_args(checkpoint, small_synthetic), "--cpu"]
    env = launch_env()
    train = str(REPO / "vcb_utils" / "train.py")
    subprocess.run(
        [sys.executable, train, *args, "--output_dir", str(tmp_path / "one")],
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        launch_two(train, *args, "--world_size", "2", "--output_dir", str(tmp_path / "two")),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["metrics"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["metrics"]
    assert one == two  # 11 test videos: the 2-process shards are uneven


def test_zero_shot_scores_the_plain_backbone(small_synthetic, frames):
    config = preset("tiny").updated(data={"anno_path": small_synthetic, "cache_dir": None})
    metrics = zero_shot(config)
    assert set(metrics["t2v"]) == set(metrics["v2t"]) == {"mean", "maxsim"}

    plain = dataclasses.replace(config.model, mode="F", query_expansion=False)
    model = VideoColBERT(plain).eval()
    captions = ["a red circle moves left", "a blue square appears", "a green triangle"]
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        texts, videos = model.encode_text(captions), model.encode_video(frames[:, :8], mask)
        matrices = zero_shot_matrices(model, texts, videos)
        sentence = torch.nn.functional.normalize(
            model.clip.encode_text(open_clip.tokenize(captions, 32)), dim=-1
        )
        clips = [model.clip.encode_image(frames[i, :8][mask[i]], normalize=True) for i in range(3)]
    mean = torch.nn.functional.normalize(torch.stack([c.mean(dim=0) for c in clips]), dim=-1)
    torch.testing.assert_close(matrices["mean"], sentence @ mean.T, atol=1e-5, rtol=1e-5)
    for i in range(3):
        real = texts.vectors[i][texts.mask[i]]
        for j in range(3):
            expected = (real @ clips[j].T).amax(dim=1).mean()
            assert matrices["maxsim"][i, j].item() == pytest.approx(expected.item(), abs=1e-5)


def test_videos_that_failed_to_decode_are_dropped_with_their_captions():
    videos = VideoEmbedding(
        torch.randn(3, 2, 4), torch.tensor([[1, 1], [0, 0], [1, 0]]).bool(), None, None
    )
    texts = TextEmbedding(
        torch.randn(5, 3, 4),
        torch.ones(5, 3, dtype=torch.bool),
        torch.zeros(5, 3, dtype=torch.long),
    )
    targets = torch.tensor([0, 1, 2, 1, 0])
    texts2, videos2, targets2 = drop_failed(texts, videos, targets)
    assert torch.equal(videos2.frames, videos.frames[[0, 2]])
    assert torch.equal(texts2.vectors, texts.vectors[[0, 2, 4]])
    assert targets2.tolist() == [0, 1, 0]


def test_run_options_defaults_are_plain():
    assert RunOptions().postprocessing == "none" and not RunOptions().zero_shot


def test_encoders_run_in_eval_mode_and_restore_the_mode(tiny_cfg, frames):
    from vcb_utils.encode import encode_videos

    model = VideoColBERT(dataclasses.replace(tiny_cfg, temporal_dropout=0.5)).train()
    mask = torch.ones(3, 12, dtype=torch.bool)
    items = list(zip(frames, mask, strict=True))
    first, second = (encode_videos(model, items, batch_size=2) for _ in range(2))
    torch.testing.assert_close(first.video, second.video)  # no dropout noise
    assert model.training


def test_encoding_without_progress_draws_no_bar(capsys):
    """Validation during training (``evaluate(report=False)``) keeps the epoch lines clean."""
    model = make_model()
    frames = model.cfg.max_frames
    clips = torch.utils.data.TensorDataset(
        torch.zeros(2, frames, 3, model.image_size, model.image_size),
        torch.ones(2, frames, dtype=torch.bool),
    )
    encode_videos(model, clips, batch_size=2, progress=False)
    assert "encode videos" not in capsys.readouterr().err
    encode_videos(model, clips, batch_size=2)
    assert "encode videos" in capsys.readouterr().err
