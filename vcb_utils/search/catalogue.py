"""The catalogue of an index (LanceDB): one row per video (row, id, path, caption), versioned.

Each save commits a new table version and names it in its manifest; readers check out that
version, so what a writer is doing never shows. A save prunes the versions older than the one
it replaces (less ``CATALOGUE_GRACE``) and rolls back what a killed writer committed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from vcb_utils.search.store import CATALOGUE, REBUILD

CATALOGUE_GRACE = timedelta(minutes=1)
"""A save prunes the catalogue versions older than the version it replaces, less this margin
(for the time LanceDB's compaction takes): readers that loaded the replaced version still read
it; older versions, and what killed saves committed, go at a later save."""


class _LanceFork:
    """Whether this process was forked after it used LanceDB (unsafe in the child: LanceDB's
    runtime threads do not survive a fork, and it can hang or crash there)."""

    used = False
    forked = False

    @classmethod
    def after_fork_in_child(cls) -> None:
        cls.forked = cls.forked or cls.used


os.register_at_fork(after_in_child=_LanceFork.after_fork_in_child)


def check_not_forked(directory: Path) -> None:
    """RuntimeError if LanceDB was used before this process was forked (see ``_LanceFork``)."""
    if _LanceFork.forked:
        raise RuntimeError(
            f"{directory}: this process was forked from one that had used the index catalogue "
            "(LanceDB), which can hang or crash after a fork. Start worker processes with "
            "multiprocessing.get_context('spawn') or 'forkserver', or fork before using an index"
        )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [("row", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("caption", pa.string())]
    )


def _connect(directory: Path):
    import lancedb

    check_not_forked(directory)
    _LanceFork.used = True
    return lancedb.connect(str(directory))


def catalogue_exists(directory: Path) -> bool:
    return (directory / f"{CATALOGUE}.lance").is_dir()


class _CatalogueError(ValueError):
    """A damaged or missing catalogue (named), not to be wrapped again."""


@contextmanager
def _lance_errors(directory: Path, version: int | None) -> Iterator[None]:
    """LanceDB's errors on a damaged or missing catalogue as a ValueError naming it."""
    try:
        yield
    except (RuntimeError, OSError, ValueError) as err:
        if isinstance(err, _CatalogueError):
            raise
        path = directory / f"{CATALOGUE}.lance"
        raise _CatalogueError(
            f"{path}: the catalogue cannot be read at version {version} ({err}); if the index "
            f"was saved since it was loaded, load it again, else {REBUILD}"
        ) from err


def commit_catalogue(
    directory: Path,
    first_row: int,
    ids: Sequence[str],
    paths: Sequence[str],
    captions: Sequence[str],
    base: int | None,
    keep: int | None = None,
) -> int:
    """Append rows to the catalogue at version ``base`` (None: start a new catalogue); return the
    new version. Rows that a killed writer appended after ``base`` are rolled back first, and
    versions older than ``keep`` (the replaced version's; None: all but the new one) pruned."""
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
    check_not_forked(directory)
    with _lance_errors(directory, base):
        db = _connect(directory)
        if base is None or not catalogue_exists(directory):
            mode = "overwrite" if catalogue_exists(directory) else "create"
            table = db.create_table(CATALOGUE, data, schema=_schema(), mode=mode)
        else:
            table = db.open_table(CATALOGUE)
            if table.version != base:
                table.restore(base)
            if len(data):
                table.add(data)
        _prune(table, keep)
        return table.version


def _prune(table, keep: int | None) -> None:
    """Compact the catalogue and delete the versions older than ``keep`` (less the grace),
    and files no version uses (what a killed commit wrote)."""
    versions = {v["version"]: v["timestamp"] for v in table.list_versions()}
    age = datetime.now() - versions.get(keep, datetime.now()) if keep else timedelta(0)
    older_than = max(age + CATALOGUE_GRACE, timedelta(milliseconds=1))  # 0: LanceDB warns
    table.optimize(cleanup_older_than=older_than, delete_unverified=True)


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
        check_not_forked(self.directory)
        with _lance_errors(self.directory, self.version):
            table = self._open().search().select(["row", name]).limit(None).to_arrow()
        rows = table.column("row").to_numpy()
        order = np.argsort(rows, kind="stable")
        if len(rows) != self.rows or not np.array_equal(rows[order], np.arange(self.rows)):
            raise ValueError(
                f"{self.directory / CATALOGUE}.lance holds {len(rows)} rows at version "
                f"{self.version}, not the rows 0..{self.rows - 1} the manifest says; {REBUILD}"
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
        check_not_forked(self.directory)
        with _lance_errors(self.directory, self.version):
            table = self._open().take_offsets(wanted).select(["row", "id", "path", "caption"])
            found = {r["row"]: r for r in table.to_arrow().to_pylist()}
        missing = [r for r in wanted if r not in found]
        if missing:
            raise ValueError(
                f"{self.directory / CATALOGUE}.lance lacks rows {missing[:5]} at version "
                f"{self.version}; {REBUILD}"
            )
        return [found[int(r)] for r in rows]
