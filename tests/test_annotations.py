"""The benchmark readers (MSVD, VATEX, DiDeMo, ActivityNet Captions) on tiny real-layout
folders (``fixtures/make_benchmark_fixtures.py``): records per split, video lookup, errors."""

from __future__ import annotations

import codecs
import logging
import os
import pickle
import shlex
import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
from fixtures.make_benchmark_fixtures import MSVD_CAPTIONS, MSVD_SPLITS

from vcb_utils import annotations
from vcb_utils.annotations import activitynet, check_videos, read_annotations

FIXTURES = Path(__file__).parent / "fixtures"
MSVD_TRAIN = {video: MSVD_CAPTIONS[video] for video in MSVD_SPLITS["train"]}
VATEX_TEST = ["G9zN5TTuGO4_000179_000189", "_zxAbwv9_iU_000012_000022"]
DIDEMO_A = "10015567@N08_3655084291_d8b15b4b59.mov"
DIDEMO_B = "10034397@N00_2514327938_9a7b0d1b56.mp4"
DIDEMO_C = "10052970@N05_3470585658_56f3fd0b23.m4v"


def copy_of(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def grouped(records) -> dict[str, list[str]]:
    """video id -> its captions, both in record order."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.video_id, []).append(r.caption)
    return out


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"a dummy video")


def test_datatypes_list_the_benchmarks():
    for name in ("msrvtt", "csv", "jsonl", "synthetic", "msvd", "vatex", "didemo", "activitynet"):
        assert name in annotations.DATATYPES


# ---------------------------------------------------------------- MSVD


def test_msvd_every_caption_of_the_split_is_a_query_duplicates_kept():
    train = read_annotations("msvd", FIXTURES / "msvd", "train")
    assert len(train) == 9
    assert grouped(train) == MSVD_TRAIN  # list order, caption order, the repeated caption kept
    assert list(grouped(train)) == list(MSVD_TRAIN)
    assert all(r.start is None and r.end is None for r in train)
    assert grouped(read_annotations("msvd", FIXTURES / "msvd", "val")) == {
        "0lh_UWF9ZP4_62_69": ["two dogs run on the beach", "dogs are running"]
    }
    test = read_annotations("msvd", FIXTURES / "msvd", "test")
    assert [r.video_id for r in test] == ["-_aaMGK6GGw_57_61"] * 3 + ["bQJQGoJF7_k_162_169"]
    everything = {r.video_id for split in ("train", "val", "test")
                  for r in read_annotations("msvd", FIXTURES / "msvd", split)}
    assert "zzNotInAnySplit_1_2" not in everything


def test_msvd_reads_xpool_json_when_there_is_no_pickle(tmp_path):
    folder = copy_of("msvd", tmp_path)
    (folder / "raw-captions.pkl").unlink()
    train = grouped(read_annotations("msvd", folder, "train"))
    assert train["-4wsuPCjDBc_5_15"] == [
        "A man is playing a guitar.",
        "A man plays the guitar on stage.",
        "A man is playing a guitar.",
        "Someone strums a guitar.",
    ]
    assert sum(map(len, train.values())) == 9


class _RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_msvd_malicious_pickle_runs_no_code(tmp_path):
    folder = copy_of("msvd", tmp_path)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _RunsAShellCommand(f"touch {shlex.quote(str(marker))}")})
    (folder / "raw-captions.pkl").write_bytes(payload)
    with pytest.raises(ValueError, match=r"raw-captions\.pkl: refuses to load: it references "
                       r"(posix|nt|os)\.system; MSVD captions are plain dicts") as err:
        read_annotations("msvd", folder, "train")
    assert str(folder / "raw-captions.pkl") in str(err.value)
    assert not marker.exists()
    pickle.loads(payload)  # the control: a plain pickle.load would have run the command
    assert marker.exists()


def test_msvd_pickle_with_any_global_is_refused(tmp_path):
    folder = copy_of("msvd", tmp_path)
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(OrderedDict(a=[["a", "b"]])))
    with pytest.raises(ValueError, match=r"references collections\.OrderedDict"):
        read_annotations("msvd", folder, "train")


@pytest.mark.parametrize(
    "data, message",
    [
        ([["a", "man"]], "expected a pickled dict"),
        ({"-4wsuPCjDBc_5_15": "a man is playing"}, "expected a list of token lists"),
        ({"-4wsuPCjDBc_5_15": [["a", 3]]}, "expected a list of token lists"),
        ({7: [["a"]]}, "the video id is not a string"),
        ({"-4wsuPCjDBc_5_15": [[]]}, "empty caption"),
    ],
)
def test_msvd_pickle_of_the_wrong_structure_is_rejected(tmp_path, data, message):
    folder = copy_of("msvd", tmp_path)
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        read_annotations("msvd", folder, "train")
    assert "raw-captions.pkl" in str(err.value)


def test_msvd_truncated_pickle_names_the_file(tmp_path):
    folder = copy_of("msvd", tmp_path)
    path = folder / "raw-captions.pkl"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"raw-captions\.pkl: not a readable pickle"):
        read_annotations("msvd", folder, "train")


def test_problems_of_one_file_are_reported_together(tmp_path):
    folder = copy_of("msvd", tmp_path)
    bad = {f"video{i}": [["fine"], []] for i in range(12)} | {"other": "not a list"}
    (folder / "raw-captions.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError) as err:
        read_annotations("msvd", folder, "train")
    message = str(err.value)
    assert "13 problem(s)" in message and "and 3 more" in message
    assert "'video0' caption 1: empty caption" in message
    assert "'video9' caption 1: empty caption" in message
    assert "'video11'" not in message  # past the first MAX_PROBLEMS


def test_split_list_naming_videos_without_captions_is_an_error(tmp_path):
    folder = copy_of("msvd", tmp_path)
    (folder / "test_list.txt").write_text("-_aaMGK6GGw_57_61\nghost_1_2\nghost_3_4\n")
    with pytest.raises(ValueError, match=r"test_list\.txt: 2 of its 3 videos have no captions "
                       r"in raw-captions\.pkl: ghost_1_2, ghost_3_4"):
        read_annotations("msvd", folder, "test")


# ---------------------------------------------------------------- VATEX


def test_vatex_every_english_caption_val_is_test():
    train = read_annotations("vatex", FIXTURES / "vatex", "train")
    assert list(grouped(train)) == [
        "Ptf_2VRj-V0_000122_000132", "--07WQ2iBlw_000001_000011", "-0Z8XfA0DIk_000035_000045"
    ]
    assert len(train) == 30 and all(len(c) == 10 for c in grouped(train).values())
    assert grouped(train)["Ptf_2VRj-V0_000122_000132"][:2] == [
        "a man plays the drums outside.", "a man plays the drums in a room."
    ]
    test = read_annotations("vatex", FIXTURES / "vatex", "test")
    assert list(grouped(test)) == VATEX_TEST and len(test) == 20
    assert read_annotations("vatex", FIXTURES / "vatex", "val") == test


def test_vatex_data_json_gives_english_captions_only(tmp_path):
    folder = copy_of("vatex", tmp_path)
    (folder / "ref_captions.json").unlink()
    records = read_annotations("vatex", folder, "train")
    assert [r.caption for r in records] == [
        r.caption for r in read_annotations("vatex", FIXTURES / "vatex", "train")
    ]
    assert all(c.isascii() for c in (r.caption for r in records))  # no chCap


def test_vatex_entry_without_english_captions_names_the_file(tmp_path):
    folder = copy_of("vatex", tmp_path)
    (folder / "ref_captions.json").unlink()
    (folder / "vatex_data.json").write_text('{"G9zN5TTuGO4_000179_000189": {"chCap": ["一"]}}')
    with pytest.raises(ValueError, match=r"vatex_data\.json: 1 problem\(s\): "
                       r"'G9zN5TTuGO4_000179_000189': expected a list of caption strings"):
        read_annotations("vatex", folder, "test")


# ---------------------------------------------------------------- DiDeMo


def test_didemo_one_paragraph_per_video_of_the_list_whole_video():
    train = read_annotations("didemo", FIXTURES / "didemo", "train")
    assert [(r.video_id, r.caption) for r in train] == [
        (DIDEMO_C, "first time we see the baby"),
        (DIDEMO_A, "a man walks into the frame the man picks up a ball he throws the ball"),
        (DIDEMO_B, "the camera pans left a car drives by"),
    ]  # list order; descriptions in file order, interleaved entries gathered; X not listed
    assert all(r.start is None and r.end is None for r in train)
    val = read_annotations("didemo", FIXTURES / "didemo", "val")
    assert [r.caption for r in val] == ["waves crash on the rocks the sun sets", "a bird lands"]


def test_didemo_without_a_list_reads_every_video_of_the_json():
    test = read_annotations("didemo", FIXTURES / "didemo", "test")
    assert [(r.video_id, r.caption) for r in test] == [
        ("26014389@N05_3697286580_d4f4eb2e85.mov", "a girl blows out candles everyone cheers"),
        ("27318496@N02_4569302434_e1e6bcd0bd.3gp", "people clap"),
    ]


def test_didemo_list_video_absent_from_the_json_is_an_error(tmp_path):
    folder = copy_of("didemo", tmp_path)
    with open(folder / "val_list.txt", "a") as handle:
        handle.write("999@N00_1_abc.mov\n")
    with pytest.raises(ValueError, match=r"val_list\.txt: 1 of its 3 videos have no captions in "
                       r"val_data\.json: 999@N00_1_abc\.mov"):
        read_annotations("didemo", folder, "val")


def test_didemo_blank_description_left_out_empty_paragraph_is_an_error(tmp_path, caplog):
    folder = copy_of("didemo", tmp_path)
    entries = [{"video": "a.mov", "description": " "}, {"video": "a.mov", "description": "x "},
               {"video": "b.mov", "description": ""}, {"description": "no video"}]
    (folder / "test_data.json").write_text(str(entries).replace("'", '"'))
    with pytest.raises(ValueError) as err:
        read_annotations("didemo", folder, "test")
    assert "test_data.json: 2 problem(s): entry 3: no 'video' name; " in str(err.value)
    assert "'b.mov': no non-empty sentence" in str(err.value)
    (folder / "test_data.json").write_text(str(entries[:2]).replace("'", '"'))
    with caplog.at_level(logging.WARNING):
        assert [r.caption for r in read_annotations("didemo", folder, "test")] == ["x"]
    assert "1 empty sentence(s) left out" in caplog.text


# ---------------------------------------------------------------- ActivityNet Captions


def test_activitynet_paragraphs_of_the_id_list_sentences_stripped():
    train = read_annotations("activitynet", FIXTURES / "activitynet", "train")
    assert [(r.video_id, r.caption) for r in train] == [
        ("v__jxpaVW4_cE",
         "A man is kneeling on a frozen lake. He is using a tool to drill a hole in the ice."),
        ("v_QOlSCBRmfWY",
         "A young woman is seen standing in a room and leads into her dancing. The girl dances "
         "around the room while the camera captures her movements. She continues dancing around "
         "the room and ends by laying on the floor."),
        ("v_vLTK7qK5Qhw", "People are riding horses on a trail."),
    ]  # train_ids.json order; v_ehGHCYKzyZ8 is not in it
    assert all(r.start is None and r.end is None for r in train)


def test_activitynet_val_and_test_are_val_1_and_val_2_is_never_read(monkeypatch):
    read = []
    load = activitynet.load_json
    monkeypatch.setattr(activitynet, "load_json", lambda p: read.append(p.name) or load(p))
    val = read_annotations("activitynet", FIXTURES / "activitynet", "val")
    assert read_annotations("activitynet", FIXTURES / "activitynet", "test") == val
    assert [(r.video_id, r.caption) for r in val] == [
        ("v_uqiMw7tQ1Cc", "A weight lifting tutorial is given. The coach helps the guy in red "
         "with the proper body placement."),
        ("v_bXdq2zI1Ms0", "Three men are standing on a mat. They begin to do karate."),
    ]
    assert set(read) == {"val_1.json", "val_ids.json"}


def test_activitynet_without_id_files_reads_every_video(tmp_path):
    folder = copy_of("activitynet", tmp_path)
    (folder / "train_ids.json").unlink()
    ids = [r.video_id for r in read_annotations("activitynet", folder, "train")]
    assert ids == ["v_QOlSCBRmfWY", "v__jxpaVW4_cE", "v_vLTK7qK5Qhw", "v_ehGHCYKzyZ8"]


def test_activitynet_bad_id_file_names_it(tmp_path):
    folder = copy_of("activitynet", tmp_path)
    (folder / "val_ids.json").write_text('{"v_uqiMw7tQ1Cc": 1}')
    with pytest.raises(ValueError, match=r"val_ids\.json: expected a non-empty JSON list"):
        read_annotations("activitynet", folder, "val")


# ---------------------------------------------------------------- finding the videos


@pytest.mark.parametrize("ext", [".avi", ".mp4", ".mkv", ".webm", ".mov", ".MP4"])
def test_msvd_video_of_any_extension_id_starting_with_dash(tmp_path, ext):
    videos = tmp_path / "videos"
    touch(videos, f"-4wsuPCjDBc_5_15{ext}", "04Gt01vatkk_248_265.avi")
    records = read_annotations("msvd", FIXTURES / "msvd", "train", videos)
    paths = {r.video_id: r.path for r in records}
    assert paths["-4wsuPCjDBc_5_15"] == videos / f"-4wsuPCjDBc_5_15{ext}"
    assert paths["04Gt01vatkk_248_265"] == videos / "04Gt01vatkk_248_265.avi"


def test_missing_video_keeps_its_likely_path_and_check_videos_names_it(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "-4wsuPCjDBc_5_15.avi", "04Gt01vatkk_248_265.mp4",
          "-7KMZQEsJW4_205_208.avi.part", ".-7KMZQEsJW4_205_208.avi")  # partial, hidden
    records = read_annotations("msvd", FIXTURES / "msvd", "train", videos)
    expected = videos / "-7KMZQEsJW4_205_208.avi"
    assert {r.path for r in records if r.video_id == "-7KMZQEsJW4_205_208"} == {expected}
    with pytest.raises(FileNotFoundError, match=f"1 of 3 videos.*first: {expected}"):
        check_videos([r.video for r in records])


def test_mp4_wins_when_a_video_comes_in_several_extensions(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "G9zN5TTuGO4_000179_000189.webm", "G9zN5TTuGO4_000179_000189.mp4",
          "_zxAbwv9_iU_000012_000022.webm", "_zxAbwv9_iU_000012_000022.mkv")
    paths = {r.video_id: r.path for r in read_annotations("vatex", FIXTURES / "vatex", "test",
                                                            videos)}
    assert paths == {
        "G9zN5TTuGO4_000179_000189": videos / "G9zN5TTuGO4_000179_000189.mp4",
        "_zxAbwv9_iU_000012_000022": videos / "_zxAbwv9_iU_000012_000022.mkv",
    }


@pytest.mark.parametrize(
    "files, found",
    [
        ([DIDEMO_A], DIDEMO_A),  # as downloaded
        ([f"{DIDEMO_A}.mp4"], f"{DIDEMO_A}.mp4"),  # x.mov.mp4
        (["10015567@N08_3655084291_d8b15b4b59.mp4"], "10015567@N08_3655084291_d8b15b4b59.mp4"),
        (["10015567@N08_3655084291_d8b15b4b59.mp4", f"{DIDEMO_A}.mp4", DIDEMO_A], DIDEMO_A),
        (["10015567@N08_3655084291_d8b15b4b59.mp4", f"{DIDEMO_A}.mp4"], f"{DIDEMO_A}.mp4"),
        ([], DIDEMO_A),  # not there: the name as downloaded, for check_videos to report
    ],
)
def test_didemo_video_naming_variants(tmp_path, files, found):
    videos = tmp_path / "videos"
    touch(videos, *files)
    records = read_annotations("didemo", FIXTURES / "didemo", "train", videos)
    assert {r.video_id: r.path for r in records}[DIDEMO_A] == videos / found


@pytest.mark.parametrize(
    "files, found",
    [
        (["v__jxpaVW4_cE.mp4"], "v__jxpaVW4_cE.mp4"),  # official crawler
        (["_jxpaVW4_cE.mp4"], "_jxpaVW4_cE.mp4"),  # CLIP4Clip: id[2:]
        (["_jxpaVW4_cE.mkv"], "_jxpaVW4_cE.mkv"),
        (["v__jxpaVW4_cE.webm"], "v__jxpaVW4_cE.webm"),
        (["jxpaVW4_cE.mp4"], "v__jxpaVW4_cE.mp4"),  # what lstrip("v_") would find: not it
        ([], "v__jxpaVW4_cE.mp4"),
    ],
)
def test_activitynet_video_naming_variants(tmp_path, files, found):
    videos = tmp_path / "videos"
    touch(videos, *files, "LTK7qK5Qhw.mp4", "vLTK7qK5Qhw.mkv")
    paths = {r.video_id: r.path
             for r in read_annotations("activitynet", FIXTURES / "activitynet", "train", videos)}
    assert paths["v__jxpaVW4_cE"] == videos / found
    assert paths["v_vLTK7qK5Qhw"] == videos / "vLTK7qK5Qhw.mkv"


def test_video_folder_is_listed_once_per_read(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    touch(videos, *(f"noise{i}.mp4" for i in range(500)), "Ptf_2VRj-V0_000122_000132.mp4")
    calls = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: calls.append(path) or scandir(path))
    records = read_annotations("vatex", FIXTURES / "vatex", "train", videos)
    assert len(records) == 30 and calls == [videos]
    assert records[0].path == videos / "Ptf_2VRj-V0_000122_000132.mp4"


def test_video_path_defaults_to_anno_path_and_skips_annotation_files(tmp_path):
    folder = copy_of("msvd", tmp_path)
    touch(folder, "0lh_UWF9ZP4_62_69.avi")
    (folder / "-_aaMGK6GGw_57_61.txt").write_text("notes")  # not a video
    assert read_annotations("msvd", folder, "val")[0].path == folder / "0lh_UWF9ZP4_62_69.avi"
    paths = {r.path for r in read_annotations("msvd", folder, "test")}
    assert folder / "-_aaMGK6GGw_57_61.avi" in paths


# ---------------------------------------------------------------- missing and malformed files


@pytest.mark.parametrize(
    "datatype, split, remove, needs",
    [
        ("msvd", "test", ["test_list.txt"],
         "test_list.txt; raw-captions.pkl or captions_msvd.json"),
        ("msvd", "train", ["raw-captions.pkl", "captions_msvd.json"],
         "raw-captions.pkl or captions_msvd.json"),
        ("vatex", "val", ["test_list.txt"], "test_list.txt"),
        ("vatex", "train", ["ref_captions.json", "vatex_data.json"],
         "ref_captions.json or vatex_data.json"),
        ("didemo", "val", ["val_data.json"], "val_data.json"),
        ("activitynet", "test", ["val_1.json"], "val_1.json"),
    ],
)
def test_missing_annotation_file_is_named_with_what_the_split_needs(
    tmp_path, datatype, split, remove, needs
):
    folder = copy_of(datatype, tmp_path)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_annotations(datatype, folder, split)
    assert str(folder) in str(err.value) and f"split {split!r}" in str(err.value)
    assert needs in str(err.value)


def test_missing_or_non_folder_anno_path_and_unknown_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation path not found"):
        read_annotations("vatex", tmp_path / "nowhere", "train")
    with pytest.raises(NotADirectoryError, match="must be a folder"):
        read_annotations("activitynet", FIXTURES / "activitynet" / "train.json", "train")
    with pytest.raises(ValueError, match=r"unknown activitynet split 'val_2'; choose one of "
                       r"\['test', 'train', 'val'\]"):
        read_annotations("activitynet", FIXTURES / "activitynet", "val_2")


@pytest.mark.parametrize(
    "datatype, name", [("vatex", "ref_captions.json"), ("didemo", "train_data.json"),
                       ("activitynet", "train.json"), ("msvd", "captions_msvd.json")],
)
def test_malformed_json_names_the_file_and_line(tmp_path, datatype, name):
    folder = copy_of(datatype, tmp_path)
    if datatype == "msvd":
        (folder / "raw-captions.pkl").unlink()
    (folder / name).write_text('{\n  "a": [\n    "b",,\n  ]\n}')
    with pytest.raises(ValueError, match=rf"{name}:3: invalid JSON"):
        read_annotations(datatype, folder, "train")


def test_non_utf8_text_names_the_file_and_line(tmp_path):
    folder = copy_of("vatex", tmp_path)
    (folder / "train_list.txt").write_bytes(b"Ptf_2VRj-V0_000122_000132\n\xff\xfeoops\n")
    with pytest.raises(ValueError, match=r"train_list\.txt:2: not UTF-8 text"):
        read_annotations("vatex", folder, "train")


@pytest.mark.parametrize("datatype", ["msvd", "vatex", "didemo", "activitynet"])
def test_utf8_byte_order_mark_is_accepted(tmp_path, datatype):
    folder = copy_of(datatype, tmp_path)
    for path in folder.iterdir():
        if path.suffix in (".txt", ".json"):
            path.write_bytes(codecs.BOM_UTF8 + path.read_bytes())
    for split in ("train", "test"):
        with_bom = read_annotations(datatype, folder, split)
        plain = read_annotations(datatype, FIXTURES / datatype, split)
        assert [(r.video_id, r.caption) for r in with_bom] == [
            (r.video_id, r.caption) for r in plain
        ]
