import pytest
import torch

from vcb_utils.config import ModelConfig, preset


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    """The tiny preset's model config with 12 frames and no dropout (deterministic)."""
    return preset("tiny").model.__class__(
        **{**preset("tiny").model.__dict__, "max_frames": 12, "temporal_dropout": 0.0}
    )


@pytest.fixture
def frames() -> torch.Tensor:
    """A batch of 3 random 12-frame clips at the tiny model's 64 px."""
    return torch.randn(3, 12, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> str:
    """A small generated synthetic dataset (24 train clips x 2 captions, 11 test clips)."""
    from vcb_utils.synthetic import SyntheticConfig, generate

    folder = tmp_path_factory.mktemp("synthetic")
    generate(folder, SyntheticConfig(n_train=24, n_test=11, seed=3), workers=1)
    return str(folder)
