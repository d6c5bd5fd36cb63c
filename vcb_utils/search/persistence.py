"""Saving an index as a new version of its folder, and loading the current version.

A save, holding the folder's lock, reads the current version again, then appends to it (an
index loaded from, or last saved to, that folder: the rows added here since) or replaces it
(any other index, unless the folder holds an id it lacks). It records what it will write
(``vcb_utils.search.cleanup``), writes new segments, catalogue rows and candidate-stage codes
under new names, checks that they open, writes the manifest, swaps the pointer, and only then
deletes what the replaced version used and the new one does not. The files are
``vcb_utils.search.store``'s; this module decides what goes in them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vcb_utils.model import VideoEmbedding
from vcb_utils.search import catalogue, cleanup, guard, store
from vcb_utils.search.calibration import Calibration
from vcb_utils.search.catalogue import Catalogue, catalogue_exists, check_not_forked
from vcb_utils.search.collection import FIELDS, Collection, Part
from vcb_utils.search.engine import DEFAULT_ENGINE, LEGACY_ENGINE, CandidateEngine, engine_class
from vcb_utils.search.stage import CandidateStage
from vcb_utils.search.store import REBUILD, Current, Manifest
from vcb_utils.storage import LOCK_FILE, folder_lock

if TYPE_CHECKING:
    from vcb_utils.search.index import VideoIndex

log = logging.getLogger(__name__)

Plan = list[tuple[str, list[Part]]]
"""The new segments of a save: each one's name and the parts it holds."""


# ---- saving ----------------------------------------------------------------------------------
def save_version(index: VideoIndex, directory: Path) -> None:
    """Save ``index`` as a new version of ``directory`` (see ``VideoIndex.save``); the index
    then holds the saved collection, memory-mapped."""
    collection = index.collection
    check_folder(collection, directory)
    directory.mkdir(parents=True, exist_ok=True)
    check_not_forked(directory)
    with folder_lock(directory):
        current = store.current_version(directory)
        base = store.read_manifest(directory, current.name) if _is_v4(current) else None
        cleanup.finish_interrupted(directory, current, base)
        append = check_save(collection, directory, current, base)
        # whether the new version's rows are this index's, at the same row numbers
        same_rows = not append or collection.origin == (
            directory.resolve(),
            current.name,
            base.count,
        )
        name = store.next_version_name(current)
        planned = plan(collection, directory, base if append else None)
        journal = cleanup.Journal(
            version=name,
            replaces=current.name if current else None,
            replaces_layout=current.layout if current else None,
            segments=[segment for segment, _ in planned],
            generation=index.stage.generation if index.stage is not None else None,
            new_catalogue=not catalogue_exists(directory),
        )
        cleanup.write_journal(directory, journal)
        try:
            manifest, parts, kept_stage = write_version(
                index, directory, journal, planned, base, append, same_rows
            )
        except Exception:
            cleanup.finish_interrupted(directory, current, base)  # what it wrote goes
            raise
        cleanup.remove_replaced(directory, journal, manifest)
        reopen(index, directory, name, manifest, parts, kept_stage, same_rows)


def check_folder(collection: Collection, directory: Path) -> None:
    """Refuse a folder that holds other files than an index, or the videos' folder."""
    origin = collection.origin
    ours = origin is not None and origin[0] == directory.resolve()
    paths = collection.pending["path"] if ours else collection.column("path")
    guard.check_apart_from_videos(directory, guard.video_folders(paths))
    unfinished = (directory / cleanup.JOURNAL_FILE).is_file()
    if not unfinished and store.current_version(directory) is None:
        guard.check_empty_or_index(directory, {LOCK_FILE})


def check_save(
    collection: Collection, directory: Path, current: Current | None, base: Manifest | None
) -> bool:
    """Whether this save appends to ``base`` (else it replaces); ValueError if it would lose
    or duplicate videos."""
    origin = collection.origin
    ours = origin is not None and origin[0] == directory.resolve()
    if current is None:
        return False
    if ours and origin[1] == current.name:
        return base is not None  # nothing saved since this index was (format 2/3: convert)
    saved_ids = _saved_ids(directory, current, base)
    if not ours:
        lost = set(saved_ids).difference(collection.id_set())
        if lost:
            raise ValueError(
                f"{directory} holds {len(lost)} videos that this index lacks "
                f"({sorted(lost)[:5]}): saving would lose them. Add to VideoIndex.load("
                f"{str(directory)!r}) instead, or save to another folder"
            )
        return False
    if base is None or (base.model, base.framerate) != (collection.config, collection.framerate):
        raise ValueError(
            f"{directory} was saved with another model config or framerate since this "
            "index was loaded from it: load it again"
        )
    repeated = set(collection.pending["id"]).intersection(saved_ids)
    if repeated:
        raise ValueError(f"duplicate video ids: {sorted(repeated)[:5]}")
    return True


def plan(collection: Collection, directory: Path, base: Manifest | None) -> Plan:
    """The new segments of a save (appending to ``base``): their names and the parts each
    holds (saved parts of another folder are copied one segment each, added rows as one)."""
    parts = collection.parts
    groups = _groups([p for p in parts if p.segment is None] if base else parts)
    names = store.next_segment_names(directory, [s for s, _ in base.segments] if base else [])
    return [(next(names), group) for group in groups]


def write_version(
    index: VideoIndex,
    directory: Path,
    journal: cleanup.Journal,
    planned: Plan,
    base: Manifest | None,
    append: bool,
    same_rows: bool,
) -> tuple[Manifest, list[Part], bool]:
    """Write the version ``journal`` names, check that it opens, and make it current;
    return its manifest, its parts and whether the index's candidate stage is its."""
    collection = index.collection
    needed = sum(p.nbytes for _, group in planned for p in group)
    needed += code_bytes(index, planned, base if append else None)
    with store.disk_space(directory, needed):
        manifest = write_rows(collection, directory, planned, base if append else None, base)
        kept_stage = write_stage(
            index, directory, dict(planned), base if append else None, manifest, same_rows
        )
        parts = open_parts(collection, directory.resolve(), manifest, journal.version)
        store.write_manifest(directory, journal.version, manifest)
        store.write_pointer(directory, journal.version)
    return manifest, parts, kept_stage


def write_rows(
    collection: Collection,
    directory: Path,
    planned: Plan,
    base: Manifest | None,
    replaced: Manifest | None,
) -> Manifest:
    """Write the ``planned`` segments and the catalogue rows of the new version (appending
    to ``base``, or replacing ``replaced``); return its manifest (``write_stage`` adds the
    candidate stage)."""
    segments = list(base.segments) if base else []
    checksums = dict(base.checksums) if base else {}
    first_row = base.count if base else 0
    for name, group in planned:
        checksums[name] = store.write_segment(
            directory,
            name,
            [p.vectors.numpy() for p in group],
            [p.mask.numpy() for p in group],
        )
        segments.append((name, sum(len(p) for p in group)))
    pending = collection.pending
    new = dict(pending) if base else {k: collection.saved_column(k) + v for k, v in pending.items()}
    version = catalogue.commit_catalogue(
        directory,
        first_row,
        new["id"],
        new["path"],
        new["caption"],
        base.catalogue if base else None,
        keep=replaced.catalogue if replaced else None,
    )
    config, framerate = collection.config, collection.framerate
    return Manifest(config, framerate, segments, version, checksums=checksums)


def code_bytes(index: VideoIndex, planned: Plan, base: Manifest | None) -> int:
    """Bytes of the codes ``write_stage`` writes: every vector's for a new generation, else
    those of the new segments only (a save after ``calibrate`` writes no code)."""
    stage = index.stage
    if stage is None:
        return 0
    if writes_every_code(stage, base):
        coded = index.collection.vector_count()
    else:
        coded = sum(index.collection.vector_count(p) for _, group in planned for p in group)
    return coded * stage.engine.code_size


def writes_every_code(stage: CandidateStage, base: Manifest | None) -> bool:
    """Whether a save writes a new generation of codes (a stage built here, or none on disk)."""
    return stage.fresh or base is None or base.ann is None


def write_stage(
    index: VideoIndex,
    directory: Path,
    written: dict[str, list[Part]],
    base: Manifest | None,
    manifest: Manifest,
    same_rows: bool,
) -> bool:
    """Write the codes the new version's candidate stage needs and fill ``manifest.ann``;
    return whether the index's candidate stage is the new version's as it is."""
    disk = base.ann if base else None
    ours = index.stage
    if ours is not None and writes_every_code(ours, base):
        stage = ours
        store.write_ann_trained(directory, stage.generation, stage.engine.trained)
        needed = manifest.segments  # a new generation: codes for every segment
        manifest.ann = stage.manifest_entry(index.settings)
    elif disk is not None:
        stage = saved_stage(index.collection, directory, disk)
        needed = [(name, rows) for name, rows in manifest.segments if name in written]
        settings = stage.engine.settings_type(**disk["settings"])
        if ours is not None and ours.tuned and ours.generation == stage.generation:
            stage.calibration, settings = ours.calibration, index.settings  # calibrated here
        manifest.ann = stage.manifest_entry(settings)
    else:
        return False
    for name, rows in needed:
        codes = codes_for(stage, directory, name, rows, written.get(name))
        store.write_ann_part(directory, stage.generation, name, codes)
    return stage is ours and same_rows


def codes_for(
    stage: CandidateStage, directory: Path, name: str, rows: int, group: list[Part] | None
) -> np.ndarray:
    """The codes of segment ``name`` under ``stage``'s engine: held in RAM, saved beside a
    copied segment, or encoded from the vectors."""
    collection, engine = stage.collection, stage.engine
    if group is not None:  # a segment this save writes from these parts
        part = group[0]
        if len(group) == 1 and part.codes is None and part.segment is not None:
            path = store.ann_folder(part.folder, engine.generation) / f"{part.segment}.codes.npy"
            if path.is_file():
                count = collection.vector_count(part)
                saved = store.read_ann_part(
                    part.folder, engine.generation, part.segment, engine.code_size, count
                )
                return np.asarray(saved)
        return stage.codes_of(group)
    for part in collection.parts:  # a segment of this folder, for a new generation
        if part.segment == name and part.folder == directory.resolve():
            return stage.codes_of([part])
    vectors, mask = store.open_segment(directory, name, rows, collection.width, collection.dim)
    return stage.encode(Part(torch.from_numpy(vectors), torch.from_numpy(mask)))


def reopen(
    index: VideoIndex,
    directory: Path,
    name: str,
    manifest: Manifest,
    parts: list[Part],
    kept_stage: bool,
    same_rows: bool,
) -> None:
    """Make ``index`` the saved version ``name`` (its segments memory-mapped as ``parts``)."""
    here = directory.resolve()
    collection = index.collection
    known = collection.known_ids if same_rows else None
    stage = index.stage if kept_stage else None
    use_manifest(index, here, manifest, parts)
    collection.known_ids = known
    if stage is not None:
        stage.fresh = stage.tuned = False
        index.stage = stage
        index.settings = stage.engine.settings_type(**manifest.ann["settings"])
    elif manifest.ann is not None:
        load_stage(index, here, manifest)
    collection.origin = (here, name, manifest.count)


# ---- loading ---------------------------------------------------------------------------------
def load(cls: type[VideoIndex], directory: Path, stage: bool = True) -> VideoIndex:
    """The current version of ``directory``, read again if a save replaced it meanwhile."""
    while True:
        current = store.current_version(directory)
        if current is None:
            raise FileNotFoundError(
                f"{directory}: not a video index ({store.POINTER_FILE} missing)"
            )
        try:
            return read(cls, directory, current, stage)
        except FileNotFoundError:
            if store.current_version(directory) == current:
                raise  # not deleted by a save that made a newer version meanwhile


def read(cls: type[VideoIndex], directory: Path, current: Current, stage: bool) -> VideoIndex:
    here = directory.resolve()
    if current.layout != store.VERSION:
        folder = directory / current.name
        manifest, tensors = store.read_legacy(folder)
        embedding = VideoEmbedding(*(tensors.get(name) for name in FIELDS))
        try:
            index = cls(
                manifest["model"],
                embedding,
                manifest["ids"],
                manifest["paths"],
                framerate=manifest["framerate"],
            )
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{folder} is not a consistent index ({err}); {REBUILD}") from err
        index.collection.origin = (here, current.name, 0)
        return index
    manifest = store.read_manifest(directory, current.name)
    try:
        index = cls.empty(manifest.model, manifest.framerate)
    except (ValueError, TypeError, KeyError) as err:
        path = store.manifest_path(directory, current.name)
        raise ValueError(f"{path} is not a consistent index ({err}); {REBUILD}") from err
    parts = open_parts(index.collection, here, manifest, current.name)
    use_manifest(index, here, manifest, parts)
    if manifest.ann is not None and stage:
        load_stage(index, here, manifest)
    index.collection.origin = (here, current.name, manifest.count)
    return index


def open_parts(
    collection: Collection, folder: Path, manifest: Manifest, version: str
) -> list[Part]:
    """The segments of ``manifest`` memory-mapped; ValueError naming a file that is not the
    shape the manifest (and the collection's vector size, once it has one) says."""
    parts = []
    dim = collection.dim
    source = str(store.manifest_path(folder, version))
    for name, rows in manifest.segments:
        vectors, mask = store.open_segment(folder, name, rows, collection.width, dim, source)
        dim = vectors.shape[2]
        parts.append(
            Part(
                torch.from_numpy(vectors),
                torch.from_numpy(mask),
                segment=name,
                folder=folder,
                arrays=(vectors, mask),
            )
        )
    return parts


def use_manifest(index: VideoIndex, folder: Path, manifest: Manifest, parts: list[Part]) -> None:
    """Make ``index`` the saved version ``manifest`` of ``folder``: ``parts`` (its segments)
    and its catalogue, without a candidate stage."""
    saved = Catalogue(folder, manifest.catalogue, manifest.count)
    index.collection.use_saved(parts, manifest.checksums, saved)
    index.stage = None


def load_stage(index: VideoIndex, folder: Path, manifest: Manifest) -> None:
    """Read the candidate stage of ``manifest``: its trained engine and every segment's codes."""
    stage = saved_stage(index.collection, folder, manifest.ann)
    engine = stage.engine
    try:
        engine.rebuild(SavedCodes(index.collection, folder, engine))
    except RuntimeError as err:  # faiss refused the codes
        where = store.ann_folder(folder, engine.generation)
        raise ValueError(f"{where}: the saved codes are corrupt ({err}); {REBUILD}") from err
    index.stage = stage
    index.settings = engine.settings_type(**manifest.ann["settings"])
    if engine.name != DEFAULT_ENGINE:
        log.info(
            "%s: candidate engine %s (not the default %s): `python -m vcb_utils.index_cli "
            "reindex` retrains it with the default",
            folder,
            engine.name,
            DEFAULT_ENGINE,
        )


def saved_stage(collection: Collection, folder: Path, info: dict) -> CandidateStage:
    """The candidate stage a manifest's ``ann`` entry names, its engine holding no codes yet;
    ValueError naming a damaged file."""
    generation = info["generation"]
    kind = engine_class(info.get("engine", LEGACY_ENGINE))
    try:
        engine = kind.open(store.read_ann_trained(folder, generation), generation)
    except RuntimeError as err:  # faiss could not read it
        path = store.ann_folder(folder, generation) / store.TRAINED_FILE
        raise ValueError(f"{path} is corrupt ({err}); {REBUILD}") from err
    calibration = info.get("calibration")
    if calibration is not None:
        try:
            calibration = Calibration.from_json(calibration)
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(
                f"{folder}: the current version's calibration is damaged ({err}): "
                "python -m vcb_utils.index_cli calibrate measures it again"
            ) from err
    return CandidateStage(collection, engine, info["trained_rows"], False, calibration)


class SavedCodes:
    """``(codes, ids)`` of each segment, memory-mapped one at a time (a segment's pages leave
    this process once the next one is read: peak memory at load); iterable more than once."""

    def __init__(self, collection: Collection, folder: Path, engine: CandidateEngine) -> None:
        self.collection, self.folder, self.engine = collection, folder, engine
        self.counts = [collection.vector_count(part) for part in collection.parts]
        self.checked: set[str] = set()
        """Segments whose codes were found to name the engine's lists (checked once)."""

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start, engine = 0, self.engine
        for part, count in zip(self.collection.parts, self.counts, strict=True):
            codes = store.read_ann_part(
                self.folder, engine.generation, part.segment, engine.code_size, count
            )
            if part.segment not in self.checked and not engine.valid_codes(codes):
                folder = store.ann_folder(self.folder, engine.generation)
                raise ValueError(
                    f"{folder / f'{part.segment}.codes.npy'} is corrupt (codes name lists the "
                    f"candidate index lacks); {REBUILD}"
                )
            self.checked.add(part.segment)
            yield codes, self.collection.part_ids(part, start)
            start += len(part)


def verify(collection: Collection) -> tuple[int, int]:
    """Check every saved segment against its recorded CRC-32 (see ``VideoIndex.verify``)."""
    verified = unverifiable = 0
    for part in collection.parts:
        if part.segment is None:
            continue
        expected = collection.checksums.get(part.segment)
        if store.verify_segment(part.folder, part.segment, expected):
            verified += 1
        else:
            unverifiable += 1
    return verified, unverifiable


def _groups(parts: list[Part]) -> list[list[Part]]:
    """Parts to write as one segment each: a saved part alone, consecutive added parts together."""
    groups: list[list[Part]] = []
    for part in parts:
        if part.segment is None and groups and groups[-1][-1].segment is None:
            groups[-1].append(part)
        elif len(part):
            groups.append([part])
    return [g for g in groups if sum(len(p) for p in g)]


def _saved_ids(directory: Path, current: Current, base: Manifest | None) -> list[str]:
    """Every id the current version of ``directory`` holds."""
    if base is not None:
        return Catalogue(directory, base.catalogue, base.count).column("id")
    manifest, _ = store.read_legacy(directory / current.name)
    return list(manifest["ids"])


def _is_v4(current: Current | None) -> bool:
    return current is not None and current.layout == store.VERSION
