"""MSVD: every caption of every video of the split list is a query (duplicates kept), over the
whole clip. Captions come from CLIP4Clip's pickle, read by an unpickler that builds plain data
only, or from X-Pool's JSON."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

from vcb_utils.annotations.common import (
    Problems,
    Record,
    annotation_folder,
    caption_records,
    clean_captions,
    json_captions,
    need,
    split_file,
)
from vcb_utils.dataset_registry import Benchmark, Source

SPLITS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
CAPTIONS = ("raw-captions.pkl", "captions_msvd.json")
"""CLIP4Clip's pickle of token lists, else X-Pool's JSON of sentences: the first one present."""
MAX_CAPTION_CHARS = 1 << 28
"""Cap on the characters of an MSVD pickle's captions once joined (the real file has about 5
million): a small pickle that references one list many times would expand far past memory."""
DOWNLOAD = Benchmark(
    [
        Source(
            "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msvd_data.zip",
            "msvd_data.zip",
            "raw-captions.pkl and the split lists (CLIP4Clip release)",
        ),
        Source(
            "https://www.cs.utexas.edu/users/ml/clamp/videoDescription/YouTubeClips.tar",
            "YouTubeClips.tar",
            "the 1970 clips <id>.avi (1.7 GB)",
            videos=True,
        ),
    ],
    "raw-captions.pkl",
    "*.avi",
)


def read(
    anno_path: str | os.PathLike | None, split: str, video_path: str | os.PathLike | None
) -> list[Record]:
    """Every caption of every video of the split list; videos ``<id>.<ext>`` (ids may start
    with ``-``)."""
    anno_dir = annotation_folder(anno_path, "msvd")
    video_dir = Path(video_path) if video_path else anno_dir
    list_file = anno_dir / split_file(SPLITS, "msvd", split)
    caption_file = need(anno_dir, "msvd", split, [list_file.name], CAPTIONS)
    if caption_file.suffix == ".pkl":
        captions = _msvd_pickle_captions(caption_file)
    else:
        captions = json_captions(caption_file)
    return caption_records(list_file, caption_file, captions, video_dir, ".avi")


def _msvd_pickle_captions(path: Path) -> dict[str, list[str]]:
    """CLIP4Clip's ``raw-captions.pkl``: ``{id: [[token, ...], ...]}``, tokens joined by spaces."""
    data = _load_plain_pickle(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a pickled dict {{video id: [[token, ...], ...]}}, "
            f"not {type(data).__name__}"
        )
    problems = Problems(path)
    sizes: dict[tuple[int, int], int | None] = {}
    captions, total = {}, 0
    for video_id, value in data.items():
        size = _joined_size(value, sizes)
        if not isinstance(video_id, str):
            problems.add(repr(video_id), "the video id is not a string")
            continue
        if size is None:
            problems.add(repr(video_id), "expected a list of token lists [[token, ...], ...]")
            continue
        total += size
        if total > MAX_CAPTION_CHARS:
            raise ValueError(
                f"{path}: its captions would take over {MAX_CAPTION_CHARS} characters once "
                "joined (it references the same lists over and over): not MSVD's captions"
            )
        captions[video_id] = clean_captions([" ".join(t) for t in value], problems, video_id)
    problems.raise_any()
    return captions


def _joined_size(value: object, sizes: dict[tuple[int, int], int | None], depth: int = 2):
    """The characters of ``value``'s captions once their tokens are joined (``depth`` 2: a list
    of token lists, 1: a token list), or None if it is not one. Each list is measured once, by
    identity, however many times the pickle references it."""
    key = (id(value), depth)
    if key not in sizes:
        if not isinstance(value, list):
            sizes[key] = None
        elif depth == 1:
            ok = all(isinstance(token, str) for token in value)
            sizes[key] = sum(len(token) + 1 for token in value) if ok else None
        else:
            parts = [_joined_size(item, sizes, 1) for item in value]
            sizes[key] = None if None in parts else sum(parts)
    return sizes[key]


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds plain data only (dicts, lists, strings, numbers): every reference to a class or a
    function is refused, so loading cannot run code."""

    def find_class(self, module: str, name: str):
        raise _RefusedGlobal(f"{module}.{name}")


def _load_plain_pickle(path: Path) -> object:
    """The plain data in the pickle ``path``. Its opcodes are read first: every length the pickle
    declares must be present in the file, since the unpickler allocates a declared length before
    reading it (a 20 MB file declaring 8 GB would get them)."""
    data = path.read_bytes()
    try:
        for _ in pickletools.genops(data):
            pass
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except _RefusedGlobal as err:
        raise ValueError(
            f"{path}: refuses to load: it references {err}; MSVD captions are plain dicts of "
            "lists of strings, so no class or function may appear in the pickle"
        ) from None
    except Exception as err:  # a truncated or garbled pickle fails in many ways
        raise ValueError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from err
