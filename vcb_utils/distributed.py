"""Collectives for contrastive training under data parallelism (any backend: gloo, nccl).

The losses need the global batch: every process gathers the text and video vectors of all
processes. ``gather_with_grad`` keeps the autograd graph: in the backward pass each
process receives the gradient that every process's loss sends to its own part, so with
DDP's gradient averaging, N processes x batch b compute the same update as 1 process x
batch N*b.
"""

from __future__ import annotations

import functools
import os
import socket

import torch
import torch.distributed as dist


@functools.cache
def _feature_group() -> dist.ProcessGroup:
    """A process group of its own for the feature gather.

    DDP all-reduces gradient buckets asynchronously during the backward pass; a collective
    issued from inside that backward on the same group could pair up with the wrong bucket
    on another rank. Created lazily, by every rank at the same (first) gather.
    """
    return dist.new_group(backend=dist.get_backend())


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums the incoming gradients and keeps the local slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous(), group=_feature_group())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        # all_reduce + slice: works on gloo, which lacks reduce_scatter
        dist.all_reduce(grad, group=_feature_group())
        return grad.chunk(ctx.world)[ctx.rank]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, in rank order.

    Float tensors keep their gradient path; bool/int tensors are gathered as data. Every
    process must pass the same shape (training uses ``drop_last``).
    """
    if not is_distributed():
        return tensor
    if tensor.is_floating_point():
        return _GatherWithGrad.apply(tensor)
    as_int = tensor.to(torch.int64)  # gloo has no bool all_gather
    parts = [torch.empty_like(as_int) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, as_int.contiguous(), group=_feature_group())
    return torch.cat(parts).to(tensor.dtype)


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``), 1 when unset."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_world_size(seen: int) -> None:
    """Fail loudly when the processes do not form the group that was launched.

    ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs, unless
    the script asks for the CPU, starts two processes that each train alone, silently.
    """
    launched = launched_world_size()
    if seen != launched:
        raise RuntimeError(
            f"{launched} processes were launched but this one sees a world of {seen}: they are "
            "not training together. On CPU pass --cpu (gloo backend); on GPUs check that "
            "num_processes does not exceed the visible devices."
        )


def set_cpu_threads() -> int:
    """Intra-op threads for this process: its share of the cores it may run on.

    torch starts one thread per core in every process; N processes on one machine (or another
    busy program) then oversubscribe the cores and slow down far more than the fair share.
    ``OMP_NUM_THREADS``, when set, wins. Returns the number of threads now in use.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (cores or 1) // per_machine))
    return torch.get_num_threads()


def free_port() -> int:
    """A free TCP port on the loopback interface (for a launcher's main process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
