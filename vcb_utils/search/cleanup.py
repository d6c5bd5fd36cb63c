"""Deleting only what the index wrote: the save journal and the files manifests name.

Before it writes anything, a save records in ``saving.json`` the names it is about to create
(its version, its new segments, a new candidate-index generation, a new catalogue) and the
version it replaces. Once the new version is current, the replaced version's files that the
new one does not use are deleted, its manifest last; then the journal goes. A save killed at
any point leaves the journal: the next save (holding the lock) deletes what the journal names
and the current version does not use, or finishes the deletions of a save killed after its
switch. Nothing else in the folder is ever deleted, and nothing reached through a symlink that
leads out of the folder.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vcb_utils.search import store
from vcb_utils.storage import TEMP_NAME, read_json, write_json_atomic

log = logging.getLogger(__name__)

JOURNAL_FILE = "saving.json"
CODES_FILE = re.compile(r"s\d{6}\.codes\.npy")


@dataclass
class Journal:
    """What one save is about to write, and the version it replaces."""

    version: str
    replaces: str | None
    replaces_layout: int | None
    segments: list[str]
    generation: str | None
    new_catalogue: bool


def write_journal(directory: Path, journal: Journal) -> None:
    write_json_atomic(directory / JOURNAL_FILE, asdict(journal))


def read_journal(directory: Path) -> Journal | None:
    """The journal of a save that did not finish (None if there is none); ValueError naming it
    if it is not one."""
    path = directory / JOURNAL_FILE
    if not path.is_file():
        return None
    try:
        journal = Journal(**read_json(path, f"delete {path}"))
        names_ok = store.VERSION_DIR.fullmatch(journal.version) and all(
            store.SEGMENT_NAME.fullmatch(s) for s in journal.segments
        )
        generation_ok = journal.generation is None or store.GENERATION_NAME.fullmatch(
            journal.generation
        )
    except TypeError as err:
        raise ValueError(f"{path} is not a save journal ({err}): delete it") from err
    if not (names_ok and generation_ok):
        raise ValueError(f"{path} names files an index does not write: delete it")
    return journal


def finish_interrupted(
    directory: Path, current: store.Current | None, manifest: store.Manifest | None
) -> None:
    """Clean up after a save killed in ``directory``: delete what its journal names and the
    current version does not use. Call it holding the lock."""
    _remove_temps(directory, _top_level_file)
    journal = read_journal(directory)
    if journal is None:
        return
    if current is not None and current.name == journal.version:  # killed after its switch
        remove_replaced(directory, journal, manifest)
        return
    used = {name for name, _ in manifest.segments} if manifest else set()
    for name in journal.segments:
        if name not in used:
            _remove_segment(directory, name)
    current_generation = manifest.ann["generation"] if manifest and manifest.ann else None
    if journal.generation and journal.generation != current_generation:
        _remove_generation(directory, journal.generation, lambda _: True)
    if current_generation:
        new = set(journal.segments) - used
        _remove_generation(directory, current_generation, lambda s: s in new, keep_folder=True)
    _remove_file(directory, store.manifest_path(directory, journal.version))
    if journal.new_catalogue and current is None:
        _remove_tree(directory, directory / f"{store.CATALOGUE}.lance")
    _remove_file(directory, directory / JOURNAL_FILE)


def remove_replaced(directory: Path, journal: Journal, manifest: store.Manifest) -> None:
    """Delete the files of the version ``journal`` replaced that ``manifest`` (the new current
    version) does not use, the replaced manifest last, then the journal."""
    old_name, layout = journal.replaces, journal.replaces_layout
    if old_name is not None and layout == store.VERSION and old_name != journal.version:
        old_path = store.manifest_path(directory, old_name)
        if old_path.is_file():
            _remove_version_files(directory, store.read_manifest(directory, old_name), manifest)
        _remove_file(directory, old_path)
    elif layout == 3:  # a format 3 version folder, converted
        legacy_file = {store.LEGACY_MANIFEST, store.LEGACY_TENSORS}.__contains__
        _remove_folder(directory, directory / old_name, legacy_file)
    elif layout == 2:  # the vectors of a format 2 index, converted
        _remove_file(directory, directory / store.LEGACY_TENSORS)
    _remove_file(directory, directory / JOURNAL_FILE)


def _remove_version_files(directory: Path, old: store.Manifest, new: store.Manifest) -> None:
    used = {name for name, _ in new.segments}
    gone = [name for name, _ in old.segments if name not in used]
    for name in gone:
        _remove_segment(directory, name)
    old_generation = old.ann["generation"] if old.ann else None
    new_generation = new.ann["generation"] if new.ann else None
    if old_generation and old_generation != new_generation:
        _remove_generation(directory, old_generation, lambda _: True)
    elif old_generation:
        _remove_generation(directory, old_generation, set(gone).__contains__, keep_folder=True)


# ---- deleting, never through a symlink out of the folder -----------------------------------------
def _remove_segment(directory: Path, name: str) -> None:
    folder = directory / store.SEGMENTS
    if not folder.is_dir():
        return
    segment_file = {store.VECTORS_FILE, store.MASK_FILE}.__contains__
    for entry in folder.iterdir():
        match = TEMP_NAME.fullmatch(entry.name)
        if entry.name == name or (match and match[1] == name):
            _remove_folder(directory, entry, segment_file)


def _remove_generation(
    directory: Path, generation: str, segments: Callable[[str], bool], keep_folder: bool = False
) -> None:
    """Delete the codes of ``segments`` in ``generation`` (and temporary files); without
    ``keep_folder``, also its trained index and the folder."""

    def owned(name: str) -> bool:
        match = TEMP_NAME.fullmatch(name)
        target = match[1] if match else name
        if target == store.TRAINED_FILE:
            return not keep_folder or match is not None
        return bool(CODES_FILE.fullmatch(target)) and segments(target.split(".")[0])

    folder = store.ann_folder(directory, generation)
    if keep_folder:
        _remove_files(directory, folder, owned)
        return
    _remove_folder(directory, folder, owned)
    ann = directory / store.ANN
    if ann.is_dir() and not ann.is_symlink() and not any(ann.iterdir()):
        ann.rmdir()


def _top_level_file(name: str) -> bool:
    """Names of the files a save writes at the top of the folder."""
    return name in (store.POINTER_FILE, JOURNAL_FILE) or bool(store.VERSION_FILE.fullmatch(name))


def _remove_temps(directory: Path, owned: Callable[[str], bool]) -> None:
    """Delete the temporary files of ``owned`` names left in ``directory`` by a killed write."""
    for entry in directory.iterdir():
        match = TEMP_NAME.fullmatch(entry.name)
        if match and owned(match[1]) and not entry.is_dir():
            _remove_file(directory, entry)


def _inside(directory: Path, path: Path) -> bool:
    """Whether ``path`` is reached without following a symlink out of ``directory``."""
    return path.resolve().is_relative_to(directory.resolve())


def _refuse(path: Path, directory: Path) -> None:
    warnings.warn(
        f"{path} is not deleted: it is reached through a symlink out of the index folder "
        f"{directory}",
        stacklevel=4,
    )


def _remove_file(directory: Path, path: Path) -> None:
    """Delete the file (or the symlink itself) ``path``."""
    if not (path.exists() or path.is_symlink()):
        return
    if not _inside(directory, path.parent):
        _refuse(path, directory)
    elif path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)


def _remove_files(directory: Path, folder: Path, owned: Callable[[str], bool]) -> None:
    if folder.is_symlink() or not folder.is_dir():
        return
    if not _inside(directory, folder):
        _refuse(folder, directory)
        return
    for entry in folder.iterdir():
        if owned(entry.name) and (entry.is_symlink() or entry.is_file()):
            entry.unlink(missing_ok=True)


def _remove_folder(directory: Path, folder: Path, owned: Callable[[str], bool]) -> None:
    """Delete the files ``owned`` names in ``folder``, then the folder if that emptied it (a
    symlink: the link itself)."""
    if folder.is_symlink():
        _remove_file(directory, folder)
        return
    _remove_files(directory, folder, owned)
    if folder.is_dir() and _inside(directory, folder):
        try:
            folder.rmdir()
        except OSError:
            log.warning("%s: kept, it holds files the index did not write", folder)


def _remove_tree(directory: Path, folder: Path) -> None:
    """Delete a folder the index created whole (a catalogue)."""
    if folder.is_symlink() or not _inside(directory, folder):
        _remove_file(directory, folder)
    elif folder.is_dir():
        shutil.rmtree(folder)
