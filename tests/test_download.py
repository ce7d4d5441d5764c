"""`qsegment data download chasedb1` against a local HTTP server on loopback that serves a
zip built from the shared copy: checksums, resume, retry and clear errors."""

from __future__ import annotations

import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from qsegment.cli import main
from qsegment.datasets import ChaseDB1
from qsegment.datasets.download import DownloadError, checksums, download_chasedb1


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir) -> bytes:
    """CHASE_DB1 zipped as the publisher does it, in a folder of its own."""
    path = tmp_path_factory.mktemp("zip") / "CHASEDB1.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(checksums()):
            zf.write(data_dir / name, f"CHASEDB1/{name}")
    return path.read_bytes()


class Server:
    """Serves ``body`` with HTTP Range support; ``fail_first`` requests get a 500 and
    ``cut_after`` bytes end the first response early (a broken connection)."""

    def __init__(self, body: bytes, fail_first: int = 0, cut_after: int | None = None) -> None:
        self.body, self.fail_first, self.cut_after = body, fail_first, cut_after
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.ranges.append(self.headers.get("Range"))
                if len(server.ranges) <= server.fail_first:
                    self.send_error(500, "try again")
                    return
                start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
                data = server.body[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if server.cut_after is not None and len(server.ranges) == 1:
                    self.wfile.write(data[:server.cut_after])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/CHASEDB1.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_checks_every_file_and_unpacks_the_flat_layout(archive, tmp_path, capsys):
    server = Server(archive, fail_first=1)  # one failed request: retried
    try:
        dest = tmp_path / "data" / "CHASEDB1"
        assert main(["data", "download", "chasedb1", "--to", str(dest), "--url",
                     server.url]) == 0
        assert "every file matches CHASEDB1.sha256" in capsys.readouterr().out
        assert sorted(p.name for p in dest.iterdir()) == sorted(checksums())
        assert len(ChaseDB1(dest).names()) == 28
        assert not any(p.name.startswith(".") for p in dest.parent.iterdir())  # nothing left
        requests = len(server.ranges)
        assert download_chasedb1(dest, url=server.url) == dest  # complete: not fetched again
        assert len(server.ranges) == requests
    finally:
        server.close()


def test_a_broken_download_resumes_where_it_stopped(archive, tmp_path):
    server = Server(archive, cut_after=len(archive) // 2)
    try:
        dest = tmp_path / "CHASEDB1"
        with pytest.raises(DownloadError, match="cannot download"):
            download_chasedb1(dest, url=server.url, retries=1)
        part = tmp_path / ".CHASEDB1.zip.part"
        assert part.stat().st_size == len(archive) // 2 and not dest.exists()
        download_chasedb1(dest, url=server.url)
        assert server.ranges[-1] == f"bytes={len(archive) // 2}-" and not part.exists()
        assert len(ChaseDB1(dest).names()) == 28
    finally:
        server.close()


def test_a_changed_archive_no_server_and_a_used_folder_are_refused(archive, tmp_path,
                                                                     data_dir, capsys):
    changed = tmp_path / "changed.zip"
    with zipfile.ZipFile(changed, "w") as zf:
        for name in sorted(checksums()):
            data = (data_dir / name).read_bytes()
            zf.writestr(f"CHASEDB1/{name}", data + b"x" if name == "Image_05R.jpg" else data)
    server = Server(changed.read_bytes())
    try:
        with pytest.raises(DownloadError, match=r"Image_05R\.jpg: checksum differs"):
            download_chasedb1(tmp_path / "bad", url=server.url)
        assert not (tmp_path / "bad").exists()
        assert not (tmp_path / ".bad.zip.part").exists()  # a bad archive is not resumed
    finally:
        server.close()
    dead = Server(b"")
    dead.close()  # nothing listens there any more
    assert main(["data", "download", "chasedb1", "--to", str(tmp_path / "x"), "--url",
                 dead.url]) == 2
    assert "cannot download" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError, match="not a complete CHASE_DB1 folder"):
        download_chasedb1(used, url=dead.url)
    assert (used / "notes.txt").read_text() == "mine"
