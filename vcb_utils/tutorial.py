"""Settings shared by the tutorial notebooks: one call gives the fast or the full run's Config."""

from __future__ import annotations

from pathlib import Path

from vcb_utils.config import Config, preset


def repo_root(start: Path | None = None) -> Path:
    """The repository checkout around ``start`` (default: the working directory)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    raise FileNotFoundError(f"no repository (pyproject.toml) at or above {start}")


def notebook_config(
    fast: bool,
    *,
    preset_name: str = "msrvtt-vit-b32",
    backbone: str = "ViT-B-32",
    pretrained: str | None = "openai",
    anno_path: str = "data/msrvtt/msrvtt_data",
    video_path: str = "data/msrvtt/MSRVTT/videos/all",
    cache_dir: str = "data/cache",
    output_dir: str = "outputs/notebooks",
    fast_epochs: int | None = None,
) -> tuple[Config, Path]:
    """The Config of a notebook and the run folder that notebook 3 trains into.

    Fast: the ``tiny`` preset on the synthetic clips (``fast_epochs`` overrides its epochs).
    Full: ``preset_name`` with the given backbone on MSR-VTT. Relative paths are taken from
    the repository root, so every notebook finds what the others made.
    """
    root = repo_root()
    run_dir = root / output_dir / ("train-tiny" if fast else f"train-{preset_name}")
    train = {"output_dir": str(run_dir)}
    data = {"cache_dir": str(root / cache_dir)}
    if fast:
        if fast_epochs is not None:
            train["epochs"] = fast_epochs
        return preset("tiny").updated(data=data, train=train), run_dir
    data.update(anno_path=str(root / anno_path), video_path=str(root / video_path))
    model = {"backbone": backbone, "pretrained": pretrained}
    return preset(preset_name).updated(model=model, data=data, train=train), run_dir
