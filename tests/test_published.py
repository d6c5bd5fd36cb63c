"""The reproduction table: every paper preset, the paper's numbers, the command; in the README."""

from pathlib import Path

from vcb_utils.config import PRESETS
from vcb_utils.published import PUBLISHED, command, reproduction_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_paper_row_has_a_preset_and_a_row():
    table = reproduction_table()
    assert set(PUBLISHED) <= set(PRESETS)
    assert table.count("\n| `") == 15  # 5 benchmarks x 3 backbones
    assert "| `msrvtt-siglip-b16` | 51.5 / – / 85.5 | not measured (no GPU run) |" in table
    assert "| `msrvtt-clip-b32` | – / – / – |" in table
    assert "--preset vatex-clip-b16 " in command("vatex-clip-b16")


def test_the_readme_shows_the_table_as_the_code_makes_it():
    assert reproduction_table() in README.read_text()
