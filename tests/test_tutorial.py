from pathlib import Path

import pytest

from vcb_utils.config import preset
from vcb_utils.tutorial import FAST_SETTINGS, fast_mode, notebook_config, repo_root

REPO = Path(__file__).resolve().parents[1]


def test_fast_and_full_configs(monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    assert repo_root() == REPO
    fast, run_dir = notebook_config(True, {"train": {"epochs": 3}})
    assert run_dir == REPO / "outputs" / "notebooks" / "train-tiny"
    assert fast.model == preset("tiny").model and fast.train.epochs == 3
    assert fast.data.cache_dir == str(REPO / "data" / "cache")
    assert notebook_config(True)[0].train.epochs == FAST_SETTINGS["train"]["epochs"]
    full, run_dir = notebook_config(False, {"model": {"backbone": "ViT-B-16"}})
    assert run_dir.name == "train-msrvtt-clip-b32"
    assert (full.model.backbone, full.model.pretrained) == ("ViT-B-16", "openai")
    assert full.data.video_path == str(REPO / "data/msrvtt/MSRVTT/videos/all")


def test_full_mode_is_an_explicit_choice(monkeypatch):
    monkeypatch.delenv("VCB_FULL", raising=False)
    assert fast_mode()
    monkeypatch.setenv("VCB_FULL", "1")
    assert not fast_mode()


def test_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no repository"):
        repo_root()
