"""Video-to-text with several captions per video: the default rule and CLIP4Clip's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcb_utils import evaluate as evaluate_module
from vcb_utils.config import DataConfig, preset
from vcb_utils.evaluate import evaluate
from vcb_utils.metrics import multi_caption_metrics, retrieval_metrics
from vcb_utils.model import VideoColBERT
from vcb_utils.train_cli import parse_args

# Three videos with 2, 1 and 3 captions: rows are captions, columns videos.
OWNER = [0, 0, 1, 2, 2, 2]
SIM = np.array(
    [
        [0.50, 0.2, 0.1],
        [0.90, 0.1, 0.2],
        [0.30, 0.7, 0.6],
        [0.95, 0.4, 0.5],
        [0.92, 0.3, 0.9],
        [0.10, 0.8, 0.4],
    ]
)


def summary(ranks: list[int]) -> dict[str, float]:
    """Metrics from 0-based ranks, by hand."""
    ranks_1 = sorted(r + 1 for r in ranks)
    n, middle = len(ranks), len(ranks) // 2
    median = ranks_1[middle] if n % 2 else (ranks_1[middle - 1] + ranks_1[middle]) / 2
    return {
        **{f"R{k}": 100 * sum(r < k for r in ranks) / n for k in (1, 5, 10)},
        "MdR": median,
        "MnR": sum(ranks_1) / n,
    }


def assert_metrics_equal(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def clip4clip_reference(sim: np.ndarray, owner: list[int]) -> dict[str, float]:
    """CLIP4Clip's procedure, spelled out: captions grouped by video into a
    [videos, most captions, videos] tensor padded with -inf, the best caption of each group
    taken, the result transposed to [videos, groups]; video i's target is group i (ties count
    against the model, as everywhere in this project)."""
    n_videos = sim.shape[1]
    groups = [[row for row, video in enumerate(owner) if video == v] for v in range(n_videos)]
    longest = max(len(g) for g in groups)
    padded = np.full((n_videos, longest, n_videos), -np.inf)
    for v, rows in enumerate(groups):
        padded[v, : len(rows)] = sim[rows]
    video_by_group = padded.max(axis=1).T
    ranks = [
        sum(video_by_group[v, g] >= video_by_group[v, v] for g in range(n_videos) if g != v)
        for v in range(n_videos)
    ]
    return summary(ranks)


def test_hand_computed_example_under_both_rules():
    default = multi_caption_metrics(SIM, OWNER)
    clip4clip = multi_caption_metrics(SIM, OWNER, v2t_rule="clip4clip")
    # Text to video does not depend on the rule: captions 3, 4 and 5 each have one video above.
    assert default["t2v"] == clip4clip["t2v"]
    assert_metrics_equal(default["t2v"], summary([0, 0, 0, 1, 1, 1]))
    # Video 0's best own caption scores 0.90. Other videos' captions at or above it: captions 3
    # (0.95) and 4 (0.92), both video 2's -> rank 2 among captions, rank 1 among videos.
    # Video 1 (own 0.7): caption 5 (0.8) -> 1 either way. Video 2 (own 0.9): none -> 0.
    assert_metrics_equal(default["v2t"], summary([2, 1, 0]))
    assert_metrics_equal(clip4clip["v2t"], summary([1, 1, 0]))


def test_a_tie_with_another_videos_best_caption_counts_against_the_model():
    sim = np.array([[0.5, 0.1], [0.5, 0.2], [0.3, 0.9]])
    assert multi_caption_metrics(sim, [0, 1, 1], v2t_rule="clip4clip")["v2t"]["R1"] == 50.0


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip4clip_rule_matches_the_padded_tensor_reference(seed, integer_scores):
    rng = np.random.default_rng(seed)
    n_videos = 12
    owner = rng.permutation(np.repeat(np.arange(n_videos), rng.integers(1, 5, size=n_videos)))
    shape = (len(owner), n_videos)
    sim = rng.integers(0, 4, size=shape) if integer_scores else rng.standard_normal(shape)
    got = multi_caption_metrics(sim, owner, v2t_rule="clip4clip")
    assert_metrics_equal(got["v2t"], clip4clip_reference(sim.astype(float), owner.tolist()))
    as_tensors = torch.from_numpy(sim), torch.from_numpy(owner)
    assert multi_caption_metrics(*as_tensors, v2t_rule="clip4clip") == got
    # A video's rank among videos is never worse than among their captions.
    default = multi_caption_metrics(sim, owner)["v2t"]
    assert got["v2t"]["R1"] >= default["R1"] and got["v2t"]["MnR"] <= default["MnR"]


def test_one_caption_per_video_makes_the_rules_agree():
    sim = np.random.default_rng(4).standard_normal((9, 9))
    expected = retrieval_metrics(sim.T)
    for rule in ("all_captions", "clip4clip"):
        assert multi_caption_metrics(sim, np.arange(9), v2t_rule=rule)["v2t"] == expected


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown video-to-text rule 'best'"):
        multi_caption_metrics(SIM, OWNER, v2t_rule="best")


def test_the_rule_is_a_data_setting_and_a_flag():
    assert DataConfig().v2t_rule == "all_captions"
    assert parse_args(["--v2t_rule", "clip4clip"])[0].data.v2t_rule == "clip4clip"
    with pytest.raises(ValueError, match="v2t_rule"):
        DataConfig(v2t_rule="best")


def test_evaluation_uses_the_configured_rule(small_synthetic, tmp_path, monkeypatch):
    calls = []

    def spy(sim, caption_to_video, **options):
        calls.append((sim, caption_to_video, options["v2t_rule"]))
        return multi_caption_metrics(sim, caption_to_video, **options)

    monkeypatch.setattr(evaluate_module, "multi_caption_metrics", spy)
    data = {"anno_path": small_synthetic, "cache_dir": None, "workers": 0, "v2t_rule": "clip4clip"}
    config = preset("tiny").updated(data=data)
    model = VideoColBERT(config.model)
    # The training split: 24 clips with 2 captions each.
    metrics = evaluate(model, config, split="train", output_dir=tmp_path, report=False)
    assert {rule for *_, rule in calls} == {"clip4clip"}
    for name, (sim, owner, _) in zip(metrics["v2t"], calls, strict=True):
        assert sim.shape == (48, 24)
        expected = clip4clip_reference(sim.double().numpy(), owner.tolist())
        assert_metrics_equal(metrics["v2t"][name], expected)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["dataset"]["v2t_rule"] == "clip4clip"
