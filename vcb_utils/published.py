"""The paper's published text-to-video numbers, by preset, and the commands that reproduce them.

Video-ColBERT (CVPR 2025) reports R@1 (and some R@10) on five benchmarks with CLIP ViT-B/16
and SigLIP ViT-B/16; no row uses CLIP ViT-B/32, whose presets are here as the cheaper
baseline (compare them with the B/32 rows of other methods in ``docs/method.md``). Numbers not
given in the sources this project could check are absent, never guessed.
"""

from __future__ import annotations

from vcb_utils.config import PAPER_BACKBONES, PAPER_DATASETS

PUBLISHED: dict[str, dict[str, float]] = {
    "msrvtt-clip-b16": {"R1": 51.0},
    "msrvtt-siglip-b16": {"R1": 51.5, "R10": 85.5},
    "msvd-clip-b16": {"R1": 50.2},
    "msvd-siglip-b16": {"R1": 55.2},
    "vatex-clip-b16": {"R1": 66.8},
    "vatex-siglip-b16": {"R1": 68.0},
}
"""Preset -> text-to-video recall (percent) in the paper."""
MEASURED: dict[str, dict[str, float]] = {}
"""Preset -> the same metrics measured with this code (filled in when a GPU run exists)."""
METRICS = ("R1", "R5", "R10")


def command(preset: str) -> str:
    """The command line that trains and evaluates ``preset`` (folders: ``data/README.md``)."""
    return (
        f"accelerate launch vcb_utils/train.py --preset {preset} --mixed_precision bf16 "
        "--anno_path ANNO --video_path VIDEOS"
    )


def reproduction_table() -> str:
    """A Markdown table: every paper preset, its published and measured recall, its command."""
    header = "| preset | paper R@1 / R@5 / R@10 | measured here | command |\n|---|---|---|---|"
    rows = []
    for dataset in PAPER_DATASETS:
        for backbone in PAPER_BACKBONES:
            name = f"{dataset}-{backbone}"
            paper = _recalls(PUBLISHED.get(name, {}))
            measured = _recalls(MEASURED[name]) if name in MEASURED else "not measured (no GPU run)"
            rows.append(f"| `{name}` | {paper} | {measured} | `{command(name)}` |")
    return "\n".join([header, *rows])


def _recalls(values: dict[str, float]) -> str:
    return " / ".join(f"{values[m]:.1f}" if m in values else "–" for m in METRICS)
