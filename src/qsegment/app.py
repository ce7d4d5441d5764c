"""The web app (``qsegment app``): drop fundus photographs into a page and look at their
vessels, for people who do not use a terminal.

A small Starlette server and one static page (``web/index.html``). Gradio was the first
choice, but importing it takes 2-3.8 s on a 2-core machine, more than the 3 s in which
the page must be up; Starlette and uvicorn import in 0.15 s. The network runs once per
photograph, on the server; the page re-cuts the probability map it was sent, so moving
the threshold redraws the mask at once, without the server.

One :class:`~qsegment.inference.predict.Segmenter` serves every visitor, one photograph at a
time, so memory stays bounded whatever the number of users. Uploads and the maps made
of them live in one temporary folder that is removed when the app stops; nothing is
written elsewhere. :func:`segment_upload`, :func:`mask_png`, :func:`biomarker_rows` and
:class:`App` are plain Python, tested and reusable without a server; :func:`build_app`
puts the HTTP API over them.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import numpy as np
from PIL import Image

from .errors import QsegmentError, UsageError
from .files import atomic_write
from .images import (
    SAMPLE_IMAGES,
    ImageError,
    artery_vein_image,
    encode_gray_png,
    encode_image,
    overlay_classes,
    read_rgb,
    resize_image,
    resize_map,
    unit_to_uint8,
)
from .inference.calibrate import QUALITY

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from .inference.predict import Segmenter

PAGE = Path(__file__).parent / "web" / "index.html"
MAX_MEGAPIXELS = 25  # larger photographs are refused before decoding, with a message
MAX_UPLOAD_MB = 30  # larger files are refused before they are read to the end
MAX_WAITING = 32  # photographs queued for the network; more get "busy, try again"
MAX_RESULTS = 64  # results kept; the oldest one's folder is removed for each new one
DISPLAY_SIDE = 1024  # what the browser is sent; the downloads keep the photograph's size
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Segmented:
    """One segmented photograph: where its files are and how its map was made."""

    name: str
    folder: Path  # this image's own folder in the app's temporary folder
    width: int
    height: int
    scale: float  # the factor the photograph was resized by before the network
    seconds: float  # the network's time, resizing and tiling included
    photograph: Path  # the uploaded file, read again for the biomarkers' field of view
    threshold: float = 0.5  # the cut found for it (or fixed), where the page's slider starts
    threshold_rule: str = "fixed"  # "auto", "card" or "fixed"
    scale_rule: str = "none"  # "vessels", "fov", "none" or "fixed"
    quality: tuple[str, ...] = ()  # warnings (qsegment.inference.calibrate.QUALITY)
    artery_vein: bool = False  # an artery/vein map was made too (av.png, display_av.jpg)

    @property
    def stem(self) -> str:
        """The name's stem for download names: letters, digits, ``-_.()`` and spaces."""
        return re.sub(r"[^\w\-.() ]", "_", Path(self.name).stem) or "image"

    def file(self, what: str) -> Path:
        return self.folder / what


def segment_upload(segmenter: "Segmenter", path: str | Path, folder: str | Path,
                   name: str | None = None, max_megapixels: float = MAX_MEGAPIXELS
                   ) -> Segmented:
    """Segment the photograph at ``path`` into ``folder``: its probability map at full size
    (``probability.npy``, from which the downloads are made) and display-size copies of
    the photograph (JPEG) and of the map (8-bit PNG) for the page; from an artery/vein
    Segmenter also the class map (``av.png``: arteries red, veins blue, at the cut found)
    and its overlay on the photograph for the page (``display_av.jpg``).
    A file that is not a readable image, or is larger than ``max_megapixels``, raises
    :class:`ImageError` naming it by ``name`` (the visitor's file name, not the path)."""
    path, folder = Path(path), Path(folder)
    name = name or path.name
    try:
        rgb = read_rgb(path, max_megapixels=max_megapixels)
    except ImageError as err:
        raise ImageError(str(err).replace(str(path), name)) from err
    height, width = rgb.shape[:2]
    shrink = min(1.0, DISPLAY_SIDE / max(height, width))
    small = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    shown = rgb if rgb.dtype == np.uint8 else unit_to_uint8(rgb)  # 16-bit and float files

    def page_jpeg(file: str, pixels: np.ndarray) -> None:
        atomic_write(folder / file, encode_image(resize_image(pixels, small), "JPEG"))

    # zlib, libjpeg and file writes release the GIL: the photograph's page copy is made
    # while the network runs (on the core its single-threaded steps leave idle), the map's
    # files beside each other once it has run
    with ThreadPoolExecutor(2, thread_name_prefix="page") as pool:
        writes = [pool.submit(page_jpeg, "display_photograph.jpg", shown)]
        start = time.perf_counter()
        prediction = segmenter.predict(rgb, name)
        seconds = time.perf_counter() - start

        def write_npy(tmp: Path) -> None:
            # a file object: np.save would append .npy to a name; a contiguous copy: the
            # map can be a view of a padded output, which np.save writes 9x slower (22 ms
            # for a CHASE map against 2.5 ms with the copy)
            with tmp.open("wb") as f:
                np.save(f, np.ascontiguousarray(prediction.probability), allow_pickle=False)

        writes.append(pool.submit(atomic_write, folder / "probability.npy", write_npy))
        classes = prediction.classes
        if classes is not None:
            writes.append(pool.submit(lambda: page_jpeg("display_av.jpg",
                                                        overlay_classes(shown, classes))))
            writes.append(pool.submit(lambda: atomic_write(
                folder / "av.png", encode_image(artery_vein_image(classes)))))
        atomic_write(folder / "display_probability.png",
                     encode_gray_png(unit_to_uint8(resize_map(prediction.probability, small))))
        for write in writes:
            write.result()
    return Segmented(name, folder, width, height, prediction.scale, seconds, path,
                     prediction.threshold, prediction.threshold_rule, prediction.scale_rule,
                     prediction.quality, artery_vein=classes is not None)


def mask_png(entry: Segmented, threshold: float) -> bytes:
    """The full-size mask of ``entry`` at ``threshold`` (0/255 PNG), cut from the saved
    float map: the mask ``qsegment predict --threshold`` writes."""
    probability = np.load(entry.file("probability.npy"))
    return encode_gray_png(probability >= threshold)


def probability_png(entry: Segmented) -> bytes:
    """The full-size probability map of ``entry`` x 255 (8-bit PNG): ``predict --prob``'s."""
    return encode_gray_png(unit_to_uint8(np.load(entry.file("probability.npy"))))


def biomarker_rows(entry: Segmented, threshold: float) -> list[list[Any]]:
    """The biomarkers of ``entry``'s mask at ``threshold`` inside the field of view of its
    photograph, then the optic disc and, for an artery/vein map, CRAE, CRVE, AVR and
    each class's measures (at the cut found; drawn into ``display_zone.jpg`` once): one
    row per measure (name, value, unit, meaning), in pixels."""
    from .biomarkers import FIELDS
    from .biomarkers.disc import locate_disc
    from .biomarkers.equivalents import DISC_FIELDS
    from .biomarkers.equivalents import FIELDS as AV_FIELDS
    from .biomarkers.report import BiomarkerRow, measure_photograph

    probability = np.load(entry.file("probability.npy"))
    rgb = read_rgb(entry.photograph)
    if rgb.dtype != np.uint8:
        rgb = unit_to_uint8(rgb)
    analysis = measure_photograph(rgb, probability >= threshold, probability=probability)
    row = BiomarkerRow.measured(entry.photograph, entry.name, "photograph", analysis)
    if entry.artery_vein:
        row.values.update(_artery_vein(entry, rgb))
    else:
        row.add_disc(locate_disc(rgb, vessels=probability >= threshold), analysis.pixel_size)
    rows = []
    for field in (*FIELDS, *(AV_FIELDS if entry.artery_vein else
                             [f for f in AV_FIELDS if f.name in DISC_FIELDS])):
        value = row.values.get(field.name)
        shown = "" if value is None or value != value else f"{value:.4g}"  # NaN: not measurable
        rows.append([field.name, shown, field.unit.replace("L", "px"), field.doc])
    return rows


def _artery_vein(entry: Segmented, rgb: np.ndarray) -> dict[str, float]:
    """The artery/vein measures of ``entry``'s class map, in pixels, measured once (the
    map does not change with the slider: ``artery_vein.json``) and drawn into
    ``display_zone.jpg``: the class overlay with the disc (yellow), zone B (cyan) and the
    segments CRAE and CRVE combine (white)."""
    from PIL import ImageDraw

    from .biomarkers.disc import locate_disc
    from .biomarkers.equivalents import measure_artery_vein
    from .biomarkers.report import read_input
    from .datasets import fov_mask

    measured = entry.file("artery_vein.json")
    if measured.is_file():
        return json.loads(measured.read_text())
    classes = read_input(entry.file("av.png"))[1]
    fov = fov_mask(rgb)
    analysis = measure_artery_vein(classes, locate_disc(rgb, fov, classes > 0), fov)
    with Image.open(entry.file("display_av.jpg")) as opened:
        shown = opened.convert("RGB")
    shrink = shown.width / entry.width
    draw = ImageDraw.Draw(shown)
    disc = analysis.disc
    if disc.found:
        for radius, colour in ((0.5, "yellow"), (1.0, "cyan"), (1.5, "cyan")):
            r = radius * disc.diameter * shrink
            x, y = disc.col * shrink, disc.row * shrink
            draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
    for vessel in analysis.used:
        draw.line([(c * shrink, r * shrink) for r, c in vessel.coords], fill="white", width=3)
    atomic_write(entry.file("display_zone.jpg"), encode_image(np.asarray(shown), "JPEG"))
    atomic_write(measured, json.dumps(analysis.values))  # the zone view before the values
    return analysis.values


class App:
    """The server's state: one segmenter, one temporary folder, the results by key."""

    def __init__(self, segmenter: "Segmenter", workdir: str | Path,
                 max_megapixels: float = MAX_MEGAPIXELS, max_results: int = MAX_RESULTS
                 ) -> None:
        self.segmenter, self.workdir = segmenter, Path(workdir)
        self.max_megapixels, self.max_results = max_megapixels, max_results
        self.results: OrderedDict[str, Segmented] = OrderedDict()
        self._lock = threading.Lock()  # guards results
        self._network = threading.Lock()  # one interpreter: the warm-up and visitors take turns

    def segment(self, data: bytes, name: str) -> tuple[str, Segmented]:
        """Segment an uploaded file's bytes; returns the result's key (a random token, so
        that visitors cannot see each other's results) and the result."""
        key = secrets.token_urlsafe(12)
        folder = self.workdir / key
        suffix = Path(name).suffix.lower()[:8]  # Pillow reads the format from the bytes
        upload = folder / ("upload" + (suffix if suffix[1:].isalnum() else ""))
        atomic_write(upload, data)
        try:
            with self._network:
                entry = segment_upload(self.segmenter, upload, folder, name,
                                       self.max_megapixels)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        with self._lock:
            self.results[key] = entry
            while len(self.results) > self.max_results:
                _, old = self.results.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)
        return key, entry

    def result(self, key: str) -> Segmented | None:
        with self._lock:
            return self.results.get(key)

    def describe(self, key: str, entry: Segmented) -> dict[str, Any]:
        """What the page shows of a result besides its maps."""
        return {"key": key, "name": entry.name, "width": entry.width, "height": entry.height,
                "scale": round(entry.scale, 4), "scale_rule": entry.scale_rule,
                "threshold": round(entry.threshold, 4), "threshold_rule": entry.threshold_rule,
                "quality": [QUALITY[flag] for flag in entry.quality],
                "network_ms": round(entry.seconds * 1000), "artery_vein": entry.artery_vein,
                "model": self.segmenter.name, "runtime": self.segmenter.runtime}

    def warm_up(self) -> None:
        """Segment and measure a shipped example once, so that the first visitor does not
        wait for the interpreter's and the biomarkers' first-call set-up."""
        sample = next(iter(sorted(SAMPLE_IMAGES.glob("*.jpg"))), None)
        if sample is None:
            return
        folder = self.workdir / "warm-up"
        try:
            with self._network:
                entry = segment_upload(self.segmenter, sample, folder)
            biomarker_rows(entry, self.segmenter.threshold)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


class _Refusal(Exception):
    """A request the app answers with ``{"error": message}`` and ``status`` (4xx, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _threshold(request: "Request") -> float:
    try:
        threshold = float(request.query_params.get("threshold", "nan"))
    except ValueError:
        threshold = float("nan")
    if not 0 <= threshold <= 1:  # NaN too
        raise _Refusal(400, "threshold must be a number from 0 to 1")
    return threshold


async def _read_body(request: "Request", limit: int) -> bytes | None:
    """The request's body, or None as soon as it is known to be over ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _refused(request: "Request", refusal: Exception) -> "Response":
    """The answer to a :class:`_Refusal` (Starlette's handlers take any exception; this
    one is registered for that class only)."""
    from starlette.responses import JSONResponse

    assert isinstance(refusal, _Refusal)
    return JSONResponse({"error": str(refusal)}, status_code=refusal.status)


def _attachment(data: bytes, name: str) -> "Response":
    """A PNG to download as ``name`` (RFC 6266: a name beyond ASCII goes percent-encoded)."""
    from starlette.responses import Response

    disposition = (f'attachment; filename="{name}"' if name.isascii()
                   else f"attachment; filename*=utf-8''{quote(name)}")
    return Response(data, 200, {"Content-Disposition": disposition}, "image/png")


class _Api:
    """The HTTP handlers around an :class:`App`; a refused request raises
    :class:`_Refusal`, which the page shows."""

    PAGE_FILES: ClassVar[dict[str, str]] = {"photograph.jpg": "display_photograph.jpg",
                                            "probability.png": "display_probability.png",
                                            "artery_vein.jpg": "display_av.jpg",
                                            "zone.jpg": "display_zone.jpg"}

    # the page may load nothing from elsewhere, and tells nobody where it came from
    PAGE_HEADERS: ClassVar[dict[str, str]] = {
        "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                   "style-src 'unsafe-inline'; img-src 'self'",
        "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

    def __init__(self, app: App) -> None:
        self.app = app
        self.samples = {p.name: p for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))}
        self.waiting = 0  # requests queued for the network (one event loop: no lock needed)
        # one thread each for the network and the biomarkers: requests wait their turn in
        # order, and memory stays that of one of each (glibc gives each thread its heap)
        self.network = ThreadPoolExecutor(1, thread_name_prefix="network")
        self.measuring = ThreadPoolExecutor(1, thread_name_prefix="biomarkers")
        config = {"model": app.segmenter.name, "runtime": app.segmenter.runtime,
                  "artery_vein": app.segmenter.artery_vein,
                  "threshold": round(app.segmenter.threshold, 2),
                  "max_upload_mb": MAX_UPLOAD_MB, "max_megapixels": app.max_megapixels,
                  "examples": list(self.samples)}
        self.html = PAGE.read_text().replace(  # "<" escaped: no name can end the script
            "{{config}}", json.dumps(config).replace("<", "\\u003c"))

    async def page(self, request: "Request") -> "Response":
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.html, headers=self.PAGE_HEADERS)

    async def _segment(self, data: bytes, name: str) -> "Response":
        from starlette.responses import JSONResponse

        if self.waiting >= MAX_WAITING:
            raise _Refusal(503, "the server is busy: try again in a minute")
        self.waiting += 1
        try:
            key, entry = await asyncio.get_running_loop().run_in_executor(
                self.network, self.app.segment, data, name)
        except QsegmentError as err:  # the visitor's file, not the server: no traceback
            raise _Refusal(400, str(err)) from err
        finally:
            self.waiting -= 1
        return JSONResponse(self.app.describe(key, entry))

    async def upload(self, request: "Request") -> "Response":
        name = Path(request.query_params.get("name", "")).name[:200] or "image"
        data = await _read_body(request, MAX_UPLOAD_MB * 2**20)
        if data is None:
            raise _Refusal(413, f"{name}: over the {MAX_UPLOAD_MB} MB upload limit")
        if not data:
            raise _Refusal(400, f"{name}: an empty file")
        return await self._segment(data, name)

    async def example(self, request: "Request") -> "Response":
        from starlette.responses import FileResponse

        path = self.samples.get(request.path_params["name"])
        if path is None:
            raise _Refusal(404, "no such example")
        if request.method == "POST":  # segment it; GET: its picture
            return await self._segment(path.read_bytes(), path.name)
        return FileResponse(path)

    def _entry(self, request: "Request") -> Segmented:
        entry = self.app.result(request.path_params["key"])
        if entry is None:
            raise _Refusal(404, "this result has expired: upload the photograph again")
        return entry

    async def mask(self, request: "Request") -> "Response":
        """The full-size mask at ``?threshold=``, as a PNG to download."""
        entry, threshold = self._entry(request), _threshold(request)
        return _attachment(await asyncio.to_thread(mask_png, entry, threshold),
                           f"{entry.stem}_mask.png")

    async def probability(self, request: "Request") -> "Response":
        """The full-size probability map, as a PNG to download."""
        entry = self._entry(request)
        return _attachment(await asyncio.to_thread(probability_png, entry),
                           f"{entry.stem}_prob.png")

    async def artery_vein(self, request: "Request") -> "Response":
        """The full-size artery/vein map (``predict --av``'s NAME_av.png), to download."""
        entry = self._entry(request)
        if not entry.artery_vein:
            raise _Refusal(404, "no artery/vein map: start the app with --av and an "
                                "artery/vein model")
        return _attachment(entry.file("av.png").read_bytes(), f"{entry.stem}_av.png")

    async def biomarkers(self, request: "Request") -> "Response":
        """The biomarkers table at ``?threshold=``, as JSON rows."""
        from starlette.responses import JSONResponse

        entry, threshold = self._entry(request), _threshold(request)
        rows = await asyncio.get_running_loop().run_in_executor(
            self.measuring, biomarker_rows, entry, threshold)
        return JSONResponse(rows)

    async def page_file(self, request: "Request") -> "Response":
        """The display-size photograph and map that the page draws."""
        from starlette.responses import FileResponse

        entry, what = self._entry(request), request.path_params["what"]
        if what not in self.PAGE_FILES or not entry.file(self.PAGE_FILES[what]).is_file():
            raise _Refusal(404, "not found")
        return FileResponse(entry.file(self.PAGE_FILES[what]))


def build_app(app: App) -> "Starlette":
    """The page and its JSON API around ``app``:

    - ``POST /api/segment?name=eye.jpg`` (the file as body) and ``POST /api/examples/NAME``
      segment a photograph and answer its key and facts;
    - ``GET /api/results/KEY/{photograph.jpg,probability.png,artery_vein.jpg}``: what the
      page draws (the last from an artery/vein model);
    - ``GET /api/results/KEY/mask.png?threshold=T``, ``.../probability_full.png``,
      ``.../av.png``: the downloads, at the photograph's size;
    - ``GET /api/results/KEY/biomarkers?threshold=T``: the biomarkers table."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    api = _Api(app)
    return Starlette(exception_handlers={_Refusal: _refused}, routes=[
        Route("/", api.page),
        Route("/api/segment", api.upload, methods=["POST"]),
        Route("/examples/{name}", api.example),
        Route("/api/examples/{name}", api.example, methods=["POST"]),
        Route("/api/results/{key}/mask.png", api.mask),
        Route("/api/results/{key}/probability_full.png", api.probability),
        Route("/api/results/{key}/av.png", api.artery_vein),
        Route("/api/results/{key}/biomarkers", api.biomarkers),
        Route("/api/results/{key}/{what}", api.page_file),
    ])


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is not free before anything starts."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(f"cannot listen on {host}:{port} ({err.strerror}); choose "
                             "another --port, or stop what uses it") from err


def serve(model: str | Path | None = None, runtime: str | None = None, host: str = LOOPBACK,
          port: int = 7860, max_megapixels: float = MAX_MEGAPIXELS,
          artery_vein: bool = False) -> None:
    """Run the app until interrupted, on ``host``:``port`` (loopback unless told); every
    file it makes goes to a temporary folder removed at exit. ``artery_vein`` shows each
    photograph's arteries and veins too (an artery/vein model)."""
    import uvicorn

    from .inference.predict import Segmenter
    from .runtimes import DEFAULT_RUNTIME

    _check_port(host, port)
    workdir = Path(tempfile.mkdtemp(prefix="qsegment-app-"))
    # uvicorn re-raises the signal that stopped it: this handler turns it into an exit
    # that runs the clean-up below (the default one would end the process before it)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.environ.setdefault("MPLCONFIGDIR", str(workdir / "matplotlib"))  # the biomarkers'
    os.environ.setdefault("MPLBACKEND", "agg")
    try:
        segmenter = Segmenter.from_pretrained(model,
                                              runtime=runtime or DEFAULT_RUNTIME,
                                              artery_vein=artery_vein)
        app = App(segmenter, workdir / "results", max_megapixels)
        server = uvicorn.Server(uvicorn.Config(build_app(app), host=host, port=port,
                                               log_level="warning", access_log=False))

        def warm_up_once_listening() -> None:  # after the page is up: it must not delay it
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            print(f"qsegment app: http://{host}:{port} (model {segmenter.name} on "
                  f"{segmenter.runtime}; Ctrl-C stops it)", flush=True)
            app.warm_up()

        threading.Thread(target=warm_up_once_listening, daemon=True).start()
        server.run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not cut the clean-up
        shutil.rmtree(workdir, ignore_errors=True)
