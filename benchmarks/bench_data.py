"""Training-data throughput: decoding raw videos vs reading the frame cache.

Generates 10 s, 30 fps, 320 x 240 H.264 clips (MSR-VTT's raw format: moving textures, a moving
shape, mild noise, default keyframe interval), then times the training Dataset through a
DataLoader with 2 workers, producing 12 frames at 224 px per clip, first decoding every clip,
then from the cache. Prints clips/s for both and their ratio, for the default float32 videos
(normalised in the workers) and for uint8 videos (``uint8=True``: normalised on the device).

    python benchmarks/bench_data.py                  # 32 clips, 2 workers
    python benchmarks/bench_data.py --clips 64 --workers 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import torch
from torch.utils.data import ConcatDataset

from vcb_utils.cache import FrameCache
from vcb_utils.datasets import Preprocessing, Record, VideoTextDataset, make_loader
from vcb_utils.synthetic import write_video

SECONDS, FPS, WIDTH, HEIGHT = 10, 30, 320, 240
MAX_FRAMES, IMAGE_SIZE, FRAMERATE = 12, 224, 2.0
"""2 fps over 10 s gives 20 positions, so all 12 frames are real (no padding)."""
TOKENIZER = open_clip.get_tokenizer("ViT-B-32", context_length=32)
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def clip_frames(seed: int) -> np.ndarray:
    """Three drifting sine textures, a moving disc and a cycle of 8 noise fields."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    speed, phase = rng.uniform(1, 4, 3), rng.uniform(0, 6, 3)
    noise = rng.normal(0, 6, (8, HEIGHT, WIDTH, 3)).astype(np.float32)
    frames = np.empty((SECONDS * FPS, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(len(frames)):
        image = np.empty((HEIGHT, WIDTH, 3), np.float32)
        image[..., 0] = 128 + 100 * np.sin((np.arange(WIDTH) + speed[0] * i) / 23 + phase[0])
        image[..., 1] = (128 + 100 * np.cos((np.arange(HEIGHT) - speed[1] * i) / 31 + phase[1]))[
            :, None
        ]
        diagonal = 128 + 100 * np.sin((np.arange(HEIGHT + WIDTH) + speed[2] * i) / 41 + phase[2])
        image[..., 2] = diagonal[x + y]
        cx, cy = (40 + 3 * i) % WIDTH, (60 + 2 * i) % HEIGHT
        image[(x - cx) ** 2 + (y - cy) ** 2 < 900] = (250, 240, 30)
        frames[i] = np.clip(image + noise[i % len(noise)], 0, 255)
    return frames


def write_clip(job: tuple[int, Path]) -> None:
    seed, path = job
    write_video(path, clip_frames(seed), FPS, crf=23)


def throughput(dataset: VideoTextDataset, workers: int, passes: int) -> float:
    """Clips per second through one shuffled DataLoader over ``passes`` copies of the clips.

    One loader for all passes, as in an epoch of a real dataset: worker start-up counts once.
    """
    repeated = ConcatDataset([dataset] * passes)
    loader = make_loader(repeated, batch_size=8, shuffle=True, workers=workers)
    count, start = 0, time.perf_counter()
    for batch in loader:
        count += batch[2].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--raw-passes", type=int, default=2)
    parser.add_argument("--cache-passes", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        root = Path(tmp)
        jobs = [(i, root / f"clip{i:03d}.mp4") for i in range(args.clips)]
        started = time.perf_counter()
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(write_clip, jobs))
        size_mb = sum(p.stat().st_size for _, p in jobs) / len(jobs) / 1e6
        print(
            f"generated {args.clips} clips ({SECONDS} s, {FPS} fps, {WIDTH}x{HEIGHT}, "
            f"{size_mb:.2f} MB each) in {time.perf_counter() - started:.1f} s"
        )

        records = [Record(p.stem, p, f"caption {i}") for i, p in jobs]
        prep = Preprocessing(tokenize, MAX_FRAMES, IMAGE_SIZE, MEAN, STD)
        cache = FrameCache(root / "cache", prep.sampling(FRAMERATE))
        started = time.perf_counter()
        cache.build([r.video for r in records], workers=args.workers)
        build = time.perf_counter() - started
        entry_mb = sum(p.stat().st_size for p in cache.dir.glob("*.npy")) / len(records) / 1e6
        rates = {}
        for uint8 in (False, True):
            raw = VideoTextDataset(records, tokenize, prep.source(FRAMERATE, uint8=uint8))
            cached = VideoTextDataset(
                records, tokenize, prep.source(FRAMERATE, cache=cache, uint8=uint8)
            )
            rates[uint8] = (
                throughput(raw, args.workers, args.raw_passes),
                throughput(cached, args.workers, args.cache_passes),
            )

    print(
        f"{MAX_FRAMES} frames at {IMAGE_SIZE} px per clip, {args.workers} workers, batch 8; "
        f"cache built in {build:.1f} s, {entry_mb:.2f} MB/clip"
    )
    for uint8, (raw, cached) in rates.items():
        name = "uint8 videos  " if uint8 else "float32 videos"
        print(
            f"{name}: raw decode {raw:6.1f} clips/s | frame cache {cached:6.1f} clips/s | "
            f"ratio {cached / raw:5.1f}x"
        )


def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's BPE tokenizer at 32 tokens, wrapped as the Dataset expects."""
    ids = TOKENIZER(texts)
    return ids, torch.arange(ids.shape[1]) <= ids.argmax(-1, keepdim=True)


if __name__ == "__main__":
    main()
