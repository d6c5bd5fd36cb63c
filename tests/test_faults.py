"""Saves killed at every step, concurrent writers and damaged files (issue 11).

The child processes are forked from a forkserver that has imported the library once, so each
starts in milliseconds. A child reports every call of the functions that write, rename or
delete; killed while paused before one of them, it leaves what a crash there would leave.
"""

import dataclasses
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import warnings
import zlib
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vcb_utils.checkpoints
from vcb_utils.config import preset
from vcb_utils.index import VideoIndex
from vcb_utils.model import VideoColBERT, VideoEmbedding, load_checkpoint, save_checkpoint
from vcb_utils.search import catalogue, store
from vcb_utils.storage import writing_folder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and forkserver")

CONFIG = preset("tiny").model
DIM = 8
FIRST_IDS = [f"first{i}" for i in range(6)]
WAIT = 120  # seconds: a child's start (the first imports the library) and one save take < 20
HOLD = 600  # seconds a paused child sleeps, waiting to be killed


def vectors(ids: list[str]) -> VideoEmbedding:
    """Vectors that depend on the id only, so any process can check any row."""
    frames, video = CONFIG.max_frames, CONFIG.max_frames + CONFIG.n_visual_expansion
    rows = []
    for i in ids:
        g = torch.Generator().manual_seed(zlib.crc32(i.encode()))
        rows.append((torch.randn(frames, DIM, generator=g), torch.randn(video, DIM, generator=g)))
    f, v = (F.normalize(torch.stack(parts), dim=-1) for parts in zip(*rows, strict=True))
    return VideoEmbedding(
        f, torch.ones(f.shape[:2], dtype=torch.bool), v, torch.ones(v.shape[:2], dtype=torch.bool)
    )


def assert_consistent(index: VideoIndex) -> None:
    """Every row holds the vectors of its id (rounded to fp16) and every id is there once."""
    assert len(set(index.ids)) == len(index.ids) == index.F.shape[0] == index.V.shape[0]
    expected = vectors(index.ids)
    assert torch.equal(index.F, expected.F.half()) and torch.equal(index.V, expected.V.half())


def make_model(seed: int, **changes) -> VideoColBERT:
    torch.manual_seed(seed)
    return VideoColBERT(dataclasses.replace(CONFIG, **changes)).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- jobs run by the children ----------------------------------------------------------------
NEW_IDS = ["new0", "new1", "new2"]


def grow_index(directory: str) -> None:
    index = VideoIndex.load(directory)
    index.add_embeddings(vectors(NEW_IDS), NEW_IDS)
    index.save(directory)


def first_index(directory, candidates: bool) -> None:
    """Save the index of ``FIRST_IDS`` (with a candidate index: its codes are saved too)."""
    index = VideoIndex(CONFIG, vectors(FIRST_IDS), FIRST_IDS)
    if candidates:
        index.build_ann()
    index.save(directory)


def new_model() -> VideoColBERT:
    """Other weights of other shapes than ``make_model(0)``: a mixed checkpoint won't load."""
    return make_model(1, n_visual_expansion=3)


def resave_checkpoint(directory: str) -> None:
    save_checkpoint(new_model(), directory)


def add_rounds(directory: str, worker: int, rounds: int, barrier) -> None:
    barrier.wait(WAIT)
    for r in range(rounds):
        index = VideoIndex.load(directory)
        ids = [f"w{worker}_{r}_{j}" for j in range(2)]
        index.add_embeddings(vectors(ids), ids)
        index.save(directory)


WATCHED = [
    (store, "write_array"),
    (catalogue, "commit_catalogue"),
    (store, "write_ann_part"),
    (vcb_utils.checkpoints, "save_model"),
    (json, "dumps"),
    (os, "replace"),
    (os, "unlink"),
    (shutil, "rmtree"),
]
"""The calls that a child reports: the steps of a save that change what a process sees (the
fsyncs in between matter after a power cut only). ``commit_catalogue`` is one LanceDB commit:
its own writes are atomic (data files first, then a new manifest)."""


def run_watched(conn, job, directory: str, pause: tuple[int, str] | None) -> None:
    """Run ``job(directory)``, pausing at ``(event, "before" or "after")`` to be killed.

    Sends "paused" there; without a pause, sends the number of events when the job ends.
    """
    count = 0

    def watch(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            nonlocal count
            event = count  # this call's number (calls made inside it count after it)
            count += 1
            if pause == (event, "before"):
                conn.send("paused")
                time.sleep(HOLD)
            result = real(*args, **kwargs)
            if pause == (event, "after"):
                conn.send("paused")
                time.sleep(HOLD)
            return result

        setattr(owner, name, wrapper)

    for owner, name in WATCHED:
        watch(owner, name)
    job(directory)
    conn.send(count)


# ---- the parent's side -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vcb_utils.index", __name__])
    return ctx


def run_child(context, job, directory, pause=None):
    """Run ``run_watched`` in a child; kill it at its pause. The child's message is returned."""
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=run_watched, args=(send, job, str(directory), pause))
    child.start()
    send.close()
    try:
        assert receive.poll(WAIT), "the child neither paused nor finished"
        message = receive.recv()
        if pause is not None:
            os.kill(child.pid, signal.SIGKILL)
        child.join(WAIT)
        assert child.exitcode == (-signal.SIGKILL if pause else 0)
        return message
    finally:
        if child.is_alive():
            child.kill()


def kill_points(context, job, directory) -> list[tuple[int, str]]:
    """Before every reported call of one complete run of ``job``, and after the last."""
    count = run_child(context, job, directory)
    return [(k, "before") for k in range(count)] + [(count - 1, "after")]


def assert_only_the_current_version(directory, candidates: bool) -> None:
    """The folder holds the current version's files and nothing else."""
    current = json.loads((directory / "index.json").read_text())["current"]
    manifest = json.loads((directory / f"{current}.json").read_text())
    expected = [".lock", "catalogue.lance", "index.json", "segments", f"{current}.json"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        expected + (["ann"] if candidates else [])
    )
    segments = sorted(s["name"] for s in manifest["segments"])
    assert sorted(p.name for p in (directory / "segments").iterdir()) == segments
    if candidates:
        generation = manifest["ann"]["generation"]
        assert [p.name for p in (directory / "ann").iterdir()] == [generation]
        files = sorted(p.name for p in (directory / "ann" / generation).iterdir())
        assert files == sorted(["trained.faiss", *(f"{s}.codes.npy" for s in segments)])


@pytest.mark.parametrize("candidates", [False, True], ids=["exact", "two-stage"])
def test_index_save_killed_at_any_step_leaves_the_old_or_the_new_index(
    context, tmp_path, candidates, monkeypatch
):
    # a save prunes the catalogue versions older than the one it replaces, at once here
    monkeypatch.setattr(catalogue, "CATALOGUE_GRACE", timedelta(0))
    first_index(tmp_path / "probe", candidates)
    points = kill_points(context, grow_index, tmp_path / "probe")
    assert len(points) >= 8
    for n, pause in enumerate(points):
        directory = tmp_path / f"idx{n}"
        first_index(directory, candidates)
        assert run_child(context, grow_index, directory, pause) == "paused"
        loaded = VideoIndex.load(directory)
        assert loaded.ids in (FIRST_IDS, FIRST_IDS + NEW_IDS), pause
        assert_consistent(loaded)
        assert (loaded.ann is not None) == candidates
        loaded.save(directory)  # the next save removes what the killed one left
        assert_only_the_current_version(directory, candidates)
        loaded.save(directory)  # catalogue versions older than the replaced one go
        versions = directory / "catalogue.lance" / "_versions"
        assert len(list(versions.glob("*.manifest"))) == 1, pause
        reloaded = VideoIndex.load(directory)
        assert reloaded.ids == loaded.ids
        if candidates:  # the saved codes are those held, and every video has some
            ids = loaded.ann.ids
            assert np.array_equal(reloaded.ann.ids, ids)
            assert np.array_equal(reloaded.ann.codes, loaded.ann.codes)
            assert set((ids >> 1).tolist()) == set(range(len(loaded)))


def test_checkpoint_save_killed_at_any_step_leaves_the_old_or_the_new_one(context, tmp_path):
    old, new = make_model(0), new_model()
    save_checkpoint(old, tmp_path / "probe" / "best")
    points = kill_points(context, resave_checkpoint, tmp_path / "probe" / "best")
    assert len(points) >= 4
    for n, pause in enumerate(points):
        target = tmp_path / f"run{n}" / "best"
        save_checkpoint(old, target)
        assert run_child(context, resave_checkpoint, target, pause) == "paused"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # killed mid-swap: the previous copy, with a warning
            loaded, config = load_checkpoint(target)
        assert any(
            same_weights(loaded, model) and config.model == model.cfg for model in (old, new)
        ), pause
        save_checkpoint(new, target)  # the next save removes what the killed one left
        assert sorted(p.name for p in target.parent.iterdir()) == [".best.lock", "best"]


@pytest.mark.parametrize("candidates", [False, True], ids=["exact", "two-stage"])
def test_processes_loading_adding_and_saving_at_once_keep_every_video(
    context, tmp_path, candidates
):
    directory = tmp_path / "idx"
    workers, rounds = 2, 5
    for attempt in range(3):
        if directory.exists():
            shutil.rmtree(directory)
        first_index(directory, candidates)
        barrier = context.Barrier(workers)
        children = [
            context.Process(target=add_rounds, args=(str(directory), w, rounds, barrier))
            for w in range(workers)
        ]
        for child in children:
            child.start()
        for child in children:
            child.join(WAIT)
        assert [child.exitcode for child in children] == [0] * workers, attempt
        loaded = VideoIndex.load(directory)
        added = {f"w{w}_{r}_{j}" for w in range(workers) for r in range(rounds) for j in range(2)}
        assert set(loaded.ids) == set(FIRST_IDS) | added, attempt
        assert_consistent(loaded)
        if candidates:  # every added vector has its code, under the one generation
            assert len(loaded.ann) == loaded.stats()["vectors"]
            assert_only_the_current_version(directory, candidates)


# ---- damaged files ---------------------------------------------------------------------------
DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\xff\xfe\x00garbage" * 3,
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_damaged_checkpoint_file_is_a_clear_error(tmp_path, name, damage):
    save_checkpoint(make_model(0), tmp_path / "best")
    path = tmp_path / "best" / name
    path.write_bytes(DAMAGE[damage](path.read_bytes()))
    with pytest.raises(ValueError, match=rf"{name} is corrupt .*save the checkpoint again"):
        load_checkpoint(tmp_path / "best")


def test_config_that_is_not_an_object_is_a_clear_error(tmp_path):
    save_checkpoint(make_model(0), tmp_path / "best")
    (tmp_path / "best" / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json is corrupt"):
        load_checkpoint(tmp_path / "best")


def test_failed_folder_write_leaves_the_target_and_no_temporary_folder(tmp_path):
    target = tmp_path / "best"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), writing_folder(target) as folder:
        (folder / "a.txt").write_text("half")
        raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.lock", "best"]
    assert (target / "a.txt").read_text() == "old"


def test_checkpoint_left_mid_swap_loads_the_previous_copy_with_a_warning(tmp_path):
    old = make_model(0)
    save_checkpoint(old, tmp_path / "best")
    (tmp_path / "best").rename(tmp_path / "best.old")  # killed between the two renames
    with pytest.warns(UserWarning, match="best is missing .*reading the previous copy"):
        loaded, _ = load_checkpoint(tmp_path / "best")
    assert same_weights(loaded, old)
    save_checkpoint(new_model(), tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.lock", "best"]
