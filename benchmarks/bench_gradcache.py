"""Memory and speed of one training step: plain, GradCache (``--chunk_size``), checkpointing.

The tiny model on the CPU, one global batch of random clips (forward, both losses, backward;
no optimiser). Each way runs in a fresh process, so that its peak resident memory is its own:
the figure is the peak during the steps minus the resident memory before the first one
(activations, gradients and temporaries). Times are medians over the timed steps, as wall
seconds and as CPU seconds of the process (all its threads): on a busy machine the CPU seconds
are the steadier measure of the work. Ratios are against the plain step of the same run.

    python benchmarks/bench_gradcache.py                  # batch 64, chunks of 16
    python benchmarks/bench_gradcache.py --batch 128 --chunk 32 --steps 5
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

WAYS = {
    "plain": {"chunk_size": 0, "grad_checkpointing": False},
    "gradcache": {"chunk_size": None, "grad_checkpointing": False},  # None: --chunk
    "checkpointing": {"chunk_size": 0, "grad_checkpointing": True},
    "gradcache + checkpointing": {"chunk_size": None, "grad_checkpointing": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="pairs per step (global batch)")
    parser.add_argument("--chunk", type=int, default=16, help="GradCache chunk size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one untimed")
    parser.add_argument("--frames", type=int, default=12, help="frames per clip")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    results = {}
    for name, way in WAYS.items():
        chunk = args.chunk if way["chunk_size"] is None else 0
        job = (args.batch, args.frames, chunk, way["grad_checkpointing"], args.steps)
        with context.Pool(1) as pool:
            results[name] = pool.apply(measure, job)
    plain = results["plain"]
    print(f"tiny model, CPU, batch {args.batch} x {args.frames} frames, chunks of {args.chunk}")
    print(f"{'way':<26} {'peak extra MiB':>17} {'wall s/step':>14} {'CPU s/step':>14}")
    for name, values in results.items():
        cells = [
            f"{v:.0f} ({v / p:.2f}x)" if i == 0 else f"{v:.2f} ({v / p:.2f}x)"
            for i, (v, p) in enumerate(zip(values, plain, strict=True))
        ]
        print(f"{name:<26} {cells[0]:>17} {cells[1]:>14} {cells[2]:>14}")


def measure(
    batch: int, frames: int, chunk_size: int, checkpointing: bool, steps: int
) -> tuple[float, float, float]:
    """Peak resident memory above the start (MiB), median wall and CPU seconds per step."""
    import torch
    from accelerate import Accelerator

    from vcb_utils.config import preset
    from vcb_utils.gradcache import cached_backward
    from vcb_utils.model import VideoColBERT, synthetic_vocabulary

    torch.manual_seed(0)
    config = preset("tiny").updated(model={"max_frames": frames}).model
    model = VideoColBERT(config).train()
    model.clip.set_grad_checkpointing(checkpointing)
    words = [w for w in synthetic_vocabulary() if w.isalpha()]
    captions = [" ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(batch)]
    ids, text_mask = model.tokenize(captions)
    video = torch.randint(0, 256, (batch, frames, 3, 64, 64), dtype=torch.uint8)
    data = (ids, text_mask, video, torch.ones(batch, frames, dtype=torch.bool))
    accelerator = Accelerator(cpu=True)

    def step() -> None:
        if chunk_size:
            cached_backward(accelerator, model, data, chunk_size)
        else:
            model(*data)["loss"].backward()
        model.zero_grad(set_to_none=True)

    start_kib = _resident_kib()
    step()
    wall, cpu = [], []
    for _ in range(steps):
        began, began_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak_kib - start_kib) / 1024, statistics.median(wall), statistics.median(cpu)


def _resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() // 1024


if __name__ == "__main__":
    main()
