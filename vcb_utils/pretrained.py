"""Are a backbone's pretrained weights (and Hugging Face tokenizer) here, or can they come?

open_clip downloads a weight tag (``openai``, ``webli``) from the Hugging Face hub; offline,
the hub client retries for up to a minute before open_clip gives up with a bare
``RuntimeError``. ``check_pretrained`` decides in a few seconds, before anything is loaded: a
local file must exist; hub files are fine when they are in the local cache or the hub accepts
a connection within ``HUB_PROBE_TIMEOUT_S``; otherwise one error names the missing files and
how to bring them (``--pretrained TAG=/path/to/weights``, ``--tokenizer FOLDER``, or a copied
cache).

``--pretrained`` is read by ``parse_weights``: a tag, a file, or ``TAG=FILE``, a file that holds
a tag's weights. A tag sets more than the weights (QuickGELU for ``openai``, SigLIP's frame
mean, std and resize for ``webli``); named with its file, those settings apply exactly as when
the tag downloads. A bare file gets open_clip's defaults, and ``warn_untagged`` says once what
that leaves out.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import open_clip
from huggingface_hub import constants, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.transform import PreprocessCfg

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
"""How long the hub (or the proxy) gets to accept a connection, name lookup included."""
TOKENIZER_FILE = "tokenizer_config.json"
"""The file a Hugging Face tokenizer reads first; cached, the tokenizer loads offline."""
FRAME_SETTINGS = ("mean", "std", "interpolation", "resize_mode")
"""Preprocessing a weight tag may set; a bare file (no TAG=) gets open_clip's defaults."""


class PretrainedUnavailable(RuntimeError):
    """Weights or a tokenizer that are neither on this machine nor reachable."""


@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from, as ``--pretrained`` names them."""

    tag: str | None = None
    """The open_clip weight tag whose settings apply (and whose weights download if no file)."""
    file: str | None = None
    """A local weights file."""

    @property
    def source(self) -> str | None:
        """What open_clip loads: the file, else the tag, else nothing (random weights)."""
        return self.file or self.tag


def parse_weights(backbone: str, pretrained: str | None) -> Weights:
    """``pretrained`` for ``backbone``: one of its tags, ``TAG=FILE`` with one of its tags, else
    a file (that it exists is checked when it is loaded)."""
    if not pretrained:
        return Weights()
    if open_clip.get_pretrained_cfg(backbone, pretrained):
        return Weights(tag=pretrained)
    tag, named, file = pretrained.partition("=")
    if named and open_clip.get_pretrained_cfg(backbone, tag):
        return Weights(tag=tag, file=file)
    return Weights(file=pretrained)


def tag_settings(tag_cfg: dict) -> tuple[str, ...]:
    """What a weight tag sets besides the weights: QuickGELU, non-default frame preprocessing."""
    settings = ("QuickGELU",) if tag_cfg.get("quick_gelu") else ()
    default = PreprocessCfg()
    if any(
        tag_cfg.get(key, getattr(default, key)) != getattr(default, key) for key in FRAME_SETTINGS
    ):
        settings += ("frame preprocessing (mean, std, resize)",)
    return settings


@functools.cache
def warn_untagged(backbone: str, file: str) -> None:
    """Warn once per backbone and file that a file named without a tag gets open_clip's
    defaults, naming the settings of the tags it could hold."""
    lost: dict[str, list[str]] = {}
    for tag in open_clip.list_pretrained_tags_by_model(backbone):
        for setting in tag_settings(open_clip.get_pretrained_cfg(backbone, tag)):
            lost.setdefault(setting, []).append(tag)
    if not lost:
        return
    settings = "; ".join(f"{setting} of {', '.join(tags)}" for setting, tags in lost.items())
    example = next(iter(lost.values()))[0]
    log.warning(
        f"--pretrained {file} names no weight tag, so {backbone} gets open_clip's defaults, not "
        f"the settings of a tag the file may hold ({settings}). If it holds a tag's weights, "
        f"name the tag: --pretrained TAG={file} (e.g. {example}={file})."
    )


@dataclass(frozen=True)
class HubFiles:
    """What a backbone needs from one hub repository: any one of ``names``."""

    kind: str
    """``weights`` or ``tokenizer``."""
    repo: str
    names: tuple[str, ...]
    tag: str = ""
    """The weight tag these files are the weights of."""
    tag_settings: tuple[str, ...] = ()
    """What the weight tag sets besides the weights, which a file keeps when the tag is named."""

    def cached(self) -> bool:
        """Whether one of the files is in the local Hugging Face cache."""
        return any(isinstance(try_to_load_from_cache(self.repo, name), str) for name in self.names)


def check_pretrained(backbone: str, pretrained: str | None, tokenizer: str | None = None) -> None:
    """Raise ``PretrainedUnavailable`` unless ``backbone`` can get its weights and tokenizer.

    ``pretrained`` is an open_clip tag, a local file, ``TAG=FILE`` (``parse_weights``) or None
    (random weights); ``tokenizer`` a
    local folder, a hub name or None (the backbone's own, from the hub for SigLIP). When every
    hub file is cached but the hub cannot be reached, huggingface_hub is switched to offline
    mode for this process, so that the loaders read the cache at once instead of retrying.
    """
    needed = hub_files(backbone, pretrained, tokenizer)
    if not needed:
        return
    unreachable = hub_unreachable()
    if unreachable is None:
        return
    missing = [files for files in needed if not files.cached()]
    if missing:
        raise PretrainedUnavailable(advice(backbone, missing, unreachable))
    if not constants.HF_HUB_OFFLINE:
        log.info("%s: reading %s's files from the local cache", unreachable, backbone)
        constants.HF_HUB_OFFLINE = True


def hub_files(backbone: str, pretrained: str | None, tokenizer: str | None) -> list[HubFiles]:
    """The hub files that ``backbone`` with these weights and this tokenizer will load."""
    needed = []
    weights = parse_weights(backbone, pretrained)
    if weights.file and not Path(weights.file).is_file():
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(backbone)) or "none"
        raise PretrainedUnavailable(
            f"--pretrained {pretrained}: no such file {weights.file}"
            if weights.tag
            else f"--pretrained {pretrained}: no such file, and not a weight tag of {backbone} "
            f"(its tags: {tags}; a file holding a tag's weights: TAG=FILE)"
        )
    tag_cfg = open_clip.get_pretrained_cfg(backbone, weights.tag) if weights.tag else {}
    if not weights.file and tag_cfg.get("hf_hub"):
        needed.append(weight_files(weights.tag, tag_cfg))
    text_cfg = (open_clip.get_model_config(backbone) or {}).get("text_cfg", {})
    name = tokenizer or text_cfg.get("hf_tokenizer_name")
    if name and not Path(name).is_dir() and _is_repo_id(name):
        needed.append(HubFiles("tokenizer", name, (TOKENIZER_FILE,)))
    return needed


def _is_repo_id(name: str) -> bool:
    """Whether the hub could serve ``name`` (``vcb:synthetic`` and paths are no repo ids)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def weight_files(tag: str, tag_cfg: dict) -> HubFiles:
    """The files open_clip asks the hub for, from a tag's ``org/repo/filename`` (no filename:
    its default weights file), after the ``.safetensors`` twin that it tries first."""
    repo, name = os.path.split(tag_cfg["hf_hub"])
    name = name or HF_WEIGHTS_NAME
    if name == HF_WEIGHTS_NAME:
        names = (HF_SAFE_WEIGHTS_NAME, name)
    elif name.endswith((".bin", ".pth")):
        names = (name[:-4] + ".safetensors", name)
    else:
        names = (name,)
    return HubFiles("weights", repo, names, tag, tag_settings(tag_cfg))


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached (offline mode, no connection), or None."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname or "", via.port or 80
    if connects(host, port, HUB_PROBE_TIMEOUT_S):
        return None
    return f"{host}:{port} accepted no connection (waited at most {HUB_PROBE_TIMEOUT_S:g} s)"


def connects(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within ``timeout`` seconds, name lookup included (a
    lookup that hangs is left to finish in a daemon thread)."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            return
        opened.append(True)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def advice(backbone: str, missing: list[HubFiles], reason: str) -> str:
    """The error message: what is missing, why it cannot come, and how to bring it."""
    by_repo: dict[str, list[HubFiles]] = {}
    for files in missing:
        by_repo.setdefault(files.repo, []).append(files)
    downloads = {
        repo: f"hf download {repo} "
        + " ".join(f'--include "{pattern}"' for files in group for pattern in _patterns(files))
        for repo, group in by_repo.items()
    }
    caches = ", ".join(f"models--{repo.replace('/', '--')}" for repo in by_repo)
    lines = [
        f"{backbone} needs files from the Hugging Face hub that are not on this machine, "
        f"and the hub cannot be reached ({reason}):",
        *(f"  {f.kind}: {f.repo} ({' or '.join(f.names)})" for f in missing),
        "Bring them from a machine with a network, either as its cache:",
        *(f"  {command}" for command in downloads.values()),
        f"  then copy {caches} from its ~/.cache/huggingface/hub into "
        f"{constants.HF_HUB_CACHE} here (HF_HOME or HF_HUB_CACHE move it) and set "
        "HF_HUB_OFFLINE=1;",
        "or as folders:",
        *(f"  {command} --local-dir {_folder(repo)}" for repo, command in downloads.items()),
        "  then copy them here and give " + " and ".join(map(_flag, missing)) + ".",
    ]
    kept = [f"{f.tag}'s {' and '.join(f.tag_settings)}" for f in missing if f.tag_settings]
    if kept:
        lines.append(
            f"  Naming the tag before the file keeps {', '.join(kept)}; a bare file path "
            "gets open_clip's defaults."
        )
    return "\n".join(lines)


def _patterns(files: HubFiles) -> tuple[str, ...]:
    """``hf download --include`` patterns: the weight files, or a tokenizer's small files."""
    return files.names if files.kind == "weights" else ("*.json", "*.model", "*.txt")


def _folder(repo: str) -> str:
    return repo.rsplit("/", 1)[-1]


def _flag(files: HubFiles) -> str:
    if files.kind == "weights":
        return f"--pretrained {files.tag}=/path/to/weights (the file in {_folder(files.repo)})"
    return f"--tokenizer FOLDER (the folder {_folder(files.repo)})"
