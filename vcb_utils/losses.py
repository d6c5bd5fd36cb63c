"""Contrastive losses on a B x B score matrix (rows texts, columns videos, matches on the diagonal).

Each loss owns its learnable temperature (and bias), so the frame branch and the video
branch of Video-ColBERT each get their own. Under data parallelism the matrix is built
from the global batch (see ``vcb_utils.train``); the losses do not care where rows came from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SigmoidLoss(nn.Module):
    """SigLIP pairwise sigmoid loss: ``-(1/B) sum_ij log sigmoid(z_ij (t S_ij + b))``.

    ``z_ij`` is +1 on the diagonal and -1 elsewhere; t is stored as log t.
    """

    def __init__(self, scale_init: float = 10.0, bias_init: float = -10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        _check_square(scores)
        logits = self.log_scale.exp() * scores.float() + self.bias
        labels = 2 * torch.eye(scores.shape[0], device=scores.device) - 1
        return -F.logsigmoid(labels * logits).sum() / scores.shape[0]


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP): cross-entropy over rows and over columns, averaged."""

    def __init__(self, scale_init: float = 10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        _check_square(scores)
        logits = self.log_scale.exp() * scores.float()
        targets = torch.arange(scores.shape[0], device=scores.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def make_loss(kind: str, scale_init: float, bias_init: float) -> nn.Module:
    """``sigmoid`` (the method's default) or ``infonce`` (the ablation)."""
    if kind == "sigmoid":
        return SigmoidLoss(scale_init, bias_init)
    if kind == "infonce":
        return InfoNCELoss(scale_init)
    raise ValueError(f"unknown loss {kind!r}; choose 'sigmoid' or 'infonce'")


def _check_square(scores: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"a loss needs a square B x B score matrix; got {tuple(scores.shape)}")
