"""The web app (``qsegment app``): its functions on CHASE_DB1, then a real server started
by the CLI on a free loopback port, driven by ``gradio_client`` and by headless Chromium
(Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs).

The browser test saves a screenshot and the measured timings under
``runs/test-artifacts/`` (or ``$QSEGMENT_TEST_ARTIFACTS``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qsegment.app import MAX_MEGAPIXELS, App, biomarker_rows, segment_upload, view
from qsegment.biomarkers import FIELDS
from qsegment.engine.predict import Segmenter
from qsegment.images import ImageError
from qsegment.pretrained import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("QSEGMENT_TEST_ARTIFACTS", REPO / "runs" / "test-artifacts"))
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter.from_pretrained()


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def test_segment_upload_gives_predicts_mask_and_recuts_without_the_network(
        tmp_path: Path, data_dir: Path, segmenter: Segmenter) -> None:
    image = data_dir / "Image_11L.jpg"
    entry = segment_upload(segmenter, image, tmp_path / "one")
    reference = segmenter.predict(np.asarray(Image.open(image).convert("RGB")))
    assert (entry.width, entry.height, entry.scale) == (999, 960, 1.0)
    at_card = view(entry, segmenter.threshold, "m", "r")
    np.testing.assert_array_equal(_mask(at_card.downloads[0]), reference.mask)
    prob = np.asarray(Image.open(at_card.downloads[1]))
    np.testing.assert_array_equal(prob, np.round(reference.probability * 255).astype(np.uint8))
    assert at_card.overlay.shape == at_card.photograph.shape == (960, 999, 3)
    lower = view(entry, 0.3)  # a new cut of the saved map: more vessels, the same files
    assert _mask(lower.downloads[0]).sum() > reference.mask.sum()
    assert lower.mask.sum() > at_card.mask.sum()
    assert "threshold 0.30" in lower.summary and "999x960" in lower.summary


def test_biomarker_rows_follow_the_threshold(tmp_path: Path, data_dir: Path,
                                             segmenter: Segmenter) -> None:
    image = data_dir / "Image_11L.jpg"
    entry = segment_upload(segmenter, image, tmp_path / "one")
    rows = {r[0]: r for r in biomarker_rows(entry, segmenter.threshold)}
    assert list(rows) == [f.name for f in FIELDS]
    assert rows["vessel_length"][2] == "px" and float(rows["area_density"][1]) > 0.05
    lower = {r[0]: r for r in biomarker_rows(entry, 0.2)}
    assert float(lower["vessel_area"][1]) > float(rows["vessel_area"][1])


def test_unreadable_and_oversized_uploads_are_named_not_traced(tmp_path: Path,
                                                               segmenter: Segmenter) -> None:
    broken = tmp_path / "upload-7f3a" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(ImageError, match=r"^eye\.jpg: not a readable image"):
        segment_upload(segmenter, broken, tmp_path / "out", name="eye.jpg")
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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("gradio")
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


def _client(server: Server, downloads: Path):
    from gradio_client import Client

    downloads.mkdir(exist_ok=True)
    return Client(server.url, verbose=False, download_files=str(downloads))


@pytest.mark.slow
def test_client_segments_recuts_and_measures(server: Server, tmp_path: Path, data_dir: Path,
                                             segmenter: Segmenter) -> None:
    from gradio_client import handle_file

    client = _client(server, tmp_path / "dl")
    image = data_dir / "Image_13R.jpg"
    choice, pair, overlay, files, summary = client.predict(
        paths=[handle_file(str(image))], cut=segmenter.threshold, api_name="/segment")
    assert choice["value"] == "Image_13R.jpg" and len(pair) == 2 and Path(overlay).is_file()
    reference = segmenter.predict(np.asarray(Image.open(image).convert("RGB")))
    mask_file = next(f for f in files if f.endswith("_mask.png"))
    np.testing.assert_array_equal(_mask(mask_file), reference.mask)  # = qsegment predict's
    assert DEFAULT_MODEL in summary and "tflite-int8" in summary
    *_, files, lower = client.predict(name="Image_13R.jpg", threshold=0.3, api_name="/threshold")
    assert "threshold 0.30" in lower
    assert _mask(next(f for f in files if f.endswith("_mask.png"))).sum() > reference.mask.sum()
    table = client.predict(name="Image_13R.jpg", threshold=0.3, api_name="/biomarkers")
    assert [row[0] for row in table["data"]] == [f.name for f in FIELDS]
    two = [handle_file(str(data_dir / n)) for n in ("Image_14L.jpg", "Image_14R.jpg")]
    choice, *_, summary = client.predict(paths=two, cut=0.5, api_name="/segment")
    assert [c[0] for c in choice["choices"]] == ["Image_13R.jpg", "Image_14L.jpg",
                                                 "Image_14R.jpg"]
    assert choice["value"] == "Image_14L.jpg" and "Image_14L.jpg" in summary


@pytest.mark.slow
def test_bad_uploads_get_a_message(server: Server, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = _client(server, tmp_path / "dl")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    huge = tmp_path / "huge.png"
    side = int((MAX_MEGAPIXELS + 1) ** 0.5 * 1000)
    Image.new("L", (side, side)).save(huge)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    for path, message in ((broken, "broken.jpg: not a readable image"),
                          (huge, f"over the {MAX_MEGAPIXELS} MP limit"),
                          (notes, "Invalid file type")):
        with pytest.raises(AppError, match=message):
            client.predict(paths=[handle_file(str(path))], cut=0.5, api_name="/segment")
    assert "qsegment/app.py" not in server.log.read_text()  # refused, not crashed


@pytest.mark.slow
def test_the_server_refuses_uploads_over_its_size_limit(server: Server, tmp_path: Path) -> None:
    import httpx

    from qsegment.app import MAX_FILE_SIZE

    limit = int(MAX_FILE_SIZE.removesuffix("mb")) * 2**20
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + bytes(limit))
    with big.open("rb") as f:  # straight to the upload route, past any client-side check
        answer = httpx.post(f"{server.url}gradio_api/upload", timeout=60,
                            files={"files": ("big.jpg", f, "image/jpeg")})
    assert answer.status_code == 413 and "maximum allowed size" in answer.text


@pytest.mark.slow
def test_ten_concurrent_uploads_are_all_answered(server: Server, tmp_path: Path,
                                                 data_dir: Path) -> None:
    from gradio_client import handle_file

    images = sorted(data_dir.glob("Image_*.jpg"))[:10]
    clients = [_client(server, tmp_path / f"dl{i}") for i in range(len(images))]
    peak_before = _rss_peak_mb(server.process.pid)
    start = time.perf_counter()
    jobs = [c.submit(paths=[handle_file(str(p))], cut=0.5, api_name="/segment")
            for c, p in zip(clients, images, strict=True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: job.result(timeout=120), jobs))
    seconds = time.perf_counter() - start
    assert [a[0]["value"] for a in answers] == [p.name for p in images]  # none lost or mixed
    assert all(Path(f).is_file() for a in answers for f in a[3])
    peak = _rss_peak_mb(server.process.pid)
    server.report |= {"ten_concurrent_uploads_s": round(seconds, 2),
                      "peak_rss_before_ten_uploads_mb": round(peak_before, 1),
                      "peak_rss_after_ten_uploads_mb": round(peak, 1)}
    assert peak - peak_before < 200  # one network at a time: users queue, memory does not grow


def _browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run)")
        pytest.skip("needs Debian's chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

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
        server: Server, data_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser = _browser()
    try:
        start = time.perf_counter()
        browser.get(server.url)
        _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#biomarkers"))
        server.report["page_rendered_after_http_ready_s"] = round(time.perf_counter() - start, 2)

        def overlay_source() -> str | None:
            images = browser.find_elements(By.CSS_SELECTOR, "#overlay img")
            return images[0].get_attribute("src") if images else None

        def summary() -> str:
            return browser.find_element(By.ID, "summary").text

        upload = browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
        start = time.perf_counter()
        upload.send_keys(str(data_dir / "Image_11L.jpg"))
        first = _wait(overlay_source)
        server.report["upload_to_overlay_s"] = round(time.perf_counter() - start, 2)
        before = _wait(lambda: "threshold" in summary() and summary())
        assert "Image_11L.jpg" in before and "999x960" in before

        slider = browser.find_element(By.CSS_SELECTOR, "#threshold input[type=range]")
        slider.send_keys(*[Keys.ARROW_LEFT] * 30)  # 0.30 lower, as a user's keyboard does
        cut = f"threshold {float(slider.get_attribute('value')):.2f}"  # each key is an event:
        after = _wait(lambda: cut in summary() and summary())  # wait for the last one's
        assert _wait(lambda: overlay_source() != first)  # a new mask was drawn
        percent = [float(s.split(" % ")[0].split()[-1]) for s in (before, after)]
        assert percent[1] > percent[0]  # a lower threshold keeps more vessel pixels
        _wait(lambda: "fractal_dimension" in browser.find_element(By.ID, "biomarkers").text)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "app.png"))

        browser.find_elements(By.CSS_SELECTOR, "#examples button img")[1].click()
        assert "Image_13R.jpg" in _wait(lambda: "Image_13R" in summary() and summary())
    finally:
        browser.quit()


def test_app_help_needs_no_gradio_import() -> None:
    code = ("import sys; from qsegment.cli import build_parser; build_parser(); "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_a_busy_port_is_refused_before_anything_starts(capsys: pytest.CaptureFixture) -> None:
    from qsegment.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in capsys.readouterr().err
