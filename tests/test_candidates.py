"""The mean-query candidate stage against brute force: its scores, its recall, its files,
appending and calibration. Small collections: seconds in all."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vcb_utils.candidates import (
    CandidateSettings,
    MeanQueryCandidates,
    calibrate,
    default_nlist,
    refine,
    work,
)
from vcb_utils.scoring import maxsim
from vcb_utils.search.engine import index_of_codes
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
    sample = stored[mask].astype(np.float32)[::3]
    stage = MeanQueryCandidates.train(sample, nlist=16)
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


def test_scores_are_the_best_vector_of_each_branch(built):
    """With every list scanned and every vector a hit, a row's score is the sum over its
    branches of the best inner product of the mean query vector with its decoded vectors (to
    the rounding of fast-scan's 8-bit lookup tables)."""
    stage, stored, mask, text = built
    every = CandidateSettings(nprobe=stage.index.nlist, hits=int(stage.index.ntotal))
    for i in range(2):
        vectors, weights = query(text, i)
        rows, scores = stage.scored(vectors, weights, every)
        np.testing.assert_array_equal(rows, np.arange(N))
        mean = weights @ vectors
        for row in (0, 7, N - 1):
            want = 0.0
            for columns in BRANCHES:
                valid = stored[row, columns][mask[row, columns]].astype(np.float32)
                decoded = stage.encoder.sa_decode(stage.encode(valid))
                want += float((decoded @ mean).max())
            assert scores[row] == pytest.approx(want, abs=2e-3)


def test_recall_against_brute_force(built):
    """The default settings' candidates hold the exact top-10 (so an exact rerank finds it)."""
    stage, stored, mask, text = built
    truth = exact(text, stored, mask).topk(10, dim=1).indices.numpy()
    settings = CandidateSettings(candidates=64)
    found = [
        len(np.intersect1d(stage.candidates(*query(text, i), settings), truth[i])) / 10
        for i in range(len(truth))
    ]
    assert np.mean(found) >= 0.95
    assert len(stage.candidates(*query(text, 0), settings)) == 64


def test_refine_keeps_the_best_by_the_exact_mean_query_score(built):
    stage, stored, mask, text = built
    vectors, weights = query(text, 0)
    rows = np.arange(0, N, 5)
    kept = refine(vectors, weights, stored[rows], mask[rows], BRANCHES, 10)
    mean = weights @ vectors
    naive = [
        sum(
            max(float(mean @ x) for x, ok in zip(stored[r, c], mask[r, c], strict=True) if ok)
            for c in BRANCHES
        )
        for r in rows
    ]
    np.testing.assert_array_equal(kept, np.argsort(naive)[::-1][:10])


def test_branches_rank_by_one_branch(built):
    stage, stored, mask, text = built
    rows, both = stage.scored(*query(text, 0))
    _, f_only = stage.scored(*query(text, 0), branches=[0])
    _, v_only = stage.scored(*query(text, 0), branches=[1])
    np.testing.assert_allclose(f_only + v_only, both, rtol=1e-5)
    del rows, stored, mask


def test_save_and_load_round_trip(built, tmp_path):
    stage, _, _, text = built
    stage.save(tmp_path / "stage")
    loaded = MeanQueryCandidates.load(tmp_path / "stage")
    assert len(loaded) == len(stage) == N
    assert loaded.index.ntotal == stage.index.ntotal
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
        MeanQueryCandidates.load(folder)
    stage.save(folder)
    (folder / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="index.faiss"):
        MeanQueryCandidates.load(folder)


def test_append_equals_one_build(built):
    """Rows added in two calls get the approximate scores of one call (every vector a hit:
    fast-scan's rounded scores tie, and ties may come back in another order), and the same
    radii."""
    stage, stored, mask, text = built
    twice = stage.empty()
    assert len(twice) == 0 and twice.index.ntotal == 0
    twice.add(stored[:700], mask[:700], BRANCHES)
    twice.add(stored[700:], mask[700:], BRANCHES)
    assert len(twice) == N and twice.index.ntotal == stage.index.ntotal
    np.testing.assert_array_equal(twice.radii, stage.radii)
    every = CandidateSettings(nprobe=stage.nlist, hits=int(stage.index.ntotal))
    for i in range(len(text.vectors)):
        rows, scores = twice.scored(*query(text, i), every)
        want_rows, want_scores = stage.scored(*query(text, i), every)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_allclose(scores, want_scores, atol=1e-6)


def test_an_added_video_is_found(built):
    """A video appended later is a candidate of a query aimed at it."""
    stage, stored, mask, text = built
    grown = stage.empty()
    grown.add(stored[:-1], mask[:-1], BRANCHES)
    aimed = ClusteredVectors(N, dim=DIM, seed=0, videos_per_topic=50).queries([N - 1])
    assert N - 1 not in grown.candidates(*query(aimed, 0))
    grown.add(stored[-1:], mask[-1:], BRANCHES)
    assert N - 1 in grown.candidates(*query(aimed, 0))
    del text


def test_calibrate_picks_the_cheapest_reaching_the_target(built):
    stage, stored, mask, text = built
    truth = exact(text, stored, mask).topk(10, dim=1).indices.numpy()
    queries = [query(text, i) for i in range(len(truth))]
    grid = [CandidateSettings(p, 512, c) for p in (1, 16) for c in (16, 32, 128)]
    chosen = calibrate(stage, queries, list(truth), target_recall=0.9, grid=grid)
    # brute force over the grid: recall and work of every setting
    table = []
    for settings in grid:
        recalls, costs = [], []
        for (vectors, weights), want in zip(queries, truth, strict=True):
            got = stage.candidates(vectors, weights, settings)
            recalls.append(len(np.intersect1d(got, want)) / 10)
            costs.append(work(stage, settings, 26.0, len(vectors)))
        table.append((settings, np.mean(recalls), np.mean(costs)))
    reaching = [row for row in table if row[1] >= 0.9]
    assert reaching and len(reaching) < len(table)  # a choice to make
    best = min(reaching, key=lambda row: row[2])
    assert chosen.settings == best[0]
    assert chosen.recall == pytest.approx(best[1])
    unreachable = calibrate(stage, queries, list(truth), target_recall=1.01, grid=grid)
    assert unreachable.recall == pytest.approx(max(row[1] for row in table))


def test_default_nlist():
    assert default_nlist(2_400_000) == 4096  # 2 sqrt = 3098 -> 4096
    assert default_nlist(24_000_000) == 8192  # 2 sqrt = 9798 -> 8192
    assert default_nlist(100) == 2  # 2 sqrt = 20 -> 16, but 100 / 40 = 2.5 -> 2


def test_radii_are_the_largest_decoded_residual_of_each_list(built):
    """Per list, the largest norm of (decoded vector - its list's centroid): after a build
    from vectors, after a rebuild from the codes alone, and after vectors added with the codes
    already made of them."""
    stage, stored, mask, _ = built
    valid = stored[mask].astype(np.float32)
    codes = stage.encode(valid)
    decoded = stage.encoder.sa_decode(codes)
    _, lists = stage.encoder.quantizer.search(valid, 1)
    want = np.zeros(stage.nlist)
    for vector, number in zip(decoded, lists[:, 0], strict=True):
        want[number] = max(want[number], np.linalg.norm(vector - stage.centroids[number]))
    np.testing.assert_allclose(stage.radii, want, atol=1e-5)
    again = stage.empty()
    again.rebuild([(codes, np.arange(len(codes)))])
    np.testing.assert_allclose(again.radii, want, atol=1e-5)
    given = stage.empty()
    given.add_vectors(valid, np.arange(len(valid)), codes)
    np.testing.assert_allclose(given.radii, want, atol=1e-5)
    assert given.index.ntotal == len(valid)
    with pytest.raises(ValueError, match="3 vectors, 3 ids and 2 codes"):
        given.add_vectors(valid[:3], np.arange(3), codes[:2])


def test_probe_orders_lists_by_bound_and_search_scans_only_those(built):
    """``probe``: the lists of highest ``<q, c> + |q| r``; ``search``: the best decoded
    vectors of those lists only, none above its list's bound."""
    stage, stored, mask, text = built
    vectors, weights = query(text, 3)
    mean = (weights @ vectors).astype(np.float32)
    bound = stage.centroids @ mean + np.linalg.norm(mean) * stage.radii
    lists, coarse = stage.probe(mean, 5)
    np.testing.assert_array_equal(lists, np.argsort(-bound, kind="stable")[:5])
    np.testing.assert_allclose(coarse, stage.centroids[lists] @ mean, rtol=1e-6)
    sims, ids = stage.search(mean, 20, 5)
    valid = stored[mask].astype(np.float32)
    row_of = np.nonzero(mask)[0]
    branch_of = (np.nonzero(mask)[1] >= FRAMES).astype(int)
    _, assigned = stage.encoder.quantizer.search(valid, 1)
    inside = np.isin(assigned[:, 0], lists)
    decoded = stage.encoder.sa_decode(stage.encode(valid[inside])) @ mean
    want_ids = (row_of * 2 + branch_of)[inside]
    order = np.argsort(-decoded)[:20]
    assert set(ids.tolist()) <= set(want_ids.tolist())
    np.testing.assert_allclose(np.sort(sims)[::-1], decoded[order], atol=2e-3)
    every = stage.encoder.sa_decode(stage.encode(valid)) @ mean
    assert np.all(every <= bound[assigned[:, 0]] + 1e-5)  # a strict bound of what is scored


def test_the_bound_finds_a_best_match_in_a_loose_list():
    """A list whose centroid is far from the query but whose spread reaches it is probed
    before a tight list that is nearer on average: the order of ``<q, c>`` alone skips it."""
    rng = np.random.default_rng(0)
    dim = 16
    axes = np.eye(dim, dtype=np.float32)
    tight = 0.25 * axes[0] + 0.968 * axes[1]  # packed closely, at inner product 0.25 with q
    tight_members = tight + 0.01 * rng.standard_normal((400, dim)).astype(np.float32)
    spread = 0.15 * rng.standard_normal((400, dim)).astype(np.float32)
    spread[:, 0] = 0  # the loose members are orthogonal to the query...
    loose_members = axes[2] + spread
    loose_members[-20:] = 0.6 * axes[0] + 0.8 * axes[2] + spread[-20:] / 10  # ...but 20: the
    # best matches (0.6), enough for the PQ codebooks to learn their direction
    members = np.concatenate([tight_members, loose_members])
    members /= np.linalg.norm(members, axis=1, keepdims=True)
    query = axes[0]
    stage = MeanQueryCandidates.train(members, nlist=2)
    stage.add_vectors(members, np.arange(len(members)))
    best_list = stage.encoder.quantizer.search(members[-1:], 1)[1][0, 0]
    by_centroid = np.argsort(-(stage.centroids @ query))[0]
    assert by_centroid != best_list  # the usual order probes the tight list first
    lists, _ = stage.probe(query, 1)
    assert lists[0] == best_list
    _, ids = stage.search(query, 10, 1)
    assert set(ids.tolist()) <= set(range(len(members) - 20, len(members)))


def test_eight_bit_codes_of_older_indexes_still_search(built):
    """A trained 8-bit IVF-PQ (the first version of this stage) is searched as it is."""
    import faiss

    _, stored, mask, text = built
    sample = stored[mask].astype(np.float32)[::3]
    old = faiss.IndexIVFPQ(faiss.IndexFlatIP(DIM), DIM, 16, DIM // 8, 8, faiss.METRIC_INNER_PRODUCT)
    old.train(sample)
    stage = MeanQueryCandidates(faiss.serialize_index(old).tobytes())
    valid = stored[mask].astype(np.float32)
    ids = np.nonzero(mask)[0] * 2 + (np.nonzero(mask)[1] >= FRAMES)
    stage.rebuild([(stage.encode(valid), ids)])
    assert type(stage.index).__name__ == "IndexIVFPQ" and stage.index.ntotal == len(valid)
    truth = exact(text, stored, mask).topk(10, dim=1).indices.numpy()
    settings = CandidateSettings(nprobe=16, candidates=64)
    found = [
        len(np.intersect1d(stage.candidates(*query(text, i), settings), truth[i])) / 10
        for i in range(len(truth))
    ]
    assert np.mean(found) >= 0.95


def test_settings_refuse_non_positive():
    with pytest.raises(ValueError, match="nprobe"):
        CandidateSettings(nprobe=0)


def test_lists_packed_a_group_at_a_time_equal_one_conversion(built):
    """``index_of_codes`` (the lists gathered a few at a time, packed by faiss's code packer)
    holds the same lists, ids and packed codes in the same order, and searches alike, as
    faiss's one conversion of one plain index of every code."""
    import faiss

    stage, stored, mask, _ = built
    valid = stored[mask].astype(np.float32)
    codes, ids = stage.encode(valid), np.arange(len(valid), dtype=np.int64) * 7 + 3
    parts = [(codes[:700], ids[:700]), (codes[700:], ids[700:])]
    grouped = index_of_codes(stage.trained, parts, group_codes=300, batch=256)
    plain = faiss.deserialize_index(np.frombuffer(stage.trained, dtype=np.uint8))
    plain.add_sa_codes(codes, ids)
    whole = faiss.IndexIVFPQFastScan(plain)
    assert grouped.ntotal == whole.ntotal == len(valid)
    lists, expected = grouped.invlists, whole.invlists
    block = faiss.downcast_InvertedLists(expected).block_size
    for number in range(whole.nlist):
        count = expected.list_size(number)
        assert lists.list_size(number) == count
        if count:
            size = -(-count // 32) * block
            for get, length in (("get_ids", count), ("get_codes", size)):
                got = faiss.rev_swig_ptr(getattr(lists, get)(number), length).view(np.uint8)
                want = faiss.rev_swig_ptr(getattr(expected, get)(number), length).view(np.uint8)
                assert np.array_equal(got, want), (number, get)
    queries = np.random.default_rng(0).standard_normal((5, DIM)).astype(np.float32)
    grouped.nprobe = whole.nprobe = 16
    for a, b in zip(grouped.search(queries, 20), whole.search(queries, 20), strict=True):
        np.testing.assert_array_equal(a, b)


def test_codes_read_only_once_are_refused(built):
    """Parts that give their codes once (a generator) leave lists sized but unfilled: an error,
    not an index of garbage."""
    stage, stored, mask, _ = built
    valid = stored[mask].astype(np.float32)
    once = ((c, i) for c, i in [(stage.encode(valid), np.arange(len(valid)))])
    with pytest.raises(ValueError, match="changed between two reads"):
        index_of_codes(stage.trained, once)


def test_probed_codes_are_those_a_query_orthogonal_to_the_centroids_probes(built):
    """A query's bound is its centroid score plus its norm times a list's radius: for a query
    at right angles to every centroid (16 in 32 dimensions), the lists of widest radius come
    first, and ``probed_codes`` counts theirs."""
    stage, stored, mask, _ = built
    far = np.linalg.svd(stage.centroids)[2][-1]  # orthogonal to every centroid: radii decide
    lists = stage.index.invlists
    for nprobe in (1, 4, 16):
        probed, _ = stage.probe(far, nprobe)
        assert stage.probed_codes(nprobe) == sum(lists.list_size(int(i)) for i in probed)
    assert stage.probed_codes(16) == int(mask.sum())  # every list: every stored vector
