"""AdamW parameter groups and the warmup + cosine schedule of the reference code.

CLIP weights train at ``lr * coef_lr`` (1e-7 for lr 1e-4), the new modules (temporal
transformer, expansion tokens, loss temperatures and biases) at ``lr``; norms, biases,
embeddings and the loss scalars get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vcb_utils.config import TrainConfig

NO_DECAY_KEYS = (
    "embedding",
    "frame_position",
    "expansion",
    "log_scale",
    "loss_f.bias",
    "loss_v.bias",
)


def is_backbone(name: str) -> bool:
    return name.startswith("clip.")


def decays(name: str, param: nn.Parameter) -> bool:
    return param.ndim >= 2 and not any(key in name for key in NO_DECAY_KEYS)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Four AdamW groups: (CLIP | new) x (decay | no decay), empty groups dropped."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((is_backbone(name), decays(name, param)), []).append(param)
    return [
        {
            "params": params,
            "lr": cfg.lr * (cfg.coef_lr if backbone else 1.0),
            "weight_decay": cfg.weight_decay if decay else 0.0,
            "name": f"{'clip' if backbone else 'new'}{'' if decay else '_no_decay'}",
        }
        for (backbone, decay), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.98), eps=1e-6)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
