"""What an index refuses before it writes: folders it must not write in, and vectors it cannot
store (wrong shape, dtype or values).

A save deletes only files it wrote itself; these checks keep it from writing where the user's
own files are: a folder that holds something else than an index, or the videos' folder.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vcb_utils.model import VideoEmbedding

UNIT_TOLERANCE = 0.05
"""A stored vector whose norm is further than this from 1 is reported as unnormalised: MaxSim
scores (and the candidate index) assume unit vectors."""


def check_empty_or_index(directory: Path, owned: Iterable[str]) -> None:
    """ValueError if ``directory`` holds entries other than ``owned`` (names an index writes)
    while it is not an index: a save there would mix the index with the user's files."""
    if not directory.is_dir():
        if directory.exists():
            raise NotADirectoryError(f"{directory} is a file, not an index folder")
        return
    foreign = sorted(e.name for e in directory.iterdir() if e.name not in set(owned))
    if foreign:
        raise ValueError(
            f"{directory} is not empty ({', '.join(foreign[:5])}{', ...' if foreign[5:] else ''}) "
            "and is not a video index: save the index to a new or empty folder"
        )


def video_folders(paths: Iterable[str]) -> set[str]:
    """The folders named in the video ``paths`` (a bare file name or a file at the root of the
    file system names none)."""
    folders = {os.path.dirname(p) for p in paths}
    return {f for f in folders if f and Path(f).parent != Path(f)}


def check_apart_from_videos(directory: Path, folders: Iterable[str | Path]) -> None:
    """ValueError if the index folder is one of the video ``folders``, inside one or contains
    one: a save there would write among the videos."""
    index = _real(directory)
    for folder in sorted(map(str, folders)):
        videos = _real(Path(folder))
        if index == videos or index in videos.parents or videos in index.parents:
            relation = (
                "is" if index == videos else "is inside" if videos in index.parents else "contains"
            )
            raise ValueError(
                f"the index folder {directory} {relation} the video folder {folder}: keep the "
                "index in a folder of its own, beside the videos"
            )


def check_embedding(embedding: VideoEmbedding, widths: tuple[int, int], dim: int | None) -> None:
    """ValueError naming the first problem of ``embedding`` for an index whose rows hold at
    most ``widths`` (F, V) vectors of size ``dim`` (None: any, for a first part)."""
    count = embedding.F.shape[0]
    pairs = [("F", embedding.F, embedding.F_mask, widths[0])]
    if embedding.V is not None:
        pairs.append(("V", embedding.V, embedding.V_mask, widths[1]))
    for name, vectors, mask, width in pairs:
        if vectors.dim() != 3 or not vectors.is_floating_point():
            raise ValueError(
                f"{name} must be a float tensor [videos, vectors, dim], not {vectors.dtype} "
                f"{tuple(vectors.shape)}"
            )
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(vectors.shape[:2]):
            raise ValueError(
                f"{name}_mask must be bool {tuple(vectors.shape[:2])}, not {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        if vectors.shape[0] != count:
            raise ValueError(f"{count} videos in F but {vectors.shape[0]} in {name}")
        if vectors.shape[1] > width:
            raise ValueError(
                f"{vectors.shape[1]} {name} vectors per video; the index's model config allows "
                f"{width}"
            )
        if dim is not None and vectors.shape[2] != dim:
            raise ValueError(f"{name} vectors of size {vectors.shape[2]}; the index holds {dim}")


def check_values(vectors: torch.Tensor, mask: torch.Tensor, block: int = 4096) -> None:
    """ValueError if a stored (fp16) vector is not finite; a warning if valid vectors are not
    unit vectors. Checked ``block`` rows at a time (bounded memory)."""
    low, high = math.inf, 0.0
    for start in range(0, len(vectors), block):
        rows = vectors[start : start + block]
        finite = torch.isfinite(rows).all(dim=-1)
        if not bool(finite.all()):
            video, position = (int(i) for i in torch.nonzero(~finite)[0])
            raise ValueError(
                f"vector {position} of video {start + video} (in this addition) is not finite "
                "in fp16 (NaN, inf or beyond 65504): it would rank first for every query"
            )
        norms = rows[mask[start : start + block]].float().norm(dim=-1)
        if len(norms):
            low, high = min(low, float(norms.min())), max(high, float(norms.max()))
    if high and max(1 - low, high - 1) > UNIT_TOLERANCE:
        warnings.warn(
            f"the vectors are not unit vectors (norms from {low:.3g} to {high:.3g}): scores "
            "assume normalised vectors (torch.nn.functional.normalize)",
            stacklevel=3,  # the caller of add_embeddings
        )


def _real(path: Path) -> Path:
    """``path`` absolute, with symlinks resolved where it exists."""
    return Path(os.path.realpath(path))
