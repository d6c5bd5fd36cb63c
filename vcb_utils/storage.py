"""Crash-safe writes: atomic files, whole-folder swaps, fsync, stale-temp cleanup, locks.

A writer killed at any moment leaves the old or the new content, whole, never a mix. What it
leaves behind is named ``.tmp-<8 hex>-<name it was to replace>`` (or ``<folder>.old``) and is
removed by the next writer, which holds the same lock, so nobody is still writing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{8}-(.+)")
"""Temporary siblings; the group is the name of the file or folder they are to replace."""
LOCK_FILE = ".lock"
OLD_SUFFIX = ".old"


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk (folders: not on Windows, which can't)."""
    if os.name == "nt" and path.is_dir():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root``, ``root`` and its entry in its parent."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder, name))
        fsync_path(Path(folder))
    fsync_path(root.parent)


def temp_path(target: Path) -> Path:
    """A new temporary sibling of ``target``: a rename in the same folder replaces it."""
    return target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")


def remove(path: Path) -> None:
    """Delete a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_temps(folder: Path, name: str | None = None) -> None:
    """Delete the temporary files and folders in ``folder`` (only those for ``name``, if given).

    Call it holding the lock of the writers that make them: the ones found are then stale.
    """
    for entry in folder.iterdir():
        match = TEMP_NAME.fullmatch(entry.name)
        if match and name in (None, match[1]):
            remove(entry)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace the file ``path`` by ``data`` (str: UTF-8): readers see the old or the new file."""
    temp = temp_path(path)
    try:
        temp.write_bytes(data.encode() if isinstance(data, str) else data)
        fsync_path(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """``write_atomic`` of ``data`` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path, remedy: str) -> dict:
    """The JSON object in ``path``; a ValueError naming the file and ``remedy`` if it is not one."""
    try:
        data = json.loads(path.read_bytes())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is corrupt ({err}); {remedy}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is corrupt (not a JSON object); {remedy}")
    return data


def folder_lock(folder: Path) -> FileLock:
    """The lock that the writers of ``folder`` take (file ``.lock`` inside it; waits)."""
    return FileLock(folder / LOCK_FILE)


def old_path(target: Path) -> Path:
    """Where ``replace_folder`` keeps the previous ``target`` while it swaps."""
    return target.with_name(target.name + OLD_SUFFIX)


def replace_folder(source: Path, target: Path) -> None:
    """Flush the complete folder ``source`` and swap it in as its sibling ``target``.

    ``target`` becomes ``<target>.old``, ``source`` becomes ``target``, then the old copy is
    deleted: at every moment ``target`` or ``<target>.old`` is complete (see ``saved_folder``).
    """
    old = old_path(target)
    fsync_tree(source)
    if target.exists():
        remove(old)
        os.replace(target, old)
    os.replace(source, target)
    fsync_path(target.parent)
    remove(old)


@contextmanager
def writing_folder(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; when the block ends, it replaces ``target``.

    Writers of ``target`` hold the lock ``.<name>.lock`` beside it and first delete what killed
    writers left. On an error the temporary folder is deleted and ``target`` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{target.name}{LOCK_FILE}")):
        remove_temps(target.parent, target.name)
        temp = temp_path(target)
        temp.mkdir()
        try:
            yield temp
            replace_folder(temp, target)
        except BaseException:
            remove(temp)
            raise


def saved_folder(target: Path) -> Path:
    """``target``, or the previous copy that a ``replace_folder`` killed mid-swap left (warns)."""
    old = old_path(target)
    if target.exists() or not old.is_dir():
        return target
    warnings.warn(
        f"{target} is missing (a save was interrupted); reading the previous copy {old}",
        stacklevel=3,  # the caller of the loader
    )
    return old
