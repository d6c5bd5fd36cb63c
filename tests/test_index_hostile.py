"""An index used as a hostile user would (issue 19): folders that are not the index's, vectors
that do not fit, concurrent additions, a full disk, a fork, flipped bytes, damaged files, bad
command-line values. Small indexes of 8-dimensional vectors: seconds in all."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from test_faults import CONFIG, FIRST_IDS, vectors
from test_index import random_embedding
from test_search_scale import clustered, library  # noqa: F401 (a fixture)

from vcb_utils import index_cli
from vcb_utils.index import VideoIndex
from vcb_utils.model import load_checkpoint
from vcb_utils.search import build as index_build
from vcb_utils.search import catalogue, encoding, store

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork, rlimit, symlinks")


def saved_index(directory: Path, ids=FIRST_IDS, paths=None) -> VideoIndex:
    index = VideoIndex(CONFIG, vectors(ids), ids, paths)
    index.save(directory)
    return index


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def cli(*args) -> int:
    return index_cli.main([str(a) for a in args])


# ---- 1. a save deletes only what the index wrote, and not where the user's files are ------------
def test_an_index_in_or_around_the_video_folder_is_refused(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "clip0.mp4").write_bytes(b"a video")
    paths = [str(clips / f"clip{i}.mp4") for i in range(len(FIRST_IDS))]
    index = VideoIndex(CONFIG, vectors(FIRST_IDS), FIRST_IDS, paths)
    for where, relation in ((clips, "is"), (clips / "idx", "is inside"), (tmp_path, "contains")):
        with pytest.raises(ValueError, match=f"{relation} the video folder"):
            index.save(where)
    assert files_under(tmp_path) == {"clips/clip0.mp4": b"a video"}
    assert cli("build", "--index", clips, "--checkpoint", tmp_path / "none", "--videos", clips) == 2
    assert "is the video folder" in capsys.readouterr().err
    assert files_under(tmp_path) == {"clips/clip0.mp4": b"a video"}


def test_a_folder_that_is_not_an_index_is_refused_and_loses_nothing(tmp_path):
    folder = tmp_path / "mine"
    (folder / "segments" / "s000001").mkdir(parents=True)
    (folder / "segments" / "s000001" / "thesis.txt").write_text("years of work")
    (folder / "v000001.json").write_text("{}")
    before = files_under(folder)
    with pytest.raises(ValueError, match="is not empty .* not a video index"):
        saved_index(folder)
    assert files_under(folder) == before and not (folder / ".lock").exists()


def test_saves_delete_only_the_files_the_index_wrote(tmp_path):
    directory = tmp_path / "idx"
    index = saved_index(directory)
    mine = {
        "v000099.json": b"{}",  # named like a version
        "segments/s000077/vectors.npy": b"mine",  # like a segment
        "segments/notes.txt": b"mine",
        "ann/notes.txt": b"mine",
        "README.txt": b"mine",
    }
    for name, data in mine.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    for round_ in range(2):  # an append, then a replace with a candidate index
        ids = [f"more{round_}"]
        index.add_embeddings(vectors(ids), ids)
        if round_:
            index = VideoIndex(CONFIG, vectors(index.ids), index.ids)
            index.build_ann(nlist=2)
        index.save(directory)
    assert {k: v for k, v in files_under(directory).items() if k in mine} == mine
    assert VideoIndex.load(directory).ids == [*FIRST_IDS, "more0", "more1"]


def test_a_symlinked_segments_folder_loses_nothing_outside(tmp_path):
    directory, outside = tmp_path / "idx", tmp_path / "elsewhere"
    saved_index(directory)
    (directory / "segments").rename(outside)
    (directory / "segments").symlink_to(outside)
    (outside / "holiday.mp4").write_bytes(b"mine")
    (outside / "s000050").mkdir()
    (outside / "s000050" / "vectors.npy").write_bytes(b"mine too")
    index = VideoIndex.load(directory)
    with pytest.warns(UserWarning, match="symlink out of the index folder"):
        VideoIndex(CONFIG, vectors(index.ids), index.ids).save(directory)  # a replace
    assert (outside / "holiday.mp4").read_bytes() == b"mine"
    assert (outside / "s000050" / "vectors.npy").read_bytes() == b"mine too"
    assert VideoIndex.load(directory).ids == FIRST_IDS


# ---- 2. vectors that do not fit are refused at add; a failed save changes nothing --------------
def bad_embeddings():
    good = vectors(["x"])
    f, fm, v, vm = good.F, good.F_mask, good.V, good.V_mask
    wide = torch.cat([f, f], dim=1)
    nan = f.clone()
    nan[0, 1, 3] = float("nan")
    return {
        "of size 16": (torch.cat([f, f], dim=2), fm, torch.cat([v, v], dim=2), vm),
        "F vectors per video": (wide, torch.ones(wide.shape[:2], dtype=torch.bool), v, vm),
        "F_mask must be bool": (f, fm.float(), v, vm),
        "F must be a float tensor": (f.int(), fm, v, vm),
        "not finite": (nan, fm, v, vm),
        "beyond 65504": (f * 1e6, fm, v, vm),
    }


@pytest.mark.parametrize("problem", sorted(bad_embeddings()))
def test_vectors_that_do_not_fit_the_index_are_refused_at_add(tmp_path, problem):
    from vcb_utils.model import VideoEmbedding

    saved_index(tmp_path / "idx")
    index = VideoIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match=problem):
        index.add_embeddings(VideoEmbedding(*bad_embeddings()[problem]), ["x"])
    index.add_embeddings(vectors(["y"]), ["y"])  # the index is as it was
    index.save(tmp_path / "idx")
    assert VideoIndex.load(tmp_path / "idx").ids == [*FIRST_IDS, "y"]


def test_vectors_that_are_not_unit_vectors_give_a_warning():
    embedding = vectors(FIRST_IDS)
    embedding.F.mul_(3)
    with pytest.warns(UserWarning, match="not unit vectors"):
        VideoIndex(CONFIG, embedding, FIRST_IDS)


def test_a_save_that_fails_leaves_the_previous_version_current_and_the_index_usable(
    tmp_path, monkeypatch
):
    directory = tmp_path / "idx"
    saved_index(directory)
    index = VideoIndex.load(directory)
    index.add_embeddings(vectors(["new"]), ["new"])
    real = store.open_segment

    def failing(folder, name, *args):
        if name != "s000001":
            raise ValueError(f"{name} cannot be opened")
        return real(folder, name, *args)

    monkeypatch.setattr(store, "open_segment", failing)
    with pytest.raises(ValueError, match="cannot be opened"):
        index.save(directory)
    monkeypatch.undo()
    assert store.current_version(directory).name == "v000001"
    assert sorted(p.name for p in (directory / "segments").iterdir()) == ["s000001"]
    assert VideoIndex.load(directory).ids == FIRST_IDS
    assert index.top_k(query(), 2, exact=True)[1].shape == (1, 2)  # usable, and savable
    index.save(directory)
    assert VideoIndex.load(directory).ids == [*FIRST_IDS, "new"]


def query():
    from vcb_utils.model import TextEmbedding

    text = vectors(["query"]).F[:, :3].float()
    return TextEmbedding(text, torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3))


# ---- 3. concurrent additions through the command line ------------------------------------------
def test_concurrent_cli_additions_each_add_all_of_their_own_videos(
    library,  # noqa: F811 (the fixture)
    tmp_path,
    monkeypatch,
    capsys,
):
    model, _ = load_checkpoint(library / "ckpt")
    real_merge = index_build.merge_shards
    monkeypatch.setattr(encoding, "encode_files", fake_encoder(model))
    clips = sorted(str(p.relative_to(library / "clips")) for p in library.rglob("clip*.mp4"))
    lists = {}
    for name, chosen in (("first", clips[:1]), ("a", clips[1:3]), ("b", clips[3:])):
        lists[name] = tmp_path / f"{name}.csv"
        with open(lists[name], "w", newline="") as file:
            csv.writer(file).writerows([["video"], *[[c] for c in chosen]])
    index = tmp_path / "idx"
    common = ("--index", index, "--checkpoint", library / "ckpt", "--video-root", library / "clips")
    assert cli("build", *common, "--csv", lists["first"]) == 0
    capsys.readouterr()
    runs = []

    def merge_after_another_run(*args):  # run b adds while run a is about to merge
        if not runs:
            runs.append("b")
            runs.append(cli("add", *common, "--csv", lists["b"]))
        return real_merge(*args)

    monkeypatch.setattr(index_build, "merge_shards", merge_after_another_run)
    assert cli("add", *common, "--csv", lists["a"]) == 0 and runs == ["b", 0]
    out = capsys.readouterr().out
    assert "added 1 of the 1 videos" in out and "added 2 of the 2 videos" in out
    ids = VideoIndex.load(index).ids
    assert sorted(ids) == sorted(Path(c).with_suffix("").as_posix() for c in clips)
    assert not index_build.build_folder(index).exists()


def fake_encoder(model):
    """``encoding.encode_files`` without decoding: random unit vectors, seeded by the ids."""

    def encode(_, paths, ids, captions, *args, **kwargs):
        seed = sum(map(ord, "".join(ids)))
        return random_embedding(model, len(paths), seed), list(ids), list(paths), list(captions)

    return encode


# ---- 6. a full disk (a file size limit) during save -----------------------------------------
@contextmanager
def file_size_limit(size: int):
    """Writes past ``size`` bytes fail with EFBIG (as on a full disk) instead of a signal."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_full_disk_during_save_is_an_error_and_keeps_the_index(tmp_path):
    directory = tmp_path / "idx"
    saved_index(directory)
    index = VideoIndex.load(directory)
    ids = [f"big{i}" for i in range(200)]
    index.add_embeddings(vectors(ids), ids)
    with file_size_limit(20_000), pytest.raises(OSError) as failed:
        index.save(directory)
    message = str(failed.value)
    assert "File too large" in message and "the save needs about" in message
    assert "the previous version is still current" in message
    assert store.current_version(directory).name == "v000001"
    assert sorted(p.name for p in (directory / "segments").iterdir()) == ["s000001"]
    expected = vectors([*FIRST_IDS, *ids])
    assert torch.equal(index.F, expected.F.half())  # the index in memory is intact ...
    index.save(directory)  # ... and saved once there is room
    assert VideoIndex.load(directory).ids == [*FIRST_IDS, *ids]


def test_a_save_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    directory = tmp_path / "idx"
    saved_index(directory)
    index = VideoIndex.load(directory)
    index.add_embeddings(vectors(["new"]), ["new"])
    usage = shutil.disk_usage(directory)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=100))
    with pytest.raises(OSError, match=r"needs about 0\.\d MB, 0\.0 MB are free"):
        index.save(directory)
    assert sorted(p.name for p in (directory / "segments").iterdir()) == ["s000001"]



def test_a_save_after_calibrate_needs_no_room_for_the_codes_already_saved(tmp_path, monkeypatch):
    directory = tmp_path / "idx"
    _, index = clustered(300)
    index.build_ann(nlist=8)
    index.save(directory)
    codes = index.stats()["vectors"] * index.ann.code_size
    index = VideoIndex.load(directory)
    index.calibrate(0.9, sample=8)
    usage = shutil.disk_usage(directory)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=codes // 2))
    index.save(directory)  # a manifest: the codes of this generation are on disk
    assert VideoIndex.load(directory).stage.calibration.queries == 8
    index.build_ann(nlist=8)  # a new generation: every code again
    with pytest.raises(OSError, match="the save needs about"):
        index.save(directory)


# ---- 7. a fork after using an index ---------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # LanceDB's own note on fork
def test_a_process_forked_after_using_an_index_is_refused_clearly(tmp_path):
    directory = tmp_path / "idx"
    saved_index(directory)
    assert VideoIndex.load(directory).ids == FIRST_IDS  # LanceDB used here
    pid = os.fork()
    if pid == 0:  # the child: refused at once, never hanging inside LanceDB
        signal.alarm(60)
        refused = 0
        for action in (lambda: VideoIndex.load(directory).ids, lambda: saved_index(directory)):
            try:
                action()
            except RuntimeError as err:
                refused += "forkserver" in str(err) and str(directory) in str(err)
        os._exit(10 + refused)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 12
    assert VideoIndex.load(directory).ids == FIRST_IDS


# ---- 8. flipped bytes and non-finite numbers ------------------------------------------------
def flip_bytes(path: Path, offset_from_end: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x7C
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_segment_are_found_by_verify(tmp_path, capsys):
    directory = tmp_path / "idx"
    saved_index(directory)
    assert VideoIndex.load(directory).verify() == (1, 0)
    assert cli("info", "--index", directory, "--verify") == 0
    assert "verified: 1 segment(s)" in capsys.readouterr().out
    vectors_file = directory / "segments" / "s000001" / "vectors.npy"
    flip_bytes(vectors_file)
    with pytest.raises(ValueError, match=f"{vectors_file} is corrupt .*CRC-32"):
        VideoIndex.load(directory).verify()
    assert cli("info", "--index", directory, "--verify", "--json") == 2
    assert str(vectors_file) in capsys.readouterr().err


def test_json_output_never_holds_a_bare_nan(library, tmp_path, capsys):  # noqa: F811
    model, _ = load_checkpoint(library / "ckpt")
    ids = [f"v{i}" for i in range(4)]
    VideoIndex(model.cfg, random_embedding(model, 4), ids).save(tmp_path / "idx")
    vectors_file = tmp_path / "idx" / "segments" / "s000001" / "vectors.npy"
    stored = np.load(vectors_file, mmap_mode="r+")
    stored[0] = np.nan  # damaged on disk, after the checks at add time
    stored.flush()
    del stored
    args = ("search", "--index", tmp_path / "idx", "--checkpoint", library / "ckpt", "a dog")
    assert cli(*args, "--json", "-k", "4") == 0

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the JSON")

    hits = json.loads(capsys.readouterr().out, parse_constant=refuse)["hits"]
    assert None in [h["score"] for h in hits]


# ---- 9. damaged codes and catalogue are errors naming the file --------------------------------
def test_corrupt_candidate_codes_name_their_file_through_the_cli(tmp_path, capsys):
    _, index = clustered(60, dim=16)
    index.build_ann(nlist=4)
    index.save(tmp_path / "idx")
    (codes,) = (tmp_path / "idx" / "ann").glob("*/s000001.codes.npy")
    array = np.load(codes)
    array[:, 0] = 200  # list numbers past the 4 lists
    np.save(codes, array)
    with pytest.raises(ValueError, match=f"{codes} is corrupt"):
        VideoIndex.load(tmp_path / "idx")
    assert cli("info", "--index", tmp_path / "idx") == 2
    assert str(codes) in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "gone", "missing version"])
def test_a_damaged_catalogue_names_its_folder(tmp_path, damage):
    directory = tmp_path / "idx"
    saved_index(directory)
    for manifest in (directory / "catalogue.lance" / "_versions").glob("*.manifest"):
        if damage == "garbage":
            manifest.write_bytes(b"garbage")
        elif damage == "gone":
            manifest.unlink()
    if damage == "missing version":
        path = directory / "v000001.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "catalogue": 99}))
    with pytest.raises(ValueError, match=f"{directory / 'catalogue.lance'}: .* cannot be read"):
        _ = VideoIndex.load(directory).ids


# ---- Low: bad command-line values, NaN framerate in a manifest ----------------------------------
@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--shard-size", "0", "must be at least 1"),
        ("--shard-size", "-5", "must be at least 1"),
        ("--framerate", "0", "finite number above 0"),
        ("--framerate", "nan", "finite number above 0"),
        ("--framerate", "fast", "is not a number"),
    ],
)
def test_bad_command_line_values_are_clear_errors(tmp_path, capsys, flag, value, message):
    args = ["add", "--index", tmp_path, "--checkpoint", tmp_path, "--videos", tmp_path]
    with pytest.raises(SystemExit) as stop:
        cli(*args, flag, value)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_current_folder_as_index_is_refused_beside_its_videos(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert index_build.build_folder(Path(".")) == tmp_path.with_name(tmp_path.name + ".build")
    assert cli("build", "--index", ".", "--checkpoint", "none", "--videos", ".") == 2
    assert "is the video folder" in capsys.readouterr().err


def test_a_nan_framerate_is_refused_in_a_manifest_and_in_memory(tmp_path):
    with pytest.raises(ValueError, match="framerate must be a finite number above 0, not nan"):
        VideoIndex(CONFIG, vectors(FIRST_IDS), FIRST_IDS, framerate=float("nan"))
    directory = tmp_path / "idx"
    saved_index(directory)
    path = directory / "v000001.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "framerate": float("nan")}))
    with pytest.raises(ValueError, match=f"{path} .*framerate nan"):
        VideoIndex.load(directory)


# ---- Housekeeping: catalogue versions and what a killed save left ------------------------------
class Killed(BaseException):
    """Not caught by the save's clean-up, as nothing catches SIGKILL."""


def test_the_next_save_removes_what_a_killed_save_left_and_prunes_the_catalogue(
    tmp_path, monkeypatch
):
    directory = tmp_path / "idx"
    saved_index(directory)
    for round_ in range(3):
        index = VideoIndex.load(directory)
        ids = [f"more{round_}"]
        index.add_embeddings(vectors(ids), ids)
        index.build_ann(nlist=2)
        if round_ == 1:  # killed after its segment, codes and catalogue rows were written
            monkeypatch.setattr(store, "write_manifest", kill)
            with pytest.raises(Killed):
                index.save(directory)
            monkeypatch.undo()
            assert (directory / "saving.json").is_file()
            continue
        index.save(directory)
    monkeypatch.setattr(catalogue, "CATALOGUE_GRACE", timedelta(0))
    index.save(directory)  # prunes the catalogue versions older than the one it replaces
    current = store.current_version(directory).name
    manifest = store.read_manifest(directory, current)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [".lock", "ann", "catalogue.lance", "index.json", "segments", f"{current}.json"]
    )
    assert [p.name for p in (directory / "ann").iterdir()] == [manifest.ann["generation"]]
    assert sorted(p.name for p in (directory / "segments").iterdir()) == [
        name for name, _ in manifest.segments
    ]
    assert len(list((directory / "catalogue.lance" / "_versions").glob("*.manifest"))) == 1
    assert VideoIndex.load(directory).ids == [*FIRST_IDS, "more0", "more2"]


def kill(*args, **kwargs):
    raise Killed
