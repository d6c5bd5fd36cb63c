"""Helpers for the tests that launch training processes."""

import os

from vcb_utils.distributed import free_port


def launch_env() -> dict[str, str]:
    """The environment for launched processes: gloo on loopback, one thread per process."""
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def launch_two(script: str, *args: str) -> list[str]:
    """`accelerate launch` of ``script`` as two CPU processes on a free loopback port."""
    port = str(free_port())
    return [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        port,
        script,
        *args,
    ]
