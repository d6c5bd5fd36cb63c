"""An index that knows its recall: ``calibrate`` against a brute-force measurement, the settings
it keeps and saves, the ``recall=`` knob, the once-only warning, and old candidate engines.
Small collections: seconds each."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from test_index import make_model, random_embedding
from test_search_scale import cli, clustered, recall

from vcb_utils.index import VideoIndex
from vcb_utils.model import TextEmbedding
from vcb_utils.search.calibration import Calibration


@pytest.fixture(scope="module")
def built():
    """600 clustered videos with the default (mean-query) engine, unsaved."""
    vectors, index = clustered(600, dim=32, seed=7)
    index.build_ann(nlist=16)
    return vectors, index


def held_out_recalls(index: VideoIndex, rows: list[int], **settings) -> list[float]:
    """Brute force: each row's own vectors as a query, the row left out of both top-10s; the
    recall@10 of each."""
    recalls = []
    for row in rows:
        vectors, mask = index.vectors(torch.tensor([row]))
        text = TextEmbedding(vectors.float(), mask, torch.zeros(mask.shape, dtype=torch.long))
        exact = index.top_k(text, 11, exact=True)[1][0].tolist()
        found = index.top_k(text, 11, **settings)[1][0].tolist()
        want = [r for r in exact if r != row][:10]
        got = [r for r in found if r != row][:10]
        recalls.append(recall(torch.tensor([got]), torch.tensor([want])))
    return recalls


def test_calibrate_estimates_the_recall_a_brute_force_count_finds(built):
    """The estimate and its standard error are those of a brute-force count; the settings kept
    are the cheapest whose estimate minus one standard error reaches the target."""
    _, index = built
    index.settings = index.ann.default_settings(index.ann.nlist)
    measured = index.calibrate(0.9, sample=24, seed=3)
    assert measured.source == "stored vectors" and measured.queries == 24
    assert measured.recall >= 0.9 and index.calibration is measured
    chosen = measured.settings
    assert index.settings == type(index.settings)(**chosen)
    rows = torch.randperm(len(index), generator=torch.Generator().manual_seed(3))[:24].tolist()
    counted = held_out_recalls(index, rows)
    assert np.mean(counted) == pytest.approx(measured.recall)
    point = next(p for p in measured.curve if p["settings"] == chosen)
    assert point["stderr"] == pytest.approx(np.std(counted) / np.sqrt(len(counted)))
    costs = {json.dumps(p["settings"]): p["cost"] for p in measured.curve}
    reaching = [p for p in measured.curve if p["recall"] - p["stderr"] >= 0.9]
    assert costs[json.dumps(chosen)] == min(p["cost"] for p in reaching)  # the cheapest


def test_a_point_reaches_a_recall_only_by_its_lower_bound():
    """Picking the cheapest of noisy estimates favours a lucky one: a point reaches a recall
    when its estimate minus one standard error does (saved curves without one: the estimate)."""
    curve = [
        {"settings": {"nprobe": 1}, "recall": 0.96, "stderr": 0.03, "cost": 1.0},
        {"settings": {"nprobe": 2}, "recall": 0.97, "stderr": 0.01, "cost": 2.0},
        {"settings": {"nprobe": 3}, "recall": 0.95, "cost": 0.5},
    ]
    calibration = Calibration(0.95, 0.97, {"nprobe": 2}, 64, "captions", 100, curve)
    assert calibration.settings_for(0.95) == ({"nprobe": 3}, 0.95)
    assert calibration.settings_for(0.955) == ({"nprobe": 2}, 0.97)
    assert calibration.settings_for(0.99) == ({"nprobe": 2}, 0.97)  # none: the best measured


def test_an_unreachable_target_keeps_the_best_measured_settings(built):
    _, index = built
    measured = index.calibrate(1.0, sample=8)
    best = max(p["recall"] for p in measured.curve)
    assert measured.recall == best


def test_calibration_is_saved_with_its_settings_and_printed(built, tmp_path, capsys):
    vectors, index = built
    index.save(tmp_path / "idx")
    assert cli("calibrate", "--index", tmp_path / "idx", "--target", "0.9", "--queries", "8") == 0
    out = capsys.readouterr().out
    assert "recall@10: " in out and "8 stored vectors (target 0.9" in out
    loaded = VideoIndex.load(tmp_path / "idx")
    assert loaded.calibration.target == 0.9 and loaded.calibration.queries == 8
    assert loaded.settings == type(loaded.settings)(**loaded.calibration.settings)
    current = json.loads((tmp_path / "idx" / "index.json").read_text())["current"]
    manifest = json.loads((tmp_path / "idx" / f"{current}.json").read_text())
    assert manifest["ann"]["calibration"]["recall"] == loaded.calibration.recall
    assert manifest["ann"]["settings"] == loaded.calibration.settings
    assert cli("info", "--index", tmp_path / "idx") == 0
    assert f"recall@10: {loaded.calibration.recall:.3f}" in capsys.readouterr().out
    loaded.add_embeddings(vectors.videos(0, 1), ["one more"])  # a later save keeps it
    loaded.save(tmp_path / "idx")
    assert VideoIndex.load(tmp_path / "idx").calibration == loaded.calibration


def uncalibrated(n: int = 300) -> tuple:
    vectors, index = clustered(n, dim=32, seed=8)
    index.build_ann(nlist=8)
    index.settings = dataclasses.replace(index.settings, candidates=100, exact=20)
    return vectors, index


def test_a_search_never_calibrated_says_so_once():
    vectors, index = uncalibrated()
    queries = vectors.queries(range(0, 300, 50))
    with pytest.warns(UserWarning, match="never calibrated on this index"):
        index.top_k(queries, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.top_k(queries, 10)  # once
    assert index.stats()["ann"]["calibration"] is None
    with pytest.raises(ValueError, match="never calibrated: index.calibrate"):
        index.top_k(queries, 5, recall=0.9)
    index.calibrate(0.9, sample=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        index.top_k(queries, 10)


def test_the_recall_knob_trades_speed_for_recall(built):
    vectors, index = built
    queries = vectors.queries(range(0, 600, 60))
    index.calibrate(0.5, sample=16)
    cost = {json.dumps(p["settings"]): p["cost"] for p in index.calibration.curve}
    low, high = index.settings_for(0.1), index.settings_for(0.99)
    assert cost[json.dumps(dataclasses.asdict(low))] <= cost[json.dumps(dataclasses.asdict(high))]
    exact = index.top_k(queries, 10, exact=True)
    assert torch.equal(index.top_k(queries, 10, recall=1.0)[1], exact[1])  # 1.0: the scan
    assert recall(index.top_k(queries, 10, recall=0.99)[1], exact[1]) >= 0.8


def test_calibration_on_captions_encodes_them_with_the_model():
    model = make_model()
    n = 40
    ids = [f"v{i}" for i in range(n)]
    captions = [f"a {c} circle moves" for c in ("red", "blue", "green", "white")] * (n // 4)
    index = VideoIndex(model.cfg, random_embedding(model, n), ids, captions=captions)
    index.build_ann(nlist=2)
    measured = index.calibrate(0.9, model=model, sample=6)
    assert measured.source == "captions" and measured.queries == 6
    assert measured.recall == pytest.approx(1.0)  # the candidate budgets cover 40 videos
    asked = index.calibrate(0.9, ["a red circle"], model=model)
    assert asked.queries == 1


def test_an_index_saved_with_the_ivfpq_engine_and_no_engine_name_still_loads(tmp_path):
    vectors, index = clustered(300)
    index.build_ann(nlist=8, engine="ivfpq-fastscan")
    index.save(tmp_path / "idx")
    path = tmp_path / "idx" / "v000001.json"
    manifest = json.loads(path.read_text())
    del manifest["ann"]["engine"], manifest["ann"]["bits"]  # as format 4 wrote it before
    path.write_text(json.dumps(manifest))
    loaded = VideoIndex.load(tmp_path / "idx")
    assert loaded.ann.name == "ivfpq-fastscan" and loaded.calibration is None
    queries = vectors.queries(range(0, 300, 30))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(loaded.top_k(queries, 10)[1], index.top_k(queries, 10)[1])


def test_a_damaged_calibration_is_a_clear_error(built, tmp_path):
    _, index = built
    index.calibrate(0.9, sample=4)
    index.save(tmp_path / "idx")
    current = json.loads((tmp_path / "idx" / "index.json").read_text())["current"]
    path = tmp_path / "idx" / f"{current}.json"
    manifest = json.loads(path.read_text())
    manifest["ann"]["calibration"]["recall"] = "high"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="calibration is damaged .*calibrate"):
        VideoIndex.load(tmp_path / "idx")


def test_calibration_round_trips_through_json():
    point = {"settings": {"nprobe": 1}, "recall": 0.5, "cost": 3.0}
    measured = Calibration(0.9, 0.5, {"nprobe": 1}, 4, "captions", 10, [point])
    assert Calibration.from_json(json.loads(json.dumps(measured.to_json()))) == measured
    assert measured.settings_for(0.99) == ({"nprobe": 1}, 0.5)
    assert np.isclose(measured.summary()["recall"], 0.5) and "curve" not in measured.summary()


def test_without_text_the_settings_only_grow_and_with_text_they_may_shrink(built):
    vectors, index = built
    start = dataclasses.replace(index.settings, nprobe=8, hits=4096, candidates=300, exact=64)
    index.settings = start
    index.calibrate(0.1, sample=8)  # held-out stored videos: never cheaper than before
    pairs = zip(dataclasses.astuple(index.settings), dataclasses.astuple(start), strict=True)
    assert all(now >= before for now, before in pairs)
    index.settings = start
    text = vectors.queries(range(0, 600, 50))
    measured = index.calibrate(0.1, text)  # encoded text queries: the cheapest that reaches 0.1
    assert measured.source == "encoded queries" and measured.queries == len(text.vectors)
    assert index.ann.cost(index.settings, 32, 26) < index.ann.cost(start, 32, 26)
