"""The text tokenizers: the backbone's (CLIP BPE or Hugging Face) behind one interface, and the
word-level tokenizer of the synthetic captions, built offline.

A tokenizer knows its own start, end and pad ids, so it is the one that says which positions of
a row of ids are real tokens (``TextTokenizer.real_token_mask``): CLIP's BPE pads with 0 after
its end token, SigLIP's pads with its end token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch

from vcb_utils.backbone import register_model_configs

CLIP_START_ID, CLIP_END_ID, CLIP_PAD_ID = 49406, 49407, 0
"""Start-of-text, end-of-text and pad ids of open_clip's CLIP BPE tokenizer."""
SYNTHETIC_TOKENIZER = "vcb:synthetic"
"""``ModelConfig.tokenizer`` value naming the word-level tokenizer of the synthetic captions,
built offline on first use (``synthetic_tokenizer_folder``)."""


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
        register_model_configs()
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
        """True for the start, word and end tokens of each row of ``ids`` ``[B, L]``: every
        position up to the first end id; in a row without one, every id other than the pad id.

        With SigLIP's tokenizer the pad id is the end id, so only the first one counts as real.
        """
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        not_pad = ids != self.pad_id
        if self.end_id is None:
            return not_pad
        is_end = ids == self.end_id
        has_end = is_end.any(dim=1, keepdim=True)
        first_end = torch.where(has_end[:, 0], is_end.int().argmax(dim=1), ids.shape[1])
        return torch.where(has_end, positions <= first_end[:, None], not_pad)


def _first_id(hf: object, *names: str) -> int | None:
    return next((getattr(hf, n) for n in names if getattr(hf, n, None) is not None), None)



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

