"""The download helper against a loopback HTTP server with Range support and interruptions."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from vcb_utils import download as dl
from vcb_utils.download import DownloadError, download, download_msrvtt, extract


class Server:
    """Serves ``files`` (name -> bytes) on 127.0.0.1; can cut responses short, ignore Range."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.cut = 0  # how many of the next responses stop after 40 % of their body
        self.honour_range = True
        self.ranges: list[str | None] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.ranges.append(self.headers.get("Range"))
                body = owner.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if owner.honour_range and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                part = body[start:]
                if owner.cut:
                    owner.cut -= 1
                    part = part[: int(len(part) * 0.4)]
                    self.close_connection = True
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
