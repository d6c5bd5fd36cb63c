from pathlib import Path

import pytest

from vcb_utils.config import preset
from vcb_utils.tutorial import notebook_config, repo_root

REPO = Path(__file__).resolve().parents[1]


def test_fast_and_full_configs(monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")
    assert repo_root() == REPO
    fast, run_dir = notebook_config(True, fast_epochs=3)
    assert run_dir == REPO / "outputs" / "notebooks" / "train-tiny"
    assert fast.model == preset("tiny").model and fast.train.epochs == 3
    assert fast.data.cache_dir == str(REPO / "data" / "cache")
    full, run_dir = notebook_config(False, backbone="ViT-B-16")
    assert run_dir.name == "train-msrvtt-vit-b32"
    assert (full.model.backbone, full.model.pretrained) == ("ViT-B-16", "openai")
    assert full.data.video_path == str(REPO / "data/msrvtt/MSRVTT/videos/all")


def test_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no repository"):
        repo_root()
