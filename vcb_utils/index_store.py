"""The on-disk video index (format version 4): versions, vector segments, catalogue, ANN codes.

::

    my_index/
      index.json             the pointer: {"format": ..., "version": 4, "current": "v000012"}
      v000012.json           the current version: model config, framerate, its segments, the
                             catalogue version and the candidate index (ANN) generation
      catalogue.lance/       LanceDB table, one row per video: row, id, path, caption
      segments/s000003/      the vectors of a run of rows, never changed once written:
                             vectors.npy fp16 [n, F + V vectors, dim], mask.npy bool [n, F + V]
      ann/g1a2b3c4d5e6f/     the candidate index: trained.faiss (codebooks) and the codes of
                             each segment's vectors, s000003.codes.npy
      .lock                  taken by writers

A save (``VideoIndex.save``, holding the lock) writes new segments and ANN parts under new
names, appends to the catalogue (a new LanceDB version), writes the new version's manifest,
then replaces the pointer (an atomic rename); only then does it delete what the new version
does not use. Readers follow the pointer and read the catalogue at the version the manifest
names, so what a writer is doing never shows. A writer killed at any step leaves the previous
version current: the next writer deletes its files and rolls the catalogue back to the
version the manifest names (LanceDB ``restore``).

Formats 2 (one version at the top of the folder) and 3 (version folders of safetensors) still
load, into RAM, and saving converts them.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from vcb_utils.ann import SearchSettings
from vcb_utils.storage import (
    fsync_path,
    fsync_tree,
    read_json,
    remove,
    remove_temps,
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
ANN_SETTINGS = {f.name for f in fields(SearchSettings)}
"""The search settings a manifest's candidate index carries."""
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
    """``{"generation": ..., "settings": {...}, "trained_rows": ...}`` or None."""
    extra: dict = field(default_factory=dict)

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
            "segments": [{"name": name, "rows": rows} for name, rows in self.segments],
            "catalogue": self.catalogue,
            "ann": self.ann,
            **self.extra,
        }


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
        if data.get("count") != sum(rows for _, rows in segments):
            raise ValueError(f"count {data.get('count')!r} is not the segments' rows")
        catalogue = data["catalogue"]
        if catalogue is not None and not isinstance(catalogue, int):
            raise ValueError(f"catalogue version {catalogue!r}")
        ann = data["ann"]
        if ann is not None and not (
            GENERATION_NAME.fullmatch(str(ann.get("generation")))
            and isinstance(ann.get("trained_rows"), int)
            and isinstance(ann.get("settings"), dict)
            and set(ann["settings"]) == ANN_SETTINGS
            and all(isinstance(v, int) and v > 0 for v in ann["settings"].values())
        ):
            raise ValueError(f"ann {ann!r}")
        return Manifest(dict(data["model"]), float(data["framerate"]), segments, catalogue, ann)
    except (TypeError, KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a consistent index manifest ({err}); {REBUILD}") from err


def write_manifest(directory: Path, name: str, manifest: Manifest) -> None:
    write_json_atomic(manifest_path(directory, name), manifest.to_json())


# ---- segments ------------------------------------------------------------------------------------
def write_array(path: Path, parts: Sequence[np.ndarray]) -> None:
    """Write the concatenation of ``parts`` (same dtype and trailing shape) as one .npy file."""
    rows = sum(len(p) for p in parts)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=parts[0].dtype, shape=(rows, *parts[0].shape[1:])
    )
    start = 0
    for part in parts:
        for offset in range(0, len(part), 4096):  # bounded copies, also from memory maps
            block = np.asarray(part[offset : offset + 4096])
            out[start + offset : start + offset + len(block)] = block
        start += len(part)
    out.flush()
    del out


def write_segment(
    directory: Path, name: str, vectors: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> None:
    """Write the segment ``name`` whole, or not at all (a temporary folder renamed)."""
    folder = directory / SEGMENTS / name
    folder.parent.mkdir(exist_ok=True)
    temp = temp_path(folder)
    temp.mkdir()
    try:
        write_array(temp / VECTORS_FILE, vectors)
        write_array(temp / MASK_FILE, masks)
        fsync_tree(temp)
        os.replace(temp, folder)
    except BaseException:
        remove(temp)
        raise
    fsync_path(folder.parent)


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
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            raise
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err
        expected = shape if dim is not None else shape[:2]
        if array.dtype != dtype or array.shape[: len(expected)] != expected:
            raise ValueError(
                f"{path} is corrupt (holds {array.dtype} {array.shape}, {version} says "
                f"{np.dtype(dtype)} {expected}); {REBUILD}"
            )
        arrays.append(array)
    return arrays[0], arrays[1]


def next_segment_name(directory: Path, names: Sequence[str]) -> str:
    """A segment name after ``names`` and after every segment folder in ``directory``."""
    folder = directory / SEGMENTS
    present = [e.name for e in folder.iterdir()] if folder.is_dir() else []
    numbers = [int(n[1:]) for n in [*names, *present] if SEGMENT_NAME.fullmatch(n)]
    return f"s{max(numbers, default=0) + 1:06d}"


# ---- the candidate index (ANN) files -------------------------------------------------------------
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
    """The codes of one segment's vectors, in ``vcb_utils.ann.segment_ids`` order."""
    data = io.BytesIO()
    np.save(data, np.ascontiguousarray(codes), allow_pickle=False)
    write_atomic(ann_folder(directory, generation) / f"{segment}.codes.npy", data.getvalue())


def read_ann_part(
    directory: Path, generation: str, segment: str, code_size: int, count: int
) -> np.ndarray:
    """Memory-mapped codes ``[count, code_size]`` of one segment; ValueError naming a damaged
    file."""
    path = ann_folder(directory, generation) / f"{segment}.codes.npy"
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err
    if codes.dtype != np.uint8 or codes.shape != (count, code_size):
        raise ValueError(
            f"{path} is corrupt (holds {codes.dtype} {codes.shape}, expected uint8 "
            f"{(count, code_size)}); {REBUILD}"
        )
    return codes


# ---- the catalogue (LanceDB) ---------------------------------------------------------------------
def _schema():
    import pyarrow as pa

    return pa.schema(
        [("row", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("caption", pa.string())]
    )


def _connect(directory: Path):
    import lancedb

    return lancedb.connect(str(directory))


def _table_exists(directory: Path) -> bool:
    return (directory / f"{CATALOGUE}.lance").is_dir()


def commit_catalogue(
    directory: Path,
    first_row: int,
    ids: Sequence[str],
    paths: Sequence[str],
    captions: Sequence[str],
    base: int | None,
) -> int:
    """Append rows to the catalogue at version ``base`` (None: start a new catalogue); return the
    new version. Rows that a killed writer appended after ``base`` are rolled back first."""
    import pyarrow as pa

    data = pa.table(
        {
            "row": pa.array(np.arange(first_row, first_row + len(ids)), pa.int64()),
            "id": pa.array(list(ids), pa.string()),
            "path": pa.array(list(paths), pa.string()),
            "caption": pa.array(list(captions), pa.string()),
        },
        schema=_schema(),
    )
    db = _connect(directory)
    if base is None or not _table_exists(directory):
        mode = "overwrite" if _table_exists(directory) else "create"
        return db.create_table(CATALOGUE, data, schema=_schema(), mode=mode).version
    table = db.open_table(CATALOGUE)
    if table.version != base:
        table.restore(base)
    if len(data):
        table.add(data)
    return table.version


class Catalogue:
    """The catalogue at one version: ids, paths and captions by row, read when asked."""

    def __init__(self, directory: Path, version: int | None, rows: int) -> None:
        self.directory, self.version, self.rows = directory, version, rows
        self._table = None

    def _open(self):
        if self._table is None:
            table = _connect(self.directory).open_table(CATALOGUE)
            table.checkout(self.version)
            self._table = table
        return self._table

    def column(self, name: str) -> list[str]:
        """One column for every row, in row order; ValueError if the catalogue disagrees."""
        if self.rows == 0:
            return []
        table = self._open().search().select(["row", name]).limit(None).to_arrow()
        rows = table.column("row").to_numpy()
        order = np.argsort(rows, kind="stable")
        if len(rows) != self.rows or not np.array_equal(rows[order], np.arange(self.rows)):
            raise ValueError(
                f"{self.directory / CATALOGUE}.lance holds {len(rows)} rows at version "
                f"{self.version}, the manifest {self.rows}; {REBUILD}"
            )
        values = table.column(name).to_pylist()
        return (
            values if np.array_equal(order, np.arange(len(order))) else [values[i] for i in order]
        )

    def take(self, rows: Sequence[int]) -> list[dict]:
        """The records (``id``, ``path``, ``caption``) of ``rows``, in that order."""
        if not len(rows):
            return []
        wanted = sorted(set(int(r) for r in rows))
        table = self._open().take_offsets(wanted).select(["row", "id", "path", "caption"])
        found = {r["row"]: r for r in table.to_arrow().to_pylist()}
        missing = [r for r in wanted if r not in found]
        if missing:
            raise ValueError(
                f"{self.directory / CATALOGUE}.lance lacks rows {missing[:5]} at version "
                f"{self.version}; {REBUILD}"
            )
        return [found[int(r)] for r in rows]


# ---- deleting what the current version does not use ----------------------------------------------
def remove_unreferenced(
    directory: Path, current: Current | None, manifest: Manifest | None
) -> None:
    """Delete every version, segment and ANN file that ``manifest`` (the current version's)
    does not use, and temporary files. Call it holding the lock."""
    remove_temps(directory)
    keep_file = f"{current.name}.json" if current is not None and current.layout == 4 else None
    for entry in directory.iterdir():
        if VERSION_FILE.fullmatch(entry.name) and entry.name != keep_file:
            remove(entry)
        elif (
            VERSION_DIR.fullmatch(entry.name)
            and entry.is_dir()
            and (current is None or current.layout == 4 or entry.name != current.name)
        ):
            remove(entry)  # format 3 versions (folders), converted
    legacy = directory / LEGACY_TENSORS
    if current is not None and current.layout == 4 and legacy.exists():
        remove(legacy)  # the vectors of a format 2 index, converted
    used = {name for name, _ in manifest.segments} if manifest else set()
    segments = directory / SEGMENTS
    if segments.is_dir():
        remove_temps(segments)
        for entry in segments.iterdir():
            if entry.name not in used:
                remove(entry)
    generation = manifest.ann["generation"] if manifest and manifest.ann else None
    ann = directory / ANN
    if ann.is_dir():
        remove_temps(ann)
        for entry in ann.iterdir():
            if entry.name != generation:
                remove(entry)
        if generation and (ann / generation).is_dir():
            folder = ann / generation
            remove_temps(folder)
            for entry in folder.iterdir():
                if entry.name != TRAINED_FILE and entry.name.split(".")[0] not in used:
                    remove(entry)
        if not any(ann.iterdir()):
            ann.rmdir()
    catalogue = directory / f"{CATALOGUE}.lance"
    if manifest is None and current is None and catalogue.exists():
        remove(catalogue)  # a first save killed after its catalogue


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
