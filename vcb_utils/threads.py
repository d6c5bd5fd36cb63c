"""How many threads torch may use for a piece of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on at most ``count`` intra-op threads (None: as set), then restore.

    Small work (one query) on a busy machine is faster on one thread than on every core.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(min(count, previous) if count else previous)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
