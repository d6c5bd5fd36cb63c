"""Every dataset the library reads, described once: adding one is a module plus a line here.

A ``DatasetSpec`` names the function that reads its annotations (a module of
``vcb_utils.annotations``), its splits, and for a benchmark of the paper its protocol (what a
query is, its ``max_words`` and ``max_frames``). From this table come the ``datatype`` choices of
the config and the command line (``config.Datatype``), the paper presets (``config.PRESETS``:
one per benchmark and backbone, whose published numbers ``vcb_utils.published`` keys by preset),
the downloader's table (``download.DATASETS``: the ``DOWNLOAD`` of each module marked
``download``) and the protocol table of ``docs/datasets.md`` (a test compares them).

This module stays free of torch and of the readers, so the command line answers ``--help`` at
once; a reader is imported when its dataset is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple


@dataclass(frozen=True)
class Protocol:
    """How a benchmark of the paper is evaluated (``docs/datasets.md``)."""

    queries: str
    """What one query is: ``caption`` (each caption) or ``paragraph`` (a video's sentences)."""
    max_words: int
    max_frames: int
    batch_size_val: int | None = None
    """The evaluation batch of the presets, where the default does not fit (long videos)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One ``datatype``: who reads it, its splits, and its protocol if the paper reports it."""

    title: str
    reader: str
    """``module:function`` in ``vcb_utils.annotations``: ``read(anno_path, split, video_path)``."""
    splits: tuple[str, ...]
    """The split names it reads (empty: any value of the file's own ``split`` column)."""
    protocol: Protocol | None = None
    """The paper's protocol: a benchmark with presets and published numbers."""
    download: bool = False
    """Its module has a ``DOWNLOAD`` (``Benchmark``) of public files for ``download_dataset``."""

    @property
    def module(self) -> ModuleType:
        """The annotations module that reads this dataset (imported on first use)."""
        return importlib.import_module(f"vcb_utils.annotations.{self.reader.split(':')[0]}")

    @property
    def read(self) -> Callable:
        """``read(anno_path, split, video_path) -> list[Record]``."""
        return getattr(self.module, self.reader.split(":")[1])


CAPTIONS = Protocol("caption", max_words=32, max_frames=12)
"""MSR-VTT, MSVD, VATEX: every caption a query, 32 tokens, 12 frames."""
PARAGRAPHS = Protocol("paragraph", max_words=64, max_frames=64, batch_size_val=16)
"""DiDeMo, ActivityNet: a video's sentences joined, longer queries and videos; the evaluation
batch of CLIP4Clip's README commands for both."""

DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("Synthetic clips", "synthetic:read", ("train", "val", "test")),
    "msrvtt": DatasetSpec(
        "MSR-VTT", "msrvtt:read", ("train", "train9k", "train7k", "val", "test"), CAPTIONS, True
    ),
    "csv": DatasetSpec("Your clips (CSV)", "files:read_csv", ()),
    "jsonl": DatasetSpec("Your clips (JSONL)", "files:read_jsonl", ()),
    "msvd": DatasetSpec("MSVD", "msvd:read", ("train", "val", "test"), CAPTIONS, True),
    "vatex": DatasetSpec("VATEX", "vatex:read", ("train", "val", "test"), CAPTIONS, True),
    "didemo": DatasetSpec("DiDeMo", "didemo:read", ("train", "val", "test"), PARAGRAPHS, True),
    "activitynet": DatasetSpec(
        "ActivityNet", "activitynet:read", ("train", "val", "test"), PARAGRAPHS, True
    ),
}
"""Every ``datatype``, in the order the command line lists them."""
DATATYPES: tuple[str, ...] = tuple(DATASETS)
BENCHMARKS: dict[str, DatasetSpec] = {n: s for n, s in DATASETS.items() if s.protocol}
"""The paper's benchmarks (a protocol each), in table order."""


class Source(NamedTuple):
    """One public file of a dataset.

    Saved as ``root/<filename>``; an archive goes to ``root/archives/<filename>`` and is
    unpacked into ``root``. ``videos`` marks a video archive (skipped with ``videos=False``).
    """

    url: str
    filename: str
    what: str
    videos: bool = False
    sha256: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """The public files of a benchmark and how to find its folders once they are fetched.

    ``anno_file``: a file whose folder is ``anno_path``; ``video_file``: a name (or glob) whose
    folder is ``video_path``, None when the videos are no public archive; ``prepare`` runs after
    the downloads (e.g. to merge files into the layout ``read_annotations`` reads; a ValueError
    names the file it cannot use).
    """

    sources: list[Source]
    anno_file: str
    video_file: str | None = None
    prepare: Callable[[Path], None] | None = None


def protocol_table() -> str:
    """The benchmarks' protocols as the markdown table of ``docs/datasets.md``."""
    rows = {}
    for spec in BENCHMARKS.values():
        p = spec.protocol
        rows.setdefault((p.queries, p.max_words, p.max_frames), []).append(spec.title)
    queries = {"caption": "one per caption", "paragraph": "one paragraph per video"}
    lines = [
        "| | queries | video span | `max_words` | `max_frames` |",
        "|---|---|---|---|---|",
    ]
    for (kind, words, frames), titles in rows.items():
        names = ", ".join(titles)
        lines.append(f"| {names} | {queries[kind]} | the whole video | {words} | {frames} |")
    return "\n".join(lines)
