"""Every Python example of README.md and data/README.md runs, as a reader would run it.

Each ```python block runs on its own (a fresh namespace) in one working folder per test
module, offline, on the tiny model and a small synthetic set (generation is shrunk to 24
training and 11 test clips). What a block names is made first, the way the README's own
commands make it: a tiny checkpoint for ``outputs/tiny/best`` (the main job's), a few clips
for ``my_clips``, an index of them for ``my_index`` (``vcb_utils.index_cli build``). A block
whose first line is ``# needs: <what>`` (real data, a network, a GPU) is compiled only.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from vcb_utils import index_cli, synthetic
from vcb_utils.checkpoints import save_checkpoint
from vcb_utils.config import preset
from vcb_utils.datasets import read_annotations
from vcb_utils.model import VideoColBERT

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "data/README.md")
NEEDS = "# needs:"
"""First line of a block that cannot run here: only compiled."""
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SMALL = {"n_train": 24, "n_test": 11}
CHECKPOINT, CLIPS, INDEX = "outputs/tiny/best", "my_clips", "my_index"


def python_blocks() -> list[tuple[str, int, str]]:
    """(document, line of the fence, code) of every ```python block."""
    blocks = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for match in BLOCK.finditer(text):
            blocks.append((doc, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reader")


@pytest.fixture
def reader(workdir, small_synthetic, monkeypatch) -> Path:
    """The working folder, offline, with small synthetic sets and the files blocks name."""
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("VCB_DATA_DIR", str(workdir / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    generate = synthetic.generate

    def small(out_dir, cfg=None, workers=2):
        cfg = dataclasses.replace(cfg or synthetic.SyntheticConfig(), **SMALL)
        return generate(out_dir, cfg, workers=1)

    monkeypatch.setattr(synthetic, "generate", small)
    return workdir


def make_checkpoint(folder: Path) -> None:
    """What the main job (the tiny preset) leaves in ``outputs/tiny/best``, untrained."""
    config = preset("tiny")
    save_checkpoint(VideoColBERT(config.model), folder / CHECKPOINT, config)


def make_clips(folder: Path, data: str) -> None:
    """A folder of four clips, as a reader's own."""
    (folder / CLIPS).mkdir()
    for record in read_annotations("synthetic", data, "test")[:4]:
        shutil.copy(record.path, folder / CLIPS)


def prepare(folder: Path, code: str, data: str) -> None:
    """Make the checkpoint, clips and index that ``code`` names, once per folder."""
    needs_index = f'"{INDEX}"' in code
    if (CHECKPOINT in code or needs_index) and not (folder / CHECKPOINT).exists():
        make_checkpoint(folder)
    if (CLIPS in code or needs_index) and not (folder / CLIPS).exists():
        make_clips(folder, data)
    if needs_index and not (folder / INDEX).exists():
        argv = ["build", "--index", INDEX, "--checkpoint", CHECKPOINT, "--videos", CLIPS]
        assert index_cli.main(argv) == 0


def test_the_documents_have_examples():
    assert {doc for doc, _, _ in BLOCKS} == set(DOCS)


@pytest.mark.parametrize(
    "doc, line, code", BLOCKS, ids=[f"{doc}:{line}" for doc, line, _ in BLOCKS]
)
def test_example_runs(doc, line, code, reader, small_synthetic):
    # padded so that a traceback names the document's own line
    compiled = compile("\n" * line + code, str(REPO / doc), "exec")
    if code.startswith(NEEDS):
        return
    prepare(reader, code, small_synthetic)
    exec(compiled, {"__name__": "__doc_example__"})
