"""The presets: one per published row (dataset x backbone), with each benchmark's protocol.

The dress rehearsal builds every preset at its real shapes with random weights and no download,
lays out a few generated clips in the dataset's own format (the annotation fixtures of
``tests/fixtures``), takes one training step and one evaluation.
"""

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from vcb_utils.backbone import register_model_configs
from vcb_utils.config import PAPER_BACKBONES, PAPER_DATASETS, PRESETS, Config, preset

REPO = Path(__file__).resolve().parents[1]
register_model_configs()  # open_clip must know the vcb-* backbones that presets name
FIXTURES = Path(__file__).parent / "fixtures"
PAPER_PRESETS = [f"{d}-{b}" for d in PAPER_DATASETS for b in PAPER_BACKBONES]
PROTOCOL = {  # docs/datasets.md: (max_words, max_frames)
    "msrvtt": (32, 12),
    "msvd": (32, 12),
    "vatex": (32, 12),
    "didemo": (64, 64),
    "activitynet": (64, 64),
}


# ---- what the presets say ----------------------------------------------------------------------
def test_one_preset_per_published_row():
    assert len(PAPER_PRESETS) == 15
    assert set(PAPER_PRESETS) | {"tiny", "tiny-siglip", "msrvtt-vit-b32", "msrvtt-vit-b16"} == set(
        PRESETS
    )
    assert "msrvtt-siglip-b16" in PRESETS and "activitynet-clip-b32" in PRESETS


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_each_preset_follows_its_dataset_protocol(name):
    dataset, backbone = name.split("-", 1)
    config = preset(name)
    assert Config.from_dict(config.to_dict()) == config
    assert config.data.datatype == dataset
    assert (config.model.max_words, config.model.max_frames) == PROTOCOL[dataset]
    assert config.data.video_framerate == 1.0
    tag = PAPER_BACKBONES[backbone]["pretrained"]
    assert (config.model.backbone, tag) in open_clip.list_pretrained()  # a real tag to download
    context = open_clip.get_model_config(config.model.backbone)["text_cfg"]["context_length"]
    assert config.model.max_words <= context
    assert config.train.output_dir == f"outputs/{dataset}_{backbone.replace('-', '_')}"


def test_paper_backbones():
    assert preset("msrvtt-clip-b32").model.pretrained == "openai"
    siglip = preset("vatex-siglip-b16").model
    assert (siglip.backbone, siglip.pretrained, siglip.tokenizer) == (
        "ViT-B-16-SigLIP",
        "webli",
        None,  # the backbone's own tokenizer (the hub's); the rehearsal gives a local one
    )


def test_old_names_are_the_new_msrvtt_presets():
    assert preset("msrvtt-vit-b32") == preset("msrvtt-clip-b32")
    assert preset("msrvtt-vit-b16") == preset("msrvtt-clip-b16")


def test_tiny_siglip_is_tiny_with_a_siglip_shaped_backbone():
    tiny, siglip = preset("tiny"), preset("tiny-siglip")
    assert (siglip.model.backbone, siglip.model.tokenizer) == ("vcb-tiny-siglip", "vcb:synthetic")
    assert siglip.updated(model={"backbone": "vcb-tiny", "tokenizer": None}).model == tiny.model
    assert siglip.data == tiny.data
    text_cfg = open_clip.get_model_config("vcb-tiny-siglip")["text_cfg"]
    assert text_cfg["no_causal_mask"] and text_cfg["pool_type"] == "last"
    assert text_cfg["hf_tokenizer_name"] == "vcb:synthetic"


def test_gpu_benchmark_starts_on_cpu():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_preset_gpu.py"),
            "--preset",
            "tiny-siglip",
            "--steps",
            "2",
            "--batch",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "clips/s" in result.stdout and "vcb-tiny-siglip" in result.stdout


# ---- dress rehearsal ---------------------------------------------------------------------------
CLIP_SECONDS = 3
"""Generated clip length: 3 real frames at the presets' 1 fps, the rest of the 12 or 64 frame
positions padding (masked out). The model and its inputs keep their real shapes; only the
image tower's work shrinks (padded frames are not encoded), to fit 15 ViT-B presets on 2 cores
in minutes."""


def _write_clip(path: Path, seconds: int, seed: int) -> None:
    from vcb_utils.synthetic import write_video

    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (seconds * 2, 32, 32, 3), dtype=np.uint8)  # 2 fps
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=2)


def _msrvtt_folder(folder: Path) -> None:
    """The fixture's MSRVTT_data.json plus split files: three train videos, two test pairs."""
    folder.mkdir(parents=True)
    data = json.loads((FIXTURES / "msrvtt" / "MSRVTT_data.json").read_text())
    shutil.copy(FIXTURES / "msrvtt" / "MSRVTT_data.json", folder)
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\nvideo1\nvideo2\nvideo3\n")
    test_ids = [v["video_id"] for v in data["videos"] if v["split"] == "test"][:2]
    sentences = {s["video_id"]: s["caption"] for s in data["sentences"]}
    with open(folder / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        for i, video_id in enumerate(test_ids):
            writer.writerow([f"ret{i}", f"msr{video_id[5:]}", video_id, sentences[video_id]])


def dataset_folder(root: Path, datatype: str) -> tuple[Path, Path]:
    """An annotation folder in ``datatype``'s layout and a folder of clips named as it expects."""
    from vcb_utils.datasets import read_annotations

    anno, videos = root / datatype, root / f"{datatype}-videos"
    if datatype == "msrvtt":
        _msrvtt_folder(anno)
    else:
        shutil.copytree(FIXTURES / datatype, anno)
    for split in ("train", "test"):
        for i, record in enumerate(read_annotations(datatype, anno, split, videos)):
            path = Path(record.path)
            if not path.is_file():  # any extension is found: write <stem>.mp4
                _write_clip(videos / f"{path.stem}.mp4", CLIP_SECONDS, seed=i)
    for split in ("train", "test"):
        assert all(Path(r.path).is_file() for r in read_annotations(datatype, anno, split, videos))
    return anno, videos


@pytest.fixture(scope="module")
def siglip_tokenizer(tmp_path_factory) -> str:
    """A local stand-in for SigLIP's hub tokenizer: the fixture captions' words."""
    from vcb_utils.datasets import read_annotations
    from vcb_utils.tokenizer import build_word_tokenizer

    words = set()
    for datatype in ("msvd", "vatex", "didemo", "activitynet"):
        for split in ("train", "test"):
            for record in read_annotations(datatype, FIXTURES / datatype, split):
                words |= set(record.caption.lower().split())
    data = json.loads((FIXTURES / "msrvtt" / "MSRVTT_data.json").read_text())
    words |= {w for s in data["sentences"] for w in s["caption"].lower().split()}
    return str(build_word_tokenizer(words, tmp_path_factory.mktemp("siglip") / "tokenizer"))


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_dress_rehearsal(name, tmp_path, siglip_tokenizer):
    from accelerate import Accelerator

    from vcb_utils.evaluate import evaluate
    from vcb_utils.model import VideoColBERT
    from vcb_utils.optim import build_optimizer
    from vcb_utils.train import train_loader

    start = time.perf_counter()
    config = preset(name)
    model_cfg, data = config.model, config.data
    anno, videos = dataset_folder(tmp_path, data.datatype)
    siglip = "siglip" in name
    config = config.updated(
        model={"pretrained": None, "tokenizer": siglip_tokenizer if siglip else None},
        data={"anno_path": str(anno), "video_path": str(videos), "workers": 0},
        train={"batch_size": 2, "batch_size_val": 4, "output_dir": str(tmp_path / "out")},
    )
    torch.manual_seed(0)
    model = VideoColBERT(config.model)  # real shapes, random weights, nothing downloaded
    context = open_clip.get_model_config(model_cfg.backbone)["text_cfg"]["context_length"]
    assert model.text_length == (context if siglip else model_cfg.max_words)
    assert model.temporal.frame_position.shape[0] == model_cfg.max_frames
    accelerator = Accelerator(cpu=True)
    loader = train_loader(accelerator, model.preprocessing, config)
    text_ids, text_mask, video, video_mask = next(iter(loader))
    size = model.image_size
    assert video.shape == (2, model_cfg.max_frames, 3, size, size)
    assert video_mask.sum(dim=1).tolist() == [CLIP_SECONDS] * 2
    assert text_ids.shape == (2, model.text_length)
    optimizer = build_optimizer(model, config.train)
    model.train()
    losses = model(text_ids, text_mask, video, video_mask)
    losses["loss"].backward()
    optimizer.step()
    assert math.isfinite(losses["loss"].item())
    metrics = evaluate(model, config, accelerator, "test", report=False)
    assert set(metrics["t2v"]) == {"both", "F", "V"}
    assert 0 <= metrics["t2v"]["both"]["R1"] <= 100
    print(f"{name}: {time.perf_counter() - start:.1f} s")
