"""Exact large-batch contrastive training in bounded memory: GradCache (Gao et al., 2021).

Both sigmoid losses need the whole B x B score matrix, so ``--grad_accum`` (which splits the
batch into independent micro-batches) loses negatives. GradCache keeps them, in three passes:

1. embed the batch ``chunk_size`` pairs at a time without building a graph (activations
   freed chunk by chunk), remembering each chunk's random state;
2. compute both losses on the whole batch from these embeddings, and backpropagate to the
   embeddings only (their gradients are small: B x vectors x D);
3. embed each chunk again, now with a graph, under the random state it had in pass 1 (same
   dropout masks, so the same embeddings), and backpropagate the cached embedding gradients
   through it.

The parameter gradients are those of the whole-batch step, at about the activation memory of
one chunk, for one extra forward pass. Pass 2 goes through ``accelerator.backward``, so an
fp16 loss scale reaches the cached gradients and, through them, every parameter once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from vcb_utils.model import EmbeddingT, TextEmbedding, VideoColBERT, VideoEmbedding

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""``(text_ids, text_mask, video, video_mask)``, as the training loader yields it."""


def cached_backward(
    accelerator: Accelerator, model: torch.nn.Module, batch: Batch, chunk_size: int
) -> dict[str, torch.Tensor]:
    """One batch's losses (detached), their gradients accumulated in ``model``'s parameters."""
    if accelerator.num_processes > 1:
        raise ValueError(
            "--chunk_size (GradCache) runs on one process; with several, the gather already "
            "gives every loss the global batch: use --chunk_size 0"
        )
    plain: VideoColBERT = accelerator.unwrap_model(model)
    text_ids, text_mask, video, video_mask = batch
    parts = [slice(i, i + chunk_size) for i in range(0, len(text_ids), chunk_size)]
    states, texts, clips = [], [], []
    with torch.no_grad(), accelerator.autocast():
        for part in parts:
            states.append(RngState.capture(video.device))
            texts.append(plain.encode_text(text_ids[part], text_mask[part]))
            clips.append(plain.encode_video(video[part], video_mask[part]))
    text, clip = _leaf(_cat(texts)), _leaf(_cat(clips))
    with accelerator.autocast():
        losses = plain.loss(plain.score(text, clip))
    accelerator.backward(losses["loss"])
    for part, state in zip(parts, states, strict=True):
        with state.replay(), accelerator.autocast():
            chunk_text = plain.encode_text(text_ids[part], text_mask[part])
            chunk_clip = plain.encode_video(video[part], video_mask[part])
        surrogate = _dot(chunk_text, text, part) + _dot(chunk_clip, clip, part)
        surrogate.backward()
    return {name: value.detach() for name, value in losses.items()}


@dataclass
class RngState:
    """The CPU random state and, on a GPU, that device's: what dropout draws from."""

    cpu: torch.Tensor
    device: torch.device
    cuda: torch.Tensor | None

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        on_gpu = device.type == "cuda"
        return cls(
            torch.get_rng_state(), device, torch.cuda.get_rng_state(device) if on_gpu else None
        )

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run under this state; the random state outside is left as it was."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def _float_fields(embedding: TextEmbedding | VideoEmbedding) -> Iterator[str]:
    for f in dataclasses.fields(embedding):
        value = getattr(embedding, f.name)
        if value is not None and value.is_floating_point():
            yield f.name


def _cat(parts: list[EmbeddingT]) -> EmbeddingT:
    """The chunks' embeddings as one batch."""
    first = parts[0]
    values = {}
    for f in dataclasses.fields(first):
        column = [getattr(p, f.name) for p in parts]
        values[f.name] = None if column[0] is None else torch.cat(column)
    return type(first)(**values)


def _leaf(embedding: EmbeddingT) -> EmbeddingT:
    """The embedding's float tensors as leaves that collect their gradients."""
    for name in _float_fields(embedding):
        setattr(embedding, name, getattr(embedding, name).detach().requires_grad_())
    return embedding


def _dot(chunk: EmbeddingT, cached: EmbeddingT, part: slice) -> torch.Tensor:
    """sum <chunk, d loss / d cached[part]>: its gradient is the chunk's share of the loss's."""
    terms = [
        (getattr(chunk, name).float() * getattr(cached, name).grad[part].float()).sum()
        for name in _float_fields(cached)
        if getattr(cached, name).grad is not None
    ]
    return torch.stack(terms).sum()
