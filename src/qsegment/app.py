"""The web app (``qsegment app``): drop fundus photographs into a page and look at their
vessels, for people who do not use a terminal.

One :class:`~qsegment.engine.predict.Segmenter` serves every visitor, one image at a
time (Gradio's queue), so memory stays bounded whatever the number of users. Uploads
and the maps made of them live in one temporary folder that is removed when the app
stops; nothing is written elsewhere. The network runs once per image: moving the
threshold re-cuts the saved probability map.

The functions below :func:`build_app` are plain Python (no Gradio) so that they can be
tested and reused; :func:`build_app` wires them to the page and :func:`serve` runs it.
"""

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import QsegmentError, UsageError
from .files import atomic_write
from .images import ImageError, overlay, read_rgb, resize_image, resize_map

if TYPE_CHECKING:
    import gradio as gr

    from .engine.predict import Segmenter

SAMPLES = Path(__file__).parent / "sample_images"  # two CHASE_DB1 test images (CC BY 4.0)
MAX_MEGAPIXELS = 25  # larger photographs are refused before decoding, with a message
MAX_FILE_SIZE = "30mb"  # Gradio refuses larger uploads before they reach the app
MAX_IMAGES = 8  # per upload: one visitor cannot hold the queue for long
DISPLAY_SIDE = 1024  # what the browser is sent; the downloads keep the photograph's size
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Segmented:
    """One segmented photograph: where its files are and how its map was made."""

    name: str
    folder: str  # this image's own folder in the app's temporary folder
    width: int
    height: int
    scale: float  # the factor the photograph was resized by before the network
    seconds: float  # the network's time, resizing and tiling included
    photograph: str = ""  # the uploaded file, read again for the biomarkers' FOV

    def file(self, what: str) -> Path:
        return Path(self.folder) / what


def _stem(name: str) -> str:
    return Path(name).stem or "image"


def _save_png(path: Path, array: np.ndarray) -> Path:
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would append .npy to a name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def segment_upload(segmenter: "Segmenter", path: str | Path, folder: str | Path,
                   name: str | None = None, max_megapixels: float = MAX_MEGAPIXELS
                   ) -> Segmented:
    """Segment the photograph at ``path`` into ``folder``: its probability map at full size
    (``NAME_prob.png`` to download, ``probability.npy`` to re-cut at other thresholds) and
    display-size copies of the photograph and the map. A file that is not a readable
    image, or is larger than ``max_megapixels``, raises :class:`ImageError` naming it by
    ``name`` (the visitor's file name, not the temporary path)."""
    path, folder = Path(path), Path(folder)
    name = name or path.name
    try:
        rgb = read_rgb(path, max_megapixels=max_megapixels)
    except ImageError as err:
        raise ImageError(str(err).replace(str(path), name, 1)) from err
    start = time.perf_counter()
    prediction = segmenter.predict(rgb)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    height, width = prediction.probability.shape
    shrink = min(1.0, DISPLAY_SIDE / max(height, width))
    small = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    _save_npy(folder / "probability.npy", prediction.probability)  # masks equal predict's
    _save_npy(folder / "display_probability.npy", resize_map(prediction.probability, small))
    if rgb.dtype != np.uint8:  # 16-bit and float files are shown as 8-bit
        rgb = np.round(rgb * 255).astype(np.uint8)
    _save_npy(folder / "display_photograph.npy", resize_image(rgb, small))
    _save_png(folder / f"{_stem(name)}_prob.png",
              np.round(prediction.probability * 255).astype(np.uint8))
    return Segmented(name, str(folder), width, height, prediction.scale, seconds, str(path))


@dataclass(frozen=True)
class View:
    """What the page shows of a segmented photograph at one threshold."""

    photograph: np.ndarray  # display size, RGB
    mask: np.ndarray  # display size, 0/255
    overlay: np.ndarray  # display size, vessels tinted green
    downloads: list[str]  # NAME_mask.png (this threshold) and NAME_prob.png, full size
    summary: str  # Markdown: model, runtime, network time, scale, vessel fraction


def view(entry: Segmented, threshold: float, model: str = "", runtime: str = "") -> View:
    """The photograph, mask and overlay of ``entry`` at ``threshold`` from its saved maps,
    without the network, and the full-size mask PNG written for download."""
    photograph = np.load(entry.file("display_photograph.npy"))
    mask = np.load(entry.file("display_probability.npy")) >= threshold
    full = np.load(entry.file("probability.npy")) >= threshold
    mask_png = _save_png(entry.file(f"{_stem(entry.name)}_mask.png"), full.astype(np.uint8) * 255)
    summary = (f"**{entry.name}**: {entry.width}x{entry.height} px · model `{model}` on "
               f"`{runtime}` · network {entry.seconds * 1000:.0f} ms · scale {entry.scale:.2f} "
               f"(field of view resized to the training images') · threshold {threshold:.2f} · "
               f"vessels {full.mean() * 100:.1f} % of the pixels")
    return View(photograph, mask.astype(np.uint8) * 255, overlay(photograph, mask),
                [str(mask_png), str(entry.file(f"{_stem(entry.name)}_prob.png"))], summary)


def biomarker_rows(entry: Segmented, threshold: float) -> list[list[Any]]:
    """The biomarkers of ``entry``'s mask at ``threshold`` inside the field of view of its
    photograph: one row per measure (name, value, unit, meaning), in pixels."""
    from .biomarkers import FIELDS
    from .biomarkers.report import measure_photograph

    full = np.load(entry.file("probability.npy")) >= threshold
    analysis = measure_photograph(read_rgb(entry.photograph), full)
    units = analysis.scale.units()
    rows = []
    for field in FIELDS:
        value = analysis.values.get(field.name)
        shown = "" if value is None or value != value else f"{value:.4g}"  # NaN: not measurable
        rows.append([field.name, shown, units.get(field.name, ""), field.doc])
    return rows


def _unique(name: str, taken: dict[str, Any]) -> str:
    stem, suffix, n = Path(name).stem, Path(name).suffix, 2
    candidate = name
    while candidate in taken:
        candidate, n = f"{stem} ({n}){suffix}", n + 1
    return candidate


class App:
    """The page's handlers around one segmenter and one temporary folder."""

    def __init__(self, segmenter: "Segmenter", workdir: str | Path,
                 max_megapixels: float = MAX_MEGAPIXELS, max_images: int = MAX_IMAGES) -> None:
        self.segmenter, self.workdir = segmenter, Path(workdir)
        self.max_megapixels, self.max_images = max_megapixels, max_images
        self._count = 0
        self._lock = threading.Lock()
        self._network = threading.Lock()  # one interpreter: the warm-up and visitors take turns

    def _folder(self) -> Path:
        with self._lock:
            self._count += 1
            return self.workdir / f"result-{self._count:06d}"

    def segment(self, paths: list[str], state: dict[str, dict]
                ) -> tuple[dict[str, dict], str | None]:
        """Segment uploaded files into ``state`` (name -> :class:`Segmented` as a dict);
        returns the new state and the name to show. The files that failed are named in
        warnings (by their file names)."""
        import gradio as gr

        state, problems, first = dict(state or {}), [], None
        if len(paths) > self.max_images:
            problems.append(f"{len(paths)} files: only the first {self.max_images} are "
                            "segmented; upload the others next")
        for path in paths[:self.max_images]:
            name = _unique(Path(path).name, state)
            try:
                with self._network:
                    entry = segment_upload(self.segmenter, path, self._folder(), name,
                                           self.max_megapixels)
            except QsegmentError as err:
                problems.append(str(err))
                continue
            state[name] = asdict(entry)
            first = first or name
        if first is None:
            raise gr.Error("Nothing segmented. " + " ".join(problems), title="Not an image",
                           print_exception=False)  # the visitor's problem, not the server's
        for problem in problems:
            gr.Warning(problem)
        return state, first

    def show(self, state: dict[str, dict], name: str | None, threshold: float) -> tuple:
        """The slider, overlay, downloads and summary of image ``name`` of ``state``."""
        if not state or name not in state:
            return None, None, None, ""
        entry = Segmented(**state[name])
        shown = view(entry, threshold, self.segmenter.name, self.segmenter.runtime)
        return (shown.photograph, shown.mask), shown.overlay, shown.downloads, shown.summary

    def biomarkers(self, state: dict[str, dict], name: str | None, threshold: float
                   ) -> list[list[Any]]:
        if not state or name not in state:
            return []
        return biomarker_rows(Segmented(**state[name]), threshold)

    def warm_up(self) -> None:
        """Segment and measure a shipped example once, so that the first visitor does not
        wait for the interpreter's and the biomarkers' first-call set-up."""
        sample = next(iter(sorted(SAMPLES.glob("*.jpg"))), None)
        if sample is None:
            return
        folder = self.workdir / "warm-up"
        with self._network:
            entry = segment_upload(self.segmenter, sample, folder)
        biomarker_rows(entry, self.segmenter.threshold)
        shutil.rmtree(folder, ignore_errors=True)


def _intro(segmenter: "Segmenter", max_megapixels: float) -> str:
    return (f"# Q-Segment: retinal vessels\nDrop one or several fundus photographs (JPEG, "
            f"PNG, TIFF; up to {max_megapixels:g} MP each), or pick an example. The vessel map "
            f"is made by **{segmenter.name}** on the **{segmenter.runtime}** runtime, on this "
            "computer. Move the threshold to re-cut the map without re-running the network. "
            "Nothing is stored: uploads and maps are deleted when the app stops. "
            "*A research tool, not a medical device.*")


def build_app(app: App) -> "gr.Blocks":
    """The page around ``app``'s handlers: upload or examples, before/after slider,
    overlay, threshold, downloads, biomarkers."""
    import gradio as gr

    segmenter, max_megapixels = app.segmenter, app.max_megapixels
    samples = sorted(SAMPLES.glob("*.jpg"))
    with gr.Blocks(title="Q-Segment", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown(_intro(segmenter, max_megapixels))
        state = gr.State({})
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Fundus photographs", file_count="multiple",
                                file_types=["image"], type="filepath", elem_id="upload")
                examples = gr.Gallery([(str(p), p.name) for p in samples], columns=2,
                                      label="Or pick an example (CHASE_DB1, CC BY 4.0)",
                                      allow_preview=False, height=180, elem_id="examples")
                threshold = gr.Slider(0.05, 0.95, value=round(segmenter.threshold, 2),
                                      step=0.01, label="Threshold (the model card's chosen "
                                      "on training images)", elem_id="threshold")
                choice = gr.Dropdown([], label="Image shown", elem_id="choice")
                summary = gr.Markdown(elem_id="summary")
                downloads = gr.File(label="Mask (this threshold) and probability, PNG",
                                    file_count="multiple", interactive=False,
                                    elem_id="downloads")
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Photograph | vessel mask", format="jpeg",
                                        interactive=False, height=440, elem_id="slider")
                tinted = gr.Image(label="Overlay", format="jpeg", interactive=False,
                                  height=440, elem_id="overlay")
        table = gr.Dataframe(headers=["biomarker", "value", "unit", "meaning"],
                             label="Biomarkers inside the field of view (docs/BIOMARKERS.md)",
                             interactive=False, elem_id="biomarkers")
        gr.Markdown("Examples: CHASE_DB1, Kingston University, London (CC BY 4.0; Fraz et "
                    "al. 2012, Owen et al. 2009).")

        shown = [slider, tinted, downloads, summary]
        # "minimal" progress: the full one animates every output and, on a 2-core machine
        # serving its own browser, slows the result it waits for by a quarter
        network = {"concurrency_id": "network", "concurrency_limit": 1,
                   "show_progress": "minimal"}

        def segment(paths: list[str] | None, current: dict, cut: float) -> tuple:
            new, name = app.segment(list(paths or []), current)
            return new, gr.Dropdown(choices=list(new), value=name), *app.show(new, name, cut)

        def example(current: dict, cut: float, selected: gr.SelectData) -> tuple:
            return segment([str(samples[selected.index])], current, cut)

        for event, handler, inputs, api in (
                (files.upload, segment, [files, state, threshold], "segment"),
                (examples.select, example, [state, threshold], False)):  # a click, no API
            event(handler, inputs, [state, choice, *shown], api_name=api, **network).then(
                app.biomarkers, [state, choice, threshold], table, api_name=False)
        choice.input(app.show, [state, choice, threshold], shown, api_name=False).then(
            app.biomarkers, [state, choice, threshold], table, api_name=False)
        threshold.change(app.show, [state, choice, threshold], shown, api_name="threshold",
                         trigger_mode="always_last", show_progress="hidden")
        threshold.release(app.biomarkers, [state, choice, threshold], table,
                          api_name="biomarkers", concurrency_id="biomarkers")
    page.queue(default_concurrency_limit=2, max_size=64)
    return page


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is not free before anything starts (Gradio would say less)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a TCP port (1-65535)")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(f"cannot listen on {host}:{port} ({err.strerror}); choose "
                             "another --port, or stop what uses it") from err


def serve(model: str | Path | None = None, runtime: str | None = None, host: str = LOOPBACK,
          port: int = 7860, share: bool = False, max_megapixels: float = MAX_MEGAPIXELS
          ) -> None:
    """Run the app until interrupted: on ``host``:``port`` (loopback unless told), a share
    link only if ``share``; every file it makes goes to a temporary folder removed at exit."""
    from .pretrained import DEFAULT_MODEL
    from .runtimes import DEFAULT_RUNTIME

    _check_port(host, port)
    workdir = Path(tempfile.mkdtemp(prefix="qsegment-app-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` too removes the folder
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "uploads")  # read when Gradio is imported
    os.environ.setdefault("MPLCONFIGDIR", str(workdir / "matplotlib"))  # Gradio imports it
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio reads the matplotlib backend around every event; named, it needs no pyplot
    os.environ.setdefault("MPLBACKEND", "agg")
    try:
        import gradio as gr

        from .engine.predict import Segmenter

        segmenter = Segmenter.from_pretrained(model or DEFAULT_MODEL,
                                              runtime=runtime or DEFAULT_RUNTIME)
        app = App(segmenter, workdir / "maps", max_megapixels)
        page = build_app(app)
        # system fonts: the default theme fetches Google's, which an offline clinic lacks
        theme = gr.themes.Base(font=["system-ui", "sans-serif"], font_mono=["monospace"])
        page.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE,
                    ssr_mode=False, show_error=False, quiet=False, theme=theme,
                    prevent_thread_lock=True)
        app.warm_up()  # after the page is up: it must not delay it
        page.block_thread()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second kill must not cut the clean-up
        shutil.rmtree(workdir, ignore_errors=True)
