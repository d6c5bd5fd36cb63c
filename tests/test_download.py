"""The download helper against a loopback HTTP server with Range support and interruptions."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from vcb_utils import download as dl
from vcb_utils.download import (
    DATASETS,
    DownloadError,
    download,
    download_dataset,
    download_msrvtt,
    extract,
)


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; can cut responses short, ignore Range,
    start a range elsewhere than asked, refuse ranges (416), omit Content-Length, send chunked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut = 0  # how many of the next responses stop after 40 % of their body
        self.honour_range = True
        self.shift = 0  # a 206 reply starts this many bytes after the requested start
        self.refuse_range = False  # answer a Range request with 416 and the total length
        self.send_length = True
        self.length_header: str | None = None  # a Content-Length to send instead of the true one
        self.range_end: int | None = None  # where a 206 body stops (None: at the file's end)
        self.range_total: str | None = None  # the total a 206 states (None: the true length)
        self.chunked = False
        self.ranges: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                asked = self.headers.get("Range")
                owner.ranges.append(asked)
                body = owner.files.get(self.path.split("?")[0].lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                if asked and owner.refuse_range:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if owner.honour_range and asked:
                    start = int(asked.removeprefix("bytes=").rstrip("-")) + owner.shift
                    end = owner.range_end or len(body)
                    total = owner.range_total or len(body)
                    body = body[:end]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{total}")
                else:
                    self.send_response(200)
                if owner.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                elif owner.send_length:
                    length = owner.length_header or str(len(body) - start)
                    self.send_header("Content-Length", length)
                self.end_headers()
                part, complete = body[start:], True
                if owner.cut:
                    owner.cut -= 1
                    part, complete = part[: int(len(part) * 0.4)], False
                    self.close_connection = True
                if owner.chunked:
                    part = b"%x\r\n%s\r\n" % (len(part), part) + (b"0\r\n\r\n" if complete else b"")
                self.wfile.write(part)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_zip(path: Path, files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path.read_bytes()


@pytest.fixture
def archives(tmp_path_factory) -> dict[str, bytes]:
    src = tmp_path_factory.mktemp("served")
    annotations = {
        "msrvtt_data/MSRVTT_JSFUSION_test.csv": b"key,vid_key,video_id,sentence\n",
        "msrvtt_data/MSRVTT_train.9k.csv": b"video_id\nvideo0\n",
    }
    videos = {f"MSRVTT/videos/all/video{i}.mp4": bytes(range(256)) * (40 + i) for i in range(3)}
    return {
        "msrvtt_data.zip": make_zip(src / "a.zip", annotations),
        "MSRVTT.zip": make_zip(src / "v.zip", videos),
    }


@pytest.fixture
def server(archives):
    running = Server(archives)
    yield running
    running.close()


@pytest.fixture(autouse=True)
def local_and_quick(monkeypatch):
    """No proxy for the loopback server, no back-off pauses between retries."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(dl.time, "sleep", lambda seconds: None)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verify_and_skip_when_present(server, archives, tmp_path):
    body = archives["MSRVTT.zip"]
    dest = download(f"{server.url}/MSRVTT.zip", tmp_path / "out" / "v.zip", sha256=sha(body))
    assert dest.read_bytes() == body and server.ranges == [None]
    assert not (tmp_path / "out" / "v.zip.part").exists()
    download(f"{server.url}/MSRVTT.zip", dest, sha256=sha(body).upper())
    assert len(server.ranges) == 1  # already there and verified: no request


def test_interrupted_download_resumes_on_the_next_call(server, archives, tmp_path):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    server.cut = 1
    with pytest.raises(DownloadError, match=r"MSRVTT\.zip failed after 1 attempt.*v\.zip\.part"):
        download(url, tmp_path / "v.zip", retries=0)
    have = (tmp_path / "v.zip.part").stat().st_size
    assert have == int(len(body) * 0.4)
    dest = download(url, tmp_path / "v.zip", sha256=sha(body), retries=0)
    assert dest.read_bytes() == body
    assert server.ranges == [None, f"bytes={have}-"]


def test_retries_resume_within_one_call(server, archives, tmp_path):
    body = archives["MSRVTT.zip"]
    server.cut = 2
    dest = download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip", retries=3)
    assert dest.read_bytes() == body
    first = int(len(body) * 0.4)
    second = first + int((len(body) - first) * 0.4)
    assert server.ranges == [None, f"bytes={first}-", f"bytes={second}-"]


def test_server_without_range_support_restarts(server, archives, tmp_path):
    body = archives["MSRVTT.zip"]
    (tmp_path / "v.zip.part").write_bytes(body[:100])
    server.honour_range = False
    dest = download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip")
    assert dest.read_bytes() == body and server.ranges == ["bytes=100-"]


def test_checksum_mismatch_is_reported_and_removed(server, archives, tmp_path):
    with pytest.raises(DownloadError) as info:
        download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip", sha256="0" * 64)
    message = str(info.value)
    assert "checksum mismatch" in message and "MSRVTT.zip" in message
    assert "0" * 64 in message and sha(archives["MSRVTT.zip"]) in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_names_the_url_without_retrying(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/nothing\.zip failed after 1 attempt.*HTTP 404"):
        download(f"{server.url}/nothing.zip", tmp_path / "x.zip", retries=3)
    assert len(server.ranges) == 1


def test_download_msrvtt_finds_both_folders(server, tmp_path):
    anno, videos = download_msrvtt(
        tmp_path / "msrvtt",
        annotations_url=f"{server.url}/msrvtt_data.zip",
        videos_url=f"{server.url}/MSRVTT.zip",
    )
    assert anno == tmp_path / "msrvtt" / "msrvtt_data"
    assert videos == tmp_path / "msrvtt" / "MSRVTT" / "videos" / "all"
    assert sorted(p.name for p in videos.iterdir()) == ["video0.mp4", "video1.mp4", "video2.mp4"]
    requests = len(server.ranges)
    download_msrvtt(
        tmp_path / "msrvtt",
        annotations_url=f"{server.url}/msrvtt_data.zip",
        videos_url=f"{server.url}/MSRVTT.zip",
    )
    assert len(server.ranges) == requests  # archives kept, already unpacked


def test_extract_refuses_bad_archives(tmp_path):
    make_zip(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    with pytest.raises(DownloadError, match="escapes"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    (tmp_path / "plain.bin").write_bytes(b"not an archive")
    with pytest.raises(DownloadError, match="plain.bin: not a zip or tar archive"):
        extract(tmp_path / "plain.bin", tmp_path / "out")


# --- the download never takes a short, shifted or stale file for a finished one --------------


def test_range_starting_elsewhere_discards_the_partial_file(server, archives, tmp_path):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    server.cut, server.shift = 1, 7  # the 206 reply would leave a 7-byte hole
    dest = download(url, tmp_path / "v.zip", sha256=sha(body), retries=2)
    have = int(len(body) * 0.4)
    assert dest.read_bytes() == body
    assert server.ranges == [None, f"bytes={have}-", None]  # discarded, then from the start


def test_range_reply_short_of_its_content_range_total_resumes(server, archives, tmp_path):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    (tmp_path / "v.zip.part").write_bytes(body[:100])
    server.send_length, server.cut = False, 1  # only Content-Range tells the length
    dest = download(url, tmp_path / "v.zip", retries=1)
    assert dest.read_bytes() == body
    assert server.ranges == ["bytes=100-", f"bytes={100 + int((len(body) - 100) * 0.4)}-"]


def test_short_body_of_unknown_length_fails_the_checksum_and_leaves_nothing(
    server, archives, tmp_path
):
    server.send_length, server.cut = False, 1  # ends with a clean close: looks complete
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip", sha256=sha(archives["MSRVTT.zip"]))
    assert list(tmp_path.iterdir()) == []


def test_truncated_chunked_body_is_an_interruption(server, archives, tmp_path):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    server.chunked, server.cut = True, 1
    with pytest.raises(DownloadError, match="IncompleteRead"):
        download(url, tmp_path / "v.zip", retries=0)
    assert not (tmp_path / "v.zip").exists()
    assert download(url, tmp_path / "v.zip", retries=0).read_bytes() == body


def test_body_shorter_than_content_length_never_gets_the_final_name(server, archives, tmp_path):
    body = archives["MSRVTT.zip"]
    server.cut = 2
    with pytest.raises(DownloadError) as info:
        download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip", retries=1)
    have = int(len(body) * 0.4)
    have += int((len(body) - have) * 0.4)
    assert f"partial file kept at {tmp_path / 'v.zip.part'} ({have} bytes" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.zip.part"]


def test_refused_range_accepts_only_a_part_of_the_exact_length(server, archives, tmp_path):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    server.refuse_range = True
    (tmp_path / "long.zip.part").write_bytes(body + b"junk")
    assert download(url, tmp_path / "long.zip", retries=1).read_bytes() == body
    (tmp_path / "exact.zip.part").write_bytes(body)
    assert download(url, tmp_path / "exact.zip", retries=0).read_bytes() == body
    n = len(body)
    assert server.ranges == [f"bytes={n + 4}-", None, f"bytes={n}-"]


def test_failure_message_claims_no_partial_file_that_is_not_there(server, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DownloadError) as refused:
        download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", retries=0, timeout=3)
    (tmp_path / "y.zip.part").write_bytes(b"")
    with pytest.raises(DownloadError) as missing:
        download(f"{server.url}/nothing.zip", tmp_path / "y.zip")
    for info in (refused, missing):
        assert "failed after 1 attempt" in str(info.value)
        assert "partial" not in str(info.value)


def test_existing_file_failing_the_checksum_is_moved_aside(server, archives, tmp_path):
    body, dest = archives["MSRVTT.zip"], tmp_path / "v.zip"
    dest.write_bytes(b"stale")
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{server.url}/nothing.zip", dest, sha256=sha(body))
    assert not dest.exists() and (tmp_path / "v.zip.mismatch").read_bytes() == b"stale"
    dest.write_bytes(b"stale again")
    assert download(f"{server.url}/MSRVTT.zip", dest, sha256=sha(body)).read_bytes() == body


# --- unpacking: size cap, members escaping the destination, no half-finished folders ----------


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def test_extract_caps_the_unpacked_size(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("small.txt", b"x" * 100)
        bomb.writestr("big.bin", bytes(5000))
    assert (tmp_path / "bomb.zip").stat().st_size < 500
    with pytest.raises(DownloadError, match=r"bomb\.zip: member 'big\.bin'.*cap of 1000"):
        extract(tmp_path / "bomb.zip", tmp_path / "out", max_size=1000)
    tar = make_tar(tmp_path / "bomb.tar.gz", [(tarfile.TarInfo(n), bytes(600)) for n in "ab"])
    with pytest.raises(DownloadError, match=r"bomb\.tar\.gz: member 'b'.*1200 bytes"):
        extract(tar, tmp_path / "out", max_size=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar.gz", "bomb.zip"]
    assert (extract(tar, tmp_path / "out", max_size=1200) / "b").stat().st_size == 600


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_zip_members_outside_the_folder(tmp_path, name):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("fine.txt", b"ok")
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with pytest.raises(DownloadError, match=f"evil\\.zip: member '{name}' escapes"):
        extract(tmp_path / "evil.zip", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.zip"]


def test_extract_refuses_tar_links_and_absolute_paths(tmp_path):
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    tar = make_tar(tmp_path / "link.tar.gz", [(tarfile.TarInfo("ok.txt"), b"ok"), (link, b"")])
    with pytest.raises(DownloadError, match=r"link\.tar\.gz: member 'link' is refused"):
        extract(tar, tmp_path / "out")
    tar = make_tar(tmp_path / "abs.tar.gz", [(tarfile.TarInfo("/etc/evil"), b"x")])
    with pytest.raises(DownloadError, match=r"abs\.tar\.gz: member '/etc/evil' is refused"):
        extract(tar, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interrupted_extraction_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    make_zip(tmp_path / "a.zip", {"data/one.txt": b"1", "data/two.txt": b"2"})
    real, calls = zipfile.ZipFile.extract, []

    def disk_full_on_second(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", disk_full_on_second)
    with pytest.raises(DownloadError, match="No space left"):
        extract(tmp_path / "a.zip", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]  # no out/, no staging
    monkeypatch.undo()
    out = extract(tmp_path / "a.zip", tmp_path / "out")
    assert (out / "data" / "two.txt").read_bytes() == b"2" and (out / ".extracted-a.zip").is_file()


def test_extract_merges_archives_into_one_folder(tmp_path):
    make_zip(tmp_path / "a.zip", {"shared/a.txt": b"a"})
    make_zip(tmp_path / "b.zip", {"shared/b.txt": b"b"})
    extract(tmp_path / "a.zip", tmp_path / "out")
    extract(tmp_path / "b.zip", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        ".extracted-a.zip", ".extracted-b.zip", "a.txt", "b.txt", "shared"
    ]


# --- the other benchmarks: the table, patched to the loopback server ---------------------------


def serve_dataset(monkeypatch, name: str, files: dict[str, bytes]) -> Server:
    """Serve ``files`` and point the table entry ``name`` at them."""
    running = Server(files)
    spec = DATASETS[name]
    sources = [s._replace(url=f"{running.url}/{s.filename}") for s in spec.sources]
    assert sorted(s.filename for s in sources) == sorted(files)
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, sources=sources))
    return running


def tar_bytes(path: Path, files: dict[str, bytes]) -> bytes:
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path.read_bytes()


def test_download_dataset_msvd_annotations_and_videos(monkeypatch, tmp_path):
    annotations = {f"msvd_data/{s}_list.txt": b"-4wsuPCjDBc_5_15\n" for s in ("train", "test")}
    annotations["msvd_data/raw-captions.pkl"] = b"pickle"
    files = {
        "msvd_data.zip": make_zip(tmp_path / "a.zip", annotations),
        "YouTubeClips.tar": tar_bytes(tmp_path / "v.tar", {"YouTubeClips/-4wsu_5_15.avi": b"v"}),
    }
    server = serve_dataset(monkeypatch, "msvd", files)
    try:
        anno, videos = download_dataset("msvd", tmp_path / "msvd", videos=False)
        assert anno == tmp_path / "msvd" / "msvd_data" and videos is None
        assert server.ranges == [None]
        anno, videos = download_dataset("msvd", tmp_path / "msvd", keep_archives=False)
        assert videos == tmp_path / "msvd" / "YouTubeClips"
        assert [p.name for p in videos.iterdir()] == ["-4wsu_5_15.avi"]
        assert not (tmp_path / "msvd" / "archives" / "YouTubeClips.tar").exists()
        download_dataset("msvd", tmp_path / "msvd")
        assert len(server.ranges) == 2  # unpacked before: not downloaded again
    finally:
        server.close()


def test_download_dataset_didemo_plain_files_and_no_videos(monkeypatch, tmp_path, caplog):
    files = {f"{s}_data.json": b"[]" for s in ("train", "val", "test")}
    files |= {f"{s}_list.txt": b"x.mp4\n" for s in ("train", "val", "test")}
    server = serve_dataset(monkeypatch, "didemo", files)
    try:
        with caplog.at_level(logging.WARNING, logger="vcb_utils.download"):
            anno, videos = download_dataset("didemo", tmp_path / "didemo")
    finally:
        server.close()
    assert anno == tmp_path / "didemo" and videos is None
    assert sorted(p.name for p in anno.iterdir()) == sorted(files)
    assert "didemo videos are not a public download; see data/README.md" in caplog.text


def test_download_dataset_activitynet_finds_the_captions_folder(monkeypatch, tmp_path):
    names = ("train.json", "val_1.json", "val_2.json", "train_ids.json", "val_ids.json")
    zipped = make_zip(tmp_path / "c.zip", {f"captions/{n}": b"{}" for n in names})
    server = serve_dataset(monkeypatch, "activitynet", {"captions.zip": zipped})
    try:
        anno, videos = download_dataset("activitynet", tmp_path / "anet")
    finally:
        server.close()
    assert anno == tmp_path / "anet" / "captions" and videos is None


def test_download_dataset_vatex_merges_the_official_files(monkeypatch, tmp_path):
    train = [{"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": ["a"] * 10, "chCap": ["b"] * 10}]
    val = [{"videoID": "v2_000001_000011", "enCap": ["c"] * 10, "chCap": ["d"] * 10}]
    files = {
        "vatex_training_v1.0.json": json.dumps(train).encode(),
        "vatex_validation_v1.0.json": json.dumps(val).encode(),
    }
    server = serve_dataset(monkeypatch, "vatex", files)
    try:
        anno, videos = download_dataset("vatex", tmp_path / "vatex")
    finally:
        server.close()
    merged = json.loads((anno / "vatex_data.json").read_text())
    assert anno == tmp_path / "vatex" and videos is None
    assert merged == {item["videoID"]: {"enCap": item["enCap"], "chCap": item["chCap"]}
                      for item in train + val}


def test_download_dataset_vatex_names_a_malformed_file(monkeypatch, tmp_path):
    files = {"vatex_training_v1.0.json": b'[{"id": 1}]', "vatex_validation_v1.0.json": b"[]"}
    server = serve_dataset(monkeypatch, "vatex", files)
    try:
        with pytest.raises(DownloadError, match=r"vatex_training_v1\.0\.json: not the official"):
            download_dataset("vatex", tmp_path / "vatex")
    finally:
        server.close()
    assert not (tmp_path / "vatex" / "vatex_data.json").exists()


def test_dataset_table_and_unknown_names():
    assert set(DATASETS) == {"msrvtt", "msvd", "didemo", "activitynet", "vatex"}
    for spec in DATASETS.values():
        assert all(s.url.startswith("https://") for s in spec.sources)
        assert len({s.filename for s in spec.sources}) == len(spec.sources)
    with pytest.raises(ValueError, match="LSMDC needs a permission from MPII"):
        download_dataset("lsmdc", "unused")


# --- crafted tars: every member checked by its names, whatever Python's own filter lets by ------


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def deep_alias_chain(levels: int = 16, width: int = 247) -> tuple[list[tarfile.TarInfo], str]:
    """Folders of long names nested ``levels`` deep, each reachable through a one-letter link:
    the short path ``a/b/c/...`` leads to a real path longer than PATH_MAX, past which
    ``os.path.realpath`` stops resolving links (the CVE-2025-4517 chain)."""
    members, deep = [], ""
    for letter in "abcdefghijklmnop"[:levels]:
        folder = f"{deep}{'d' * width}"
        members += [tar_member(folder, tarfile.DIRTYPE), tar_member(f"{deep}{letter}",
                                                                     tarfile.SYMTYPE, "d" * width)]
        deep = f"{folder}/"
    return members, "/".join("abcdefghijklmnop"[:levels])


def cve_2025_4517_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    chain, short = deep_alias_chain()
    top = f"{short}/{'l' * 254}"  # a link back up to the destination, through the aliases
    members = [*chain, tar_member(top, tarfile.SYMTYPE, "../" * 16)]
    members.append(tar_member("escape", tarfile.SYMTYPE, f"{top}/../.."))  # lands beside dest
    members.append(tar_member("stolen", tarfile.LNKTYPE, "escape/outside/secret"))
    return [(m, b"") for m in members] + [(tar_member("escape/outside/planted"), b"planted")]


@pytest.mark.parametrize(
    ("members", "refused"),
    [
        (cve_2025_4517_members(), "goes through the symbolic link 'a'"),
        (  # links that escape only together: the first checked before the second exists
            [(tar_member("sub", tarfile.DIRTYPE), b""),
             (tar_member("escape", tarfile.SYMTYPE, "sub/up/../.."), b""),
             (tar_member("sub/up", tarfile.SYMTYPE, ".."), b"")],
            "'escape'.*link to 'sub/up/../..' leads outside",
        ),
        ([(tar_member("loop", tarfile.SYMTYPE, "loop/x"), b"")], "leads outside"),
        ([(tar_member("hard", tarfile.LNKTYPE, "../outside/secret"), b"")], "leads outside"),
        ([(tar_member("soft", tarfile.SYMTYPE, "/etc/passwd"), b"")], "leads outside"),
        ([(tar_member("a/../../outside/planted"), b"x")], "goes up with '..'"),
        ([(tar_member("link", tarfile.SYMTYPE, "ok"), b""), (tar_member("link"), b"x")],
         "a symbolic link and another member"),
    ],
    ids=["cve-2025-4517", "two-links", "loop", "hard-link-out", "absolute-link", "dot-dot",
         "link-replaced"],
)
def test_crafted_tars_are_refused_and_write_nothing_outside(tmp_path, members, refused):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    dest = tmp_path / "dest" / "inner"
    with pytest.raises(DownloadError, match=rf"evil\.tar: member .*{refused}"):
        extract(archive, dest)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "secret"
    assert not dest.exists() and list((tmp_path / "dest").iterdir()) == []


def test_links_that_stay_inside_still_unpack(tmp_path):
    members = [
        (tar_member("videos", tarfile.DIRTYPE), b""),
        (tar_member("videos/v1.mp4"), b"video"),
        (tar_member("videos/latest.mp4", tarfile.SYMTYPE, "v1.mp4"), b""),
        (tar_member("docs/up", tarfile.SYMTYPE, "../videos/./v1.mp4"), b""),
        (tar_member("copy.mp4", tarfile.LNKTYPE, "videos/v1.mp4"), b""),
    ]
    archive = tmp_path / "fine.tar"
    with tarfile.open(archive, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    out = extract(archive, tmp_path / "out")
    for name in ("videos/latest.mp4", "docs/up", "copy.mp4"):
        assert (out / name).read_bytes() == b"video"


# --- replies that would give a short file a finished name -------------------------------------


@pytest.mark.parametrize("stated_total", ["short", "*"])
def test_a_range_reply_for_a_shorter_or_unknown_length_restarts(
    server, archives, tmp_path, stated_total
):
    body, url = archives["MSRVTT.zip"], f"{server.url}/MSRVTT.zip"
    have = int(len(body) * 0.4)
    server.cut, server.range_end = 1, have + 100  # the resumed reply stops 100 bytes later
    server.range_total = str(have + 100) if stated_total == "short" else "*"
    dest = download(url, tmp_path / "v.zip", retries=2)
    assert dest.read_bytes() == body  # not the first have + 100 bytes
    assert server.ranges == [None, f"bytes={have}-", None]  # discarded, then from the start


def test_a_malformed_content_length_is_a_clear_failure(server, tmp_path):
    server.length_header = "12abc"
    with pytest.raises(DownloadError, match=r"MSRVTT\.zip failed after 2 attempt.*invalid "
                       r"Content-Length '12abc'"):
        download(f"{server.url}/MSRVTT.zip", tmp_path / "v.zip", retries=1)
    assert list(tmp_path.iterdir()) == []


def test_urls_with_a_query_are_named_and_unpacked_by_their_path(server, tmp_path):
    anno, videos = download_msrvtt(
        tmp_path / "msrvtt",
        annotations_url=f"{server.url}/msrvtt_data.zip?dl=1&token=x/y",
        videos_url=f"{server.url}/MSRVTT.zip?raw=true",
    )
    assert anno == tmp_path / "msrvtt" / "msrvtt_data"
    assert videos == tmp_path / "msrvtt" / "MSRVTT" / "videos" / "all"
    archives = sorted(p.name for p in (tmp_path / "msrvtt" / "archives").iterdir())
    assert archives == ["MSRVTT.zip", "msrvtt_data.zip"]
    with pytest.raises(DownloadError, match="names no file"):
        download_msrvtt(tmp_path / "x", annotations_url=f"{server.url}/..?a=b")
