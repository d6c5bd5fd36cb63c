"""Order tests: Wilson intervals, caption twins, pair counts and the report on a real model."""

from __future__ import annotations

import pytest
import torch

from vcb_utils import order, synthetic
from vcb_utils.branches import BRANCHES
from vcb_utils.config import preset
from vcb_utils.datasets import build_dataset
from vcb_utils.model import VideoColBERT, save_checkpoint
from vcb_utils.synthetic import ClipSpec, Event


def spec(*events: Event, colours=("red",), shapes=("square",)) -> ClipSpec:
    starts = tuple((0.5, 0.3) for _ in colours)
    return ClipSpec(colours, shapes, starts, events, num_frames=16, fps=8, size=96)


def test_wilson_matches_a_hand_calculation():
    # 9/10, z = 1.96: centre (0.9 + 0.19208) / 1.38416 = 0.78898,
    # half 1.96 * sqrt(0.009 + 0.009604) / 1.38416 = 0.19314
    low, high = order.wilson(9, 10)
    assert low == pytest.approx(0.59585, abs=1e-4) and high == pytest.approx(0.98212, abs=1e-4)
    # 0/n: [0, z^2 / (n + z^2)]
    assert order.wilson(0, 10) == pytest.approx((0.0, 3.8415 / 13.8415), abs=1e-4)
    assert order.wilson(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="successes"):
        order.wilson(3, 0)


def test_twin_caption_swaps_the_events_and_keeps_a_single_subject_first():
    one = spec(Event("moves", 0, direction="down"), Event("changes", 0, colour="yellow"))
    assert synthetic.caption(one) == "a red square moves down, then it changes to yellow"
    assert synthetic.twin_caption(one) == "a red square changes to yellow, then it moves down"
    two = spec(
        Event("moves", 0, direction="left"),
        Event("appears", 1, position="at the top"),
        colours=("red", "blue"),
        shapes=("circle", "square"),
    )
    true, twin = synthetic.caption(two), synthetic.twin_caption(two)
    assert true == "a red circle moves left, then a blue square appears at the top"
    assert twin == "a blue square appears at the top, then a red circle moves left"
    assert synthetic.twin_caption(synthetic.twin_spec(two)) == synthetic.caption(two)


def test_pair_counts_separate_wins_ties_and_losses():
    counts = order.PairCounts.from_gaps(torch.tensor([0.5, -0.1, 0.0, 1e-7, 0.2]))
    assert (counts.wins, counts.ties, counts.n) == (2, 2, 5)
    assert counts.accuracy == 0.4 and counts.tie_share == 0.4


def test_reverse_frames_keeps_the_padding_at_the_end():
    video = torch.tensor([1.0, 2.0, 3.0, 0.0])
    mask = torch.tensor([True, True, True, False])
    assert order.reverse_frames(video, mask).tolist() == [3.0, 2.0, 1.0, 0.0]


def test_report_on_a_model_counts_every_clip_and_f_ties_reversed_clips(
    small_synthetic, tmp_path, capsys
):
    config = preset("tiny").updated(
        data={"anno_path": small_synthetic, "cache_dir": None}, train={"batch_size_val": 8}
    )
    torch.manual_seed(0)
    model = VideoColBERT(config.model)
    specs = synthetic.read_specs(small_synthetic)
    test = [s for path, s in specs.items() if path.name.startswith("test_")]
    singles = sum(s.events[0].subject == s.events[1].subject for s in test)
    report = order.order_report(model, config)
    assert {b: c.n for b, c in report["twins"].items()} == dict.fromkeys(BRANCHES, 11)
    assert report["one-subject twins"]["V"].n == singles
    assert report["reversed"]["F"].ties == 11  # a set of frames has no order
    assert report["reversed"]["V"].ties < 11
    save_checkpoint(model, tmp_path / "ckpt", config)
    assert order.main([str(tmp_path / "ckpt")]) == 0
    table = capsys.readouterr().out
    row = next(line.split() for line in table.splitlines() if line.split()[:2] == ["reversed", "F"])
    # 11 ties of 11: Wilson [n / (n + z^2), 1] = [11 / 14.8415, 1]
    assert " ".join(row) == "reversed F 11 0 11 0.00 [0.00, 0.26] 1.00 [0.74, 1.00]"


def test_training_set_adds_backward_clips_beside_their_sources(small_synthetic):
    config = preset("tiny").updated(
        data={"anno_path": small_synthetic, "cache_dir": None, "backward_share": 0.25}
    )
    model = VideoColBERT(config.model)
    pairs = build_dataset(config.data, "train", model.preprocessing, uint8=True)
    full, groups = order.order_training_set(pairs, config.data, seed=1)
    n = len(pairs)
    assert len(full) == n + round(0.25 * n)
    group_of = {i: tuple(g) for g in groups for i in g}
    for k, (source, text) in enumerate(full.backwards):
        record = pairs.records[source]
        spec = synthetic.specs_for([record.path])[0]
        variant = int(record.caption.startswith("first"))
        assert text == synthetic.caption(synthetic.played_backwards(spec), variant)
        ids, mask, video, video_mask = full[n + k]
        _, _, forwards, _ = pairs[source]
        real = int(video_mask.sum())
        assert torch.equal(video[:real], forwards[:real].flip(0))
        assert torch.equal(ids, pairs.tokenize([text])[0][0])
        assert n + k in group_of[source]
    twins = order.twin_groups(
        [r.path for r in pairs.records], [r.caption for r in pairs.records]
    )
    assert twins and all(set(t) <= set(group_of[t[0]]) for t in twins)
