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
        (ModelConfig, {"max_frames": -1}, "ModelConfig.max_frames: must be >= 1"),
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
