"""Annotation readers: one record per query, from each dataset's own files, one module each.

``read_annotations(datatype, anno_path, split, video_path)`` is the one entry point:

- ``msrvtt`` (CLIP4Clip's layout), ``csv`` / ``jsonl`` (your own clips), ``synthetic``;
- ``msvd`` and ``vatex``: every caption of every video of the split is a query (duplicates
  kept), over the whole clip;
- ``didemo`` and ``activitynet``: paragraph-to-video, one query per video, all its sentences
  joined in file order, over the whole video (``start = end = None``).

The benchmark layouts and protocols are those of CLIP4Clip and its successors (``data/README.md``).
Their videos are found through one index per video folder and its subfolders (file name, and
file name without extension -> file, so any extension resolves; the file nearest the top wins);
a video that is not there keeps the path it most likely has, so ``check_videos`` reports it by
name. A missing annotation file raises
``FileNotFoundError`` naming it and the files the split needs; a malformed one raises
``ValueError`` naming the file, and for the benchmarks up to ``MAX_PROBLEMS`` of its problems
at once. No record names a file outside its video folder (an id like ``../x`` is refused), and
nothing is read silently as something else: a CSV row must fit on its line with the header's
fields, a JSON key must not repeat. ``check_videos`` finds missing, empty or corrupt videos
before any work starts (``checks``).

Adding a dataset: a module here with ``read(anno_path, split, video_path) -> list[Record]`` (and
a ``DOWNLOAD`` if its files are public), plus its line in ``vcb_utils.dataset_registry``.
"""

from __future__ import annotations

import os

from vcb_utils.annotations.checks import check_videos
from vcb_utils.annotations.common import Record
from vcb_utils.dataset_registry import DATASETS, DATATYPES

__all__ = ["DATATYPES", "Record", "check_videos", "read_annotations"]


def read_annotations(
    datatype: str,
    anno_path: str | os.PathLike | None,
    split: str,
    video_path: str | os.PathLike | None = None,
) -> list[Record]:
    """One record per query of ``split`` (a caption, or a paragraph for DiDeMo and ActivityNet).

    - ``msrvtt``: ``anno_path`` is the folder with ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``
      (``MSRVTT_train.7k.csv`` for ``train7k``) and ``MSRVTT_JSFUSION_test.csv``; ``video_path``
      the folder of ``<video_id>.mp4``, else ``.webm`` (default: ``anno_path``). ``train`` gives
      every caption of every train video, ``test`` (and ``val``) the 1000 pairs of the 1k-A split.
    - ``csv`` / ``jsonl``: ``anno_path`` is the file, with ``video`` (relative to ``video_path``,
      default the file's folder), ``caption`` and optional ``start``, ``end``, ``split``.
    - ``synthetic``: a generated folder (created on first use; default under ``data/synthetic``).
    - ``msvd``, ``vatex``, ``didemo``, ``activitynet``: ``anno_path`` is the benchmark's annotation
      folder (the ``SPLITS`` of its module name its files), ``video_path`` the folder
      of its videos, any extension (default: ``anno_path``). MSVD and VATEX give one record per
      caption, DiDeMo and ActivityNet one per video (the paragraph); all cover whole videos.
    """
    spec = DATASETS.get(datatype)
    if spec is None:
        raise ValueError(f"unknown datatype {datatype!r}; choose one of {DATATYPES}")
    return spec.read(anno_path, split, video_path)
