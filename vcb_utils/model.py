"""Video-ColBERT on an open_clip backbone.

Text is kept as one vector per token position. A video is kept as two sets of vectors:
F, one pooled (CLS) vector per frame, and V, the frames contextualised by a small
temporal transformer plus the outputs of learnable visual expansion tokens. The score
is ``MMS_F + MMS_V`` (MeanMaxSim, ``vcb_utils.scoring.maxsim``) and each branch has
its own contrastive loss.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from vcb_utils import safe_json
from vcb_utils.config import Config, ModelConfig
from vcb_utils.preprocessing import Preprocessing
from vcb_utils.losses import make_loss
from vcb_utils.safe_weights import check_finite, check_shapes, tensor_shapes
from vcb_utils.scoring import maxsim
from vcb_utils.storage import saved_folder, writing_folder
from vcb_utils.video import normalize

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

CLIP_START_ID, CLIP_END_ID, CLIP_PAD_ID = 49406, 49407, 0
"""Start-of-text, end-of-text and pad ids of open_clip's CLIP BPE tokenizer."""
SYNTHETIC_TOKENIZER = "vcb:synthetic"
"""``ModelConfig.tokenizer`` value naming the word-level tokenizer of the synthetic captions,
built offline on first use (``synthetic_tokenizer_folder``)."""


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


def create_backbone(cfg: ModelConfig, load_weights: bool = True) -> nn.Module:
    """The open_clip CLIP model named by ``cfg.backbone``.

    ``cfg.pretrained`` is an open_clip tag (downloads), a local checkpoint file, or None
    (random init). With ``load_weights=False`` nothing is loaded or downloaded: the
    weights are about to come from a Video-ColBERT checkpoint.
    """
    if cfg.backbone not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {cfg.backbone!r} (see open_clip.list_models())")
    pretrained = cfg.pretrained if load_weights else None
    is_file_path = pretrained and Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
    if is_file_path and not Path(pretrained).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {pretrained}")
    # The tag's image mean/std (SigLIP's 0.5 differ from CLIP's) also when its weights are not
    # loaded: a Video-ColBERT checkpoint trained from them must see frames normalised the same.
    tag = open_clip.get_pretrained_cfg(cfg.backbone, cfg.pretrained) if cfg.pretrained else {}
    preprocess = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
    with _quiet_random_init() if pretrained is None else contextlib.nullcontext():
        return open_clip.create_model(
            cfg.backbone,
            pretrained=pretrained,
            force_quick_gelu=cfg.pretrained == "openai",
            force_preprocess_cfg=preprocess,
        )


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Drop open_clip's "initialized randomly" warning when no weights were asked for (none,
    or they come from a Video-ColBERT checkpoint next)."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


# ---- tokenizers ----------------------------------------------------------------------------------
class TextTokenizer:
    """The backbone's tokenizer, CLIP BPE or Hugging Face, with one interface and the ids the
    masks need: ``pad_id``, ``end_id`` (end-of-text) and ``start_id`` (None if there is none).

    ``tokenizer(texts, context_length=None)`` gives ids ``[B, context_length]`` (default: the
    length it was built for), cut to fit with the end token kept, then padded.
    """

    def __init__(self, inner: Callable, context_length: int) -> None:
        self.inner = inner
        self.context_length = context_length
        hf = self.hf
        if hf is None:  # open_clip's SimpleTokenizer
            self.start_id = getattr(inner, "sot_token_id", CLIP_START_ID)
            self.end_id = getattr(inner, "eot_token_id", CLIP_END_ID)
            self.pad_id = CLIP_PAD_ID
            self.vocab_size = len(inner.encoder)
        else:
            self.start_id = _first_id(hf, "bos_token_id", "cls_token_id")
            self.end_id = _first_id(hf, "eos_token_id", "sep_token_id")
            self.pad_id = hf.pad_token_id
            self.vocab_size = len(hf)
            if self.pad_id is None:
                raise ValueError(f"{hf.name_or_path}: the tokenizer has no pad token")

    @classmethod
    def for_backbone(
        cls, backbone: str, context_length: int, name: str | None = None
    ) -> TextTokenizer:
        """open_clip's tokenizer for ``backbone``, or the Hugging Face tokenizer ``name``
        (a hub name or a local folder; ``vcb:synthetic`` is built offline) in its place."""
        text_cfg = (open_clip.get_model_config(backbone) or {}).get("text_cfg", {})
        name = name or text_cfg.get("hf_tokenizer_name")
        if name == SYNTHETIC_TOKENIZER:
            name = str(synthetic_tokenizer_folder())
        if not name:
            return cls(
                open_clip.get_tokenizer(backbone, context_length=context_length), context_length
            )
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data loader workers fork
        kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
        if text_cfg.get("tokenizer_mode"):
            kwargs["tokenizer_mode"] = text_cfg["tokenizer_mode"]
        try:
            inner = open_clip.tokenizer.HFTokenizer(name, context_length=context_length, **kwargs)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"tokenizer {name!r} could not be loaded ({err}); give a local Hugging Face "
                "tokenizer folder, or a hub name on a machine with network access"
            ) from err
        return cls(inner, context_length)

    @property
    def hf(self) -> Any:
        """The underlying Hugging Face (``transformers``) tokenizer, or None for CLIP's BPE."""
        return getattr(self.inner, "tokenizer", None)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.inner(texts, context_length=context_length or self.context_length)

    def _clean(self, text: str) -> str:
        return getattr(self.inner, "clean_fn", lambda t: t)(text)

    def encode(self, text: str) -> list[int]:
        """The ids of the words of ``text``, without start, end or pad."""
        if self.hf is None:
            return self.inner.encode(text)
        return self.hf(self._clean(text), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids) if self.hf is None else self.hf.decode(list(ids))

    def pieces(self, text: str) -> list[tuple[str, bool]]:
        """The tokens of ``text`` as ``(text, is a whole word)`` (not a piece of a longer one)."""
        ids = self.encode(text)
        texts = [self.decode([token]) for token in ids]
        if self.hf is None:  # CLIP BPE: a token that ends a word decodes with a trailing space
            starts = [True] + [piece.endswith(" ") for piece in texts[:-1]]
            return [(t, s and t.endswith(" ")) for t, s in zip(texts, starts, strict=True)]
        try:
            words = self.hf(self._clean(text), add_special_tokens=False).word_ids()
        except ValueError:  # a slow (Python) tokenizer keeps no word ids
            words = [None] * len(ids)
        counts = Counter(words)
        return [(t, w is None or counts[w] == 1) for t, w in zip(texts, words, strict=True)]

    def real_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True for the start, word and end tokens of each row of ``ids`` ``[B, L]``."""
        return real_token_mask(ids, self.end_id, self.pad_id)


def _first_id(hf: object, *names: str) -> int | None:
    return next((getattr(hf, n) for n in names if getattr(hf, n, None) is not None), None)


def real_token_mask(
    ids: torch.Tensor, end_id: int | None = CLIP_END_ID, pad_id: int | None = CLIP_PAD_ID
) -> torch.Tensor:
    """True for the start, word and end tokens of ``ids`` ``[B, L]``: every position up to
    the first ``end_id``; in a row without one, every id other than ``pad_id``.

    The defaults are CLIP BPE's; other tokenizers: ``model.tokenizer.real_token_mask``.
    With SigLIP's tokenizer the pad id is the end id, so only the first one counts as real.
    """
    positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
    not_pad = ids != pad_id if pad_id is not None else torch.ones_like(ids, dtype=torch.bool)
    if end_id is None:
        return not_pad
    is_end = ids == end_id
    first_end = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), ids.shape[1])
    return torch.where(is_end.any(dim=1, keepdim=True), positions <= first_end[:, None], not_pad)


def build_word_tokenizer(
    words: Iterable[str], folder: str | Path, pad_with_end: bool = True
) -> Path:
    """Write a word-level Hugging Face tokenizer folder (``tokenizer.json`` and
    ``tokenizer_config.json``) for a closed vocabulary, offline; returns ``folder``.

    Lower-cased text is split on spaces and punctuation. Ids: ``<pad>`` 0, ``</s>`` 1 (ends
    every text), ``<unk>`` 2 (any word not in ``words``), then the words in sorted order.
    Texts are padded with ``</s>`` as SigLIP's are (``pad_with_end``), else with ``<pad>``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(words) - set(specials)))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "</s>",
        "pad_token": "</s>" if pad_with_end else "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 512,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def synthetic_vocabulary() -> list[str]:
    """Every word of the synthetic captions (``vcb_utils.synthetic``), and ``,``."""
    from vcb_utils import synthetic

    names = [*synthetic.COLOURS, *synthetic.SHAPES, *synthetic.DIRECTIONS, *synthetic.POSITIONS]
    words = {word for name in [*names, *synthetic.KINDS] for word in name.split()}
    specs = synthetic.make_specs(synthetic.SyntheticConfig(n_train=300, n_test=0))["train"]
    for spec in specs:  # the words of the caption templates
        for variant in (0, 1):
            words |= set(re.findall(r"\w+|[^\w\s]+", synthetic.caption(spec, variant).lower()))
    return sorted(words)


def synthetic_tokenizer_folder(root: str | Path | None = None) -> Path:
    """The ``vcb:synthetic`` tokenizer folder, built on first use from the synthetic caption
    vocabulary (offline, milliseconds) under ``<data>/tokenizers/`` (next to ``data/synthetic``
    or ``$VCB_DATA_DIR``), then reused; its name changes whenever the vocabulary does."""
    from vcb_utils.synthetic import default_root

    words = synthetic_vocabulary()
    digest = hashlib.sha1(json.dumps(words).encode()).hexdigest()[:8]
    target = Path(root or default_root().parent / "tokenizers") / f"synthetic-words-{digest}"
    if (target / "tokenizer_config.json").is_file():
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    build_word_tokenizer(words, partial)
    try:
        os.rename(partial, target)
    except OSError:  # another process got there first
        if not (target / "tokenizer_config.json").is_file():
            raise
        for file in partial.iterdir():
            file.unlink()
        partial.rmdir()
    return target


def text_tower(clip: nn.Module) -> nn.Module:
    """The module holding the text transformer (the CLIP itself, or ``clip.text``)."""
    tower = getattr(clip, "text", clip)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, name) for name in needed):
        raise ValueError(
            f"{type(tower).__name__}: per-token text features need an open_clip text "
            "transformer (Hugging Face text towers are not supported)"
        )
    if getattr(tower, "cls_emb", None) is not None:
        raise NotImplementedError(
            f"{type(tower).__name__} appends a class token (CoCa): per-token features of such "
            "towers are not supported"
        )
    return tower


def is_causal(clip: nn.Module) -> bool:
    """Whether the text tower's attention is causal (CLIP) or bidirectional (SigLIP)."""
    return text_tower(clip).attn_mask is not None


def text_token_features(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Projected text features at every token position ``[B, L, D]`` (not normalised).

    The same computation as open_clip's ``encode_text`` without the pooling (token and
    position embeddings, the transformer with the tower's attention mask: causal for CLIP,
    none for SigLIP, plus the pad mask of towers built with one; final norm; projection),
    so the row that ``encode_text`` pools (``pooled_positions``) equals ``encode_text``.
    """
    tower = text_tower(clip)
    length = ids.shape[1]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(ids).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    attn_mask = tower.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]
    if getattr(tower, "use_pad_mask", False):  # open_clip >= 3: keys at pad ids are masked
        keys = (ids == tower.pad_id)[:, None, :].expand(-1, length, -1)
        pad_mask = torch.zeros(keys.shape, dtype=x.dtype, device=x.device)
        pad_mask = pad_mask.masked_fill(keys, float("-inf"))
        pad_mask = pad_mask.repeat_interleave(tower.heads, 0)
        attn_mask = pad_mask if attn_mask is None else attn_mask.to(x.dtype)[None] + pad_mask
    x = tower.transformer(x, attn_mask=attn_mask)
    x = tower.ln_final(x)
    projection = tower.text_projection
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x if projection is None else x @ projection


def pooled_positions(clip: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The position whose output open_clip's ``encode_text`` returns, per row ``[B]``.

    Follows the tower's ``pool_type``: ``argmax`` the largest id (CLIP's end-of-text),
    ``eos`` the first end-of-text id, ``first`` position 0, ``last`` the last position.
    """
    tower = text_tower(clip)
    pool = getattr(tower, "pool_type", None) or getattr(clip, "text_pool_type", "argmax")
    rows, length = ids.shape
    if pool == "argmax":
        return ids.argmax(dim=1)
    if pool == "eos":
        eos = getattr(tower, "eos_id", None) or getattr(clip, "text_eos_id", None)
        return (ids == eos).int().argmax(dim=1)
    if pool in ("first", "last"):
        position = 0 if pool == "first" else length - 1
        return torch.full((rows,), position, dtype=torch.long, device=ids.device)
    raise ValueError(f"text pool_type {pool!r} has no single pooled position")


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
    ) -> None:
        super().__init__()
        width = width or dim
        self.max_frames = max_frames
        self.frame_position = nn.Parameter(torch.randn(max_frames, dim) * 0.01)
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

    def real_token_mask(self, ids: torch.Tensor) -> torch.Tensor:
        """True for the start, word and end tokens of ``ids`` ``[B, L]`` (this tokenizer's ids)."""
        return self.tokenizer.real_token_mask(ids)

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


def save_checkpoint(
    model: VideoColBERT,
    path: str | Path,
    config: Config | None = None,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the full run config) as the folder ``path``.

    ``notes``: more JSON files to keep beside them (``{"val_metrics.json": {...}}``). The folder
    is replaced whole (``storage.writing_folder``; other files in it go): a save that is killed
    leaves the previous checkpoint loadable.
    """
    path = Path(path)
    config = config or Config(model=model.cfg)
    raw = config.to_dict()
    raw["model"] = asdict(model.cfg)
    with writing_folder(path) as folder:
        save_model(model, str(folder / WEIGHTS_FILE))
        for name, data in {CONFIG_FILE: raw, **(notes or {})}.items():
            (folder / name).write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[VideoColBERT, Config]:
    """Rebuild the model saved by ``save_checkpoint`` (no download, no unpickling).

    A checkpoint whose save was killed mid-swap is read from ``<path>.old``, with a warning.
    Its config must be plausible and its weights of the shapes that config builds, and finite.
    """
    path = saved_folder(Path(path))
    resave = "save the checkpoint again (save_checkpoint) or use another one"
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a Video-ColBERT checkpoint ({name} is missing)")
    config_file = path / CONFIG_FILE
    try:
        raw = safe_json.parse(config_file.read_bytes())
        if not isinstance(raw, dict):
            raise safe_json.InvalidJSON("not a JSON object")
    except safe_json.InvalidJSON as err:
        line = f"line {err.line}: " if err.line else ""
        raise ValueError(f"{config_file} is corrupt ({line}{err.reason}); {resave}") from None
    try:
        config = Config.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{config_file}: {err}; {resave}") from err
    model = VideoColBERT(config.model, load_backbone_weights=False)
    weights = path / WEIGHTS_FILE
    try:
        found = tensor_shapes(weights)
    except ValueError as err:
        raise ValueError(f"{err}; {resave}") from err
    expected = {name: value.shape for name, value in model.state_dict().items()}
    check_shapes(weights, found, expected, f"its {CONFIG_FILE}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{weights} is corrupt ({err}); {resave}") from err
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    check_finite(weights, model.state_dict().items())
    return model.to(device).eval(), config
