"""`qsegment data download chasedb1` against a local HTTP server on loopback that serves a
zip built from the shared copy: checksums, resume, retry and clear errors; `qsegment data
check` on the real LES-AV and on linked copies with one file changed; the sets without a
direct download say where to get them."""

from __future__ import annotations

import re
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qsegment.cli import main
from qsegment.datasets import ChaseDB1, DatasetError
from qsegment.datasets.download import (
    SERVED,
    DownloadError,
    check_dataset,
    checksum_list,
    checksums,
    download_chasedb1,
)


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


SHARED = (Path(__file__).resolve().parents[1] / "../shared/data").resolve()
LES = SHARED / "LES-AV"


@pytest.fixture
def les_links(tmp_path) -> Path:
    """LES-AV with every file linked from the shared copy, to damage one file at a time."""
    out = tmp_path / "LES-AV"
    for name in checksums("LES-AV"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).symlink_to(LES / name)
    return out


@pytest.mark.parametrize("folder", ["CHASEDB1", "HRF-AV", "LES-AV"])
def test_the_shipped_lists_are_the_shared_copies(folder):
    assert checksum_list(folder).read_bytes() == (SHARED / f"{folder}.sha256").read_bytes()
    assert SERVED == ("chasedb1", "hrf-av", "les-av")


def test_check_passes_the_real_folders(data_dir, capsys):
    assert main(["data", "check", "les-av", "--data", str(LES)]) == 0
    assert capsys.readouterr().out == f"les-av in {LES}: 66 files, every checksum matches\n"
    assert main(["data", "check", "chasedb1", "--data", str(data_dir)]) == 0
    assert "84 files, every checksum matches" in capsys.readouterr().out


def test_check_reports_progress_and_reads_the_default_folder(les_links, monkeypatch):
    (les_links / "README.md").write_text("notes sit beside the data")  # and are no error
    monkeypatch.setenv("QSEGMENT_DATA_LES_AV", str(les_links))
    seen: list[tuple[int, int]] = []
    assert check_dataset("les-av", progress=lambda *p: seen.append(p)) == (les_links, 66)
    total = sum((LES / name).stat().st_size for name in checksums("LES-AV"))
    assert len(seen) == 66 and seen[-1] == (total, total)


@pytest.mark.parametrize(("damage", "message"), [
    ("flip", r"LES-AV/training/mask/34_mask\.gif: checksum differs; .*LES-AV\.sha256 lists "
             r"every file of the published LES-AV"),
    ("delete", r"LES-AV/test/1st_manual/279\.png: missing; "),
    ("extra", r"LES-AV/test/images/999\.png: not in LES-AV\.sha256, so not a file of LES-AV"),
])
def test_check_names_a_changed_missing_or_extra_file(les_links, damage, message, capsys):
    if damage == "flip":
        target = les_links / "training/mask/34_mask.gif"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 1
        target.unlink()
        target.write_bytes(bytes(data))
    elif damage == "delete":
        (les_links / "test/1st_manual/279.png").unlink()
    else:
        (les_links / "test/images/999.png").symlink_to(LES / "test/images/224.png")
    with pytest.raises(DatasetError, match=message):
        check_dataset("les-av", les_links)
    assert main(["data", "check", "les-av", "--data", str(les_links)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qsegment data: error: ") and re.search(message, err)


@pytest.mark.parametrize(("name", "sources"), [
    ("hrf-av", ["Budai A. et al.", "Hemelings R. et al.", "Computerized Medical Imaging",
                "{training,test}/1st_manual/NN_x_AVmanual.png (8-bit: 0 background, 1 artery, "
                "2 vein, 3 uncertain)", "{training,test}/mask/NN_x_mask.tif",
                "training/ holds 01-08", "QSEGMENT_DATA_HRF_AV=DIR"]),
    ("les-av", ["Orlando J. I. et al.", "MICCAI 2018", "figshare",
                "{training,test}/images/N.png", "{training,test}/mask/N_mask.gif",
                "QSEGMENT_DATA_LES_AV=DIR"]),
])
def test_a_set_without_a_direct_download_says_where_to_get_it(name, sources, tmp_path, capsys):
    to = tmp_path / "here"
    assert main(["data", "download", name, "--to", str(to)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qsegment data: error: qsegment cannot download {name.upper()}: ")
    for text in [*sources, f"{name.upper()}.sha256 lists every path",
                 f"Put the folder at {to}, or anywhere",
                 f"qsegment data check {name} --data {to}"]:
        assert text in err, text
    assert not to.exists() and list(tmp_path.iterdir()) == []


def test_options_of_the_other_action_are_refused(tmp_path, capsys):
    assert main(["data", "check", "les-av", "--to", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == ("qsegment data: error: --to goes with `qsegment data "
                                       "download`, not check\n")
    assert main(["data", "download", "chasedb1", "--data", str(tmp_path)]) == 2
    assert "--data goes with `qsegment data check`" in capsys.readouterr().err
