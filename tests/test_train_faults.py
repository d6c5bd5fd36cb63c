"""Training runs that meet faults: a SIGKILL while saving, a missing video, a second run in the
same folder, a resume with other settings, a signal during validation, unreadable test clips."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import launch_env

from vcb_utils import evaluate as evaluate_module
from vcb_utils.storage import saved_folder
from vcb_utils.train import run
from vcb_utils.train_cli import parse_args
from vcb_utils.training_session import TrainingInterrupted, check_state

TRAIN = str(Path(__file__).resolve().parents[1] / "vcb_utils" / "train.py")


def small_args(data: str, out: Path, *extra: str) -> list[str]:
    return [
        "--datatype", "synthetic", "--anno_path", data, "--output_dir", str(out),
        "--batch_size", "8", "--batch_size_val", "16", "--workers", "0", *extra,
    ]  # fmt: skip


def copy_of(data: str, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def test_a_missing_test_video_stops_the_run_before_the_model_is_built(
    small_synthetic, tmp_path, monkeypatch
):
    data = copy_of(small_synthetic, tmp_path)
    test_rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    missing = next(row["video"] for row in test_rows if row["split"] == "test")
    (data / missing).unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr("vcb_utils.train.VideoColBERT", no_model)
    config, options = parse_args(small_args(str(data), tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=f"synthetic split 'test'.*{missing}"):
        run(config, options)


def test_a_corrupt_test_video_is_found_by_opening_it(small_synthetic, tmp_path, monkeypatch):
    data = copy_of(small_synthetic, tmp_path)
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    corrupt = next(row["video"] for row in rows if row["split"] == "test")
    (data / corrupt).write_bytes(b"not a video" * 100)
    config, options = parse_args(small_args(str(data), tmp_path / "out", "--do_train", "0"))
    with pytest.raises(FileNotFoundError, match=f"1 of .* unusable.*{corrupt}"):
        run(config, options)


def test_a_second_run_in_the_same_folder_refuses_unless_told(small_synthetic, tmp_path):
    out = tmp_path / "out"
    args = small_args(small_synthetic, out, "--epochs", "1", "--max_steps", "1", "--do_eval", "0")
    run(*parse_args(args))
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        run(*parse_args(args))
    run(*parse_args([*args, "--overwrite"]))
    events = [
        json.loads(line).get("event") for line in (out / "log.jsonl").read_text().splitlines()
    ]
    assert events.count("start") == 1  # a fresh log, not two runs interleaved


def test_resume_with_other_settings_refuses_naming_them(small_synthetic, tmp_path):
    out = tmp_path / "out"
    args = small_args(small_synthetic, out, "--epochs", "2", "--max_steps", "2", "--do_eval", "0")
    run(*parse_args(args))
    changed = [*args, "--resume", "--batch_size", "4", "--lr", "0.5"]
    with pytest.raises(ValueError, match=r"batch_size 8 -> 4.*lr 0.001 -> 0.5"):
        run(*parse_args(changed))


def test_a_signal_during_the_last_validation_still_stops_the_run(
    small_synthetic, tmp_path, monkeypatch
):
    real_evaluate = evaluate_module.evaluate

    def evaluate_then_signal(*args, **kwargs):
        metrics = real_evaluate(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the epoch is being closed
        return metrics

    monkeypatch.setattr("vcb_utils.train.evaluate", evaluate_then_signal)
    out = tmp_path / "out"
    config, options = parse_args(small_args(small_synthetic, out, "--epochs", "1"))
    with pytest.raises(TrainingInterrupted) as stopped:
        run(config, options)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert json.loads((out / "state" / "progress.json").read_text())["progress"]["epoch"] == 1
    assert not (out / "metrics.json").exists()  # the final evaluation did not run


def test_skipped_test_videos_are_recorded_in_metrics_json(small_synthetic, tmp_path):
    data = copy_of(small_synthetic, tmp_path)
    rows = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    test_videos = sorted({row["video"] for row in rows if row["split"] == "test"})
    (data / test_videos[0]).unlink()
    (data / test_videos[1]).write_bytes(b"\x00" * 4096)  # opens as nothing
    captions = sum(row["video"] in test_videos[:2] for row in rows if row["split"] == "test")
    out = tmp_path / "out"
    config, options = parse_args(
        small_args(str(data), out, "--do_train", "0", "--on_error", "skip")
    )
    run(config, options)
    dropped = json.loads((out / "metrics.json").read_text())["dropped"]
    assert dropped["videos"] == 2 and dropped["captions"] == captions
    assert sorted(Path(p).name for p in dropped["files"]) == [Path(v).name for v in test_videos[:2]]


def scheduler_steps(state: Path) -> int:
    return torch.load(state / "scheduler.bin", weights_only=True)["last_epoch"]


@pytest.mark.slow
def test_sigkill_while_saving_leaves_a_whole_state(small_synthetic, tmp_path):
    """Kill a run that saves at every step at random moments: the state on disk is always one
    save, whole (its progress, scheduler and file sizes agree), and resuming finishes the run."""
    out = tmp_path / "out"
    args = small_args(
        small_synthetic, out, "--epochs", "3", "--do_eval", "0", "--save_every_steps", "1"
    )
    rng = random.Random(0)
    kills = 0
    for attempt in range(6):
        command = [sys.executable, TRAIN, *args, *(["--resume"] if kills else [])]
        proc = subprocess.Popen(
            command, env=launch_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (out / "state").exists():
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        kills += 1
        state = saved_folder(out / "state")
        record = check_state(state)  # every file there, with the size it was saved with
        assert scheduler_steps(state) == record["progress"]["step"], attempt
    assert kills >= 3
    finish = subprocess.run(
        [sys.executable, TRAIN, *args, "--resume"],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert finish.returncode == 0, finish.stderr[-2000:]
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps if "loss" in r) == 21  # 3 x 7: backward clips too


def test_dependency_floors_load_states_without_running_code():
    """torch >= 2.6 refuses code in torch.load by default; accelerate >= 1.1 goes through it."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floors = {}
    for line in text.splitlines():
        line = line.strip().strip(",").strip('"')
        if line.startswith(("torch>", "accelerate>")):
            requirement = Requirement(line)
            floors[requirement.name] = min(Version(s.version) for s in requirement.specifier)
    assert floors["torch"] >= Version("2.6") and floors["accelerate"] >= Version("1.1")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_state_file_runs_no_code_on_resume(small_synthetic, tmp_path):
    import pickle

    out = tmp_path / "out"
    args = small_args(small_synthetic, out, "--epochs", "2", "--max_steps", "1", "--do_eval", "0")
    run(*parse_args(args))
    marker = tmp_path / "ran"
    crafted = out / "state" / "random_states_0.pkl"
    crafted.write_bytes(pickle.dumps(_Payload(marker)))
    record_path = out / "state" / "progress.json"
    record = json.loads(record_path.read_text())
    record["files"]["random_states_0.pkl"] = crafted.stat().st_size  # a consistent forgery
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="random_states_0.pkl cannot be loaded as plain data"):
        run(*parse_args([*args, "--resume"]))
    assert not marker.exists()


# ---- a resumed run meets a state saved with other settings, or forged files (issue 19) -------


@pytest.fixture(scope="module")
def saved_run(small_synthetic, tmp_path_factory) -> tuple[Path, list[str]]:
    """A run stopped after one step (its state saved), and the arguments that made it."""
    out = tmp_path_factory.mktemp("saved") / "out"
    args = small_args(small_synthetic, out, "--epochs", "2", "--max_steps", "1", "--do_eval", "0")
    run(*parse_args(args))
    return out, args


def copy_run(saved_run, tmp_path: Path) -> list[str]:
    """The saved run copied under ``tmp_path``; its arguments pointed there."""
    out, args = saved_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return [str(copy) if arg == str(out) else arg for arg in args]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        (
            ["--max_frames", "6", "--temporal_layers", "2", "--loss", "infonce", "--mode", "F"],
            r"max_frames 8 -> 6, .*temporal_layers 1 -> 2, .*mode 'both' -> 'F', "
            r"loss 'sigmoid' -> 'infonce'",
        ),
        (["--video_framerate", "1"], r"video_framerate 2\.0 -> 1\.0"),
        (["--anno_path", "OTHER"], r"anno_path '.*synthetic.*' -> '.*/other'"),
    ],
    ids=["model", "framerate", "anno_path"],
)
def test_resume_with_another_model_or_data_refuses_naming_the_change(
    saved_run, small_synthetic, tmp_path, changes, named
):
    args = copy_run(saved_run, tmp_path)
    if "OTHER" in changes:
        shutil.copytree(small_synthetic, tmp_path / "other")  # the same files elsewhere
        changes = [str(tmp_path / "other") if c == "OTHER" else c for c in changes]
    with pytest.raises(ValueError, match=rf"--resume: .*saved with other settings \({named}"):
        run(*parse_args([*args, "--resume", *changes]))


def forge(state: Path, name: str, data: bytes) -> None:
    """Replace a state file, keeping progress.json consistent with it (a careful forgery)."""
    (state / name).write_bytes(data)
    record = json.loads((state / "progress.json").read_text())
    record["files"][name] = len(data)
    (state / "progress.json").write_text(json.dumps(record))


def nan_weights(state: Path) -> bytes:
    from safetensors.torch import load_file, save

    tensors = load_file(state / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    return save(tensors)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        (
            "model.safetensors",
            lambda state: b"garbage" * 100,
            r"model\.safetensors is corrupt \(not a readable safetensors file",
        ),
        ("model.safetensors", nan_weights, r"model\.safetensors: 1 tensor\(s\) hold NaN"),
        (
            "optimizer.bin",
            lambda state: torch_payload(state),
            r"optimizer\.bin cannot be loaded "
            "as plain data .*the saved state cannot be trusted",
        ),
        ("scheduler.bin", lambda state: torch_payload(state), r"scheduler\.bin cannot be loaded"),
    ],
    ids=["garbage-weights", "nan-weights", "code-optimizer", "code-scheduler"],
)
def test_a_forged_state_file_is_refused_naming_it(saved_run, tmp_path, name, make, message):
    args = copy_run(saved_run, tmp_path)
    state = tmp_path / "out" / "state"
    forge(state, name, make(state))
    with pytest.raises(ValueError, match=message) as refused:
        run(*parse_args([*args, "--resume"]))
    assert "weights_only" not in str(refused.value)
    assert not (tmp_path / "ran").exists()


def torch_payload(state: Path) -> bytes:
    """A torch file that runs a command when unpickled (it would create ``../../ran``)."""
    import io

    buffer = io.BytesIO()
    torch.save({"state": _Payload(state.parent.parent / "ran")}, buffer)
    return buffer.getvalue()
