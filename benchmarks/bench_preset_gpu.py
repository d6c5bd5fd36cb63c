"""One preset's first training steps on one GPU: clips per second and peak memory.

The preset's model at its real shapes with random weights (no download), its batch, frame
count, image size and caption length, bf16 autocast, and the training step of
``vcb_utils.train`` (forward, dual loss, backward, gradient clipping, AdamW, schedule). The
clips are random uint8 frames made on the device, so the figure is the model's, not the data
loader's. A backbone whose tokenizer needs the hub (SigLIP) gets a word-level tokenizer
built offline for the benchmark's captions. The first ``--warmup`` steps are not timed.

    python benchmarks/bench_preset_gpu.py --preset msrvtt-siglip-b16        # 50 steps
    python benchmarks/bench_preset_gpu.py --preset didemo-clip-b16 --batch 16
    python benchmarks/bench_preset_gpu.py --preset tiny --steps 2 --device cpu   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import open_clip
import torch
from accelerate import Accelerator

from vcb_utils.config import PRESETS, preset
from vcb_utils.model import (
    SYNTHETIC_TOKENIZER,
    VideoColBERT,
    build_word_tokenizer,
    synthetic_vocabulary,
)
from vcb_utils.optim import build_optimizer, warmup_cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="msrvtt-clip-b32", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, default=50, help="training steps, warmup included")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=None, help="default: the preset's batch")
    parser.add_argument("--precision", default="bf16", choices=("no", "fp16", "bf16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    config = preset(args.preset)
    batch = args.batch or config.train.batch_size
    on_gpu = args.device.startswith("cuda")
    accelerator = Accelerator(mixed_precision=args.precision, cpu=not on_gpu)
    with tempfile.TemporaryDirectory() as folder:
        model_cfg = dataclasses.replace(
            config.model, pretrained=None, tokenizer=_offline_tokenizer(config.model, folder)
        )
        torch.manual_seed(0)
        model = VideoColBERT(model_cfg)
    optimizer = build_optimizer(model, config.train)
    scheduler = warmup_cosine(optimizer, args.steps, config.train.warmup_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(model)
    device = accelerator.device
    frames, size = config.model.max_frames, plain.image_size
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.randint(0, 256, (batch, frames, 3, size, size), generator=g, device=device)
    video = video.to(torch.uint8)
    video_mask = torch.ones(batch, frames, dtype=torch.bool, device=device)
    ids, text_mask = (t.to(device) for t in plain.tokenize(_captions(batch, model_cfg.max_words)))

    def step() -> float:
        losses = model(ids, text_mask, video, video_mask)
        accelerator.backward(losses["loss"])
        accelerator.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return losses["loss"].item()

    warmup = min(args.warmup, args.steps - 1)
    try:
        for _ in range(warmup):
            step()
        if on_gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps - warmup):
            loss = step()
        if on_gpu:
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        print(f"out of memory at batch {batch} x {frames} frames: try --batch {batch // 2}")
        raise SystemExit(1) from None
    seconds = time.perf_counter() - start
    timed = args.steps - warmup
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"device: {name}  preset: {args.preset} ({model_cfg.backbone})  {args.precision}")
    print(
        f"batch {batch} x {frames} frames @ {size} px, {model_cfg.max_words} words "
        f"({plain.text_length} text positions); {timed} timed steps after {warmup}"
    )
    print(
        f"throughput: {batch * timed / seconds:.1f} clips/s "
        f"({seconds / timed * 1000:.0f} ms/step), last loss {loss:.3f}"
    )
    if on_gpu:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")


def _offline_tokenizer(model_cfg, folder: str) -> str | None:
    """The preset's tokenizer if it needs no network, else a word-level one built here."""
    text_cfg = (open_clip.get_model_config(model_cfg.backbone) or {}).get("text_cfg", {})
    name = model_cfg.tokenizer or text_cfg.get("hf_tokenizer_name")
    if name is None or name == SYNTHETIC_TOKENIZER:
        return model_cfg.tokenizer
    return str(build_word_tokenizer(synthetic_vocabulary(), folder))


def _captions(count: int, max_words: int) -> list[str]:
    """Captions long enough to fill ``max_words`` (the longest queries cost the most)."""
    words = [w for w in synthetic_vocabulary() if w.isalpha()]
    return [" ".join(words[(i + j) % len(words)] for j in range(max_words)) for i in range(count)]


if __name__ == "__main__":
    main()
