"""Video folders searched recursively, as CLIP4Clip, TS2-Net and Cap4Video walk them: clips in
subfolders are found, the file nearest the top wins, a tie at one depth is an error naming the
files, and MSR-VTT falls back on ``<id>.webm``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vcb_utils.annotations import check_videos, common, read_annotations
from vcb_utils.annotations.common import VideoFolder

FIXTURES = Path(__file__).parent / "fixtures"
MSVD_TRAIN = ["-4wsuPCjDBc_5_15", "04Gt01vatkk_248_265", "-7KMZQEsJW4_205_208"]


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"a dummy video")


def msvd_paths(videos: Path) -> dict[str, Path]:
    records = read_annotations("msvd", FIXTURES / "msvd", "train", videos)
    return {r.video_id: r.path for r in records}


def test_msvd_clips_one_and_two_folders_down_are_found(tmp_path):
    videos = tmp_path / "YouTubeClips"
    touch(videos, "-4wsuPCjDBc_5_15.avi", "part1/04Gt01vatkk_248_265.avi",
          "part2/deeper/-7KMZQEsJW4_205_208.mp4")
    assert msvd_paths(videos) == {
        "-4wsuPCjDBc_5_15": videos / "-4wsuPCjDBc_5_15.avi",
        "04Gt01vatkk_248_265": videos / "part1/04Gt01vatkk_248_265.avi",
        "-7KMZQEsJW4_205_208": videos / "part2/deeper/-7KMZQEsJW4_205_208.mp4",
    }


def test_the_file_nearest_the_top_wins_and_hidden_folders_are_skipped(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "-4wsuPCjDBc_5_15.avi", "a/-4wsuPCjDBc_5_15.mp4", "b/-4wsuPCjDBc_5_15.avi",
          "a/04Gt01vatkk_248_265.avi", "a/b/04Gt01vatkk_248_265.avi", "c/d/04Gt01vatkk_248_265.avi",
          ".cache/-7KMZQEsJW4_205_208.avi")
    paths = msvd_paths(videos)
    assert paths["-4wsuPCjDBc_5_15"] == videos / "-4wsuPCjDBc_5_15.avi"
    assert paths["04Gt01vatkk_248_265"] == videos / "a/04Gt01vatkk_248_265.avi"
    assert paths["-7KMZQEsJW4_205_208"] == videos / "-7KMZQEsJW4_205_208.avi"  # not found


def test_a_tie_at_one_depth_names_the_duplicates(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "-4wsuPCjDBc_5_15.avi", "x/04Gt01vatkk_248_265.avi",
          "y/04Gt01vatkk_248_265.mp4", "y/z/-7KMZQEsJW4_205_208.avi")
    message = (rf"{videos}: video '04Gt01vatkk_248_265' is ambiguous: 2 files at the same depth "
               r".*x/04Gt01vatkk_248_265\.avi, y/04Gt01vatkk_248_265\.mp4")
    with pytest.raises(ValueError, match=message):
        msvd_paths(videos)


def test_symbolic_link_loops_and_twins_are_walked_once(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "real/-4wsuPCjDBc_5_15.avi", "real/deep/04Gt01vatkk_248_265.avi")
    os.symlink(videos, videos / "real/loop")
    os.symlink(videos / "real", videos / "twin")  # the same folder at the same depth
    os.symlink(videos / "real/deep", videos / "shortcut")  # a shorter way to real/deep
    paths = msvd_paths(videos)
    assert paths["-4wsuPCjDBc_5_15"] == videos / "real/-4wsuPCjDBc_5_15.avi"
    assert paths["04Gt01vatkk_248_265"] == videos / "shortcut/04Gt01vatkk_248_265.avi"


def test_a_missing_clip_is_still_reported_by_its_id(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "a/-4wsuPCjDBc_5_15.avi", "a/b/04Gt01vatkk_248_265.avi")
    records = read_annotations("msvd", FIXTURES / "msvd", "train", videos)
    expected = videos / "-7KMZQEsJW4_205_208.avi"
    with pytest.raises(FileNotFoundError, match=f"1 of 3 videos.*first: {expected}"):
        check_videos([r.video for r in records])


def msrvtt_folder(tmp_path: Path, ids: list[str]) -> Path:
    """A tiny MSR-VTT annotation folder in CLIP4Clip's layout: test and train list ``ids``."""
    anno = tmp_path / "msrvtt_data"
    anno.mkdir()
    rows = [f"ret{i},msr{i},{video},caption of {video}" for i, video in enumerate(ids)]
    (anno / "MSRVTT_JSFUSION_test.csv").write_text(
        "\n".join(["key,vid_key,video_id,sentence", *rows]) + "\n"
    )
    (anno / "MSRVTT_train.9k.csv").write_text("\n".join(["video_id", *ids]) + "\n")
    sentences = [{"video_id": video, "caption": f"caption of {video}"} for video in ids]
    (anno / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    return anno


@pytest.mark.parametrize("split", ["test", "train"])
def test_msrvtt_takes_webm_when_mp4_is_absent_and_prefers_mp4(tmp_path, split):
    anno = msrvtt_folder(tmp_path, ["video0", "video1", "video2", "video3"])
    videos = tmp_path / "videos"
    touch(videos, "video0.webm", "video1.webm", "video1.mp4", "all/video2.webm", "video3.mkv")
    paths = {r.video_id: r.path for r in read_annotations("msrvtt", anno, split, videos)}
    assert paths == {
        "video0": videos / "video0.webm",
        "video1": videos / "video1.mp4",
        "video2": videos / "all/video2.webm",
        "video3": videos / "video3.mp4",  # .mkv is no MSR-VTT file: missing, by its id
    }


def test_a_folder_of_thousands_of_files_is_listed_in_one_walk(tmp_path, monkeypatch):
    folders = [tmp_path / f"part{i:02d}" / "clips" for i in range(20)]
    for n, folder in enumerate(folders):
        folder.mkdir(parents=True)
        for i in range(150):
            (folder / f"clip{n:02d}_{i:03d}.avi").touch()
    calls = []
    scandir = os.scandir
    monkeypatch.setattr(common.os, "scandir", lambda path: calls.append(path) or scandir(path))
    videos = VideoFolder(tmp_path)
    assert len(calls) == 1 + 2 * len(folders)  # each folder listed once
    found = {videos.find([f"clip{n:02d}_{i:03d}"], "?") for n in range(20) for i in range(150)}
    assert found == {folder / f"clip{n:02d}_{i:03d}.avi"
                     for n, folder in enumerate(folders) for i in range(150)}
