import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import free_port, launch_env, launch_two

from vcb_utils.config import RunOptions, preset
from vcb_utils.train import check_batch, run
from vcb_utils.train_cli import parse_args

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "vcb_utils" / "train.py")


def small_run_args(data: str, out: Path, *extra: str) -> list[str]:
    return [
        "--datatype",
        "synthetic",
        "--anno_path",
        data,
        "--output_dir",
        str(out),
        "--batch_size",
        "8",
        "--batch_size_val",
        "16",
        "--workers",
        "0",
        *extra,
    ]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def step_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


# ---- command line ------------------------------------------------------------------------------
def test_no_arguments_is_the_tiny_main_job():
    config, options = parse_args([])
    assert config == preset("tiny")
    assert options.do_train and options.do_eval


def test_reference_flags_keep_their_meaning(tmp_path):
    config, options = parse_args(
        [
            "--do_train",
            "1",
            "--do_eval",
            "0",
            "--batch_size",
            "128",
            "--epochs",
            "5",
            "--lr",
            "1e-4",
            "--max_words",
            "32",
            "--max_frames",
            "12",
            "--video_framerate",
            "1",
            "--base_encoder",
            "ViT-B/32",
            "--datatype",
            "msrvtt",
            "--anno_path",
            "/a",
            "--video_path",
            "/v",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert config.model.backbone == "ViT-B-32"
    assert config.model.pretrained == "openai"  # as in the reference code
    assert config.model.temporal_layers == 4  # method.md defaults, not the tiny preset
    assert (config.data.anno_path, config.data.video_path) == ("/a", "/v")
    assert (config.train.batch_size, config.train.epochs, config.train.lr) == (128, 5, 1e-4)
    assert options.do_train and not options.do_eval
    assert (
        parse_args(["--base_encoder", "ViT-B/16", "--pretrained", "none"])[0].model.pretrained
        is None
    )


def test_config_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  mode: spatial\ntrain:\n  epochs: 3\n  lr: 0.01\n")
    config, _ = parse_args(["--config", str(path), "--epochs", "7"])
    assert config.model.mode == "F" and config.train.lr == 0.01 and config.train.epochs == 7
    config, options = parse_args(["--init_model", "ckpt"])
    assert not options.do_train and options.do_eval


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--preset", "enormous"])
    assert "invalid choice" in capsys.readouterr().err
    config, options = parse_args(
        [
            "--datatype",
            "msrvtt",
            "--anno_path",
            str(tmp_path / "none"),
            "--base_encoder",
            "ViT-B/32",
            "--pretrained",
            "none",
        ]
    )
    with pytest.raises(FileNotFoundError, match="none"):
        run(config, options)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="divisible by the 3 processes"):
        check_batch(preset("tiny"), 3)
    with pytest.raises(SystemExit):  # a usage error, as for any bad flag (exit status 2)
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    assert "config file not found" in capsys.readouterr().err


# ---- training runs -----------------------------------------------------------------------------
@pytest.mark.slow
def test_main_job_runs_and_loss_goes_down(tmp_path):
    """`python vcb_utils/train.py` with no arguments, exactly as the README says."""
    result = subprocess.run(  # all cores, the default environment: the main job runs alone
        [sys.executable, TRAIN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "outputs" / "tiny"
    losses = list(step_losses(out).values())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["t2v"]["both"]["R1"] >= 50.0  # the target; chance is 1% on 100 test clips
    assert (out / "best" / "model.safetensors").is_file()
    # stdout: one line per epoch, the metrics table and where the results are; nothing else
    lines = result.stdout.splitlines()
    epochs = preset("tiny").train.epochs
    assert [line.split()[:2] for line in lines if line.startswith("epoch ")] == [
        ["epoch", f"{n}/{epochs}"] for n in range(1, epochs + 1)
    ]
    assert "t2v both" in result.stdout and "initialized randomly" not in result.stdout
    best = json.loads((out / "best" / "val_metrics.json").read_text())
    assert f"best: epoch {best['epoch']}, validation R@1" in result.stdout
    assert str(out / "metrics.json").endswith(lines[-1].split(": ")[-1].lstrip("./"))
    assert "initialized randomly" not in result.stderr and "Saving" not in result.stderr


@pytest.mark.slow
def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    script = str(REPO / "tests" / "scripts" / "ddp_step.py")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    subprocess.run([sys.executable, script, str(one)], check=True, env=launch_env(), timeout=300)
    subprocess.run(
        launch_two(script, str(two)),
        check=True,
        env=launch_env(),
        timeout=300,
    )
    a, b = torch.load(one), torch.load(two)
    assert (a["world"], b["world"]) == (1, 2)
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-6)
    assert a["grads"].keys() == b["grads"].keys()
    for name, grad in a["grads"].items():
        torch.testing.assert_close(b["grads"][name], grad, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_sigterm_saves_state_and_resume_reproduces_the_losses(tmp_path, small_synthetic):
    args = small_run_args(small_synthetic, tmp_path / "x", "--epochs", "3", "--do_eval", "0")
    full = tmp_path / "full"
    subprocess.run(
        [
            sys.executable,
            TRAIN,
            *small_run_args(small_synthetic, full, "--epochs", "3", "--do_eval", "0"),
        ],
        check=True,
        env=launch_env(),
        capture_output=True,
        timeout=600,
    )
    expected = step_losses(full)
    # 48 pairs + 12 backward clips (tiny's backward_share 0.25) / batch 8 = 7 steps x 3 epochs
    assert len(expected) == 21

    out = tmp_path / "x"
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *args],
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (out / "log.jsonl").is_file() and len(step_losses(out)) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "--resume" in stderr
    stopped_at = max(step_losses(out))
    assert 8 <= stopped_at < 21
    assert (out / "state" / "progress.json").is_file()

    subprocess.run(
        [sys.executable, TRAIN, *args, "--resume"],
        check=True,
        env=launch_env(),
        capture_output=True,
        timeout=600,
    )
    resumed = step_losses(out)
    assert sorted(resumed) == sorted(expected)
    for step, loss in expected.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5, abs=1e-6), step


@pytest.mark.slow
def test_two_machines_on_loopback_train_as_one_group(tmp_path, small_synthetic):
    port = free_port()
    out = tmp_path / "run"
    launches = [
        subprocess.Popen(
            [
                "accelerate",
                "launch",
                "--multi_gpu",
                "--num_machines",
                "2",
                "--num_processes",
                "2",
                "--machine_rank",
                str(rank),
                "--main_process_ip",
                "127.0.0.1",
                "--main_process_port",
                str(port),
                TRAIN,
                *small_run_args(
                    small_synthetic,
                    out,
                    "--cpu",
                    "--max_steps",
                    "2",
                    "--do_eval",
                    "0",
                    "--world_size",
                    "2",
                ),
            ],
            env=launch_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    for proc in launches:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    log = read_log(out)
    assert log[0]["world_size"] == 2
    assert max(step_losses(out)) == 2
    assert (out / "last" / "model.safetensors").is_file()


@pytest.mark.slow
def test_paper_scale_vit_b32_takes_a_training_step(tmp_path, small_synthetic):
    config, options = parse_args(
        [
            "--preset",
            "msrvtt-clip-b32",
            "--pretrained",
            "none",
            "--datatype",
            "synthetic",
            "--anno_path",
            small_synthetic,
            "--batch_size",
            "2",
            "--max_steps",
            "1",
            "--do_eval",
            "0",
            "--workers",
            "0",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert (config.model.backbone, config.model.max_frames, config.model.max_words) == (
        "ViT-B-32",
        12,
        32,
    )
    run(config, RunOptions(do_train=True, do_eval=False, max_steps=1))
    (record,) = [r for r in read_log(tmp_path) if "loss" in r]
    assert torch.isfinite(torch.tensor(record["loss"]))
    assert (tmp_path / "last" / "model.safetensors").stat().st_size > 300e6  # ~150 M params


def test_non_finite_loss_stops_naming_the_step_after_saving(tmp_path, small_synthetic, monkeypatch):
    from vcb_utils.model import VideoColBERT

    real_loss, calls = VideoColBERT.loss, []

    def loss_that_explodes(self, scores):
        calls.append(1)
        losses = real_loss(self, scores)
        return {**losses, "loss": losses["loss"] * float("nan")} if len(calls) == 3 else losses

    monkeypatch.setattr(VideoColBERT, "loss", loss_that_explodes)
    config, options = parse_args(small_run_args(small_synthetic, tmp_path, "--do_eval", "0"))
    with pytest.raises(FloatingPointError, match="at step 3"):
        run(config, options)
    progress = json.loads((tmp_path / "state" / "progress.json").read_text())
    assert progress["progress"]["step"] == 2


def test_an_interrupt_inside_an_accumulation_window_replays_the_window():
    from vcb_utils.training_session import Progress, window_start

    assert window_start(Progress(batch=7, step=3), grad_accum=2) == Progress(batch=6, step=3)
    assert window_start(Progress(batch=6, step=3), grad_accum=2).batch == 6
    assert window_start(Progress(batch=5, step=5), grad_accum=1).batch == 5
