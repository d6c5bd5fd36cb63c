"""Files a hostile or careless user supplies (issue 19): each is refused with an error that names
the file and the line or field, never read silently as something else, never a raw traceback."""

from __future__ import annotations

import json
import pickle
import shutil
import tracemalloc
from pathlib import Path

import pytest

from vcb_utils.annotations import msvd as msvd_reader
from vcb_utils.annotations import read_annotations

FIXTURES = Path(__file__).parent / "fixtures"


def csv_file(folder: Path, rows: list[str]) -> Path:
    path = folder / "anno.csv"
    path.write_text("video,caption,split\n" + "".join(f"{row}\n" for row in rows))
    return path


def jsonl_file(folder: Path, *rows: str) -> Path:
    path = folder / "anno.jsonl"
    path.write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- CSV: a stray quote


@pytest.mark.parametrize("n_rows", [51, 6000])
def test_a_stray_quote_in_a_csv_stops_at_its_line(tmp_path, n_rows):
    rows = [f"v{i}.mp4,caption number {i} of the file,train" for i in range(n_rows)]
    rows[4] = 'v4.mp4,"a caption with a stray quote,train'  # line 6: header + 4 rows before
    with pytest.raises(ValueError, match=r"anno\.csv:6: .*quote left open"):
        read_annotations("csv", csv_file(tmp_path, rows), "train")


def test_a_csv_row_with_more_or_fewer_fields_than_the_header_is_refused(tmp_path):
    extra = csv_file(tmp_path, ["a.mp4,one caption,train", "b.mp4,a caption, with a comma,train"])
    with pytest.raises(ValueError, match=r"anno\.csv:3: 4 fields, the header has 3"):
        read_annotations("csv", extra, "train")
    short = csv_file(tmp_path, ["a.mp4,one caption,train", "b.mp4,no split"])
    with pytest.raises(ValueError, match=r"anno\.csv:3: 2 fields, the header has 3"):
        read_annotations("csv", short, "train")


def test_quoted_commas_and_quotes_on_one_line_still_read(tmp_path):
    path = csv_file(tmp_path, ['a.mp4,"a caption, with ""quotes""",train', "b.mp4,plain,train"])
    records = read_annotations("csv", path, "train")
    assert [(r.video_id, r.caption) for r in records] == [
        ("a.mp4", 'a caption, with "quotes"'),
        ("b.mp4", "plain"),
    ]


def test_duplicate_csv_columns_are_refused(tmp_path):
    path = tmp_path / "anno.csv"
    path.write_text("video,caption,caption\na.mp4,first,second\n")
    with pytest.raises(ValueError, match=r"anno\.csv:1: column\(s\) \['caption'\] appear more"):
        read_annotations("csv", path, "train")


# ---------------------------------------------------------------- own files: values


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"video": "a.mp4", "caption": "x", "end": true}', r"'True' is not a time"),
        ('{"video": {}, "caption": "x"}', r"'video' must be a file path, not a dict"),
        ('{"video": ["a.mp4"], "caption": "x"}', r"'video' must be a file path, not a list"),
        ('{"video": "a.mp4", "caption": "x", "end": 1' + "0" * 400 + "}", "is not a time"),
        ('{"video": "a.mp4", "video": "b.mp4", "caption": "x"}', r"key 'video' appears twice"),
        (
            '{"video": "a.mp4", "caption": "x", "z": ' + "[" * 50000 + "]" * 50000 + "}",
            "nested too deeply",
        ),
        ('{"video": "../../etc/passwd", "caption": "x"}', r"'\.\./\.\./etc/passwd' is not inside"),
        ('{"video": "/etc/passwd", "caption": "x"}', r"'/etc/passwd' is not inside"),
    ],
    ids=[
        "end-true",
        "video-dict",
        "video-list",
        "huge-int",
        "repeated-key",
        "deep",
        "dot-dot",
        "absolute",
    ],
)
def test_hostile_jsonl_values_are_problems_of_their_line(tmp_path, row, message):
    path = jsonl_file(tmp_path, '{"video": "ok.mp4", "caption": "fine"}', row)
    where = r"anno\.jsonl: 1 problem\(s\): anno\.jsonl:2: "
    with pytest.raises(ValueError, match=where + ".*" + message):
        read_annotations("jsonl", path, "train")


def test_paths_that_stay_inside_the_video_folder_are_kept(tmp_path):
    path = jsonl_file(tmp_path, '{"video": "sub/../a.mp4", "caption": "x"}')
    assert read_annotations("jsonl", path, "train")[0].path == tmp_path / "sub/../a.mp4"
    csv_path = csv_file(tmp_path, ["../escape.mp4,x,train"])
    with pytest.raises(ValueError, match=r"anno\.csv:2: video '\.\./escape\.mp4' is not inside"):
        read_annotations("csv", csv_path, "train")


def test_a_line_separator_inside_a_caption_is_part_of_it(tmp_path):
    row = json.dumps({"video": "a.mp4", "caption": "one\u2028two"}, ensure_ascii=False)
    assert "\u2028" in row
    records = read_annotations("jsonl", jsonl_file(tmp_path, row), "train")
    assert [r.caption for r in records] == ["one\u2028two"]


# ---------------------------------------------------------------- benchmarks


def copy_of(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def test_benchmark_ids_that_leave_the_video_folder_are_refused(tmp_path):
    msvd = copy_of("msvd", tmp_path)
    (msvd / "test_list.txt").write_text("-_aaMGK6GGw_57_61\n../../etc/passwd\n")
    with pytest.raises(
        ValueError,
        match=r"test_list\.txt: 1 video id\(s\) are not plain file "
        r"names.*'\.\./\.\./etc/passwd'",
    ):
        read_annotations("msvd", msvd, "test")
    msrvtt = msrvtt_folder(tmp_path, "../../../etc/passwd")
    with pytest.raises(ValueError, match=r"MSRVTT_JSFUSION_test\.csv: 1 video id"):
        read_annotations("msrvtt", msrvtt, "test")
    with pytest.raises(ValueError, match=r"MSRVTT_train\.9k\.csv: 1 video id"):
        read_annotations("msrvtt", msrvtt, "train")


def msrvtt_folder(tmp_path: Path, video_id: str, caption_id: object = "video0") -> Path:
    """An MSR-VTT annotation folder with the videos ``video0`` and ``video_id``."""
    folder = tmp_path / "msrvtt"
    folder.mkdir()
    (folder / "MSRVTT_JSFUSION_test.csv").write_text(
        f"key,vid_key,video_id,sentence\nret0,msr0,video0,a cat\nret1,msr1,{video_id},a dog\n"
    )
    (folder / "MSRVTT_train.9k.csv").write_text(f"video_id\nvideo0\n{video_id}\n")
    sentences = [
        {"video_id": "video0", "caption": "a cat"},
        {"video_id": caption_id, "caption": "a dog"},
    ]
    (folder / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences}))
    return folder


def test_duplicate_and_deeply_nested_benchmark_json_is_refused(tmp_path):
    vatex = copy_of("vatex", tmp_path)
    text = (vatex / "ref_captions.json").read_text()
    first_key = next(iter(json.loads(text)))
    duplicated = text.replace("{", f'{{"{first_key}": ["a lost caption"], ', 1)
    (vatex / "ref_captions.json").write_text(duplicated)
    with pytest.raises(
        ValueError,
        match=rf"ref_captions\.json: invalid JSON \(the key "
        rf"'{first_key}' appears twice",
    ):
        read_annotations("vatex", vatex, "train")
    (vatex / "ref_captions.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=r"ref_captions\.json: invalid JSON \(nested too deeply"):
        read_annotations("vatex", vatex, "train")


def test_msrvtt_video_id_of_the_wrong_type_names_the_file(tmp_path):
    msrvtt = msrvtt_folder(tmp_path, "video1", caption_id=["video1"])
    with pytest.raises(
        ValueError,
        match=r"MSRVTT_data\.json:sentence 1: video_id \['video1'\] "
        "is not a string",
    ):
        read_annotations("msrvtt", msrvtt, "train")


def test_msvd_pickle_that_repeats_references_is_refused_before_expanding(tmp_path, monkeypatch):
    msvd = copy_of("msvd", tmp_path)
    tokens = ["word"] * 100  # 500 characters joined
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": [tokens] * 1000}))
    monkeypatch.setattr(msvd_reader, "MAX_CAPTION_CHARS", 100_000)
    with pytest.raises(
        ValueError,
        match=r"raw-captions\.pkl: its captions would take over "
        "100000 characters",
    ):
        read_annotations("msvd", msvd, "train")
    monkeypatch.undo()
    bomb = [["w" * 1024] * 1000] * 100_000  # 100 GB once joined, 200 kB pickled
    (msvd / "raw-captions.pkl").write_bytes(pickle.dumps({"-4wsuPCjDBc_5_15": bomb}))
    with pytest.raises(ValueError, match="would take over"):
        read_annotations("msvd", msvd, "train")


def test_msvd_pickle_declaring_more_bytes_than_it_holds_allocates_nothing(tmp_path):
    msvd = copy_of("msvd", tmp_path)
    declared = 8 << 30  # an 8 GiB string whose bytes are not in the file
    payload = pickle.PROTO + b"\x04\x8d" + declared.to_bytes(8, "little") + b"x" * 1000
    (msvd / "raw-captions.pkl").write_bytes(payload)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"raw-captions\.pkl: not a readable pickle"):
            read_annotations("msvd", msvd, "train")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved tiny-preset checkpoint (8 frames)."""
    import torch

    from vcb_utils.config import preset
    from vcb_utils.model import VideoColBERT, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(VideoColBERT(preset("tiny").model), tmp_path_factory.mktemp("c") / "ck")


def edited_config(checkpoint: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    text = (copy / "config.json").read_text()
    (copy / "config.json").write_text(edit(text))
    return copy


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace('"max_frames": 8', '"max_frames": 12'),
            r"model\.safetensors: 1 tensor\(s\) do not have the shapes that its config\.json "
            r"builds: temporal\.frame_position \[8, 64\] instead of \[12, 64\]",
        ),
        (
            lambda t: t.replace('"max_frames": 8', '"max_frames": 1000000000'),
            r"config\.json: ModelConfig\.max_frames: must be between 1 and 4096",
        ),
        (
            lambda t: t.replace("{", '{"model": {}, ', 1),
            r"config\.json is corrupt \(the key 'model' appears twice",
        ),
        (
            lambda t: t.replace("{", '{"deep": ' + "[" * 100000 + "]" * 100000 + ", ", 1),
            r"config\.json is corrupt \(nested too deeply\)",
        ),
    ],
    ids=["shape-changed", "implausible", "repeated-key", "deep"],
)
def test_a_checkpoint_whose_config_was_edited_is_refused_naming_it(
    checkpoint, tmp_path, edit, message
):
    from vcb_utils.model import load_checkpoint

    with pytest.raises(ValueError, match=message):
        load_checkpoint(edited_config(checkpoint, tmp_path, edit))


def test_a_checkpoint_with_nan_weights_is_refused_naming_the_tensor(checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from vcb_utils.model import load_checkpoint

    copy = Path(shutil.copytree(checkpoint, tmp_path / "ck"))
    tensors = load_file(copy / "model.safetensors")
    tensors["temporal.frame_position"][3, 5] = float("nan")
    save_file(tensors, copy / "model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: 1 tensor\(s\) hold NaN or "
        r"infinity \(temporal\.frame_position\)",
    ):
        load_checkpoint(copy)
