"""The rescored mean-query engine: merged near copies, two codes, candidates rescored in RAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_search_scale import cli, clustered, recall

from vcb_utils.index import VideoIndex
from vcb_utils.search.rescored import (
    RescoredEngine,
    RescoredSettings,
    code_columns,
    merged,
    near_copies,
    pack,
    unpack,
)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def owners_naively(vectors: np.ndarray, groups: np.ndarray, cosine: float) -> np.ndarray:
    """Keep a vector unless an earlier kept vector of its group is this similar, else join the
    most similar of those: one at a time."""
    owner: list[int] = []
    for i in range(len(vectors)):
        earlier = [j for j in range(i) if groups[j] == groups[i] and owner[j] == j]
        sims = [float(vectors[j] @ vectors[i]) for j in earlier]
        near = [s >= cosine for s in sims]
        owner.append(earlier[int(np.argmax(sims))] if any(near) else i)
    return np.array(owner)


@pytest.mark.parametrize("block", [1, 7, 512])
def test_code_columns_are_the_gathered_codes_transposed(block):
    codes = np.random.default_rng(0).integers(0, 256, (300, 13), dtype=np.uint8)
    at = np.array([5, 6, 7, 0, 299, 150, 151, 152, 153, 2] * 3)
    columns = code_columns(codes, at, block)
    assert columns.shape == (13, 30) and columns.flags.c_contiguous
    for i, row in enumerate(at):
        assert columns[:, i].tolist() == codes[row].tolist()


@pytest.mark.parametrize("cosine", [0.5, 0.8, 0.9, 0.97])
def test_near_copies_match_a_one_at_a_time_loop(cosine):
    rng = np.random.default_rng(0)
    scenes = rng.normal(size=(40, 16))
    vectors = unit(np.repeat(scenes, 5, axis=0) + 0.3 * rng.normal(size=(200, 16)))
    groups = np.sort(rng.integers(0, 30, 200))
    got = near_copies(vectors, groups, cosine)
    assert np.array_equal(got, owners_naively(vectors, groups, cosine))
    kept = got == np.arange(200)
    assert 0 < kept.sum() < len(got)  # the cases cut some and keep some
    assert (got[~kept] < np.flatnonzero(~kept)).all()  # a copy joins an earlier vector


def test_near_copies_keep_every_group_first_vector_and_copies_once():
    vector = unit(np.ones((1, 8)))
    copies = np.repeat(vector, 4, axis=0)
    assert near_copies(copies, np.array([0, 0, 1, 1])).tolist() == [0, 0, 2, 2]
    assert near_copies(np.zeros((0, 8), np.float32), np.zeros(0, np.int64)).shape == (0,)


def test_merged_gives_each_kept_vector_the_unit_mean_of_its_copies():
    vectors = unit(np.array([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.8, 0, 0.2]]))
    owner = np.array([0, 0, 2, 0])
    expected = np.stack([vectors[[0, 1, 3]].sum(axis=0), vectors[2]])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(merged(vectors, owner), expected, atol=1e-6)


@pytest.fixture(scope="module", params=[4000, 100], ids=["8-bit", "4-bit"])
def engine(request) -> tuple[RescoredEngine, np.ndarray]:
    """An engine trained on ``request.param`` of 4,000 random unit vectors (under 256: its
    second code has 4 bits), and the 4,000."""
    rng = np.random.default_rng(1)
    sample = unit(rng.normal(size=(4000, 32)))
    engine = RescoredEngine.train(sample[: request.param], nlist=16)
    assert engine.second.pq.nbits == (8 if request.param >= 256 else 4)
    return engine, sample


def test_codes_flag_near_copies_and_the_second_code_refines_the_first(engine):
    engine, sample = engine
    vectors = sample[:300].copy()
    videos = np.repeat(np.arange(100), 3)
    noise = np.random.default_rng(3).normal(size=(100, 32)) * 0.01
    vectors[1::3] = unit(vectors[0::3] + noise)  # the second vector: a near copy of the first
    codes = engine.encode(vectors, videos)
    assert codes.shape == (300, engine.code_size)
    assert codes[:, -1].tolist() == [1, 0, 1] * 100
    assert not codes[1::3, :-1].any()
    kept = codes[codes[:, -1] == 1]
    first = engine.mean_query.encoder.sa_decode(np.ascontiguousarray(kept[:, : engine.first_size]))
    both = first + engine.second.sa_decode(np.ascontiguousarray(kept[:, engine.first_size : -1]))
    truth = merged(vectors, np.repeat(np.arange(0, 300, 3), 3) + np.tile([0, 0, 2], 100))
    first_error = np.linalg.norm(first - truth, axis=1).mean()
    both_error = np.linalg.norm(both - truth, axis=1).mean()
    assert both_error < (0.6 if engine.second.pq.nbits == 8 else 0.8) * first_error
    assert engine.encode(vectors)[:, -1].all()  # without videos, every vector is kept


def test_rescore_ranks_rows_by_the_decoded_codes_best_vector(engine):
    engine, sample = engine
    engine = RescoredEngine(engine.trained)
    rng = np.random.default_rng(2)
    rows = np.repeat(np.arange(60), 4)
    branches = np.tile([0, 0, 1, 1], 60)
    ids = rows * 2 + branches
    codes = engine.encode(sample[:240], ids)  # one group per (row, branch)
    order = rng.permutation(240)  # added in any order: held sorted by id
    engine.rebuild([(codes[order], ids[order])])
    kept = codes[:, -1] == 1
    decoded = engine.mean_query.encoder.sa_decode(
        np.ascontiguousarray(codes[kept, : engine.first_size])
    ) + engine.second.sa_decode(np.ascontiguousarray(codes[kept, engine.first_size : -1]))
    mean = unit(rng.normal(size=(1, 32)))[0]
    sims = decoded @ mean
    for wanted in ([0, 1], [1]):
        best = {}
        for row, branch, sim in zip(rows[kept], branches[kept], sims, strict=True):
            if branch in wanted:
                best[(row, branch)] = max(best.get((row, branch), -np.inf), sim)
        score = {r: sum(v for (row, _), v in best.items() if row == r) for r in range(80)}
        chosen = np.array([5, 17, 30, 41, 59, 0, 12, 75])  # 75: past the last row, no codes
        for keep in (4, 8):
            expected = sorted(chosen.tolist(), key=lambda r: -score[r])[:keep]
            assert engine.rescore(mean, chosen, wanted, keep).tolist() == expected


def test_trained_bytes_round_trip_and_damage_is_refused(engine):
    engine, _ = engine
    header, first, second = unpack(engine.trained)
    assert pack(header, first, second) == engine.trained
    for damaged in (engine.trained[:-5], b"other" + engine.trained, engine.trained + b"x"):
        with pytest.raises(RuntimeError):
            RescoredEngine.open(damaged, "g0")


@pytest.mark.filterwarnings("ignore:.*never calibrated")
def test_recall_holds_with_few_reads_and_the_index_saves_and_loads(tmp_path):
    vectors, index = clustered(3000, dim=128, seed=1)
    engine = index.build_ann(engine="mean-query-rescored")
    kept, stored = len(engine), index.stats()["vectors"]
    assert kept < stored  # near copies are not coded
    queries = vectors.queries(range(0, 3000, 75), seed=2)
    _, want = index.top_k(queries, 10, exact=True)
    index.settings = RescoredSettings(nprobe=engine.nlist // 4, candidates=64, exact=32)
    _, got = index.top_k(queries, 10)
    assert recall(got, want) >= 0.95
    index.save(tmp_path / "index")
    loaded = VideoIndex.load(tmp_path / "index")
    assert loaded.ann.name == "mean-query-rescored" and len(loaded.ann) == kept
    assert np.array_equal(loaded.ann.ids, engine.ids)
    assert torch.equal(loaded.top_k(queries, 10)[1], got)


@pytest.mark.filterwarnings("ignore:.*never calibrated")
def test_videos_added_after_training_are_found():
    _, index = clustered(3000, dim=128, seed=3)
    index.build_ann(engine="mean-query-rescored")
    more = clustered(3200, dim=128, seed=3)[0]
    index.add_embeddings(
        more.videos(3000, 3200),
        [f"new{i}" for i in range(200)],
        [f"/videos/new{i}.mp4" for i in range(200)],
    )
    ids = index.ann.ids
    assert (ids[1:] >= ids[:-1]).all() and ids[-1] >> 1 == 3199  # held in row order
    queries = more.queries(range(3000, 3200, 20), seed=4)
    _, want = index.top_k(queries, 10, exact=True)
    _, got = index.top_k(queries, 10)
    assert recall(got, want) >= 0.9


def test_training_on_too_few_vectors_is_a_clear_error():
    with pytest.raises(ValueError, match="15 vectors to train on: the rescored engine needs 16"):
        RescoredEngine.train(unit(np.random.default_rng(0).normal(size=(15, 32))), nlist=4)


def test_reindex_trains_the_engine_named_and_refuses_an_unknown_one(tmp_path, capsys):
    _, index = clustered(300, dim=32)
    index.save(tmp_path / "index", auto_ann=False)
    assert cli("reindex", "--index", tmp_path / "index", "--engine", "mean-query-rescored") == 0
    assert VideoIndex.load(tmp_path / "index").ann.name == "mean-query-rescored"
    assert cli("reindex", "--index", tmp_path / "index", "--engine", "other") == 2
    assert "candidate engine 'other' is unknown" in capsys.readouterr().err
