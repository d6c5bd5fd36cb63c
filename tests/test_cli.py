"""The command line generated from the config dataclasses: every reference flag, the help text."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from vcb_utils.config import SECTIONS, RunOptions, preset
from vcb_utils.train_cli import build_parser, field_docs, parse_args

ROOT = Path(__file__).resolve().parents[1]

# every flag of the command line before it was generated, with a value and where it must land
OLD_FLAGS = {
    "--datatype": ("msrvtt", "data", "datatype", "msrvtt"),
    "--anno_path": ("/a", "data", "anno_path", "/a"),
    "--video_path": ("/v", "data", "video_path", "/v"),
    "--video_framerate": ("2", "data", "video_framerate", 2.0),
    "--workers": ("3", "data", "workers", 3),
    "--on_error": ("skip", "data", "on_error", "skip"),
    "--cache_dir": ("/c", "data", "cache_dir", "/c"),
    "--max_words": ("20", "model", "max_words", 20),
    "--max_frames": ("6", "model", "max_frames", 6),
    "--base_encoder": ("ViT-B/16", "model", "backbone", "ViT-B-16"),
    "--pretrained": ("none", "model", "pretrained", None),
    "--mode": ("temporal", "model", "mode", "V"),
    "--loss": ("infonce", "model", "loss", "infonce"),
    "--query_expansion": ("0", "model", "query_expansion", False),
    "--n_visual_expansion": ("0", "model", "n_visual_expansion", 0),
    "--temporal_layers": ("2", "model", "temporal_layers", 2),
    "--batch_size": ("64", "train", "batch_size", 64),
    "--batch_size_val": ("32", "train", "batch_size_val", 32),
    "--epochs": ("3", "train", "epochs", 3),
    "--lr": ("1e-4", "train", "lr", 1e-4),
    "--coef_lr": ("0.01", "train", "coef_lr", 0.01),
    "--weight_decay": ("0.1", "train", "weight_decay", 0.1),
    "--warmup_ratio": ("0.2", "train", "warmup_ratio", 0.2),
    "--grad_clip": ("0", "train", "grad_clip", 0.0),
    "--grad_accum": ("2", "train", "grad_accum", 2),
    "--seed": ("7", "train", "seed", 7),
    "--mixed_precision": ("bf16", "train", "mixed_precision", "bf16"),
    "--output_dir": ("/o", "train", "output_dir", "/o"),
    "--save_every_steps": ("10", "train", "save_every_steps", 10),
    "--do_train": ("0", "run", "do_train", False),
    "--do_eval": ("0", "run", "do_eval", False),
    "--init_model": ("ckpt", "run", "init_model", "ckpt"),
    "--resume": ("state", "run", "resume", "state"),
    "--report_to": ("tensorboard", "run", "report_to", "tensorboard"),
    "--world_size": ("2", "run", "world_size", 2),
    "--max_steps": ("5", "run", "max_steps", 5),
    "--postprocessing": ("dual_softmax", "run", "postprocessing", "dual_softmax"),
}
SWITCHES = {"--cpu": "cpu", "--zero_shot": "zero_shot", "--resume": "resume"}


@pytest.mark.parametrize("flag", sorted(OLD_FLAGS))
def test_every_old_flag_still_parses(flag):
    value, section, name, expected = OLD_FLAGS[flag]
    config, options = parse_args([flag, value])
    holder = options if section == "run" else getattr(config, section)
    assert getattr(holder, name) == expected


def test_switches_given_alone():
    _, options = parse_args(list(SWITCHES))
    assert options.cpu and options.zero_shot and options.resume == "auto"
    assert parse_args(["--cpu", "0"])[1].cpu is False


def test_every_field_is_a_documented_flag():
    text = build_parser([]).format_help()
    for kind in (*SECTIONS.values(), RunOptions):
        docs = field_docs(kind)
        for f in dataclasses.fields(kind):
            assert f"--{f.name}" in text
            assert docs.get(f.name), f"{kind.__name__}.{f.name} has no docstring"


def help_value(argv: list[str], flag: str) -> str:
    """The default a flag's help shows under ``argv``."""
    text = " ".join(build_parser(argv).format_help().split())
    after = text[text.rindex(f"{flag} ") :]
    start = after.index("(default: ") + len("(default: ")
    return after[start : after.index(")", start)]


def test_help_shows_the_values_of_the_chosen_preset():
    tiny, paper = preset("tiny"), preset("msrvtt-clip-b32")
    assert help_value([], "--backbone") == tiny.model.backbone == "vcb-tiny"
    assert help_value([], "--epochs") == str(tiny.train.epochs)
    assert help_value(["--preset", "msrvtt-clip-b32"], "--backbone") == "ViT-B-32"
    assert help_value(["--preset", "msrvtt-clip-b32"], "--epochs") == str(paper.train.epochs)
    assert help_value(["--preset", "msrvtt-clip-b32"], "--pretrained") == "openai"


def test_help_answers_without_loading_torch():
    code = (
        "import sys; from vcb_utils.train_cli import build_parser; build_parser([]).format_help(); "
        "print(sorted(m for m in ('torch', 'open_clip', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    result = subprocess.run(
        [sys.executable, "-m", "vcb_utils.train", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--base_encoder" in result.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "TrainConfig.epochs: must be >= 1"),
        (["--lr", "nan"], "TrainConfig.lr: must be a finite number"),
        (["--max_frames", "-2"], "ModelConfig.max_frames: must be between 1 and 4096"),
        (["--mode", "sideways"], "invalid choice"),
        (["--max_steps", "-1"], "RunOptions.max_steps: must be >= 0"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_named_backbone_brings_its_own_weights():
    assert parse_args(["--base_encoder", "ViT-B/16"])[0].model.pretrained == "openai"
    assert parse_args(["--backbone", "ViT-B-16-SigLIP"])[0].model.pretrained == "webli"
    siglip = parse_args(["--backbone", "ViT-B-16-SigLIP", "--pretrained", "none"])[0]
    assert siglip.model.pretrained is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "TrainConfig.lr: must be > 0, got -1.0"),
        (["--resume", "--overwrite"], "--resume and --overwrite"),
        (["--zero_shot", "--init_model", "ckpt"], "--zero_shot evaluates the plain backbone"),
        (["--do_train", "0", "--do_eval", "0"], "--do_train 0 and --do_eval 0"),
        (["--init_model", "ckpt", "--do_eval", "0"], "--do_train 0 and --do_eval 0"),
    ],
)
def test_contradictions_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_broken_config_file_is_a_usage_error_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 3\n   lr: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--config", str(path)])
    assert exit_info.value.code == 2
    assert f"{path}:3: invalid YAML" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    assert "config file not found" in capsys.readouterr().err
