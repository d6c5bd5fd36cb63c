"""Download and unpack the benchmarks or any archive: progress, resume, checksum, clear failures.

A download goes to ``<dest>.part`` first; an interrupted one resumes from there with an HTTP
``Range`` request (or starts over when the server ignores it or answers another range), and the
file gets its final name, by one atomic rename, only once all its bytes arrived and, when a SHA-256
is given, verified. An archive unpacks into a staging folder beside its destination and moves in
only when complete; sizes are capped and members that would land outside are refused.

``DATASETS`` lists the public files of each benchmark (each annotations module's ``DOWNLOAD``,
for the datasets ``vcb_utils.dataset_registry`` marks); ``download_dataset(name, root)`` fetches
them. Videos that must be crawled (VATEX, DiDeMo, ActivityNet) or need a permission (LSMDC) are
not downloaded: ``data/README.md`` says where to get them.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from vcb_utils.annotations.msrvtt import ANNOTATIONS_URL as MSRVTT_ANNOTATIONS_URL
from vcb_utils.annotations.msrvtt import VIDEOS_URL as MSRVTT_VIDEOS_URL
from vcb_utils.dataset_registry import DATASETS as REGISTRY
from vcb_utils.dataset_registry import Benchmark, Source

logger = logging.getLogger(__name__)

MAX_UNPACKED_SIZE = 64 << 30
"""Default cap on the bytes one archive may unpack to (64 GiB)."""
MAX_LINK_HOPS = 40
"""Symbolic links one path may go through inside an archive (Linux's limit)."""

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download or unpacking failed; the message names the URL or file and the cause."""


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    chunk_size: int = 1 << 16,
) -> Path:
    """Fetch ``url`` to ``dest`` (skipped when ``dest`` exists and matches ``sha256``).

    Retries ``retries`` times after an interrupted transfer, resuming each time; a partial file
    left by a failed call is resumed by the next call. An existing ``dest`` that fails the
    checksum is moved aside to ``<dest>.mismatch`` before downloading again.
    """
    dest = Path(dest)
    if _present(dest, sha256):
        logger.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    length = _Length()
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, chunk_size, length)
            break
        except (OSError, http.client.HTTPException) as err:
            reason = _reason(err)
            if isinstance(err, urllib.error.HTTPError) or attempt == retries:
                raise DownloadError(
                    f"download of {url} failed after {attempt + 1} attempt(s): {reason}"
                    + _kept(part)
                ) from err
            logger.warning("download of %s interrupted (%s); resuming", url, reason)
            time.sleep(min(2.0**attempt, 10.0))
    _verify(part, sha256, url)
    os.replace(part, dest)
    return dest


def _present(dest: Path, sha256: str | None) -> bool:
    """Whether ``dest`` is a finished download; one failing the checksum is moved aside."""
    if not dest.is_file():
        return False
    if sha256 is None or _sha256(dest) == sha256.lower():
        return True
    aside = dest.with_name(dest.name + ".mismatch")
    os.replace(dest, aside)
    logger.warning("%s does not match sha256 %s; moved to %s", dest, sha256.lower(), aside)
    return False


@dataclass
class _Length:
    """The file's total length as the server first stated it, kept across the attempts of one
    download: a resumed reply must state the same."""

    total: int | None = None


def _fetch(url: str, part: Path, timeout: float, chunk_size: int, length: _Length) -> None:
    """Complete ``part`` from ``url``: returns once it holds every byte the server announced
    (or, with no length announced, when the body ended with a clean close).

    Raises ``ConnectionError`` (after discarding ``part`` when its bytes cannot be trusted) for
    anything to retry: a short body, a range that does not start where ``part`` ends or that
    states another total length (or none), a malformed length.
    """
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            _check_complete(url, part, have, err.headers.get("Content-Range"))
            return
        raise
    with response:
        start, total = _extent(url, response, have, part, length)
        with (
            open(part, "ab" if start else "wb") as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                desc=part.name.removesuffix(".part"),
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        if size > total:
            part.unlink()
        raise ConnectionError(f"received {size} of {total} bytes")


def _check_complete(url: str, part: Path, have: int, content_range: str | None) -> None:
    """A 416 reply: ``part`` is complete only if the server's total length is its size."""
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match and match[3] == str(have):
        return
    part.unlink()
    raise ConnectionError(
        f"{url} refused the range from byte {have} (Content-Range {content_range!r}); "
        "the partial file was discarded"
    )


def _extent(
    url: str, response: http.client.HTTPResponse, have: int, part: Path, length: _Length
) -> tuple[int, int | None]:
    """``(first byte of the body, total length or None)``; a range that starts elsewhere than
    asked, states no total or another total than before discards ``part``."""
    if response.status != 206:
        if have:
            logger.info("%s ignores Range requests; downloading from the start", url)
        length.total = _content_length(url, response.headers.get("Content-Length"))
        return 0, length.total
    content_range = response.headers.get("Content-Range")
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    total = int(match[3]) if match and match[3] != "*" else None
    if (
        match is None
        or match[1] is None
        or int(match[1]) not in (0, have)
        or total is None
        or length.total not in (None, total)
    ):
        part.unlink(missing_ok=True)
        raise ConnectionError(
            f"asked for bytes from {have} of {length.total or 'unknown'}, got Content-Range "
            f"{content_range!r}; the partial file was discarded"
        )
    if int(match[1]) == 0 and have:
        logger.info("%s sent the whole file again; downloading from the start", url)
    length.total = total
    return int(match[1]), total


def _content_length(url: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value.strip()):
        raise ConnectionError(f"{url} sent an invalid Content-Length {value!r}")
    return int(value)


def _kept(part: Path) -> str:
    """The failure message's tail about the partial file: only when there is one."""
    size = part.stat().st_size if part.is_file() else 0
    if not size:
        return ""
    return f"; partial file kept at {part} ({size} bytes; run again to resume)"


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}"


def _verify(part: Path, sha256: str | None, url: str) -> None:
    if sha256 is None:
        return
    actual = _sha256(part)
    if actual != sha256.lower():
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}; "
            f"the download ({part}) was deleted"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def extract(
    archive: str | os.PathLike, dest: str | os.PathLike, *, max_size: int = MAX_UNPACKED_SIZE
) -> Path:
    """Unpack a zip or tar archive into ``dest``, once.

    The members go to a staging folder beside ``dest`` and move in when all are written; the
    marker ``dest/.extracted-<archive name>`` comes last, so an interrupted unpacking is redone.
    Raises ``DownloadError`` naming the archive and the member for one that would land outside
    ``dest`` (``..``, an absolute path, a link pointing out) or that takes the unpacked size past
    ``max_size`` bytes.
    """
    archive, dest = Path(archive), Path(dest)
    marker = _marker(archive.name, dest)
    if marker.is_file():
        return dest
    full = dest.resolve()
    staging = full.with_name(f".{full.name}.unpacking-{archive.name}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    logger.info("unpacking %s into %s", archive, dest)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, max_size)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, max_size)
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
        _move_into(staging, dest, marker.name)
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
        raise DownloadError(f"{archive}: cannot unpack ({err})") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _marker(archive_name: str, dest: Path) -> Path:
    return dest / f".extracted-{archive_name}"


def _extract_zip(archive: Path, staging: Path, max_size: int) -> None:
    root, total = staging.resolve(), 0
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        for member in members:  # zipfile never writes more than a member's declared size
            if not (root / member.filename).resolve().is_relative_to(root):
                raise DownloadError(f"{archive}: member {member.filename!r} escapes its folder")
            total += member.file_size
            _check_size(archive, member.filename, total, max_size)
        for member in tqdm(members, desc=f"unpack {archive.name}", unit="file"):
            zipped.extract(member, staging)


def _extract_tar(archive: Path, staging: Path, max_size: int) -> None:
    """Unpack after checking every member ourselves (``_tar_problem``), then through Python's
    ``data_filter`` too, which alone lets a chain of links write outside (CVE-2025-4517)."""
    total = 0

    def safe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        nonlocal total
        try:
            if os.path.isabs(member.name):
                raise tarfile.AbsolutePathError(member)
            checked = tarfile.data_filter(member, path)
        except tarfile.FilterError as err:
            raise DownloadError(f"{archive}: member {member.name!r} is refused ({err})") from err
        total += checked.size if checked.isfile() else 0
        _check_size(archive, member.name, total, max_size)
        return checked

    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        links = {_key(m.name): m.linkname for m in members if m.issym()}
        names = Counter(_key(m.name) for m in members)
        for member in members:
            problem = _tar_problem(member, links, names)
            if problem:
                raise DownloadError(f"{archive}: member {member.name!r} is refused ({problem})")
        tar.extractall(staging, members=members, filter=safe)


def _parts(name: str) -> list[str]:
    """The components of a path inside an archive, without empty ones and ``.``."""
    return [part for part in name.split("/") if part not in ("", ".")]


def _key(name: str) -> str:
    return "/".join(_parts(name))


def _tar_problem(member: tarfile.TarInfo, links: dict[str, str], names: Counter) -> str | None:
    """Why ``member`` could land or point outside the destination, or None.

    Decided on the names alone, following the archive's own symbolic links (``links``: name ->
    target) as the kernel would, so the answer does not depend on what the disk resolves.
    """
    parts, name = _parts(member.name), _key(member.name)
    if member.name.startswith("/") or ".." in parts or not parts:
        return "its path is absolute, empty or goes up with '..'"
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            return f"its path goes through the symbolic link {'/'.join(parts[:i])!r}"
    if name in links and names[name] > 1:
        return "the archive holds a symbolic link and another member of this name"
    if member.issym() or member.islnk():
        start = parts[:-1] if member.issym() else []  # a hard link's target is from the root
        target = start + _parts(member.linkname)
        if member.linkname.startswith("/") or _follow(target, links) is None:
            return f"its link to {member.linkname!r} leads outside the destination"
    elif not (member.isfile() or member.isdir()):
        return "not a file, folder or link"
    return None


def _follow(parts: list[str], links: dict[str, str]) -> list[str] | None:
    """Where ``parts`` (from the destination) lead through the archive's symbolic links: the
    components of the real path, or None if it leaves the destination or takes more than
    ``MAX_LINK_HOPS`` links."""
    pending, current, hops = list(reversed(parts)), [], 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not current:
                return None
            current.pop()
            continue
        target = links.get("/".join([*current, part]))
        if target is None:
            current.append(part)
            continue
        hops += 1
        if hops > MAX_LINK_HOPS or target.startswith("/"):
            return None
        pending.extend(reversed(_parts(target)))
    return current


def _check_size(archive: Path, member: str, total: int, max_size: int) -> None:
    if total > max_size:
        raise DownloadError(
            f"{archive}: member {member!r} takes the unpacked size to {total} bytes, over the "
            f"cap of {max_size} (extract(..., max_size=...) raises it for a trusted archive)"
        )


def _move_into(staging: Path, dest: Path, marker_name: str) -> None:
    """Move the unpacked tree into ``dest`` (one rename when ``dest`` is new), its marker last."""
    if not dest.exists():
        (staging / marker_name).touch()
        os.replace(staging, dest)
        return
    _merge(staging, dest)
    (dest / marker_name).touch()


def _merge(source: Path, dest: Path) -> None:
    for entry in source.iterdir():
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
        else:
            os.replace(entry, target)


DATASETS: dict[str, Benchmark] = {
    name: spec.module.DOWNLOAD for name, spec in REGISTRY.items() if spec.download
}
"""The public files of each benchmark (the ``DOWNLOAD`` of its annotations module): annotations,
and videos where an archive exists."""


def download_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    videos: bool = True,
    keep_archives: bool = True,
) -> tuple[Path, Path | None]:
    """Download the public files of ``name`` (a key of ``DATASETS``) under ``root``.

    Returns ``(anno_path, video_path)`` for ``read_annotations(name, anno_path, split,
    video_path)``. ``video_path`` is None with ``videos=False`` and for VATEX, DiDeMo and
    ActivityNet, whose videos are crawled from YouTube or Flickr (``data/README.md`` says how);
    VATEX's split lists (``train_list.txt``, ``test_list.txt``) come from the HGR authors' data,
    not a public URL. ``root`` defaults to ``data/<name>``.
    """
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(DATASETS)} "
            "(LSMDC needs a permission from MPII: see data/README.md)"
        )
    spec, root = DATASETS[name], Path(root or Path("data") / name)
    _fetch_all(spec, root, videos=videos, keep_archives=keep_archives)
    anno = _folder_of(root, spec.anno_file)
    if spec.video_file is None:
        logger.warning("%s videos are not a public download; see data/README.md", name)
    if spec.video_file is None or not videos:
        return anno, None
    return anno, _folder_of(root, spec.video_file)


def download_msrvtt(
    root: str | os.PathLike = "data/msrvtt",
    *,
    annotations_url: str = MSRVTT_ANNOTATIONS_URL,
    videos_url: str = MSRVTT_VIDEOS_URL,
    annotations_sha256: str | None = None,
    videos_sha256: str | None = None,
    keep_archives: bool = True,
) -> tuple[Path, Path]:
    """Download and unpack MSR-VTT under ``root``; returns ``(anno_path, video_path)``.

    ``anno_path`` is the folder holding ``MSRVTT_JSFUSION_test.csv`` and ``video_path`` the one
    holding ``video0.mp4`` ... (found after unpacking, whatever the archive layout), ready for
    ``DataConfig(datatype="msrvtt", anno_path=..., video_path=...)``.
    """
    spec = DATASETS["msrvtt"]
    annotations, clips = spec.sources
    sources = [
        annotations._replace(
            url=annotations_url, filename=_basename(annotations_url), sha256=annotations_sha256
        ),
        clips._replace(url=videos_url, filename=_basename(videos_url), sha256=videos_sha256),
    ]
    root = Path(root)
    _fetch_all(replace(spec, sources=sources), root, videos=True, keep_archives=keep_archives)
    return _folder_of(root, spec.anno_file), _folder_of(root, str(spec.video_file))


def _basename(url: str) -> str:
    """The file name that ``url``'s path ends in (its query and fragment left out)."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").split("/")[-1]
    if name in ("", ".", ".."):
        raise DownloadError(f"{url} names no file: give a URL whose path ends in the file name")
    return name


def _fetch_all(spec: Benchmark, root: Path, *, videos: bool, keep_archives: bool) -> None:
    for source in spec.sources:
        if videos or not source.videos:
            _fetch_source(source, root, keep_archives)
    if spec.prepare is not None:
        try:
            spec.prepare(root)
        except ValueError as err:
            raise DownloadError(str(err)) from err


def _fetch_source(source: Source, root: Path, keep_archives: bool) -> None:
    """Download one file; an archive goes to ``root/archives`` and is unpacked into ``root``."""
    if not source.filename.endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        download(source.url, root / source.filename, sha256=source.sha256)
        return
    if _marker(source.filename, root).is_file():
        return
    archive = download(source.url, root / "archives" / source.filename, sha256=source.sha256)
    extract(archive, root)
    if not keep_archives:
        archive.unlink()


def _folder_of(root: Path, pattern: str) -> Path:
    match = next(root.rglob(pattern), None)
    if match is None:
        raise DownloadError(f"{root}: no {pattern} found after downloading into it")
    return match.parent
