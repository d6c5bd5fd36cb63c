"""The dataset registry: one line per dataset, from which the readers, the config's datatypes,
the presets, the downloader and the docs' protocol table are derived."""

import typing
from pathlib import Path

import pytest

from vcb_utils import download
from vcb_utils.annotations import read_annotations
from vcb_utils.config import PAPER_DATASETS, DataConfig, Datatype
from vcb_utils.dataset_registry import BENCHMARKS, DATASETS, DatasetSpec, protocol_table

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_has_a_reader_and_its_module_reads_the_registered_splits(name):
    spec = DATASETS[name]
    assert callable(spec.read)
    if spec.splits and hasattr(spec.module, "SPLITS"):
        assert set(spec.module.SPLITS) == set(spec.splits)
    assert hasattr(spec.module, "DOWNLOAD") == spec.download


def test_config_presets_and_downloader_follow_the_registry():
    assert typing.get_args(Datatype) == tuple(DATASETS)
    assert list(PAPER_DATASETS) == ["msrvtt", "msvd", "vatex", "didemo", "activitynet"]
    assert set(download.DATASETS) == {name for name, spec in DATASETS.items() if spec.download}
    assert list(BENCHMARKS) == list(PAPER_DATASETS)


def test_the_docs_protocol_table_is_the_registrys():
    assert protocol_table() in (REPO / "docs" / "datasets.md").read_text()


def test_a_registered_line_is_a_new_datatype(monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS, "mine", DatasetSpec("Mine", "files:read_csv", ()))
    (tmp_path / "mine.csv").write_text("video,caption\nclip.mp4,a dog runs\n")
    records = read_annotations("mine", tmp_path / "mine.csv", "test")
    assert [(r.path, r.caption) for r in records] == [(tmp_path / "clip.mp4", "a dog runs")]
    with pytest.raises(ValueError, match="'other' is not one of"):
        DataConfig(datatype="other")
