"""Download and unpack MSR-VTT (or any archive): progress bar, resume, checksum, clear failures.

A download goes to ``<dest>.part`` first; an interrupted one resumes from there with an HTTP
``Range`` request (or starts over when the server ignores it), and the file gets its final name
only once complete and, when a SHA-256 is given, verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MSRVTT_ANNOTATIONS_URL = "https://github.com/ArrowLuo/CLIP4Clip/releases/download/v0.0/msrvtt_data.zip"
"""The split files and ``MSRVTT_data.json`` (as in the CLIP4Clip README)."""
MSRVTT_VIDEOS_URL = "https://www.robots.ox.ac.uk/~maxbain/frozen-in-time/data/MSRVTT.zip"
"""The 10,000 raw clips (about 6.3 GB; ``MSRVTT/videos/all/video*.mp4``)."""


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
    left by a failed call is resumed by the next call.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256.lower()):
        logger.info("%s already downloaded", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout, chunk_size)
            break
        except (OSError, http.client.HTTPException) as err:
            reason = _reason(err)
            if isinstance(err, urllib.error.HTTPError) or attempt == retries:
                raise DownloadError(
                    f"download of {url} failed after {attempt + 1} attempt(s): {reason}; "
                    f"partial file kept at {part} (run again to resume)"
                ) from err
            logger.warning("download of %s interrupted (%s); resuming", url, reason)
            time.sleep(min(2.0**attempt, 10.0))
    _verify(part, sha256, url)
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, timeout: float, chunk_size: int) -> None:
    """Append the missing bytes of ``url`` to ``part`` (restart when Range is not honoured)."""
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already complete
            return
        raise
    with response:
        resumed = response.status == 206
        if have and not resumed:
            logger.info("%s ignores Range requests; downloading from the start", url)
        length = response.headers.get("Content-Length")
        total = (int(length) + (have if resumed else 0)) if length else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=have if resumed else 0, unit="B", unit_scale=True,
            desc=part.name.removesuffix(".part"),
        ) as bar:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")


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
            "the download was deleted"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a zip or tar archive into ``dest`` (once: a marker file records it)."""
    archive, dest = Path(archive), Path(dest)
    marker = dest / f".extracted-{archive.name}"
    if marker.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    logger.info("unpacking %s into %s", archive, dest)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        else:
            raise DownloadError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
        raise DownloadError(f"{archive}: cannot unpack ({err})") from err
    marker.touch()
    return dest


def _extract_zip(archive: Path, dest: Path) -> None:
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zipped:
        members = zipped.infolist()
        for member in members:
            if not (root / member.filename).resolve().is_relative_to(root):
                raise DownloadError(f"{archive}: member {member.filename!r} escapes {dest}")
        for member in tqdm(members, desc=f"unpack {archive.name}", unit="file"):
            zipped.extract(member, dest)


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
    root = Path(root)
    found = []
    for url, sha, marker in (
        (annotations_url, annotations_sha256, "MSRVTT_JSFUSION_test.csv"),
        (videos_url, videos_sha256, "video0.mp4"),
    ):
        archive = download(url, root / "archives" / url.rstrip("/").split("/")[-1], sha256=sha)
        extract(archive, root)
        found.append(_folder_of(root, marker, archive))
        if not keep_archives:
            archive.unlink()
    return found[0], found[1]


def _folder_of(root: Path, name: str, archive: Path) -> Path:
    match = next(root.rglob(name), None)
    if match is None:
        raise DownloadError(f"{archive}: unpacked into {root} but no {name} found in it")
    return match.parent
