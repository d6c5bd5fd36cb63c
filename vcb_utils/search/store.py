"""The on-disk video index (format version 4): versions, vector segments, candidate-stage codes.

::

    my_index/
      index.json             the pointer: {"format": ..., "version": 4, "current": "v000012"}
      v000012.json           the current version: model config, framerate, its segments (with
                             the CRC-32 of their files), the catalogue version and the candidate
                             index (ANN) generation
      catalogue.lance/       LanceDB table, one row per video: row, id, path, caption
      segments/s000003/      the vectors of a run of rows, never changed once written:
                             vectors.npy fp16 [n, F + V vectors, dim], mask.npy bool [n, F + V]
      ann/g1a2b3c4d5e6f/     the candidate stage: trained.faiss (its trained engine) and the
                             codes of each segment's vectors, s000003.codes.npy
      saving.json            while a save runs: what it writes (``vcb_utils.search.cleanup``)
      .lock                  taken by writers

A save (``VideoIndex.save``, holding the lock) records what it will write, writes new segments
and ANN parts under new names (ordinary writes: a full disk is an error, not a signal), appends
to the catalogue (``vcb_utils.search.catalogue``: a new LanceDB version, older ones pruned),
opens what it wrote, writes the new version's manifest, then replaces the pointer (an atomic
rename); only then does it delete the files of the replaced version that the new one does not
use. Readers follow the pointer and read the catalogue at the version the manifest names, so
what a writer is doing never shows. A writer killed at any step leaves the previous version
current: the next writer deletes the files it recorded and rolls the catalogue back to the
version the manifest names (LanceDB ``restore``). Nothing else in the folder is deleted.

Segment checksums are verified on request (``VideoIndex.verify``, ``index_cli info --verify``),
not at load: that reads every vector (minutes for a million videos), while a load only maps them.

Formats 2 (one version at the top of the folder) and 3 (version folders of safetensors) still
load, into RAM, and saving converts them.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import shutil
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from vcb_utils.search.engine import LEGACY_ENGINE, engine_class
from vcb_utils.storage import (
    fsync_path,
    fsync_tree,
    read_json,
    remove,
    temp_path,
    write_atomic,
    write_json_atomic,
)

FORMAT = "vcb-video-index"
VERSION = 4
READABLE_VERSIONS = (2, 3, 4)
POINTER_FILE = "index.json"
LEGACY_MANIFEST = "index.json"
LEGACY_TENSORS = "index.safetensors"
LEGACY_KEYS = ("model", "framerate", "ids", "paths")
MANIFEST_KEYS = ("model", "framerate", "segments", "catalogue", "ann")
CATALOGUE = "catalogue"
SEGMENTS = "segments"
ANN = "ann"
VECTORS_FILE = "vectors.npy"
MASK_FILE = "mask.npy"
TRAINED_FILE = "trained.faiss"
LEGACY = "."
"""The version "name" of a format 2 index: the index folder itself."""
VERSION_FILE = re.compile(r"v\d{6}\.json")
VERSION_DIR = re.compile(r"v\d{6}")
SEGMENT_NAME = re.compile(r"s\d{6}")
GENERATION_NAME = re.compile(r"g[0-9a-f]{12}")
REBUILD = "rebuild the index: VideoIndex.build(model, paths).save(directory)"


@dataclass(frozen=True)
class Current:
    """The current version of an index folder: its name and layout (2, 3 or 4)."""

    name: str
    layout: int


@dataclass
class Manifest:
    """What one version (format 4) holds."""

    model: dict
    framerate: float
    segments: list[tuple[str, int]]
    """(name, rows) of each segment, in row order."""
    catalogue: int | None
    """The LanceDB version of the catalogue (None for an empty index never given rows)."""
    ann: dict | None = None
    """The candidate stage: ``{"engine": ..., "generation": ..., "settings": {...},
    "trained_rows": ..., ...}`` or None (``engine`` absent: ``LEGACY_ENGINE``)."""
    checksums: dict[str, dict[str, int]] = field(default_factory=dict)
    """The CRC-32 of each segment's files (``{"vectors.npy": ..., "mask.npy": ...}``), for
    ``verify_segment``; segments written before checksums were recorded have none."""

    @property
    def count(self) -> int:
        return sum(rows for _, rows in self.segments)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model,
            "framerate": self.framerate,
            "count": self.count,
            "segments": [
                {"name": name, "rows": rows, **self._checksum(name)} for name, rows in self.segments
            ],
            "catalogue": self.catalogue,
            "ann": self.ann,
        }

    def _checksum(self, name: str) -> dict:
        return {"crc32": self.checksums[name]} if name in self.checksums else {}


# ---- the pointer and the manifests ---------------------------------------------------------------
def current_version(directory: Path) -> Current | None:
    """The current version (None if nothing is saved); ValueError if the pointer is damaged."""
    path = directory / POINTER_FILE
    if not path.is_file():
        return None
    pointer = read_json(path, REBUILD)
    if "current" not in pointer:
        return Current(LEGACY, 2)
    current, version = pointer["current"], pointer.get("version")
    name_ok = isinstance(current, str) and VERSION_DIR.fullmatch(current)
    if pointer.get("format") != FORMAT or version not in (3, VERSION) or not name_ok:
        raise ValueError(f"{path}: not a {FORMAT!r} version 3 or 4 pointer; {REBUILD}")
    return Current(current, version)


def write_pointer(directory: Path, name: str) -> None:
    write_json_atomic(
        directory / POINTER_FILE, {"format": FORMAT, "version": VERSION, "current": name}
    )


def next_version_name(current: Current | None) -> str:
    if current is None or current.name == LEGACY:
        return "v000001"
    return f"v{int(current.name[1:]) + 1:06d}"


def manifest_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.json"


def read_header(path: Path, versions: Sequence[int], keys: Sequence[str]) -> dict:
    """The JSON object at ``path``, checked to be an index manifest of one of ``versions``
    with every one of ``keys``; ValueError naming the file otherwise."""
    data = read_json(path, REBUILD)
    if data.get("format") != FORMAT or data.get("version") not in versions:
        raise ValueError(
            f"{path}: format {data.get('format')!r} version {data.get('version')!r}; "
            f"this code reads {FORMAT!r} versions {READABLE_VERSIONS}: {REBUILD}"
        )
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}; {REBUILD}")
    return data


def read_manifest(directory: Path, name: str) -> Manifest:
    """The manifest of version ``name``; FileNotFoundError if it is gone, ValueError naming
    the file if it is damaged or inconsistent."""
    path = manifest_path(directory, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the index version is missing")
    data = read_header(path, (VERSION,), MANIFEST_KEYS)
    try:
        segments = [(str(s["name"]), int(s["rows"])) for s in data["segments"]]
        if not all(SEGMENT_NAME.fullmatch(n) and rows > 0 for n, rows in segments):
            raise ValueError("bad segment name or row count")
        checksums = {
            str(s["name"]): _checksums(s["crc32"]) for s in data["segments"] if "crc32" in s
        }
        framerate = float(data["framerate"])
        if not (math.isfinite(framerate) and framerate > 0):
            raise ValueError(f"framerate {data['framerate']!r}: a positive number is needed")
        if data.get("count") != sum(rows for _, rows in segments):
            raise ValueError(f"count {data.get('count')!r} is not the segments' rows")
        catalogue = data["catalogue"]
        if catalogue is not None and not isinstance(catalogue, int):
            raise ValueError(f"catalogue version {catalogue!r}")
        ann = data["ann"]
        if ann is not None and not _stage_entry_ok(ann):
            raise ValueError(f"ann {ann!r}")
        return Manifest(dict(data["model"]), framerate, segments, catalogue, ann, checksums)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a consistent index manifest ({err}); {REBUILD}") from err


def _stage_entry_ok(ann: dict) -> bool:
    """Whether a manifest's candidate-stage entry names a known engine, a generation, and
    that engine's settings (positive ints)."""
    settings = ann.get("settings")
    kind = engine_class(ann.get("engine", LEGACY_ENGINE))
    return bool(
        isinstance(ann.get("calibration", {}), dict)
        and GENERATION_NAME.fullmatch(str(ann.get("generation")))
        and isinstance(ann.get("trained_rows"), int)
        and isinstance(settings, dict)
        and set(settings) == {f.name for f in fields(kind.settings_type)}
        and all(isinstance(v, int) and v > 0 for v in settings.values())
    )


def _checksums(value: dict) -> dict[str, int]:
    files_ok = set(value) == {VECTORS_FILE, MASK_FILE}
    if not files_ok or not all(isinstance(v, int) for v in value.values()):
        raise ValueError(f"segment checksums {value!r}")
    return dict(value)


def write_manifest(directory: Path, name: str, manifest: Manifest) -> None:
    write_json_atomic(manifest_path(directory, name), manifest.to_json())


# ---- segments ------------------------------------------------------------------------------------
def write_array(path: Path, parts: Sequence[np.ndarray]) -> int:
    """Write the concatenation of ``parts`` (same dtype and trailing shape) as one .npy file;
    return the file's CRC-32. Ordinary writes: a full disk is an OSError, never a signal (as a
    write through a memory map would be)."""
    rows = sum(len(p) for p in parts)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header,
        {
            "descr": np.lib.format.dtype_to_descr(parts[0].dtype),
            "fortran_order": False,
            "shape": (rows, *parts[0].shape[1:]),
        },
    )
    checksum = 0
    with open(path, "wb") as file:
        for block in _blocks(header.getvalue(), parts):
            checksum = zlib.crc32(block, checksum)
            file.write(block)
    return checksum


def _blocks(header: bytes, parts: Sequence[np.ndarray]) -> Iterator[bytes | memoryview]:
    """The header, then the rows of ``parts`` a bounded block at a time (also from memory maps)."""
    yield header
    for part in parts:
        for offset in range(0, len(part), 4096):
            yield memoryview(np.ascontiguousarray(part[offset : offset + 4096])).cast("B")


def file_checksum(path: Path, chunk: int = 1 << 24) -> int:
    """The CRC-32 of a file, read a chunk at a time."""
    checksum = 0
    with open(path, "rb") as file:
        while block := file.read(chunk):
            checksum = zlib.crc32(block, checksum)
    return checksum


def verify_segment(directory: Path, name: str, expected: dict[str, int] | None) -> bool:
    """Whether segment ``name`` holds what was written (False: no checksum recorded, so not
    checked); ValueError naming a file whose bytes changed."""
    if expected is None:
        return False
    for file, checksum in expected.items():
        path = directory / SEGMENTS / name / file
        if file_checksum(path) != checksum:
            raise ValueError(
                f"{path} is corrupt (its CRC-32 is not the one recorded when it was written: "
                f"bytes changed on disk); {REBUILD}"
            )
    return True


@contextmanager
def disk_space(directory: Path, needed: int) -> Iterator[None]:
    """Refuse a save that cannot fit, and name the space needed on a full disk or file limit.

    ``needed``: bytes the save writes (about). The OSError keeps the errno, says that the
    previous version is still current and that the index in memory is intact."""
    free = shutil.disk_usage(directory).free
    remedy = (
        "the previous version is still current and the index in memory is intact: free some "
        "space (or save to another disk) and save again"
    )
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"{directory}: the save needs about {_mb(needed)}, {_mb(free)} are free; {remedy}",
        )
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise OSError(
            err.errno,
            f"{directory}: {os.strerror(err.errno)} while saving ({err.filename or ''}); the "
            f"save needs about {_mb(needed)} ({_mb(free)} were free); {remedy}",
        ) from err


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_segment(
    directory: Path, name: str, vectors: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> dict[str, int]:
    """Write the segment ``name`` whole, or not at all (a temporary folder renamed); return the
    CRC-32 of its files."""
    folder = directory / SEGMENTS / name
    folder.parent.mkdir(exist_ok=True)
    temp = temp_path(folder)
    temp.mkdir()
    try:
        checksums = {
            VECTORS_FILE: write_array(temp / VECTORS_FILE, vectors),
            MASK_FILE: write_array(temp / MASK_FILE, masks),
        }
        fsync_tree(temp)
        os.replace(temp, folder)
    except BaseException:
        remove(temp)
        raise
    fsync_path(folder.parent)
    return checksums


def map_array(path: Path, mode: str) -> np.ndarray:
    """A saved ``.npy`` memory-mapped (``mode``: ``r`` or ``c``); FileNotFoundError when it is
    missing, ValueError naming it when it cannot be read."""
    try:
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err


def open_segment(
    directory: Path,
    name: str,
    rows: int,
    width: int,
    dim: int | None,
    version: str = "the manifest",
) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a segment's vectors and mask (copy-on-write: writable views, file untouched);
    ValueError naming the file if it is damaged or not the shape the manifest says."""
    folder = directory / SEGMENTS / name
    arrays = []
    for file, dtype, shape in (
        (VECTORS_FILE, np.float16, (rows, width, dim)),
        (MASK_FILE, np.bool_, (rows, width)),
    ):
        path = folder / file
        array = map_array(path, "c")
        expected = shape if dim is not None else shape[:2]
        if array.dtype != dtype or array.shape[: len(expected)] != expected:
            raise ValueError(
                f"{path} is corrupt (holds {array.dtype} {array.shape}, {version} says "
                f"{np.dtype(dtype)} {expected}); {REBUILD}"
            )
        arrays.append(array)
    return arrays[0], arrays[1]


def next_segment_names(directory: Path, names: Sequence[str]) -> Iterator[str]:
    """New segment names, after ``names`` and after every segment folder in ``directory``."""
    folder = directory / SEGMENTS
    present = [e.name for e in folder.iterdir()] if folder.is_dir() else []
    numbers = [int(n[1:]) for n in [*names, *present] if SEGMENT_NAME.fullmatch(n)]
    last = max(numbers, default=0)
    while True:
        last += 1
        yield f"s{last:06d}"


# ---- the candidate stage's files -------------------------------------------------------------
def ann_folder(directory: Path, generation: str) -> Path:
    return directory / ANN / generation


def write_ann_trained(directory: Path, generation: str, trained: bytes) -> None:
    folder = ann_folder(directory, generation)
    if not folder.is_dir():
        folder.mkdir(parents=True)
        fsync_path(folder.parent)  # the new generation's entry survives a power loss
    write_atomic(folder / TRAINED_FILE, trained)


def read_ann_trained(directory: Path, generation: str) -> bytes:
    path = ann_folder(directory, generation) / TRAINED_FILE
    data = path.read_bytes()
    if len(data) < 64:
        raise ValueError(f"{path} is corrupt ({len(data)} bytes); {REBUILD}")
    return data


def write_ann_part(directory: Path, generation: str, segment: str, codes: np.ndarray) -> None:
    """The codes of one segment's vectors, in ``collection.segment_ids`` order."""
    data = io.BytesIO()
    np.save(data, np.ascontiguousarray(codes), allow_pickle=False)
    write_atomic(ann_folder(directory, generation) / f"{segment}.codes.npy", data.getvalue())


def read_ann_part(
    directory: Path, generation: str, segment: str, code_size: int, count: int
) -> np.ndarray:
    """Memory-mapped codes ``[count, code_size]`` of one segment; ValueError naming a damaged
    file."""
    path = ann_folder(directory, generation) / f"{segment}.codes.npy"
    codes = map_array(path, "r")
    if codes.dtype != np.uint8 or codes.shape != (count, code_size):
        raise ValueError(
            f"{path} is corrupt (holds {codes.dtype} {codes.shape}, expected uint8 "
            f"{(count, code_size)}); {REBUILD}"
        )
    return codes


# ---- formats 2 and 3 -----------------------------------------------------------------------------
def read_legacy(folder: Path) -> tuple[dict, dict]:
    """The manifest and tensors of a format 2 or 3 version folder (read into RAM)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / LEGACY_MANIFEST
    if not (path.is_file() and (folder / LEGACY_TENSORS).is_file()):
        raise FileNotFoundError(
            f"{folder}: not a video index ({LEGACY_MANIFEST} or {LEGACY_TENSORS} missing)"
        )
    manifest = read_header(path, (2, 3), LEGACY_KEYS)
    tensors_path = folder / LEGACY_TENSORS
    try:
        tensors = load_file(str(tensors_path))
    except SafetensorError as err:
        raise ValueError(f"{tensors_path} is corrupt ({err}); {REBUILD}") from err
    missing = [name for name in ("F", "F_mask") if name not in tensors]
    if missing:
        raise ValueError(f"{tensors_path} lacks the tensors {missing}; {REBUILD}")
    return manifest, tensors


def disk_bytes(directory: Path) -> dict[str, int]:
    """Bytes on disk of the index folder, by part (segments, catalogue, ann, other)."""
    sizes = {"segments": 0, "catalogue": 0, "ann": 0, "other": 0}
    for root, _, files in os.walk(directory):
        relative = Path(root).relative_to(directory).parts
        part = {SEGMENTS: "segments", f"{CATALOGUE}.lance": "catalogue", ANN: "ann"}.get(
            relative[0] if relative else "", "other"
        )
        for name in files:
            sizes[part] += (Path(root) / name).stat().st_size
    return sizes
