"""The notebooks' prose types no number that their code measures or configures.

A number written into a markdown cell ("three fast epochs", "16 tokens", "about 40%", "takes
15 s") goes stale the day a setting changes, and then the notebook contradicts its own output.
So the markdown cells of every notebook in ``notebooks/`` may not state, as a number:

- a count of epochs, layers or tokens, or the value of ``max_words``, ``epochs`` or
  ``temporal_layers``;
- a time (seconds, minutes, hours);
- a percentage (a confidence level, '95% interval', is a choice, not a measurement) or
  an R@K value.

Such numbers are printed by the code, or rendered from it with ``display(Markdown(...))``, whose
text is an output, not a markdown cell, and always matches the run. Fenced code blocks (command
lines), inline examples of code to type (``{"train": {"epochs": 3}}``) and table rows (the
published MSR-VTT numbers) are exempt. The checks are static and fast;
the slow test of ``test_notebooks.py`` executes the notebooks.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
NUMBER_WORDS = (  # noqa: SIM905 (a list of words reads better as words)
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
    "forty fifty hundred thousand"
).split()
NUMBER = r"(?:\d+(?:[.,]\d+)?|" + "|".join(NUMBER_WORDS) + r")"
RULES = {
    "a count of epochs, layers or tokens": re.compile(
        rf"\b{NUMBER}(?:\s*-\s*|\s+)(?:\w+\s+)?(?:epochs?|layers?|tokens?)\b", re.I
    ),
    "a setting's value": re.compile(
        r"\b(?:max_words|epochs|temporal_layers)\b\W{0,3}(?:=|:|is|of)?\s*\d", re.I
    ),
    "a time": re.compile(
        r"\b\d+(?:\.\d+)?\s*(?:s|secs?|seconds?|mins?|minutes?|h|hours?)\b"
        rf"|\b(?:{NUMBER}|a|an|half an?)\s+(?:seconds?|minutes?|hours?)\b",
        re.I,
    ),
    "a percentage": re.compile(r"\d\s*%(?!\s+(?:Wilson\s+)?(?:confidence\s+)?interval)"),
    "an R@K value": re.compile(r"R@\d+\s*(?:=|:|of|is)\s*(?:about\s+)?\d", re.I),
}


EXAMPLE_CODE = re.compile(r"`[^`]*(?:\{|--)[^`]*`")
"""Inline code that is an example to type (``{"train": {"epochs": 3}}``, ``--epochs 3``)."""
SECTION_NUMBER = re.compile(r"^\s*#+\s*[\d.]+\s")
"""The number of a numbered heading ("### 4.3 Which token ...")."""


def prose(source: str) -> list[str]:
    """The lines of a markdown cell that are prose: not in fenced code, not table rows, without
    inline examples of code to type."""
    lines, fenced = [], False
    for line in source.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and not line.lstrip().startswith("|"):
            line = SECTION_NUMBER.sub("", EXAMPLE_CODE.sub("", line))
            lines.append(line.replace("`", ""))
    return lines


def violations(source: str) -> list[str]:
    found = []
    for line in prose(source):
        for rule, pattern in RULES.items():
            found += [f"{rule}: '{m.group(0)}' in: {line.strip()}" for m in pattern.finditer(line)]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_prose_types_no_measured_or_configured_number(path):
    nb = nbformat.read(path, as_version=4)
    found = [
        f"cell {index}: {problem}"
        for index, cell in enumerate(nb.cells)
        if cell.cell_type == "markdown"
        for problem in violations(cell.source)
    ]
    assert not found, (
        f"{path.name}: print these numbers from the code, or render the sentence with "
        "display(Markdown(...)):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("text", "caught"),
    [
        ("The run takes three fast epochs.", True),
        ("pads every query to 16 tokens", True),
        ("a 4-layer temporal transformer", True),
        ("the tiny preset's 1 layer and dropout 0", True),
        ("`max_words` = 32 tokens", True),
        ("about 40% of the test captions", True),
        ("chance is R@1 = 1", True),
        ("it takes about 15 s on a laptop", True),
        ("in about a minute", True),
        ("The short run gets clearly above chance.", False),
        ("the query is padded to `max_words` tokens", False),
        ("| CLIP4Clip | ViT-B/32 | 44.5 |", False),
        ("```bash\npython vcb_utils/train.py --epochs 3\n```", False),
        ("in minutes, on a CPU", False),
        ("the first frame and the last", False),
        ("as in the reference code; an H.264 stream; the downloaded ones", False),
        ("What one training step does", False),
        ("### 4.3 Which token picked which frame", False),
        ('`OVERRIDES` changes any field, e.g. `{"train": {"epochs": 3}}`.', False),
    ],
)
def test_the_rules_catch_typed_numbers_and_spare_the_rest(text, caught):
    assert bool(violations(text)) is caught, violations(text)
