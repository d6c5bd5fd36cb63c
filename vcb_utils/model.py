"""Video-ColBERT on an open_clip backbone.

Text is kept as one vector per token position. A video is kept as two sets of vectors:
F, one pooled (CLS) vector per frame, and V, the frames contextualised by a small
temporal transformer plus the outputs of learnable visual expansion tokens. The score
is ``MMS_F + MMS_V`` (MeanMaxSim, ``vcb_utils.scoring.maxsim``) and each branch has
its own contrastive loss.

The parts have rooms of their own, and this module re-exports the names that used to live
here: the backbone (``backbone``), the tokenizers (``tokenizer``), the temporal transformer
(``temporal``) and checkpoint save/load (``checkpoints``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TypeVar

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from vcb_utils.backbone import (
    create_backbone,
    is_causal,
    pooled_positions,
    text_token_features,
    text_tower,
)
from vcb_utils.checkpoints import load_checkpoint, save_checkpoint
from vcb_utils.config import ModelConfig
from vcb_utils.losses import make_loss
from vcb_utils.preprocessing import Preprocessing
from vcb_utils.scoring import maxsim
from vcb_utils.temporal import TemporalTransformer
from vcb_utils.tokenizer import (
    CLIP_END_ID,
    SYNTHETIC_TOKENIZER,
    TextTokenizer,
    build_word_tokenizer,
    synthetic_tokenizer_folder,
    synthetic_vocabulary,
)
from vcb_utils.video import normalize

log = logging.getLogger(__name__)

__all__ = [  # this module's names, and those that moved out of it (old imports keep working)
    "CLIP_END_ID",
    "SYNTHETIC_TOKENIZER",
    "Scores",
    "TemporalTransformer",
    "TextEmbedding",
    "TextTokenizer",
    "VideoColBERT",
    "VideoEmbedding",
    "build_word_tokenizer",
    "create_backbone",
    "load_checkpoint",
    "map_tensors",
    "mean_frame",
    "pooled_positions",
    "save_checkpoint",
    "synthetic_tokenizer_folder",
    "synthetic_vocabulary",
    "text_token_features",
]


@dataclass
class TextEmbedding:
    """Per-token query vectors and the mask of those that take part in the score."""

    vectors: torch.Tensor  # [B, L, D], L2-normalised
    mask: torch.Tensor  # [B, L] bool
    ids: torch.Tensor  # [B, L] token ids (L = model.text_length; for display)


@dataclass
class VideoEmbedding:
    """F (one vector per frame) and V (contextualised frames + expansion tokens).

    ``frames``/``frame_mask``/``video``/``video_mask`` are the old names of the four fields.
    """

    F: torch.Tensor  # [B, T, D], L2-normalised
    F_mask: torch.Tensor  # [B, T] bool
    V: torch.Tensor | None  # [B, T + E, D], None when the mode does not use V
    V_mask: torch.Tensor | None  # [B, T + E] bool

    frames = property(lambda self: self.F)
    frame_mask = property(lambda self: self.F_mask)
    video = property(lambda self: self.V)
    video_mask = property(lambda self: self.V_mask)


EmbeddingT = TypeVar("EmbeddingT", TextEmbedding, VideoEmbedding)


@dataclass
class Scores:
    """Score matrices [texts, videos]: MMS_F, MMS_V (None when unused) and the total."""

    F: torch.Tensor | None
    V: torch.Tensor | None
    total: torch.Tensor


class VideoColBERT(nn.Module):
    """Text and video encoders on an open_clip model, MeanMaxSim scores, dual loss.

    Any open_clip model with an open_clip text transformer: CLIP (causal text tower, BPE
    tokenizer) or SigLIP/SigLIP2 (bidirectional text tower, Hugging Face tokenizer, timm
    image tower). ``cfg.tokenizer`` replaces the backbone's tokenizer.
    """

    def __init__(self, cfg: ModelConfig, load_backbone_weights: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = create_backbone(cfg, load_weights=load_backbone_weights)
        tower = text_tower(self.clip)
        context = tower.positional_embedding.shape[0]
        if cfg.max_words > context:
            raise ValueError(
                f"max_words={cfg.max_words} exceeds {cfg.backbone}'s context {context}"
            )
        # A causal tower's outputs at the first max_words positions do not depend on what
        # follows, so it runs on max_words positions; a bidirectional one always runs on its
        # whole context, as in pretraining (docs/method.md, text side).
        self.text_length = cfg.max_words if is_causal(self.clip) else context
        self.tokenizer = TextTokenizer.for_backbone(cfg.backbone, cfg.max_words, cfg.tokenizer)
        self._freeze(cfg.frozen)

        dim = self.embed_dim
        self.temporal: TemporalTransformer | None = None
        if self.uses_video_branch:
            block = tower.transformer.resblocks[0]
            mlp, norm = getattr(block, "mlp", None), getattr(block, "ln_1", None)
            self.temporal = TemporalTransformer(
                dim,
                cfg.max_frames,
                cfg.n_visual_expansion,
                cfg.temporal_layers,
                cfg.temporal_heads,
                width=cfg.temporal_width,
                mlp_ratio=cfg.temporal_mlp_ratio,
                dropout=cfg.temporal_dropout,
                activation=copy.deepcopy(getattr(mlp, "gelu", None)),  # QuickGELU, tanh GELU
                norm_eps=getattr(norm, "eps", 1e-5),
                position_std=cfg.frame_position_std,
            )
            if cfg.init_temporal_from_text and not self.temporal.init_from_text(self.clip):
                log.debug("temporal transformer: random init (the text layers do not fit)")
        scale, bias = cfg.logit_scale_init, cfg.logit_bias_init
        self.loss_f = make_loss(cfg.loss, scale, bias) if self.uses_frame_branch else None
        self.loss_v = make_loss(cfg.loss, scale, bias) if self.uses_video_branch else None

    # ---- properties the data pipeline and the notebooks read -------------------------------
    @property
    def embed_dim(self) -> int:
        """Size of the joint text-video space."""
        config = open_clip.get_model_config(self.cfg.backbone) or {}
        return int(config.get("embed_dim") or self.clip.visual.output_dim)

    @property
    def image_size(self) -> int:
        size = self._preprocess_cfg["size"]
        return int(size if isinstance(size, int) else size[0])

    @property
    def image_mean(self) -> tuple[float, ...]:
        return tuple(self._preprocess_cfg["mean"])

    @property
    def image_std(self) -> tuple[float, ...]:
        return tuple(self._preprocess_cfg["std"])

    @property
    def _preprocess_cfg(self) -> dict:
        """open_clip's preprocessing of the image tower (CLIP ``VisionTransformer`` and timm
        ``TimmModel`` alike); CLIP's mean/std where an open_clip version sets none."""
        visual = self.clip.visual
        size = getattr(visual, "image_size", 224)
        default = {
            "size": size,
            "mean": open_clip.OPENAI_DATASET_MEAN,
            "std": open_clip.OPENAI_DATASET_STD,
        }
        return {**default, **(getattr(visual, "preprocess_cfg", None) or {})}

    @property
    def preprocessing(self) -> Preprocessing:
        """What the data pipeline needs: tokenizer, frame count, input size, mean and std."""
        return Preprocessing(
            self.tokenize, self.cfg.max_frames, self.image_size, self.image_mean, self.image_std
        )

    @property
    def uses_frame_branch(self) -> bool:
        return self.cfg.mode in ("both", "F", "meanP")

    @property
    def uses_video_branch(self) -> bool:
        return self.cfg.mode in ("both", "V")

    def _freeze(self, prefixes: Sequence[str]) -> None:
        """Freeze the configured parts, and the backbone's own logit scale/bias, which are
        unused (each loss has its own): DDP must not wait for gradients that never come.

        A prefix matches an open_clip parameter name, with or without SigLIP's ``text.``;
        ``patch_embedding`` names the patch embedding of either image tower (``visual.conv1``
        or timm's ``visual.trunk.patch_embed``). A prefix that matches nothing is an error.
        """
        names = [name for name, _ in self.clip.named_parameters()]
        resolved = {}
        for prefix in prefixes:
            options = PARAMETER_ALIASES.get(prefix, (prefix,))
            resolved[prefix] = [p for p in options if any(_under(n, p) for n in names)]
            if not resolved[prefix]:
                raise ValueError(
                    f"frozen: {prefix!r} matches no parameter of {self.cfg.backbone} "
                    f"(its parameters start with {sorted({n.split('.')[0] for n in names})}; "
                    "'patch_embedding' names the patch embedding of any image tower)"
                )
        chosen = [p for found in resolved.values() for p in found]
        for name, param in self.clip.named_parameters():
            if (
                _under(name, "logit_scale")
                or _under(name, "logit_bias")
                or any(_under(name, p) for p in chosen)
            ):
                param.requires_grad_(False)

    # ---- encoders ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, text_length]`` and the mask of real tokens (start, words, end).

        The text is cut to ``max_words`` tokens (end token kept); a bidirectional tower's
        ids are then padded to its whole context (``text_length``).
        """
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of strings, not one string")
        ids = self._fit_ids(self.tokenizer(list(texts)))
        return ids, self.tokenizer.real_token_mask(ids)

    def _fit_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Pad ids to ``text_length`` where the tower needs its whole context; check that the
        tower has an embedding for every id (another tokenizer may have more tokens)."""
        vocab = text_tower(self.clip).token_embedding.num_embeddings
        if ids.numel() and int(ids.max()) >= vocab:
            raise ValueError(
                f"token id {int(ids.max())} has no embedding in {self.cfg.backbone} ({vocab} "
                f"tokens): the tokenizer ({self.cfg.tokenizer or 'the default'}) does not fit it"
            )
        missing = self.text_length - ids.shape[1]
        if missing > 0 and not is_causal(self.clip):
            ids = F.pad(ids, (0, missing), value=self.tokenizer.pad_id)
        return ids

    def encode_text(
        self, texts: Sequence[str] | torch.Tensor, mask: torch.Tensor | None = None
    ) -> TextEmbedding:
        """Query vectors for a list of strings or token ids ``[B, L]``."""
        if isinstance(texts, torch.Tensor):
            ids = self._fit_ids(texts)
            if mask is None:
                mask = self.tokenizer.real_token_mask(ids)
            mask = F.pad(mask.bool(), (0, ids.shape[1] - mask.shape[1]), value=False)
        else:
            ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        vectors = F.normalize(text_token_features(self.clip, ids), dim=-1)
        if self.cfg.mode == "meanP":  # the row open_clip pools: encode_text, normalised
            pooled = vectors[torch.arange(len(ids), device=ids.device), self.pooled_positions(ids)]
            return TextEmbedding(pooled[:, None], torch.ones_like(mask[:, :1]), ids)
        if self.cfg.query_expansion:
            mask = torch.ones_like(mask)
        return TextEmbedding(vectors, mask, ids)

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The position open_clip pools for each row of ``ids`` (see ``pooled_positions``)."""
        return pooled_positions(self.clip, ids)

    def encode_video(
        self, video: torch.Tensor, video_mask: torch.Tensor | None = None
    ) -> VideoEmbedding:
        """F and V for preprocessed frames ``[B, T, 3, H, W]`` (padded frames masked out).

        Frames come normalised (float) or as resized uint8, normalised here on the model's
        device (the data loaders ship uint8: 4x less data between processes).
        """
        batch, n_frames = video.shape[:2]
        if video_mask is None:
            video_mask = torch.ones(batch, n_frames, dtype=torch.bool, device=video.device)
        video_mask = video_mask.bool().to(video.device)
        if not bool(video_mask.any(dim=1).all()):
            raise ValueError(
                "every video needs at least one real frame (a row of video_mask is empty)"
            )
        real = video[video_mask]
        if real.dtype == torch.uint8:
            real = normalize(real, self.image_mean, self.image_std)
        real = real.to(next(self.clip.visual.parameters()).dtype)  # a model cast to bf16/fp16
        pooled = self.clip.encode_image(real, normalize=True)
        frames = pooled.new_zeros(batch, n_frames, pooled.shape[-1])
        frames[video_mask] = pooled
        if self.temporal is None:
            return VideoEmbedding(frames, video_mask, None, None)
        contextual, mask = self.temporal(frames, video_mask)
        return VideoEmbedding(frames, video_mask, F.normalize(contextual, dim=-1), mask)

    # ---- score and loss ----------------------------------------------------------------------
    def score(
        self, text: TextEmbedding, video: VideoEmbedding, chunk_size: int | None = None
    ) -> Scores:
        """MMS_F, MMS_V and the retrieval score for every text against every video."""
        if self.cfg.mode == "meanP":
            total = text.vectors[:, 0].float() @ mean_frame(video).float().T
            return Scores(None, None, total)
        mms_f = mms_v = None
        if self.uses_frame_branch:
            mms_f = maxsim(text.vectors, video.F, text.mask, video.F_mask, chunk_size)
        if self.uses_video_branch:
            mms_v = maxsim(text.vectors, video.V, text.mask, video.V_mask, chunk_size)
        if mms_f is None:
            return Scores(None, mms_v, mms_v)
        return Scores(mms_f, mms_v, mms_f if mms_v is None else mms_f + mms_v)

    def loss(self, scores: Scores) -> dict[str, torch.Tensor]:
        """``lambda_F * L(MMS_F) + lambda_V * L(MMS_V)`` (one branch in the ablation modes)."""
        parts = {}
        if self.cfg.mode == "meanP":
            parts["loss_f"] = self.loss_f(scores.total)
            return {"loss": parts["loss_f"], **parts}
        total = 0.0
        if scores.F is not None:
            parts["loss_f"] = self.loss_f(scores.F)
            total = total + self.cfg.lambda_f * parts["loss_f"]
        if scores.V is not None:
            parts["loss_v"] = self.loss_v(scores.V)
            total = total + self.cfg.lambda_v * parts["loss_v"]
        return {"loss": total, **parts}

    def forward(
        self,
        text_ids: torch.Tensor,
        text_mask: torch.Tensor,
        video: torch.Tensor,
        video_mask: torch.Tensor,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Training step: encode a batch, optionally gather it globally, return the losses.

        ``gather`` concatenates a tensor across processes (keeping the gradient of the
        local part), so the B x B matrices cover the global batch.
        """
        text = self.encode_text(text_ids, text_mask)
        clips = self.encode_video(video, video_mask)
        if gather is not None:
            text, clips = map_tensors(text, gather), map_tensors(clips, gather)
        return self.loss(self.score(text, clips))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


PARAMETER_ALIASES: dict[str, tuple[str, ...]] = {
    "patch_embedding": ("visual.conv1", "visual.trunk.patch_embed"),
}
"""``ModelConfig.frozen`` names that stand for the same part of different backbones."""


def _under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or inside it (SigLIP's ``text.`` optional)."""
    return any(
        n == prefix or n.startswith(prefix + ".") for n in (name, name.removeprefix("text."))
    )


def map_tensors(embedding: EmbeddingT, fn: Callable[[torch.Tensor], torch.Tensor]) -> EmbeddingT:
    """The same kind of embedding with ``fn`` applied to every tensor field (None stays None)."""
    values = {f.name: getattr(embedding, f.name) for f in fields(embedding)}
    return type(embedding)(**{k: None if v is None else fn(v) for k, v in values.items()})


def mean_frame(video: VideoEmbedding) -> torch.Tensor:
    """The normalised mean of each video's valid F vectors ``[B, D]`` (the meanP baseline)."""
    weights = video.F_mask.unsqueeze(-1).to(video.F.dtype)
    return F.normalize((video.F * weights).sum(dim=1), dim=-1)

