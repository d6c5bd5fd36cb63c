"""What the data pipeline needs from a model, as one value: ``model.preprocessing``.

It sits below both the model and the data pipeline: the model builds one, the datasets and the
index read videos and captions with it, and neither has to import the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from vcb_utils.video import FrameSampling

if TYPE_CHECKING:
    from vcb_utils.datasets import ClipSource

Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]
"""``tokenize(texts) -> (ids LongTensor [B, L], mask BoolTensor [B, L])``."""


@dataclass(frozen=True)
class Preprocessing:
    """A model's tokenizer, frame count, input size, and the mean and std of its frames."""

    tokenize: Tokenize
    max_frames: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def sampling(self, framerate: float, decode_size: int | None = None) -> FrameSampling:
        """Frame sampling at ``framerate`` for this model's frame count and input size."""
        return FrameSampling(self.max_frames, self.image_size, framerate, decode_size)

    def source(self, framerate: float, **options: Any) -> ClipSource:
        """A ``datasets.ClipSource`` for this model (``options``: see ``ClipSource``)."""
        from vcb_utils.datasets import ClipSource  # the data pipeline sits above this module

        return ClipSource(self.sampling(framerate), self.mean, self.std, **options)
