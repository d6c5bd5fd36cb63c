"""The temporal transformer: contextualises a video's frame vectors (F) into V, with learnable
visual expansion tokens appended, optionally initialised from the first CLIP text layers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vcb_utils.backbone import text_tower


class TemporalTransformer(nn.Module):
    """Contextualises frame vectors; appends ``n_expansion`` learnable tokens.

    Input ``[B, T, D]`` frames and a ``[B, T]`` mask; output ``[B, T + E, D]`` (the input
    plus the transformer's output, a residual as in CLIP4Clip/DRL) and its mask.
    """

    def __init__(
        self,
        dim: int,
        max_frames: int,
        n_expansion: int,
        layers: int,
        heads: int,
        width: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        activation: nn.Module | None = None,
        norm_eps: float = 1e-5,
        position_std: float = 0.01,
    ) -> None:
        super().__init__()
        width = width or dim
        self.max_frames = max_frames
        self.frame_position = nn.Parameter(torch.randn(max_frames, dim) * position_std)
        self.expansion = nn.Parameter(torch.randn(n_expansion, dim) * dim**-0.5)
        self.proj_in = nn.Identity() if width == dim else nn.Linear(dim, width)
        self.proj_out = nn.Identity() if width == dim else nn.Linear(width, dim)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            dim_feedforward=int(width * mlp_ratio),
            dropout=dropout,
            activation=activation or nn.GELU(),
            layer_norm_eps=norm_eps,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(
        self, frames: torch.Tensor, frame_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, n_frames, _ = frames.shape
        if n_frames > self.max_frames:
            raise ValueError(f"{n_frames} frames given; the model was built for {self.max_frames}")
        expansion = self.expansion.to(frames.dtype).expand(batch, -1, -1)
        inputs = torch.cat([frames, expansion], dim=1)
        position = F.pad(self.frame_position[:n_frames], (0, 0, 0, expansion.shape[1]))
        mask = F.pad(frame_mask.bool(), (0, expansion.shape[1]), value=True)
        hidden = self.encoder(
            self.proj_in(inputs + position.to(frames.dtype)), src_key_padding_mask=~mask
        )
        return inputs + self.proj_out(hidden), mask

    def init_from_text(self, clip: nn.Module) -> bool:
        """Copy the first text blocks (and positions) in; False (nothing copied) where they
        cannot be mapped: other widths, fewer layers, layer scale or another block type.

        Works for CLIP's causal and SigLIP's bidirectional towers alike: both use open_clip's
        ``ResidualAttentionBlock``; the mask is not part of the weights.
        """
        tower = text_tower(clip)
        blocks = list(tower.transformer.resblocks)[: len(self.encoder.layers)]
        if len(blocks) < len(self.encoder.layers):
            return False
        if any(
            not isinstance(getattr(b, name, None), nn.Identity)
            for b in blocks
            for name in ("ls_1", "ls_2")
        ):
            return False  # layer scale has no counterpart in nn.TransformerEncoderLayer
        pairs = {
            "self_attn.in_proj_weight": "attn.in_proj_weight",
            "self_attn.in_proj_bias": "attn.in_proj_bias",
            "self_attn.out_proj.weight": "attn.out_proj.weight",
            "self_attn.out_proj.bias": "attn.out_proj.bias",
            "linear1.weight": "mlp.c_fc.weight",
            "linear1.bias": "mlp.c_fc.bias",
            "linear2.weight": "mlp.c_proj.weight",
            "linear2.bias": "mlp.c_proj.bias",
            "norm1.weight": "ln_1.weight",
            "norm1.bias": "ln_1.bias",
            "norm2.weight": "ln_2.weight",
            "norm2.bias": "ln_2.bias",
        }
        states = []
        for layer, block in zip(self.encoder.layers, blocks, strict=True):
            source = block.state_dict()
            target = layer.state_dict()
            if any(s not in source or source[s].shape != target[t].shape for t, s in pairs.items()):
                return False
            states.append({t: source[s] for t, s in pairs.items()})
        for layer, state in zip(self.encoder.layers, states, strict=True):
            layer.load_state_dict(state)
        positions = tower.positional_embedding[: self.max_frames]
        if positions.shape == self.frame_position.shape:
            self.frame_position.data.copy_(positions)
        return True

