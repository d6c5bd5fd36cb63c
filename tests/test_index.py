import dataclasses
import json

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vcb_utils.config import preset
from vcb_utils.index import VideoIndex
from vcb_utils.model import TextEmbedding, VideoColBERT, VideoEmbedding
from vcb_utils.video import VideoReadError, preprocess_frames, read_clip

QUERIES = ["a red circle moves left", "a blue square turns green", "hi!"]
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
N_VIDEOS = 23


def make_model(**changes) -> VideoColBERT:
    torch.manual_seed(0)
    cfg = dataclasses.replace(preset("tiny").model, temporal_dropout=0.0, **changes)
    return VideoColBERT(cfg).eval()


@pytest.fixture(scope="module")
def model() -> VideoColBERT:
    return make_model()


def random_embedding(model: VideoColBERT, n: int, seed: int = 0) -> VideoEmbedding:
    """Random unit vectors shaped like the model's, with some short (padded) videos."""
    g = torch.Generator().manual_seed(seed)
    frames_n = model.cfg.max_frames
    video_n = frames_n + model.cfg.n_visual_expansion
    frames = F.normalize(torch.randn(n, frames_n, model.embed_dim, generator=g), dim=-1)
    video = F.normalize(torch.randn(n, video_n, model.embed_dim, generator=g), dim=-1)
    lengths = torch.randint(1, frames_n + 1, (n,), generator=g)
    frame_mask = torch.arange(frames_n)[None] < lengths[:, None]
    video_mask = F.pad(frame_mask, (0, model.cfg.n_visual_expansion), value=True)
    return VideoEmbedding(frames, frame_mask, video, video_mask)


def make_index(model: VideoColBERT, n: int = N_VIDEOS, seed: int = 0) -> VideoIndex:
    ids = [f"v{seed}_{i}" for i in range(n)]
    return VideoIndex(model.cfg, random_embedding(model, n, seed), ids, [f"{i}.mp4" for i in ids])


def stored(index: VideoIndex) -> VideoEmbedding:
    """The index's vectors as fp32, the input of brute-force scoring."""
    return VideoEmbedding(index.F.float(), index.F_mask, index.V.float(), index.V_mask)


def brute_force(model, index, queries, branch):
    with torch.no_grad():
        scores = model.score(model.encode_text(queries), stored(index))
    return {"both": scores.total, "F": scores.F, "V": scores.V}[branch]


def hit_scores(results, branch):
    key = {"both": "score_total", "F": "score_f", "V": "score_v"}[branch]
    return torch.tensor([[getattr(h, key) for h in r.hits] for r in results])


@pytest.mark.parametrize("branch", ["both", "F", "V"])
def test_search_equals_brute_force(model, branch):
    index = make_index(model)
    results = index.search(QUERIES, k=5, branch=branch, model=model, block_videos=4)
    expected, order = brute_force(model, index, QUERIES, branch).sort(dim=1, descending=True)
    rows = torch.tensor([[h.row for h in r.hits] for r in results])
    assert torch.equal(rows, order[:, :5])
    torch.testing.assert_close(hit_scores(results, branch), expected[:, :5])
    assert [[h.rank for h in r.hits] for r in results] == [[1, 2, 3, 4, 5]] * len(QUERIES)
    assert results[0].hits[0].id == index.ids[int(order[0, 0])]


def test_scores_match_the_original_fp32_vectors_up_to_fp16_rounding(model):
    embedding = random_embedding(model, N_VIDEOS)
    index = VideoIndex(model.cfg, embedding, [str(i) for i in range(N_VIDEOS)])
    with torch.no_grad():
        expected = model.score(model.encode_text(QUERIES), embedding).total
    results = index.search(QUERIES, k=N_VIDEOS, model=model)
    rows = torch.tensor([[h.row for h in r.hits] for r in results])
    got = hit_scores(results, "both")
    torch.testing.assert_close(got, expected.gather(1, rows), atol=2e-3, rtol=0)


def test_block_size_does_not_change_results(model):
    index = make_index(model)
    one = index.search(QUERIES, k=7, model=model, block_videos=1)
    all_at_once = index.search(QUERIES, k=7, model=model, block_videos=1000)
    assert [[h.row for h in r.hits] for r in one] == [[h.row for h in r.hits] for r in all_at_once]


def test_scan_scores_one_block_of_videos_at_a_time(model, monkeypatch):
    from vcb_utils.search import searcher

    blocks = []
    real_maxsim = searcher.maxsim

    def spy(q, d, *args):
        blocks.append(d.shape[0])
        return real_maxsim(q, d, *args)

    monkeypatch.setattr(searcher, "maxsim", spy)
    make_index(model).search(QUERIES, k=3, model=model, block_videos=5)
    assert max(blocks) == 5 and sum(blocks) == 2 * N_VIDEOS  # F and V of every video once


def test_k_larger_than_the_collection_returns_every_video_in_order(model):
    index = make_index(model, n=6)
    (result,) = index.search("a red circle", k=50, model=model)
    assert sorted(h.row for h in result.hits) == list(range(6))
    scores = [h.score_total for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    with pytest.raises(ValueError, match="k must be"):
        index.search("a red circle", k=0, model=model)


def test_similarity_matrices_and_tokens_are_what_the_heatmap_needs(model):
    index = make_index(model)
    (result,) = index.search(QUERIES[0], k=3, model=model)
    with torch.no_grad():
        text = model.encode_text([QUERIES[0]])
    q = text.vectors[0][text.mask[0]]
    for hit in result.hits:
        frames = index.F[hit.row][index.F_mask[hit.row]].float()
        video = index.V[hit.row][index.V_mask[hit.row]].float()
        torch.testing.assert_close(hit.sim_f, q @ frames.T)
        torch.testing.assert_close(hit.sim_v, q @ video.T)
        valid_frames = int(index.F_mask[hit.row].sum())
        assert hit.sim_v.shape[1] == valid_frames + model.cfg.n_visual_expansion
        score_f = float((q @ frames.T).amax(dim=1).mean())
        assert hit.score_f == pytest.approx(score_f, abs=1e-6)
    assert len(result.tokens) == len(result.expansion) == model.cfg.max_words
    assert result.tokens[:7] == [
        "<start_of_text>",
        "a",
        "red",
        "circle",
        "moves",
        "left",
        "<end_of_text>",
    ]
    assert result.expansion == [False] * 7 + [True] * (model.cfg.max_words - 7)
    assert all(token == "<pad>" for token in result.tokens[7:])


def test_without_query_expansion_rows_are_the_real_tokens():
    model = make_model(query_expansion=False)
    (result,) = make_index(model).search("a red circle", k=2, model=model)
    assert result.tokens == ["<start_of_text>", "a", "red", "circle", "<end_of_text>"]
    assert not any(result.expansion)
    assert result.hits[0].sim_f.shape[0] == 5


def test_save_load_round_trip_gives_identical_results(model, tmp_path):
    index = make_index(model)
    before = index.search(QUERIES, k=4, model=model)
    loaded = VideoIndex.load(index.save(tmp_path / "idx"), model=model)
    after = loaded.search(QUERIES, k=4, model=model)
    assert loaded.ids == index.ids and loaded.paths == index.paths
    assert loaded.config == index.config and loaded.framerate == index.framerate
    for name in ("F", "F_mask", "V", "V_mask"):
        assert torch.equal(getattr(loaded, name), getattr(index, name))
        assert getattr(loaded, name).dtype == getattr(index, name).dtype
    assert loaded.F.dtype == torch.float16
    for a, b in zip(before, after, strict=True):
        assert a.tokens == b.tokens
        for x, y in zip(a.hits, b.hits, strict=True):
            assert (x.id, x.score_total, x.score_f, x.score_v) == (
                y.id,
                y.score_total,
                y.score_f,
                y.score_v,
            )
            assert torch.equal(x.sim_f, y.sim_f) and torch.equal(x.sim_v, y.sim_v)


def test_rows_read_from_saved_segments_are_the_stored_rows(model, tmp_path, monkeypatch):
    """``read_rows`` of a loaded index (two saved segments, then rows in RAM) reads the
    segments' vectors through the files (``pread``) and gives, for rows in any order and
    repeated, exactly what was stored."""
    from vcb_utils.search import collection

    index = make_index(model, 10, seed=1)
    index.save(tmp_path / "idx")
    index.add_embeddings(random_embedding(model, 7, seed=2), [f"b{i}" for i in range(7)])
    index.save(tmp_path / "idx")
    loaded = VideoIndex.load(tmp_path / "idx")
    loaded.add_embeddings(random_embedding(model, 4, seed=3), [f"c{i}" for i in range(4)])
    read = []
    original = collection.read_file_rows

    def counted(array, rows, out, places) -> bool:
        done = original(array, rows, out, places)
        read.append(len(rows) if done else 0)
        return done

    monkeypatch.setattr(collection, "read_file_rows", counted)
    rows = torch.tensor([20, 3, 12, 3, 0, 16, 9, 19, 10])
    vectors, mask = loaded.vectors(rows)
    every = torch.cat([loaded.F, loaded.V], dim=1)
    every_mask = torch.cat([loaded.F_mask, loaded.V_mask], dim=1)
    assert torch.equal(vectors, every[rows]) and torch.equal(mask, every_mask[rows])
    assert sum(read) == 7  # the rows of the two segments, through the files


def test_append_equals_building_in_one_go(model):
    first, second = random_embedding(model, 10, seed=1), random_embedding(model, 9, seed=2)
    index = VideoIndex(model.cfg, first, [f"a{i}" for i in range(10)])
    index.add_embeddings(second, [f"b{i}" for i in range(9)])
    whole = VideoIndex(
        model.cfg,
        VideoEmbedding(
            *(
                torch.cat([getattr(first, f), getattr(second, f)])
                for f in ("frames", "frame_mask", "video", "video_mask")
            )
        ),
        index.ids,
    )
    assert len(index) == 19
    got = index.search(QUERIES, k=19, model=model)
    want = whole.search(QUERIES, k=19, model=model)
    assert [[h.id for h in r.hits] for r in got] == [[h.id for h in r.hits] for r in want]
    with pytest.raises(ValueError, match="duplicate video ids"):
        index.add_embeddings(second, [f"b{i}" for i in range(9)])


def test_config_mismatch_is_refused_naming_the_fields(model, tmp_path):
    make_index(model).save(tmp_path / "idx")
    other = make_model(max_words=12, n_visual_expansion=3)
    with pytest.raises(ValueError, match="max_words.*n_visual_expansion"):
        VideoIndex.load(tmp_path / "idx", model=other)
    with pytest.raises(ValueError, match="max_words"):
        VideoIndex.load(tmp_path / "idx").search("a dog", model=other)
    same_vectors = make_model(lambda_f=2.0)  # a training-only field
    assert len(VideoIndex.load(tmp_path / "idx", model=same_vectors)) == N_VIDEOS


def test_long_query_warns_and_empty_query_errors(model):
    index = make_index(model)
    long_query = " ".join(["word"] * 40)
    with pytest.warns(UserWarning, match="truncated"):
        index.search(long_query, model=model)
    with pytest.raises(ValueError, match="empty query"):
        index.search("   ", model=model)
    with pytest.raises(ValueError, match="empty query"):
        index.search(["a dog", ""], model=model)


def test_an_f_only_index_has_no_v_branch():
    model = make_model(mode="F")
    embedding = random_embedding(model, 5)
    embedding = VideoEmbedding(embedding.F, embedding.F_mask, None, None)
    index = VideoIndex(model.cfg, embedding, list("abcde"))
    (result,) = index.search("a dog", k=2, model=model)
    assert result.hits[0].score_v is None and result.hits[0].sim_v is None
    assert result.hits[0].score_total == result.hits[0].score_f
    with pytest.raises(ValueError, match="branch 'V'"):
        index.search("a dog", branch="V", model=model)


def write_clip(path, colour, n_frames=8, fps=8):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(n_frames):
            image = np.full((32, 32, 3), colour, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [write_clip(folder / f"clip{i}.mp4", c) for i, c in enumerate(COLOURS)]


def test_build_encodes_files_like_the_model(model, clips, tmp_path):
    index = VideoIndex.build(model, clips[:3], framerate=8.0, batch_size=2)
    assert index.ids == ["clip0", "clip1", "clip2"]
    assert index.paths == [str(p) for p in clips[:3]]
    frames = read_clip(clips[1], framerate=8.0, max_frames=model.cfg.max_frames).frames
    video, mask = preprocess_frames(
        frames, model.image_size, model.image_mean, model.image_std, model.cfg.max_frames
    )
    with torch.no_grad():
        expected = model.encode_video(video[None], mask[None])
    torch.testing.assert_close(index.F[1].float(), expected.F[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(index.V[1].float(), expected.V[0], atol=2e-3, rtol=0)
    index.add(model, clips[3:], ids=["extra"])
    assert index.ids[-1] == "extra" and len(index) == 4
    loaded = VideoIndex.load(index.save(tmp_path / "idx"), model=model)
    assert loaded.framerate == 8.0
    assert loaded.search("red", k=4, model=model)[0].hits[0].id in index.ids


@pytest.mark.parametrize("num_workers", [0, 2])
def test_build_raises_or_skips_unreadable_files(model, clips, tmp_path, num_workers):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    missing = tmp_path / "missing.mp4"
    with pytest.raises(VideoReadError, match="broken.mp4"):
        VideoIndex.build(model, [clips[0], broken], framerate=8.0, num_workers=num_workers)
    with pytest.warns(UserWarning, match=r"skipped 2 (?s:.*)broken.mp4(?s:.*)missing.mp4"):
        index = VideoIndex.build(
            model,
            [clips[0], broken, clips[1], missing],
            framerate=8.0,
            batch_size=1,
            num_workers=num_workers,
            on_error="skip",
        )
    assert index.ids == ["clip0", "clip1"]


def test_bad_arguments_are_refused(model):
    index = make_index(model)
    with pytest.raises(ValueError, match="branch must be"):
        index.search("a dog", branch="frames", model=model)
    with pytest.raises(ValueError, match="meanP"):
        VideoIndex(make_model(mode="meanP").cfg, random_embedding(model, 2), ["a", "b"])
    with pytest.raises(ValueError, match="3 videos but 2 ids"):
        index.add_embeddings(random_embedding(model, 3), ["x", "y"])


def test_text_embedding_top_k_is_usable_without_the_model(model):
    index = make_index(model)
    with torch.no_grad():
        text = model.encode_text(QUERIES)
    text = TextEmbedding(text.vectors.float(), text.mask, text.ids)
    scores, rows = index.top_k(text, k=3)
    expected = brute_force(model, index, QUERIES, "both").topk(3, dim=1)
    torch.testing.assert_close(scores, expected.values)
    assert torch.equal(rows, expected.indices)


# ---- saving: versions, concurrent writers, damaged files, argument checks (issue 11) ----------
def test_copies_loaded_from_one_folder_and_saved_in_turn_keep_both_additions(model, tmp_path):
    make_index(model, n=4).save(tmp_path / "idx")
    first, second = VideoIndex.load(tmp_path / "idx"), VideoIndex.load(tmp_path / "idx")
    first.add_embeddings(random_embedding(model, 2, seed=1), ["a", "b"])
    second.add_embeddings(random_embedding(model, 3, seed=2), ["c", "d", "e"])
    first.save(tmp_path / "idx")
    second.save(tmp_path / "idx")
    assert second.ids == make_index(model, n=4).ids + ["a", "b", "c", "d", "e"]
    loaded = VideoIndex.load(tmp_path / "idx")
    assert loaded.ids == second.ids
    assert torch.equal(loaded.V, second.V) and torch.equal(loaded.F_mask, second.F_mask)
    torch.testing.assert_close(loaded.F[4:6], first.F[4:6])
    third = VideoIndex.load(tmp_path / "idx")
    first.add_embeddings(random_embedding(model, 1, seed=3), ["z"])
    third.add_embeddings(random_embedding(model, 1, seed=4), ["z"])
    first.save(tmp_path / "idx")
    with pytest.raises(ValueError, match="duplicate video ids"):
        third.save(tmp_path / "idx")
    assert VideoIndex.load(tmp_path / "idx").ids == second.ids + ["z"]


def test_saving_over_videos_this_index_lacks_is_refused(model, tmp_path):
    make_index(model, n=4).save(tmp_path / "idx")
    with pytest.raises(ValueError, match="holds 4 videos that this index lacks"):
        make_index(model, n=3, seed=1).save(tmp_path / "idx")
    rebuilt = make_index(model, n=5, seed=0)  # the same ids and more: replaces the saved index
    rebuilt.save(tmp_path / "idx")
    assert VideoIndex.load(tmp_path / "idx").ids == rebuilt.ids


LAYOUT = [".lock", "catalogue.lance", "index.json", "segments"]
"""What an index folder holds besides its one version manifest (and ann/ once it has one)."""


def test_saves_switch_one_pointer_and_keep_one_version(model, tmp_path):
    index = make_index(model, n=3)
    for _ in range(3):
        index.save(tmp_path / "idx")
    pointer = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert pointer == {"format": "vcb-video-index", "version": 4, "current": "v000003"}
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted([*LAYOUT, "v000003.json"])
    manifest = json.loads((tmp_path / "idx" / "v000003.json").read_text())
    assert [s["name"] for s in manifest["segments"]] == ["s000001"]  # nothing added: no segment
    index.add_embeddings(random_embedding(model, 2, seed=4), ["x", "y"])
    index.save(tmp_path / "idx")
    segments = tmp_path / "idx" / "segments"
    assert sorted(p.name for p in segments.iterdir()) == ["s000001", "s000002"]
    assert sorted(p.name for p in (segments / "s000002").iterdir()) == ["mask.npy", "vectors.npy"]


def write_legacy(index: VideoIndex, folder, version: int) -> None:
    """``index`` in the layout of format 2 (one version at the top) or 3 (version folders)."""
    from safetensors.torch import save_file

    target = folder if version == 2 else folder / "v000004"
    target.mkdir(parents=True)
    tensors = {name: getattr(index, name).contiguous() for name in ("F", "F_mask", "V", "V_mask")}
    save_file(tensors, str(target / "index.safetensors"))
    manifest = {
        "format": "vcb-video-index",
        "version": version,
        "model": index.config,
        "framerate": index.framerate,
        "ids": index.ids,
        "paths": index.paths,
    }
    (target / "index.json").write_text(json.dumps(manifest))
    if version == 3:
        pointer = {"format": "vcb-video-index", "version": 3, "current": "v000004"}
        (folder / "index.json").write_text(json.dumps(pointer))


@pytest.mark.parametrize("version", [2, 3])
def test_an_old_format_folder_loads_and_saving_converts_it(model, tmp_path, version):
    index = make_index(model, n=3)
    legacy = tmp_path / "legacy"
    write_legacy(index, legacy, version)
    loaded = VideoIndex.load(legacy)
    assert loaded.ids == index.ids and torch.equal(loaded.V, index.V)
    loaded.add_embeddings(random_embedding(model, 1, seed=5), ["new"])
    loaded.save(legacy)
    expected = "v000001.json" if version == 2 else "v000005.json"
    assert sorted(p.name for p in legacy.iterdir()) == sorted([*LAYOUT, expected])
    converted = VideoIndex.load(legacy)
    assert converted.ids == index.ids + ["new"]
    assert torch.equal(converted.F[:3], index.F) and converted.paths[:3] == index.paths


def damage(path, kind):
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\xff\xfe\x00garbage", "empty": b""}[kind]
    )


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize(
    "name",
    ["index.json", "v000001.json", "segments/s000001/vectors.npy", "segments/s000001/mask.npy"],
)
def test_a_damaged_index_file_is_a_clear_error(model, tmp_path, name, kind):
    make_index(model, n=3).save(tmp_path / "idx")
    damage(tmp_path / "idx" / name, kind)
    with pytest.raises(ValueError, match=rf"{name} is corrupt .*VideoIndex\.build"):
        VideoIndex.load(tmp_path / "idx")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: {k: v for k, v in m.items() if k != "segments"},
        lambda m: {**m, "count": m["count"] - 1},
        lambda m: {**m, "count": 2, "segments": [{"name": "s000001", "rows": 2}]},
        lambda m: {**m, "version": 1},
    ],
    ids=["no segments", "wrong count", "too few rows", "old version"],
)
def test_an_inconsistent_manifest_is_a_clear_error(model, tmp_path, change):
    make_index(model, n=3).save(tmp_path / "idx")
    path = tmp_path / "idx" / "v000001.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=r"v000001.*VideoIndex\.build"):
        VideoIndex.load(tmp_path / "idx")


def test_k_ids_and_paths_of_the_wrong_type_are_refused(model, clips):
    index = make_index(model, n=3)
    with torch.no_grad():
        text = model.encode_text(["a dog"])
    text = TextEmbedding(text.vectors.float(), text.mask, text.ids)
    for k in (1.5, True, "3"):
        with pytest.raises(TypeError, match="k must be an int"):
            index.top_k(text, k)
        with pytest.raises(TypeError, match="k must be an int"):
            index.search("a dog", k=k, model=model)
    assert index.top_k(text, np.int64(2))[1].shape == (1, 2)
    with pytest.raises(TypeError, match="ids must be a list of strings"):
        index.add_embeddings(random_embedding(model, 3, seed=1), "abc")
    with pytest.raises(TypeError, match="paths must be a list of strings"):
        index.add_embeddings(random_embedding(model, 1, seed=1), ["x"], "x.mp4")
    with pytest.raises(TypeError, match="paths must be a list of strings"):
        VideoIndex.build(model, clips[0])
    assert len(index) == 3
