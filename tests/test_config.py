"""Config values are checked once, when a config is built: types, ranges, choices."""

import math

import pytest

from vcb_utils.config import (
    Config,
    DataConfig,
    ModelConfig,
    RunOptions,
    TrainConfig,
    load_config,
    preset,
)


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        (TrainConfig, {"epochs": 0}, "TrainConfig.epochs: must be >= 1, got 0"),
        (TrainConfig, {"epochs": -3}, "must be >= 1"),
        (TrainConfig, {"epochs": 2.5}, "TrainConfig.epochs: expected int, got 2.5"),
        (TrainConfig, {"lr": math.inf}, "TrainConfig.lr: must be a finite number"),
        (TrainConfig, {"lr": math.nan}, "must be a finite number"),
        (TrainConfig, {"lr": 0.0}, "TrainConfig.lr: must be > 0"),
        (TrainConfig, {"warmup_ratio": 1.5}, "must be between 0 and 1"),
        (TrainConfig, {"mixed_precision": "fp8"}, "is not one of ['no', 'fp16', 'bf16']"),
        (ModelConfig, {"max_frames": -1}, "ModelConfig.max_frames: must be between 1 and"),
        (ModelConfig, {"max_words": "32"}, "ModelConfig.max_words: expected int, got '32'"),
        (ModelConfig, {"query_expansion": "yes"}, "expected bool"),
        (ModelConfig, {"mode": "frames"}, "ModelConfig.mode: 'frames' is not one of"),
        (ModelConfig, {"frozen": "visual"}, "expected a list of strings"),
        (ModelConfig, {"temporal_dropout": 1.5}, "between 0 and 1"),
        (DataConfig, {"datatype": "youtube"}, "DataConfig.datatype: 'youtube' is not one of"),
        (DataConfig, {"video_framerate": 0}, "DataConfig.video_framerate: must be > 0"),
        (DataConfig, {"on_error": "ignore"}, "is not one of ['raise', 'skip']"),
        (RunOptions, {"world_size": 0}, "RunOptions.world_size: must be >= 1"),
    ],
)
def test_bad_values_are_refused_naming_the_field(kind, values, message):
    with pytest.raises(ValueError) as info:
        kind(**values)
    assert message in str(info.value)


def test_values_are_normalised():
    model = ModelConfig(backbone="ViT-B/16", mode="spatial", frozen=["a", "b"], temporal_width=None)
    assert (model.backbone, model.mode, model.frozen) == ("ViT-B-16", "F", ("a", "b"))
    assert ModelConfig(mode="temporal").mode == "V"
    train = TrainConfig(lr=1, weight_decay=0)
    assert isinstance(train.lr, float) and isinstance(train.weight_decay, float)
    assert ModelConfig(query_expansion=0).query_expansion is False


def test_every_preset_is_valid_and_round_trips():
    for name in ("tiny", "msrvtt-vit-b32", "msrvtt-vit-b16"):
        config = preset(name)
        assert Config.from_dict(config.to_dict()) == config


def test_updates_and_files_are_checked_too(tmp_path):
    with pytest.raises(ValueError, match="TrainConfig.batch_size: must be >= 1"):
        preset("tiny").updated(train={"batch_size": 0})
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: -1\n")
    with pytest.raises(ValueError, match=r"run.yaml: TrainConfig.epochs: must be >= 1"):
        load_config(path)


@pytest.mark.parametrize(
    ("kind", "values", "message"),
    [
        (TrainConfig, {"lr": -1.0}, "TrainConfig.lr: must be > 0, got -1.0"),
        (TrainConfig, {"lr": 0.0}, "TrainConfig.lr: must be > 0, got 0.0"),
        (DataConfig, {"video_framerate": -2.0}, "DataConfig.video_framerate: must be > 0"),
        (ModelConfig, {"max_frames": 10**9}, "ModelConfig.max_frames: must be between 1 and"),
        (ModelConfig, {"temporal_width": 10**6}, "ModelConfig.temporal_width: must be between"),
        (ModelConfig, {"temporal_layers": 10**4}, "ModelConfig.temporal_layers: must be between"),
        (ModelConfig, {"n_visual_expansion": 10**7}, "n_visual_expansion: must be between"),
    ],
)
def test_the_message_states_the_range_that_is_checked(kind, values, message):
    with pytest.raises(ValueError) as info:
        kind(**values)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resume": "auto", "overwrite": True}, "--resume and --overwrite"),
        ({"zero_shot": True, "init_model": "ckpt"}, "--zero_shot evaluates the plain backbone"),
        ({"do_train": False, "do_eval": False}, "--do_train 0 and --do_eval 0"),
    ],
)
def test_options_that_contradict_each_other_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        RunOptions(**values)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "train:\n  epochs: 3\n  lr: [1e-4\n", r"bad\.yaml:4: invalid YAML"),
        ("tab.yaml", "model:\n\tmax_frames: 8\n", r"tab\.yaml:2: invalid YAML"),
        ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", r"deep\.yaml: invalid YAML"),
        ("bad.json", '{"train": {"lr": 1e-4,}}', r"bad\.json:1: invalid JSON"),
        ("twice.json", '{"train": {}, "train": {}}', r"twice\.json: .*'train' appears"),
        ("twice.yaml", "train:\n  lr: 0.1\n  lr: 0.2\n", r"twice\.yaml:3: .*'lr' appears twice"),
    ],
    ids=["unclosed", "tab", "deep", "json", "json-twice", "yaml-twice"],
)
def test_config_file_errors_name_the_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)
