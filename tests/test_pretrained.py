"""Pretrained weights without a network: decided in seconds, with one clear error."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download

from vcb_utils import pretrained
from vcb_utils.pretrained import PretrainedUnavailable, Weights, check_pretrained, parse_weights

REPO = Path(__file__).resolve().parents[1]
B32_REPO = "timm/vit_base_patch32_clip_224.openai"
"""Where open_clip 3 finds ViT-B-32's ``openai`` weights."""
SIGLIP_REPO = "timm/ViT-B-16-SigLIP"
"""ViT-B-16-SigLIP's ``webli`` weights and its tokenizer."""
FAST_S = 30
"""The issue's bound on deciding that the weights cannot come."""


def free_port() -> int:
    """A loopback port with nothing listening on it (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_file(cache: Path, repo: str, filename: str) -> Path:
    """A file in the Hugging Face cache layout, as a download leaves it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    return path


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face cache, online mode, and a hub endpoint that refuses connections."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return cache


def test_a_missing_local_file_is_named(tmp_path):
    missing = tmp_path / "ViT-B-32.safetensors"
    with pytest.raises(PretrainedUnavailable, match=f"--pretrained {missing}: no such file"):
        check_pretrained("ViT-B-32", str(missing))


def test_a_local_file_needs_no_hub(hub, tmp_path):
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"weights")
    check_pretrained("ViT-B-32", str(weights))
    check_pretrained("ViT-B-32", f"openai={weights}")  # the tag's settings, the file's weights
    check_pretrained("ViT-B-32", None)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(PretrainedUnavailable, match=f"openai={missing}: no such file {missing}"):
        check_pretrained("ViT-B-32", f"openai={missing}")


def test_pretrained_reads_as_a_tag_a_file_or_a_tag_with_its_file():
    assert parse_weights("ViT-B-32", None) == Weights()
    assert parse_weights("ViT-B-32", "openai") == Weights(tag="openai")
    assert parse_weights("ViT-B-32", "openai=/w/b32.bin") == Weights("openai", "/w/b32.bin")
    assert parse_weights("ViT-B-16-SigLIP", "webli=w.bin").source == "w.bin"
    assert parse_weights("ViT-B-32", "/runs/lr=1e-4/b32.bin") == Weights(
        file="/runs/lr=1e-4/b32.bin"
    )
    assert parse_weights("vcb-tiny", "openai=w.bin") == Weights(file="openai=w.bin")  # no tags


def test_an_offline_tag_fails_at_once_naming_the_flag_and_the_download(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailable) as raised:
        check_pretrained("ViT-B-32", "openai")
    message = str(raised.value)
    assert "HF_HUB_OFFLINE is set" in message
    assert "--pretrained openai=/path/to/weights" in message
    assert f"hf download {B32_REPO}" in message
    assert f"into {hub} here" in message  # where this machine's cache is
    assert "--tokenizer" not in message  # CLIP's tokenizer ships with open_clip
    assert "Naming the tag before the file keeps openai's QuickGELU" in message


def test_offline_in_a_fresh_process_with_an_empty_hf_home(tmp_path):
    """Through the backbone factory, as every run creates a model."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    script = (
        "import sys, time\n"
        "from vcb_utils.backbone import create_backbone\n"
        "from vcb_utils.config import preset\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    create_backbone(preset('msrvtt-clip-b32').model)  # CLIP ViT-B/32, openai weights\n"
        "except RuntimeError as err:\n"
        "    print(err)\n"
        "print(f'seconds {time.monotonic() - start:.3f}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "--pretrained openai=/path/to/weights" in done.stdout
    assert f"{tmp_path / 'hf' / 'hub'}" in done.stdout
    assert float(done.stdout.split("seconds ")[-1]) < FAST_S


def test_a_cached_tag_passes_offline(hub, monkeypatch):
    cache_file(hub, B32_REPO, "open_clip_pytorch_model.bin")  # the .safetensors twin is absent
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_pretrained("ViT-B-32", "openai")


def test_an_unreachable_hub_fails_fast(hub):
    start = time.monotonic()
    with pytest.raises(PretrainedUnavailable, match="accepted no connection") as raised:
        check_pretrained("ViT-B-32", "openai")
    assert time.monotonic() - start < FAST_S
    assert "--pretrained openai=/path/to/weights" in str(raised.value)


def test_a_reachable_hub_may_download(hub, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        check_pretrained("ViT-B-32", "openai")


def test_cached_files_behind_an_unreachable_hub_load_without_retries(hub):
    cached = cache_file(hub, B32_REPO, "open_clip_model.safetensors")
    check_pretrained("ViT-B-32", "openai")
    assert constants.HF_HUB_OFFLINE  # the hub client reads the cache instead of retrying
    start = time.monotonic()
    assert Path(hf_hub_download(B32_REPO, "open_clip_model.safetensors")) == cached
    assert time.monotonic() - start < FAST_S


def test_siglip_needs_its_tokenizer_from_the_cache_or_a_folder(hub, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PretrainedUnavailable) as raised:
        check_pretrained("ViT-B-16-SigLIP", None)
    assert "--tokenizer FOLDER" in str(raised.value)
    assert f"tokenizer: {SIGLIP_REPO}" in str(raised.value)
    check_pretrained("ViT-B-16-SigLIP", None, tokenizer=str(tmp_path))
    check_pretrained("ViT-B-16-SigLIP", None, tokenizer="vcb:synthetic")
    cache_file(hub, SIGLIP_REPO, "tokenizer_config.json")
    check_pretrained("ViT-B-16-SigLIP", None)
    with pytest.raises(PretrainedUnavailable) as raised:
        check_pretrained("ViT-B-16-SigLIP", "webli")
    assert "tokenizer:" not in str(raised.value)  # only the weights are missing now
    assert "--pretrained webli=/path/to/weights" in str(raised.value)
    assert "keeps webli's frame preprocessing (mean, std, resize)" in str(raised.value)


def test_a_name_lookup_that_hangs_counts_as_unreachable(monkeypatch):
    release = threading.Event()

    def hang(*_, **__):
        release.wait()
        raise OSError("the lookup gave up")

    monkeypatch.setattr(pretrained.socket, "create_connection", hang)
    try:
        assert not pretrained.connects("huggingface.co", 443, timeout=0.2)
    finally:
        release.set()
