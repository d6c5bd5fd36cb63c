"""Retrieval metrics against plain-loop references and hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vcb_utils import metrics
from vcb_utils.metrics import (
    format_metrics_table,
    multi_caption_metrics,
    postprocess,
    retrieval_metrics,
)


def summary(ranks: list[int]) -> dict[str, float]:
    """Metrics from 0-based ranks, written out by hand."""
    n = len(ranks)
    ordered = sorted(r + 1 for r in ranks)
    middle = n // 2
    median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {
        "R1": 100 * sum(r < 1 for r in ranks) / n,
        "R5": 100 * sum(r < 5 for r in ranks) / n,
        "R10": 100 * sum(r < 10 for r in ranks) / n,
        "MdR": median,
        "MnR": sum(ordered) / n,
    }


def loop_metrics(sim: np.ndarray) -> dict[str, float]:
    """Row i's target is column i; count the other columns scoring at least as high."""
    ranks = []
    for i, row in enumerate(sim.tolist()):
        ranks.append(sum(1 for j, s in enumerate(row) if j != i and s >= row[i]))
    return summary(ranks)


def loop_multi_caption(sim: np.ndarray, owner: list[int]) -> dict[str, dict[str, float]]:
    """t2v: other videos at least as high; v2t: the best rank over the video's captions."""
    rows = sim.tolist()
    t2v = [
        sum(1 for v, s in enumerate(row) if v != owner[c] and s >= row[owner[c]])
        for c, row in enumerate(rows)
    ]
    v2t = []
    for v in range(sim.shape[1]):
        own = [c for c in range(len(rows)) if owner[c] == v]
        others = [c for c in range(len(rows)) if owner[c] != v]
        v2t.append(min(sum(rows[o][v] >= rows[c][v] for o in others) for c in own))
    return {"t2v": summary(t2v), "v2t": summary(v2t)}


def assert_metrics_equal(got: dict, expected: dict) -> None:
    assert list(got) == ["R1", "R5", "R10", "MdR", "MnR"]
    assert got == pytest.approx(expected, abs=1e-9)


def with_target_ranks(ranks: list[int], n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct scores per row with column i placed at 0-based rank ``ranks[i]``."""
    sim = np.empty((len(ranks), n_cols))
    descending = np.arange(n_cols, 0, -1, dtype=float)
    for i, rank in enumerate(ranks):
        others = [j for j in range(n_cols) if j != i]
        rest = np.delete(descending, rank)
        sim[i, i] = descending[rank]
        sim[i, others] = rng.permutation(rest)
    return sim


# retrieval_metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (30, 30), (13, 40), (64, 64)])
def test_random_matches_loop_reference(shape):
    rng = np.random.default_rng(sum(shape))
    sim = rng.standard_normal(shape)
    assert_metrics_equal(retrieval_metrics(sim), loop_metrics(sim))


@pytest.mark.parametrize("levels", [2, 3, 5])
def test_random_with_ties_matches_loop_reference(levels):
    sim = np.random.default_rng(levels).integers(0, levels, size=(25, 31)).astype(np.float32)
    assert_metrics_equal(retrieval_metrics(sim), loop_metrics(sim))


def test_perfect_diagonal():
    sim = np.random.default_rng(0).uniform(0, 0.5, (12, 12))
    np.fill_diagonal(sim, 1.0)
    assert_metrics_equal(
        retrieval_metrics(sim), {"R1": 100, "R5": 100, "R10": 100, "MdR": 1, "MnR": 1}
    )


def test_reversed_ordering():
    n = 20
    sim = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n  # the target scores lowest
    assert_metrics_equal(retrieval_metrics(sim), {"R1": 0, "R5": 0, "R10": 0, "MdR": n, "MnR": n})


def test_all_tied_counts_against_the_model():
    n = 8
    expected = {"R1": 0, "R5": 0, "R10": 100, "MdR": n, "MnR": n}
    assert_metrics_equal(retrieval_metrics(np.ones((n, n))), expected)
    assert_metrics_equal(retrieval_metrics(torch.zeros(n, n, dtype=torch.bfloat16)), expected)


def test_tie_with_one_other_column():
    sim = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.9, 0.3]])
    assert_metrics_equal(retrieval_metrics(sim), summary([1, 0, 1]))


def test_known_ranks_hand_computed():
    sim = with_target_ranks([0, 0, 1, 3], 6, np.random.default_rng(2))
    assert_metrics_equal(
        retrieval_metrics(sim), {"R1": 50, "R5": 100, "R10": 100, "MdR": 1.5, "MnR": 2}
    )


@pytest.mark.parametrize("n_rows, n_cols", [(50, 50), (37, 60), (9, 200)])
def test_known_ranks_by_permutation(n_rows, n_cols):
    rng = np.random.default_rng(n_rows + n_cols)
    ranks = rng.integers(0, n_cols, size=n_rows).tolist()
    sim = with_target_ranks(ranks, n_cols, rng)
    assert_metrics_equal(retrieval_metrics(sim), summary(ranks))


def test_row_blocks_give_the_same_result(monkeypatch):
    sim = np.random.default_rng(3).integers(0, 4, size=(45, 50)).astype(float)
    expected = loop_metrics(sim)
    monkeypatch.setattr(metrics, "COMPARISONS_PER_BLOCK", 7)
    assert_metrics_equal(retrieval_metrics(sim), expected)
    owner = np.arange(45) % 15
    got, expected = (
        multi_caption_metrics(sim[:, :15], owner),
        loop_multi_caption(sim[:, :15], owner),
    )
    for side in ("t2v", "v2t"):
        assert_metrics_equal(got[side], expected[side])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_equals_numpy(dtype):
    tensor = torch.randn(40, 55, generator=torch.Generator().manual_seed(4)).to(dtype)
    array = tensor.float().numpy()
    assert retrieval_metrics(tensor) == retrieval_metrics(array)
    assert retrieval_metrics(tensor.T[:40]) == retrieval_metrics(array.T[:40])
    assert retrieval_metrics(tensor.requires_grad_()) == retrieval_metrics(array)


def test_numpy_float16_and_integers():
    sim = np.random.default_rng(5).integers(-3, 3, size=(20, 20))
    assert_metrics_equal(retrieval_metrics(sim), loop_metrics(sim))
    assert_metrics_equal(retrieval_metrics(sim.astype(np.float16)), loop_metrics(sim))


def test_read_only_array():
    sim = np.random.default_rng(6).standard_normal((6, 6))
    sim.setflags(write=False)
    assert_metrics_equal(retrieval_metrics(sim), loop_metrics(sim))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_equals_cpu():
    sim = torch.randn(300, 400)
    owner = torch.arange(300) % 200
    assert retrieval_metrics(sim.cuda()) == retrieval_metrics(sim)
    assert multi_caption_metrics(sim[:, :200].cuda(), owner.cuda()) == multi_caption_metrics(
        sim[:, :200], owner
    )
    on_gpu = postprocess(sim.cuda(), "dual_softmax")
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), postprocess(sim, "dual_softmax"))


@pytest.mark.parametrize(
    "sim, message",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((2, 3, 4)), "2-D"),
        (np.zeros((0, 3)), "at least one"),
        (np.zeros((4, 3)), "more queries"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), "NaN"),
        (np.eye(3, dtype=bool), "real numbers"),
    ],
)
def test_bad_input(sim, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(sim)


# multi_caption_metrics ---------------------------------------------------------------------


def test_one_caption_each_equals_retrieval_metrics():
    sim = np.random.default_rng(7).standard_normal((33, 33))
    got = multi_caption_metrics(sim, list(range(33)))
    assert got == {"t2v": retrieval_metrics(sim), "v2t": retrieval_metrics(sim.T)}
    tied = np.random.default_rng(8).integers(0, 3, size=(33, 33))
    got = multi_caption_metrics(tied, np.arange(33))
    assert got == {"t2v": retrieval_metrics(tied), "v2t": retrieval_metrics(tied.T)}


def test_shuffled_captions_equal_permuted_columns():
    rng = np.random.default_rng(9)
    sim = rng.standard_normal((20, 20))
    order = rng.permutation(20)
    assert multi_caption_metrics(sim[:, order], np.argsort(order)) == multi_caption_metrics(
        sim, np.arange(20)
    )


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ragged_matches_loop_reference(seed, integer_scores):
    rng = np.random.default_rng(seed)
    n_videos = 15
    counts = rng.integers(1, 6, size=n_videos)
    owner = rng.permutation(np.repeat(np.arange(n_videos), counts))
    shape = (len(owner), n_videos)
    sim = rng.integers(0, 4, size=shape) if integer_scores else rng.standard_normal(shape)
    expected = loop_multi_caption(sim, owner.tolist())
    for side in ("t2v", "v2t"):
        got = multi_caption_metrics(sim, owner)[side]
        assert_metrics_equal(got, expected[side])
        assert multi_caption_metrics(torch.from_numpy(sim), torch.from_numpy(owner))[side] == got


def test_ragged_hand_built():
    # video 0 has captions 0 and 1, video 1 has caption 2.
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.6]])
    got = multi_caption_metrics(sim, [0, 0, 1])
    # t2v ranks: caption 0 -> 0, caption 1 -> 1, caption 2 -> 0.
    assert_metrics_equal(got["t2v"], summary([0, 1, 0]))
    # v2t: video 0's best caption (0.9) beats caption 2 (0.5) -> 0; video 1's only caption
    # (0.6) is beaten by caption 1 (0.8) of video 0 -> 1. Video 0's own caption 1 never counts.
    assert_metrics_equal(got["v2t"], summary([0, 1]))


def test_own_captions_do_not_count_in_v2t():
    sim = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert multi_caption_metrics(sim, [0, 0, 0, 1])["v2t"]["R1"] == 100.0


@pytest.mark.parametrize(
    "owner, message",
    [
        ([0, 1], "must be 3 integers"),
        ([0.0, 1.0, 1.0], "must be 3 integers"),
        ([0, 1, 3], r"in \[0, 3\)"),
        ([0, -1, 1], r"in \[0, 3\)"),
        ([0, 1, 1], "without a caption: columns \\[2\\]"),
    ],
)
def test_bad_caption_to_video(owner, message):
    with pytest.raises(ValueError, match=message):
        multi_caption_metrics(np.zeros((3, 3)), owner)


# postprocess -------------------------------------------------------------------------------


def test_postprocessing_is_off_by_default():
    rng = np.random.default_rng(10)
    sim = rng.standard_normal((10, 6))
    assert postprocess(sim) is sim
    owner = np.arange(10) % 6
    assert multi_caption_metrics(sim, owner) == multi_caption_metrics(sim, owner, "none")


@pytest.mark.parametrize("method", ["dual_softmax", "inverted_softmax"])
def test_postprocess_shape_type_and_formula(method):
    sim = np.random.default_rng(11).standard_normal((7, 9))
    out = postprocess(sim, method, temperature=0.5)
    assert isinstance(out, np.ndarray) and out.shape == sim.shape and out.dtype == np.float64
    weights = np.exp(sim / 0.5) / np.exp(sim / 0.5).sum(axis=0, keepdims=True)
    expected = sim * weights if method == "dual_softmax" else weights
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    tensor_out = postprocess(torch.from_numpy(sim).half(), method, temperature=0.5)
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.dtype == torch.float64


@pytest.mark.parametrize("method", ["dual_softmax", "inverted_softmax"])
def test_postprocess_does_not_underflow_to_ties(method):
    sim = torch.linspace(-2, 2, 40, dtype=torch.float16).reshape(8, 5)
    assert bool((postprocess(sim, method, temperature=0.01) != 0).all())


@pytest.mark.parametrize("method", ["dual_softmax", "inverted_softmax"])
def test_postprocess_keeps_a_perfect_diagonal_perfect(method):
    sim = np.random.default_rng(12).uniform(0, 0.5, (16, 16))
    np.fill_diagonal(sim, 1.0)
    perfect = {"R1": 100, "R5": 100, "R10": 100, "MdR": 1, "MnR": 1}
    assert_metrics_equal(retrieval_metrics(postprocess(sim, method)), perfect)
    for side in multi_caption_metrics(sim, np.arange(16), method).values():
        assert_metrics_equal(side, perfect)


def test_inverted_softmax_demotes_a_hub():
    # Column 0 scores 0.9 against every text, beating every other text's own video (0.8).
    n = 10
    sim = np.full((n, n), 0.1)
    np.fill_diagonal(sim, 0.8)
    sim[:, 0] = 0.9
    assert retrieval_metrics(sim)["R1"] == 10.0
    assert retrieval_metrics(postprocess(sim, "inverted_softmax"))["R1"] == 100.0
    assert multi_caption_metrics(sim, np.arange(n), "inverted_softmax")["t2v"]["R1"] == 100.0


def test_postprocess_bad_arguments():
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(np.eye(3), "softmax")
    with pytest.raises(ValueError, match="temperature must be positive"):
        postprocess(np.eye(3), "dual_softmax", temperature=0.0)


# format_metrics_table ----------------------------------------------------------------------


def test_format_metrics_table():
    results = {
        "t2v both": {"R1": 45.25, "R5": 72.1, "R10": 81.0, "MdR": 2.0, "MnR": 14.349},
        "v2t temporal": {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0},
    }
    lines = format_metrics_table(results).splitlines()
    assert len(lines) == 3 and len({len(line) for line in lines}) == 1
    assert lines[0].split() == ["R@1", "R@5", "R@10", "MdR", "MnR"]
    assert lines[1].split() == ["t2v", "both", "45.2", "72.1", "81.0", "2.0", "14.3"]
    assert lines[2].startswith("v2t temporal") and lines[2].endswith("1.0")
    with pytest.raises(ValueError, match="MnR"):
        format_metrics_table({"t2v": {"R1": 1.0, "R5": 1.0, "R10": 1.0, "MdR": 1.0}})
