"""Training throughput and peak memory of the paper-scale configuration on one GPU.

ViT-B/32 (random init: no download), 12 frames at 224 px, global batch 64, bf16 autocast,
the full training step of ``vcb_utils.train`` (forward, dual sigmoid loss, backward,
clipping, AdamW). Synthetic frames, so the figure is the model's, not the data loader's.

    python benchmarks/bench_train_gpu.py                       # on a GPU machine
    python benchmarks/bench_train_gpu.py --preset tiny --batch 8 --steps 2 --precision no  # CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from accelerate import Accelerator

from vcb_utils.config import preset
from vcb_utils.model import VideoColBERT
from vcb_utils.optim import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="msrvtt-vit-b32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--precision", default="bf16", choices=("no", "fp16", "bf16"))
    args = parser.parse_args()

    config = preset(args.preset)
    accelerator = Accelerator(mixed_precision=args.precision, cpu=not torch.cuda.is_available())
    model = VideoColBERT(dataclasses.replace(config.model, pretrained=None))
    optimizer = build_optimizer(model, config.train)
    model, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(model)
    frames, size = config.model.max_frames, plain.image_size
    g = torch.Generator().manual_seed(0)
    video = torch.randn(args.batch, frames, 3, size, size, generator=g).to(accelerator.device)
    video_mask = torch.ones(args.batch, frames, dtype=torch.bool, device=accelerator.device)
    captions = [f"clip number {i} shows a red circle moving left" for i in range(args.batch)]
    ids, text_mask = (t.to(accelerator.device) for t in plain.tokenize(captions))

    def step() -> float:
        losses = model(ids, text_mask, video, video_mask)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        return losses["loss"].item()

    for _ in range(args.warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}  preset: {args.preset}  precision: {args.precision}")
    print(f"batch {args.batch} x {frames} frames @ {size} px, {args.steps} timed steps")
    print(
        f"throughput: {args.batch * args.steps / seconds:.1f} clips/s "
        f"({seconds / args.steps * 1000:.0f} ms/step), last loss {loss:.3f}"
    )
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
