"""Safetensors files checked before their weights are used: readable, of the shapes the model
expects, finite. Every failure is a ``ValueError`` naming the file and the tensors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

SHOWN = 5
"""How many tensors an error lists."""


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from the file's header alone."""
    try:
        with safe_open(str(path), "pt") as handle:
            names = handle.keys()
            return {name: tuple(handle.get_slice(name).get_shape()) for name in names}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is corrupt (not a readable safetensors file: {err})") from err


def check_shapes(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, torch.Size],
    built_by: str,
) -> None:
    """Every tensor of ``path`` (``shapes``: its header's) that ``expected`` names has the
    shape it gives there."""
    wrong = [
        f"{name} {list(shape)} instead of {list(expected[name])}"
        for name, shape in shapes.items()
        if name in expected and shape != tuple(expected[name])
    ]
    if wrong:
        raise ValueError(
            f"{path}: {len(wrong)} tensor(s) do not have the shapes that {built_by} builds: "
            f"{'; '.join(wrong[:SHOWN])}; the weights and the config do not belong together"
        )


def check_finite(path: Path, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """No tensor (read from ``path``) holds NaN or infinity."""
    bad = [name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} tensor(s) hold NaN or infinity ({', '.join(bad[:SHOWN])}); "
            "such weights give meaningless scores"
        )


def file_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of ``path``, one at a time (so checking a file holds one tensor in memory)."""
    tensor_shapes(path)  # a readable header first: a clear error otherwise
    with safe_open(str(path), "pt") as handle:
        names = handle.keys()
        for name in names:
            yield name, handle.get_tensor(name)
