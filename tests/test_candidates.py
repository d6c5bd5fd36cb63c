"""The centroid-interaction candidate stage against brute force: its scores, its recall, its
files, appending and calibration. Small collections: seconds in all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcb_utils.ann import merge_duplicates
from vcb_utils.candidates import (
    CandidateSettings,
    CentroidCandidates,
    calibrate,
    default_centroids,
    default_grid,
    work,
)
from vcb_utils.scoring import maxsim
from vcb_utils.synthetic_vectors import ClusteredVectors

N, DIM, FRAMES = 1500, 32, 12
BRANCHES = [slice(0, FRAMES), slice(FRAMES, None)]


def collection(n: int = N, seed: int = 0) -> tuple[ClusteredVectors, np.ndarray, np.ndarray]:
    vectors = ClusteredVectors(n, dim=DIM, seed=seed, videos_per_topic=50)
    drawn = vectors.videos()
    stored = torch.cat([drawn.F, drawn.V], dim=1).numpy()
    return vectors, stored, torch.cat([drawn.F_mask, drawn.V_mask], dim=1).numpy()


@pytest.fixture(scope="module")
def built():
    vectors, stored, mask = collection()
    stage = CentroidCandidates.train(stored[mask].astype(np.float32), coarse=8, fine=16)
    stage.add(stored, mask, BRANCHES)
    text = vectors.queries(torch.arange(0, N, N // 30))
    return stage, stored, mask, text


def exact(text, stored: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """MeanMaxSim_F + MeanMaxSim_V of every query and row, by ``maxsim``."""
    d, m = torch.from_numpy(stored).float(), torch.from_numpy(mask)
    return sum(maxsim(text.vectors, d[:, b], text.mask, m[:, b]) for b in BRANCHES)


def query(text, i: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = text.vectors[i][text.mask[i]].numpy()
    return vectors, np.full(len(vectors), 1 / len(vectors), np.float32)


def test_scores_are_maxsim_on_the_centroids(built):
    """Every probed row's score is MeanMaxSim_F + MeanMaxSim_V of its vectors replaced by
    their centroids, computed naively for the query's distinct vectors and their weights."""
    stage, stored, mask, text = built
    for i in range(3):
        vectors, weights = merge_duplicates(*query(text, i))
        rows, scores = stage.scored(*query(text, i), nprobe=2)
        assert len(rows) > 0
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            want = 0.0
            for columns in BRANCHES:
                valid = stored[row, columns][mask[row, columns]].astype(np.float32)
                centroids = stage.centroids[stage.assign(valid)]
                want += float(weights @ (vectors @ centroids.T).max(axis=1))
            assert score == pytest.approx(want, abs=1e-4)


def test_recall_against_brute_force(built):
    """The default settings' candidates hold the exact top-10 (so an exact rerank finds it)."""
    stage, stored, mask, text = built
    truth = exact(text, stored, mask).topk(10, dim=1).indices.numpy()
    settings = CandidateSettings(nprobe=4, candidates=64)
    found = [
        len(np.intersect1d(stage.candidates(*query(text, i), settings), truth[i])) / 10
        for i in range(len(truth))
    ]
    assert np.mean(found) >= 0.95
    assert len(stage.candidates(*query(text, 0), settings)) == 64


def test_branches_rank_by_one_branch(built):
    stage, stored, mask, text = built
    rows, both = stage.scored(*query(text, 0), nprobe=2)
    _, f_only = stage.scored(*query(text, 0), nprobe=2, branches=[0])
    _, v_only = stage.scored(*query(text, 0), nprobe=2, branches=[1])
    np.testing.assert_allclose(f_only + v_only, both, rtol=1e-5)
    del rows, stored, mask


def test_save_and_load_round_trip(built, tmp_path):
    stage, _, _, text = built
    stage.save(tmp_path / "stage")
    loaded = CentroidCandidates.load(tmp_path / "stage")
    assert len(loaded) == len(stage)
    np.testing.assert_array_equal(loaded.codes, stage.codes)
    for i in range(5):
        np.testing.assert_array_equal(
            loaded.candidates(*query(text, i)), stage.candidates(*query(text, i))
        )
    assert not list(tmp_path.glob("stage/.*.tmp"))


def test_load_refuses_other_files(built, tmp_path):
    stage, _, _, _ = built
    folder = stage.save(tmp_path / "stage")
    (folder / "candidates.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="candidates.json"):
        CentroidCandidates.load(folder)
    stage.save(folder)
    (folder / "codes.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="codes.npy"):
        CentroidCandidates.load(folder)


def test_append_equals_one_build(built):
    """Rows added in two calls give the codes, lists and candidates of one call; a new row is
    found by its own query."""
    stage, stored, mask, text = built
    twice = CentroidCandidates(stage.coarse, stage.centroids)
    twice.add(stored[:700], mask[:700], BRANCHES)
    twice.candidates(*query(text, 0))  # builds the inverted lists, which the append must redo
    twice.add(stored[700:], mask[700:], BRANCHES)
    np.testing.assert_array_equal(twice.codes, stage.codes)
    np.testing.assert_array_equal(twice.segments, stage.segments)
    for i in range(len(text.vectors)):
        np.testing.assert_array_equal(
            twice.candidates(*query(text, i)), stage.candidates(*query(text, i))
        )


def test_add_refuses_a_row_without_vectors(built):
    stage, stored, mask, _ = built
    copy = CentroidCandidates(stage.coarse, stage.centroids)
    broken = mask[:3].copy()
    broken[1, FRAMES:] = False
    with pytest.raises(ValueError, match="row 1"):
        copy.add(stored[:3], broken, BRANCHES)
    assert len(copy) == 0


def test_calibrate_picks_the_cheapest_reaching_the_target(built):
    stage, stored, mask, text = built
    truth = exact(text, stored, mask).topk(10, dim=1).indices.numpy()
    queries = [query(text, i) for i in range(len(truth))]
    chosen = calibrate(stage, queries, list(truth), target_recall=0.9)
    # brute force over the grid: recall and work of every setting
    table = []
    for settings in default_grid():
        recalls, costs = [], []
        for (vectors, weights), want in zip(queries, truth, strict=True):
            rows, _ = stage.scored(vectors, weights, settings.nprobe)
            got = stage.candidates(vectors, weights, settings)
            recalls.append(len(np.intersect1d(got, want)) / 10)
            costs.append(work(stage, len(vectors), len(rows), settings, 26.0))
        table.append((settings, np.mean(recalls), np.mean(costs)))
    reaching = [row for row in table if row[1] >= 0.9]
    assert reaching
    best = min(reaching, key=lambda row: row[2])
    assert chosen.settings == best[0]
    assert chosen.recall == pytest.approx(best[1])
    unreachable = calibrate(stage, queries, list(truth), target_recall=1.01)
    assert unreachable.recall == pytest.approx(max(row[1] for row in table))


def test_default_centroids():
    assert default_centroids(24_000_000) == (128, 128)
    coarse, fine = default_centroids(2_400_000)
    assert coarse * fine == 8192
    assert default_centroids(100)[0] * default_centroids(100)[1] == 16  # the smallest


def test_settings_refuse_non_positive():
    with pytest.raises(ValueError, match="nprobe"):
        CandidateSettings(nprobe=0)
