"""The main job's wall time on an idle machine and beside one competing CPU-bound process.

    python benchmarks/bench_contention.py            # 1 epoch of the tiny main job per run
    python benchmarks/bench_contention.py --epochs 3

A process that shares the cores with another busy program should take about its fair share
longer (2x on a machine where the competitor takes one of two cores), not many times longer.
Three runs of ``vcb_utils/train.py`` (no final evaluation) are timed, in this order:

- idle: the command-line defaults (threads per process from the cores it may use, OpenMP
  threads that sleep while they wait);
- loaded: the same, beside ``python -c "while True: pass"``;
- loaded, spinning waits: ``OMP_WAIT_POLICY=ACTIVE``, OpenMP threads that spin while they
  wait (what oversubscribed cores suffer from), for comparison.

Prints each time and its ratio to the idle run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUSY_LOOP = "while True: pass"


def main_job(epochs: int, output_dir: str, env: dict[str, str]) -> float:
    """Seconds of one main-job run (synthetic data and frame cache already prepared)."""
    command = [
        sys.executable,
        str(ROOT / "vcb_utils" / "train.py"),
        "--epochs",
        str(epochs),
        "--do_eval",
        "0",
        "--output_dir",
        output_dir,
    ]
    start = time.perf_counter()
    subprocess.run(
        command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def timed(epochs: int, env: dict[str, str], competitor: bool) -> float:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if competitor else None
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            return main_job(epochs, output_dir, env)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    with tempfile.TemporaryDirectory() as warmup:  # synthetic clips and frame cache, once
        main_job(1, warmup, env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runs = {
        "idle": timed(args.epochs, env, competitor=False),
        "loaded": timed(args.epochs, env, competitor=True),
        "loaded, spinning waits": timed(args.epochs, {**env, "OMP_WAIT_POLICY": "ACTIVE"}, True),
    }
    print(f"main job, {args.epochs} epoch(s), {cores} cores, competitor: one busy loop")
    for name, seconds in runs.items():
        print(f"  {name:24s} {seconds:7.1f} s  {seconds / runs['idle']:5.2f}x idle")


if __name__ == "__main__":
    main()
