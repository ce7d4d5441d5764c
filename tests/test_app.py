"""The web app (``qsegment app``): its functions on CHASE_DB1, then a real server started
by the CLI on a free loopback port, driven through its HTTP API and by headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs).

The browser test saves a screenshot and the measured timings under
``runs/test-artifacts/`` (or ``$QSEGMENT_TEST_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import http.client
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from PIL import Image

from qsegment.app import (
    MAX_MEGAPIXELS,
    MAX_UPLOAD_MB,
    MAX_WAITING,
    App,
    _Api,
    _Refusal,
    _refused,
    biomarker_rows,
    mask_png,
    probability_png,
    segment_upload,
)
from qsegment.biomarkers import FIELDS
from qsegment.images import ImageError
from qsegment.inference.predict import Segmenter
from qsegment.pretrained import DEFAULT_MODEL
from qsegment.runtimes import auto_runtimes

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("QSEGMENT_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_pretrained()


def _png_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))) > 0


def test_segment_upload_gives_predicts_mask_and_recuts_without_the_network(
        tmp_path: Path, data_dir: Path, segmenter: Segmenter) -> None:
    image = data_dir / "Image_11L.jpg"
    entry = segment_upload(segmenter, image, tmp_path / "one")
    reference = segmenter.predict(np.asarray(Image.open(image).convert("RGB")))
    assert (entry.width, entry.height, entry.scale) == (999, 960, 1.0)
    assert (entry.threshold, entry.threshold_rule) == (reference.threshold, "auto")
    np.testing.assert_array_equal(_png_mask(mask_png(entry, entry.threshold)),
                                  reference.mask)
    prob = np.asarray(Image.open(io.BytesIO(probability_png(entry))))
    np.testing.assert_array_equal(prob, np.round(reference.probability * 255).astype(np.uint8))
    shown = np.asarray(Image.open(entry.file("display_probability.png")))
    assert shown.shape == (960, 999) and np.abs(shown.astype(int) - prob).max() <= 1
    assert Image.open(entry.file("display_photograph.jpg")).size == (999, 960)
    lower = _png_mask(mask_png(entry, 0.3))  # a new cut of the saved map, no network
    assert lower.sum() > reference.mask.sum() and (lower >= reference.mask).all()


def test_a_large_photograph_is_shown_small_and_downloaded_at_its_size(
        tmp_path: Path, data_dir: Path, segmenter: Segmenter) -> None:
    big = tmp_path / "big.png"
    Image.open(data_dir / "Image_12R.jpg").resize((1998, 1920)).save(big)
    entry = segment_upload(segmenter, big, tmp_path / "one")
    assert Image.open(entry.file("display_photograph.jpg")).size == (1024, 984)
    assert Image.open(entry.file("display_probability.png")).size == (1024, 984)
    assert _png_mask(mask_png(entry, 0.5)).shape == (1920, 1998)


def test_biomarker_rows_follow_the_threshold(tmp_path: Path, data_dir: Path,
                                             segmenter: Segmenter) -> None:
    image = data_dir / "Image_11L.jpg"
    entry = segment_upload(segmenter, image, tmp_path / "one")
    rows = {r[0]: r for r in biomarker_rows(entry, segmenter.threshold)}
    assert list(rows) == [f.name for f in FIELDS] + ["disc_row", "disc_col", "disc_diameter"]
    assert rows["vessel_length"][2] == "px" and float(rows["area_density"][1]) > 0.05
    assert 80 < float(rows["disc_diameter"][1]) < 130  # Image_11L's disc: about 100 px
    lower = {r[0]: r for r in biomarker_rows(entry, 0.2)}
    assert float(lower["vessel_area"][1]) > float(rows["vessel_area"][1])


def test_unreadable_and_oversized_uploads_are_named_not_traced(tmp_path: Path,
                                                               segmenter: Segmenter) -> None:
    broken = tmp_path / "upload-7f3a" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(ImageError, match=r"^eye\.jpg: not a readable image") as err:
        segment_upload(segmenter, broken, tmp_path / "out", name="eye.jpg")
    assert "upload-7f3a" not in str(err.value)  # the server's paths stay on the server
    huge = tmp_path / "huge.png"
    Image.new("L", (4000, 2000)).save(huge)  # 8 MP, over a 5 MP limit
    with pytest.raises(ImageError, match=r"huge\.png: 4000x2000 is 8 MP, over the 5 MP limit"):
        segment_upload(segmenter, huge, tmp_path / "out", max_megapixels=5)
    assert not (tmp_path / "out").exists()  # nothing written for a refused file


def test_warm_up_segments_an_example_and_leaves_nothing(tmp_path: Path,
                                                        segmenter: Segmenter) -> None:
    app = App(segmenter, tmp_path / "maps")
    app.warm_up()
    assert (tmp_path / "maps").is_dir()  # it segmented into the app's folder...
    assert list((tmp_path / "maps").rglob("*")) == []  # ...and removed its maps


def test_a_full_queue_answers_busy_without_segmenting(tmp_path: Path, data_dir: Path,
                                                      segmenter: Segmenter) -> None:
    pytest.importorskip("starlette")
    api = _Api(App(segmenter, tmp_path / "maps"))
    api.waiting = MAX_WAITING  # as if that many photographs were queued for the network
    with pytest.raises(_Refusal) as refusal:
        asyncio.run(api._segment((data_dir / "Image_11L.jpg").read_bytes(), "eye.jpg"))
    answer = asyncio.run(_refused(None, refusal.value))  # what the server sends for it
    assert answer.status_code == 503 and b"busy" in answer.body
    assert not (tmp_path / "maps").exists()


# --- a real server ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


class Server:
    """``qsegment app`` in a subprocess whose home, working and temporary folders are
    empty folders of the test, to check that it writes nothing outside its own."""

    def __init__(self, root: Path) -> None:
        self.folders = {k: root / k for k in ("home", "cwd", "tmp")}
        for folder in self.folders.values():
            folder.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "HOME": str(self.folders["home"]),
               "TMPDIR": str(self.folders["tmp"]), "OMP_NUM_THREADS": "2"}
        self.log = root / "server.log"
        self.started = time.perf_counter()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "qsegment", "app", "--port", str(self.port)],
                cwd=self.folders["cwd"], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.ready_s = self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> float:
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            assert self.process.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url, timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"no page within {timeout} s: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _missing(what: str) -> NoReturn:
    """Skip for want of ``what`` on a developer's machine; in CI (``CI`` set), fail: CI
    installs everything, so a missing piece there is a broken set-up, not a reason to skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must install {what} (.ci/run, requirements.txt)")
    pytest.skip(f"needs {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    for module in ("starlette", "uvicorn"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError:
            _missing(f"{module} (qsegment[app])")
    root = tmp_path_factory.mktemp("app")
    server = Server(root)
    server.report = {"page_http_ready_s": round(server.ready_s, 2)}
    yield server
    peak = _rss_peak_mb(server.process.pid)
    server.stop()
    server.report["server_peak_rss_mb"] = round(peak, 1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "app-timings.json").write_text(json.dumps(server.report, indent=2) + "\n")
    print(f"\nqsegment app: {server.report}")
    assert server.process.returncode == 0, server.log.read_text()
    left = {k: sorted(p.name for p in f.rglob("*")) for k, f in server.folders.items()}
    assert left == {"home": [], "cwd": [], "tmp": []}, left  # uploads and maps removed


def _call(server: Server, path: str, data: bytes | None = None, method: str = "GET"
          ) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one request to the server."""
    request = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def _upload(server: Server, path: Path, name: str | None = None) -> tuple[int, dict]:
    status, body, _ = _call(server, f"api/segment?name={name or path.name}",
                            path.read_bytes(), "POST")
    return status, json.loads(body)


@pytest.mark.slow
def test_api_segments_recuts_and_measures(server: Server, data_dir: Path,
                                          segmenter: Segmenter) -> None:
    image = data_dir / "Image_13R.jpg"
    status, info = _upload(server, image)
    assert status == 200, info
    assert (info["name"], info["width"], info["height"], info["scale"]) == (
        "Image_13R.jpg", 999, 960, 1.0)
    assert (info["model"], info["runtime"]) == (DEFAULT_MODEL, auto_runtimes()[0][0])
    reference = segmenter.predict(np.asarray(Image.open(image).convert("RGB")))
    base = f"api/results/{info['key']}/"
    assert info["threshold"] == round(reference.threshold, 4) and info["quality"] == []
    assert (info["threshold_rule"], info["scale_rule"]) == ("auto", "fov")
    status, mask, headers = _call(server, f"{base}mask.png?threshold={reference.threshold}")
    assert status == 200 and 'filename="Image_13R_mask.png"' in headers["content-disposition"]
    np.testing.assert_array_equal(_png_mask(mask), reference.mask)  # = qsegment predict's
    _, lower, _ = _call(server, f"{base}mask.png?threshold=0.3")
    assert _png_mask(lower).sum() > reference.mask.sum()
    _, prob, headers = _call(server, f"{base}probability_full.png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(prob))),
                                  np.round(reference.probability * 255).astype(np.uint8))
    assert 'filename="Image_13R_prob.png"' in headers["content-disposition"]
    _, body, _ = _call(server, f"{base}biomarkers?threshold=0.3")
    rows = {row[0]: row for row in json.loads(body)}
    assert list(rows) == [f.name for f in FIELDS] + ["disc_row", "disc_col", "disc_diameter"]
    assert float(rows["disc_diameter"][1]) > 0 and rows["disc_diameter"][2] == "px"
    for path, status in ((f"{base}mask.png?threshold=1.5", 400),
                         (f"{base}biomarkers?threshold=x", 400),
                         ("api/results/not-a-key/mask.png?threshold=0.5", 404),
                         (f"{base}../../../etc/passwd", 404), ("examples/../app.py", 404)):
        assert _call(server, path)[0] == status, path
    _, _, headers = _call(server, "")
    assert "default-src 'self'" in headers["content-security-policy"]  # nothing from elsewhere
    status, body, _ = _call(server, "api/segment?name=eye.jp%00g", image.read_bytes(), "POST")
    assert status == 200 and json.loads(body)["name"] == "eye.jp\x00g"  # any name is only a name
    _, odd = _upload(server, image, "a%22b%0Ac.jpg")  # a quote and a line break
    _, _, headers = _call(server, f"api/results/{odd['key']}/mask.png?threshold=0.5")
    assert headers["content-disposition"] == 'attachment; filename="a_b_c_mask.png"'
    _, greek = _upload(server, image, "%CE%A9.jpg")  # "Ω.jpg", beyond latin-1
    _, _, headers = _call(server, f"api/results/{greek['key']}/mask.png?threshold=0.5")
    assert headers["content-disposition"] == "attachment; filename*=utf-8''%CE%A9_mask.png"
    status, body, _ = _call(server, "api/examples/Image_11L.jpg", b"", "POST")
    assert status == 200 and json.loads(body)["name"] == "Image_11L.jpg"


@pytest.mark.slow
def test_bad_uploads_get_a_message(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    huge = tmp_path / "huge.png"
    side = int((MAX_MEGAPIXELS + 1) ** 0.5 * 1000)
    Image.new("L", (side, side)).save(huge)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, message in ((broken, "broken.jpg: not a readable image"),
                          (huge, f"huge.png: {side}x{side} is {side * side / 1e6:.0f} MP, "
                                 f"over the {MAX_MEGAPIXELS} MP limit"),
                          (notes, "notes.txt: not a readable image"),
                          (empty, "empty.png: an empty file")):
        status, answer = _upload(server, path)
        assert status == 400 and answer["error"].startswith(message), answer
        assert "qsegment-app-" not in answer["error"]  # no server path in the message
    assert "Traceback" not in server.log.read_text()  # refused, not crashed


@pytest.mark.slow
def test_the_server_refuses_uploads_over_its_size_limit(server: Server) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/api/segment?name=big.jpg")  # the headers, no body:
    connection.putheader("Content-Length", str(MAX_UPLOAD_MB * 2**20 + 1))
    connection.endheaders()  # the server answers before reading any of it
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"] == (
        f"big.jpg: over the {MAX_UPLOAD_MB} MB upload limit")
    connection.close()
    # a chunked body has no length to refuse up front: it is counted as it comes
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (bytes(2**20) for _ in range(MAX_UPLOAD_MB + 1))
    connection.request("POST", "/api/segment?name=stream.jpg", body=chunks,
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and b"stream.jpg: over the" in response.read()
    connection.close()


@pytest.mark.slow
def test_ten_concurrent_uploads_are_all_answered(server: Server, data_dir: Path) -> None:
    images = sorted(data_dir.glob("Image_*.jpg"))[:10]
    _, first = _upload(server, images[0])  # one visitor's whole visit first (it waits for the
    _call(server, f"api/results/{first['key']}/biomarkers?threshold=0.5")  # warm-up): then
    peak_before = _rss_peak_mb(server.process.pid)  # only the ten's own memory is compared
    start = time.perf_counter()
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(lambda p: _upload(server, p), images))
    seconds = time.perf_counter() - start
    assert [(s, a["name"]) for s, a in answers] == [(200, p.name) for p in images]  # none lost
    for _, answer in answers:  # each key leads to its own image's map
        assert _call(server, f"api/results/{answer['key']}/probability.png")[0] == 200
    peak = _rss_peak_mb(server.process.pid)
    server.report |= {"ten_concurrent_uploads_s": round(seconds, 2),
                      "peak_rss_before_ten_uploads_mb": round(peak_before, 1),
                      "peak_rss_after_ten_uploads_mb": round(peak, 1)}
    assert peak - peak_before < 200  # one network at a time: users queue, memory does not grow


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _missing("Debian's chromium and chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        _missing("selenium")

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1700"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _wait(condition, timeout: float = 30.0):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


@pytest.mark.slow
def test_browser_uploads_sees_the_overlay_and_moves_the_threshold(
        server: Server, data_dir: Path, tmp_path: Path) -> None:
    browser = _browser()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    try:
        start = time.perf_counter()
        browser.get(server.url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#examples img"))
        server.report["page_rendered_after_http_ready_s"] = round(time.perf_counter() - start, 2)

        def drawn() -> str | None:  # the threshold the overlay was last drawn at
            return browser.find_element(By.ID, "overlay").get_attribute("data-threshold")

        def summary() -> str:
            return browser.find_element(By.ID, "summary").text

        upload = browser.find_element(By.ID, "upload")
        start = time.perf_counter()
        upload.send_keys(str(data_dir / "Image_11L.jpg"))
        _wait(drawn)
        server.report["upload_to_overlay_s"] = round(time.perf_counter() - start, 2)
        before = summary()
        assert "Image_11L.jpg" in before and "999x960" in before

        slider = browser.find_element(By.ID, "threshold")
        first = browser.find_element(By.ID, "overlay").screenshot_as_png
        slider.send_keys(*[Keys.ARROW_LEFT] * 30)  # 0.30 lower, as a user's keyboard does
        cut = f"{float(slider.get_attribute('value')):.2f}"
        _wait(lambda: drawn() == cut)
        assert browser.find_element(By.ID, "overlay").screenshot_as_png != first  # redrawn
        after = summary()
        percent = [float(s.split(" % ")[0].split()[-1]) for s in (before, after)]
        assert percent[1] > percent[0]  # a lower threshold keeps more vessel pixels
        table = browser.find_element(By.ID, "biomarkers")
        _wait(lambda: table.get_attribute("data-threshold") == cut)
        assert "fractal_dimension" in table.text
        mask_link = browser.find_element(By.ID, "download-mask").get_attribute("href")
        assert mask_link.endswith(f"mask.png?threshold={slider.get_attribute('value')}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "app.png"))

        browser.find_elements(By.CSS_SELECTOR, "#examples button")[1].click()
        assert "Image_13R.jpg" in _wait(lambda: "Image_13R" in summary() and summary())
        choices = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#choice option")]
        assert choices == ["Image_11L.jpg", "Image_13R.jpg"]
        notes = tmp_path / "notes.txt"
        notes.write_text("not a photograph")
        upload.send_keys(str(notes))
        message = browser.find_element(By.ID, "message")
        assert "notes.txt: not a readable image" in _wait(lambda: message.text)
    finally:
        browser.quit()


def test_app_help_needs_no_web_server_import() -> None:
    code = ("import sys; from qsegment.cli import build_parser; build_parser(); "
            "print(sorted({'starlette', 'uvicorn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_busy_port_is_refused_before_anything_starts(capsys: pytest.CaptureFixture) -> None:
    from qsegment.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in capsys.readouterr().err
