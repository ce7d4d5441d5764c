"""Biomarkers of files, and how well the model's agree with the human annotators'.

:func:`analyze` measures masks or photographs (segmented first) and writes one row per
file to ``biomarkers.csv`` and ``biomarkers.json``, each image's segments to
``NAME_segments.csv`` and a figure ``NAME_biomarkers.png``; a file that cannot be read
or measured gets an error row and the others go on. :func:`agreement` measures
CHASE_DB1's validation images from the first observer's labels, the second
observer's, the default (int8) model's and the float model's, and tabulates how close
each source comes to the first observer (:func:`agreement_markdown` prints it).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import stats

from ..errors import QsegmentError, UsageError
from ..files import atomic_write
from .disc import Disc, locate_disc
from .equivalents import FIELD_NAMES as AV_FIELD_NAMES
from .equivalents import FIELDS as AV_FIELDS
from .equivalents import ArteryVeinAnalysis, disc_reasons, measure_artery_vein
from .measures import (
    BRIDGE_LOW,
    FIELD_NAMES,
    FIELDS,
    PixelSize,
    VesselAnalysis,
    as_binary,
    bridge_gaps,
    measure,
)

if TYPE_CHECKING:
    from ..inference.predict import Prediction, Segmenter

log = logging.getLogger(__name__)

SEGMENT_COLUMNS = ("kind", "length", "chord", "arc_chord", "curvature", "calibre",
                   "length_unit", "y0_px", "x0_px", "y1_px", "x1_px")
AGREEMENT_FIELDS = ("area_density", "length_density", "fractal_dimension", "tortuosity",
                    "tortuosity_median", "curvature", "calibre_mean", "calibre_median",
                    "calibre_widest", "segments", "branch_points", "crossings", "end_points",
                    "branching_angle")
SOURCES = ("observer1", "observer2", "model", "model_float")
FOV_FROM_PHOTO = "photograph (red channel > 20, qsegment.datasets.fov_mask)"
FOV_WHOLE_FRAME = "whole frame (a mask alone carries no FOV)"
SCHEMA_VERSION = 2  # biomarkers.json's and agreement.json's; raised when their shape changes

Progress = Callable[[int, int, str], None]


@dataclass
class BiomarkerRow:
    """One measured file: what was measured (``kind``: photograph or mask), from what
    (model, runtime, threshold, bridge, FOV), and its biomarkers, ``values`` (one per
    :data:`~.measures.FIELD_NAMES`, in ``length_unit``; NaN where undefined, with the
    reason in ``reasons``). A file that could not be measured has ``status="error"``,
    the reason in ``error`` and no values."""

    name: str
    input: str
    kind: str | None = None
    status: str = "ok"
    error: str = ""
    model: str | None = None
    runtime: str | None = None
    threshold: float | None = None
    bridge: float | None = None
    fov_source: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    length_unit: str | None = None
    mm_per_pixel: float | None = None
    scale_source: str | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)  # each value's unit in words
    figure: str | None = None
    disc_source: str | None = None  # where the optic disc came from (artery/vein maps)

    @classmethod
    def measured(cls, path: Path, name: str, kind: str, analysis: VesselAnalysis,
                 **source: Any) -> BiomarkerRow:
        """The row of ``analysis`` (``source``: model, runtime, threshold, bridge,
        fov_source), with the unit of its values and where the pixel size came from."""
        size = analysis.pixel_size
        return cls(name, str(path), kind, **source, values=dict(analysis.values),
                   length_unit=size.unit, mm_per_pixel=size.mm_per_pixel,
                   scale_source=size.source, reasons=analysis.reasons,
                   warnings=analysis.warnings, units=size.units())

    def add_artery_vein(self, analysis: ArteryVeinAnalysis) -> None:
        """The artery/vein measures (:data:`~.equivalents.FIELDS`) added to the row."""
        self._add(analysis.values, analysis.reasons, analysis.pixel_size, analysis.disc)

    def add_disc(self, disc: Disc, size: PixelSize) -> None:
        """The optic disc's fields (:data:`~.equivalents.DISC_FIELDS`) added to the row."""
        values = {"disc_row": disc.row, "disc_col": disc.col,
                  "disc_diameter": size.convert(disc.diameter, "L")}
        self._add(values, disc_reasons(disc), size, disc)

    def _add(self, values: dict[str, float], reasons: dict[str, str], size: PixelSize,
             disc: Disc) -> None:
        self.values.update(values)
        self.reasons.update(reasons)
        self.units.update({f.name: f.unit.replace("L", size.unit) for f in AV_FIELDS
                           if f.name in values})
        self.disc_source = disc.source

    def to_dict(self) -> dict[str, Any]:
        """The flat row of the tables: each value a column of its own (None where the
        file was not measured), in :data:`ROW_COLUMNS` order, then ``units``."""
        values = {name: self.values.get(name) for name in (*FIELD_NAMES, *AV_FIELD_NAMES)}
        return {column: values[column] if column in values else getattr(self, column)
                for column in (*ROW_COLUMNS, "units")}


# every field of a row but its values, which become the columns FIELD_NAMES (units: JSON only)
ROW_COLUMNS = tuple(column for f in dataclasses.fields(BiomarkerRow) if f.name != "units"
                    for column in ((*FIELD_NAMES, *AV_FIELD_NAMES) if f.name == "values"
                                   else (f.name,)))


@dataclass(frozen=True)
class SourceValues:
    """One image's biomarkers as one of :data:`SOURCES` gives them (``model``: the
    segmenter's name and runtime, for the model sources), in ``length_unit``."""

    name: str
    source: str
    values: dict[str, float]
    length_unit: str = "px"
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "model": self.model,
                **self.values, "length_unit": self.length_unit}


@dataclass(frozen=True)
class AgreementRow:
    """One biomarker: its means by source, how close the model (int8) and the second
    observer come to the first observer (MARD, Pearson r, ICC(A,1)), whether the model
    does at least as well on both MARD and ICC (``goal_met``), and how far the int8
    model is from the float one."""

    biomarker: str
    unit: str
    images: int
    observer1_mean: float
    observer2_mean: float
    model_mean: float
    model_mard: float
    observer2_mard: float
    model_r: float
    observer2_r: float
    model_icc: float
    observer2_icc: float
    goal_met: bool
    int8_vs_float_mard: float
    int8_vs_float_max_abs: float


class InputError(QsegmentError, ValueError):
    """A file that is neither a binary mask nor a colour photograph."""


def read_input(path: str | Path) -> tuple[str, np.ndarray]:
    """``("mask", bool HxW)``, ``("classes", uint8 HxW)`` or ``("photograph", uint8
    HxWx3)`` from an image file.

    The rule: an image whose pixels are gray (one channel, or three equal ones; alpha
    ignored) and take at most two values is a mask, its nonzero pixels the vessels; one
    of three or four values, all of 0-3, is an artery/vein map of
    :data:`~qsegment.datasets.VESSEL_CLASSES` (the datasets' coding), as is a colour
    image of :data:`~qsegment.images.AV_COLOURS` only (``predict --av``'s ``NAME_av.png``).
    Another colour image is a photograph. A gray image with other values is refused: it
    may be a probability map or a red-free photograph, and guessing either would be
    wrong."""
    from ..images import AV_COLOURS

    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            array = np.asarray(opened.convert("RGBA") if opened.mode == "P" else opened)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(f"{path}: cannot read the image ({err})") from err
    if array.ndim == 3:
        array = array[..., :3] if array.shape[2] >= 3 else array[..., 0]
    gray = array.ndim == 2 or bool(np.all(array == array[..., :1]))
    if not gray:
        if array.dtype == np.uint8:
            codes = array.astype(np.int32) @ np.array([65536, 256, 1])
            palette = AV_COLOURS.astype(np.int32) @ np.array([65536, 256, 1])
            if np.isin(codes, palette).all():
                classes = np.zeros(codes.shape, np.uint8)
                for value, code in enumerate(palette):
                    classes[codes == code] = value
                return "classes", classes
        return "photograph", _eight_bit_photograph(array, path)
    plane = array if array.ndim == 2 else array[..., 0]
    values = np.unique(plane)
    if values.size > 2 and values.max() <= 3:
        return "classes", plane.astype(np.uint8)
    if values.size > 2:
        raise InputError(f"{path}: a gray image with {values.size} values is neither a binary "
                         "mask (two values), an artery/vein map (values 0-3) nor a colour "
                         "photograph")
    return "mask", as_binary(plane != values[0] if values.size == 2 else plane, str(path))


def _eight_bit_photograph(rgb: np.ndarray, path: Path) -> np.ndarray:
    """An 8-bit or 16-bit RGB file's pixels as uint8 (16-bit ones divided by 257);
    other pixel types are refused, naming ``path``."""
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype == np.uint16:
        return (rgb // 257).astype(np.uint8)
    raise InputError(f"{path}: unsupported colour pixel type {rgb.dtype}")


def measure_photograph(image: np.ndarray, mask: np.ndarray, *,
                       probability: np.ndarray | None = None, bridge: float | None = BRIDGE_LOW,
                       mm_per_pixel: float | None = None, fov_degrees: float | None = None,
                       min_object_px: int = 0, fov: np.ndarray | None = None) -> VesselAnalysis:
    """The biomarkers of ``mask`` inside the FOV of its photograph ``image`` (RGB, uint8
    or float in [0, 1]): what ``qsegment predict`` has in hand after segmenting. Given
    the model's ``probability`` map, of which ``mask`` is the cut, the mask's gaps are
    bridged and its specks dropped first (:func:`~.measures.bridge_gaps` with ``low =
    bridge``; ``bridge=None`` measures the mask as cut).

    Args:
        image: the photograph, (H, W, 3) RGB, uint8 or float in [0, 1].
        mask: the binary vessel map of ``image``, (H, W).
        probability: the model's float probability map of which ``mask`` is the cut.
        bridge: the probability down to which gaps are bridged (None: no bridging).
        mm_per_pixel: the pixel size in millimetres (default: measure in pixels).
        fov_degrees: the camera's field of view in degrees, from which the pixel size
            is computed instead (:func:`~.measures.pixel_size`).
        min_object_px: vessel fragments of this many pixels or fewer are dropped first.
        fov: the photograph's field of view, where the caller has it already (default:
            :func:`~qsegment.datasets.fov_mask` of ``image``).

    Returns:
        The biomarkers (:func:`~.measures.measure`), with a warning where the photograph
        shows no field of view.

    Raises:
        InputError: ``mask`` and ``image`` differ in size.
        BiomarkerError: ``mask`` is not binary, ``probability`` is no float map of its
            size, or the pixel-size options are wrong.
        ImageError: ``image`` is not an (H, W, 3) RGB array.
    """
    from ..datasets import fov_mask

    mask = as_binary(mask)
    if image.shape[:2] != mask.shape:
        raise InputError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px but its photograph "
                         f"is {image.shape[1]}x{image.shape[0]}: they must match")
    if probability is not None and bridge is not None:
        mask = bridge_gaps(mask, probability, bridge)
    fov = fov_mask(image) if fov is None else fov
    analysis = measure(mask, fov, mm_per_pixel=mm_per_pixel, fov_degrees=fov_degrees,
                       min_object_px=min_object_px)
    if not fov.any():
        analysis.warnings.append("no field of view found in the photograph (its red channel "
                                 "is 20 or darker everywhere)")
    return analysis


class _Model:
    """The segmenter for photographs, the default one loaded only when first needed."""

    def __init__(self, segmenter: Segmenter | None = None) -> None:
        self.segmenter = segmenter

    @property
    def name(self) -> str | None:
        return None if self.segmenter is None else self.segmenter.name

    def get(self) -> Segmenter:
        if self.segmenter is None:
            from ..inference.predict import Segmenter

            self.segmenter = Segmenter.from_pretrained()
        return self.segmenter


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return text.getvalue()


def _csv_cell(value: object) -> object:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return "; ".join(map(str, value))
    return "" if value is None else value


def _json_safe(value: object) -> object:
    """NaN and infinity as null (JSON has neither); numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save_figure(path: str | Path, analysis: VesselAnalysis, background: np.ndarray,
                title: str = "") -> None:
    """A PNG of the centreline coloured by calibre, with branch points (circles) and
    free ends (dots), over ``background`` (the photograph, or the mask in dim gray)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from scipy import ndimage

    mm_per_pixel = analysis.pixel_size.mm_per_pixel or 1.0
    width = np.nan_to_num(analysis.width, nan=0.0) * mm_per_pixel
    shown = ndimage.binary_dilation(analysis.skeleton, iterations=1)
    width = ndimage.grey_dilation(width, size=3)
    top = float(np.percentile(width[shown], 99)) if shown.any() else 1.0
    norm = Normalize(0.0, top or 1.0)
    overlay = colormaps["turbo"](norm(width))
    overlay[..., 3] = shown
    h, w = analysis.skeleton.shape
    fig = Figure(figsize=(8, 7.2 * h / w / 0.93), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 0.9, 0.93))
    ax.imshow(background if background.ndim == 3 else background * 0.35, cmap="gray",
              vmin=0, vmax=1, interpolation="nearest")
    ax.imshow(overlay, interpolation="nearest")
    for points, marker in ((analysis.branch_points, "o"), (analysis.end_points, ".")):
        if len(points):
            ax.plot(points[:, 1], points[:, 0], marker, ms=4, mfc="none", mec="white", mew=0.8)
    if analysis.artery_vein is not None:
        _draw_zone(ax, analysis.artery_vein)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap="turbo"),
                       cax=fig.add_axes((0.91, 0.1, 0.02, 0.75)))
    bar.set_label(f"calibre ({analysis.pixel_size.unit})")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write(path, buffer.getvalue())


def _draw_zone(ax: Any, analysis: ArteryVeinAnalysis) -> None:
    """The optic disc (yellow), zone B's two circles (cyan) and the zone-B segments that
    CRAE and CRVE combine (arteries red, veins blue) on ``ax``."""
    from matplotlib.patches import Circle

    disc = analysis.disc
    if not disc.found:
        return
    circles = ((disc.diameter / 2, "yellow", "-"), (disc.diameter, "cyan", "--"),
               (1.5 * disc.diameter, "cyan", "--"))
    for radius, colour, style in circles:
        ax.add_patch(Circle((disc.col, disc.row), radius, fill=False, ec=colour, ls=style, lw=1))
    for vessel in analysis.used:
        ax.plot(vessel.coords[:, 1], vessel.coords[:, 0], lw=2.5,
                color="red" if vessel.kind == "artery" else "dodgerblue")


def _summary(analysis: VesselAnalysis) -> str:
    v, unit = analysis.values, analysis.pixel_size.unit
    if analysis.artery_vein is not None:
        av = analysis.artery_vein.values
        return (f"CRAE {av['crae']:.3g} {unit}, CRVE {av['crve']:.3g} {unit}, "
                f"AVR {av['avr']:.3f}, disc {av['disc_diameter']:.3g} {unit}")
    return (f"area density {v['area_density']:.3f}, FD {v['fractal_dimension']:.3f}, "
            f"tortuosity {v['tortuosity']:.3f}, calibre {v['calibre_mean']:.3g} {unit}, "
            f"{v['branch_points']} branch points")


def measure_prediction(path: Path, name: str, image: np.ndarray, prediction: Prediction,
                       segmenter: Segmenter, *, bridge: float | None = BRIDGE_LOW,
                       **options: Any) -> tuple[VesselAnalysis, BiomarkerRow]:
    """The biomarkers of ``segmenter``'s ``prediction`` of the photograph ``image``, its
    gaps bridged down to ``bridge`` (:func:`measure_photograph`; ``options``: the pixel size
    and ``min_object_px``), and their table row, with the optic disc located on the
    photograph (:func:`~.disc.locate_disc`) and, from an artery/vein Segmenter, CRAE, CRVE,
    AVR and each class's measures around it (:mod:`.equivalents`). ``qsegment analyze``,
    ``predict --biomarkers`` and ``batch --biomarkers`` measure and write alike through it.

    Args:
        path: the photograph's file, as the row names it.
        name: the image's name in the outputs.
        image: the photograph, (H, W, 3) RGB.
        prediction: ``segmenter``'s prediction of ``image``.
        segmenter: the model that made it, whose name and runtime the row records.
        bridge: the probability down to which gaps are bridged (None: no bridging).
        **options: ``mm_per_pixel``, ``fov_degrees`` and ``min_object_px`` of
            :func:`measure_photograph`.

    Returns:
        The analysis and its row (``kind="photograph"``).

    Raises:
        InputError: the prediction and ``image`` differ in size.
        BiomarkerError: the pixel-size options are wrong.
        ImageError: ``image`` is not an (H, W, 3) RGB array.
    """
    from ..datasets import fov_mask

    photograph = image if image.dtype == np.uint8 else np.round(
        np.clip(image, 0, 1) * 255).astype(np.uint8)
    fov = fov_mask(photograph)  # once, for the measures, the disc and the classes
    analysis = measure_photograph(image, prediction.mask, probability=prediction.probability,
                                  bridge=bridge, fov=fov, **options)
    row = BiomarkerRow.measured(
        path, name, "photograph", analysis, model=segmenter.name, runtime=segmenter.runtime,
        threshold=float(prediction.threshold), bridge=bridge, fov_source=FOV_FROM_PHOTO)
    if prediction.classes is not None:
        _add_artery_vein(analysis, row, prediction.classes, photograph, fov, options)
    else:
        row.add_disc(locate_disc(photograph, fov, prediction.mask), analysis.pixel_size)
    return analysis, row


def _add_artery_vein(analysis: VesselAnalysis, row: BiomarkerRow, classes: np.ndarray,
                     photograph: np.ndarray | None, fov: np.ndarray | None, options: dict
                     ) -> None:
    """CRAE, CRVE, AVR and each class's measures of ``classes`` into ``analysis`` and
    ``row``, inside ``fov``, around the disc located on ``photograph`` (with the map's
    vessels), else none (NaN, with the reason)."""
    disc = Disc.missing("no photograph to find the optic disc in (analyze: --photographs)"
                        ) if photograph is None else locate_disc(photograph, fov, classes > 0)
    analysis.artery_vein = measure_artery_vein(
        classes, disc, fov, mm_per_pixel=options.get("mm_per_pixel"),
        fov_degrees=options.get("fov_degrees"))
    row.add_artery_vein(analysis.artery_vein)


def photograph_of(label: Path, folder: Path) -> Path | None:
    """The photograph in ``folder`` of the artery/vein map ``label``: the image file whose
    name is the label's (LES-AV: ``224.png``) or begins it, followed by ``_`` or ``-``
    (HRF-AV: ``09_dr.JPG`` for ``09_dr_AVmanual.png``); the longest such name wins, the
    label itself never (``qsegment camera --save`` writes both into one folder)."""
    from ..images import IMAGE_SUFFIXES

    matches = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
               and (p.stem == label.stem or label.stem.startswith((p.stem + "_", p.stem + "-")))
               and p.resolve() != label.resolve()]
    return max(matches, key=lambda p: len(p.stem), default=None)


def _analyze_one(path: Path, name: str, out_dir: Path, model: _Model, options: dict,
                 bridge: float | None, figures: bool, photographs: Path | None) -> BiomarkerRow:
    """One file's row (raises on any failure, which :func:`analyze` records)."""
    kind, array = read_input(path)
    background = array
    if kind == "photograph":
        segmenter = model.get()
        analysis, row = measure_prediction(path, name, array, segmenter.predict(array),
                                           segmenter, bridge=bridge, **options)
    elif kind == "classes":
        photo_path = photograph_of(path, photographs) if photographs else None
        photograph = None if photo_path is None else read_input(photo_path)[1]
        if photograph is not None and photograph.shape[:2] != array.shape:
            raise InputError(f"{path} is {array.shape[1]}x{array.shape[0]} px but its "
                             f"photograph {photo_path} is {photograph.shape[1]}x"
                             f"{photograph.shape[0]}: they must match")
        from ..datasets import fov_mask

        fov = None if photograph is None else fov_mask(photograph)
        analysis = measure(array > 0, fov, **options)
        row = BiomarkerRow.measured(path, name, kind, analysis, fov_source=FOV_WHOLE_FRAME
                                    if photograph is None else FOV_FROM_PHOTO)
        _add_artery_vein(analysis, row, array, photograph, fov, options)
        background = array > 0 if photograph is None else photograph
    else:
        analysis = measure(array, **options)
        if options["fov_degrees"] is not None:
            analysis.warnings.append("fov_degrees on a mask alone takes the frame's width "
                                     "for the FOV's; give mm_per_pixel, or the photograph")
        row = BiomarkerRow.measured(path, name, "mask", analysis, fov_source=FOV_WHOLE_FRAME)
    segments = [s.row(analysis.pixel_size) for s in analysis.segments]
    atomic_write(out_dir / f"{name}_segments.csv", _csv_text(segments, SEGMENT_COLUMNS))
    if figures:
        figure = out_dir / f"{name}_biomarkers.png"
        save_figure(figure, analysis, background, f"{name}: {_summary(analysis)}")
        row.figure = str(figure)
    return row


def _output_names(paths: list[Path], out_dir: Path) -> list[str | None]:
    """A unique output name per input (the file's stem, -2, -3 ... on a clash); None
    where an output would land on an input."""
    inputs = {p.resolve() for p in paths}
    names: list[str | None] = []
    used: set[str] = set()
    for path in paths:
        stem, k = path.stem, 2
        while stem in used:
            stem, k = f"{path.stem}-{k}", k + 1
        used.add(stem)
        outputs = (out_dir / f"{stem}_biomarkers.png", out_dir / f"{stem}_segments.csv")
        names.append(None if any(o.resolve() in inputs for o in outputs) else stem)
    return names


def analyze(inputs: Sequence[str | Path], out_dir: str | Path, *,
            segmenter: Segmenter | None = None, bridge: float | None = BRIDGE_LOW,
            mm_per_pixel: float | None = None, fov_degrees: float | None = None,
            min_object_px: int = 0, figures: bool = True,
            photographs: str | Path | None = None,
            progress: Progress | None = None) -> list[BiomarkerRow]:
    """Measure every input (a binary mask, an artery/vein map: :func:`read_input`, or a
    photograph segmented by ``segmenter``,
    default: ``Segmenter.from_pretrained()``, loaded at the first photograph, its map's
    gaps bridged down to ``bridge``: :func:`measure_photograph`) and write
    ``biomarkers.csv`` / ``biomarkers.json`` into ``out_dir``, with each image's
    ``NAME_segments.csv`` and, if ``figures``, ``NAME_biomarkers.png``; all written
    atomically, none over an input (an input named like a table is refused up front).
    Returns the rows; a file that fails gets ``status="error"`` and the reason in
    ``error``. ``progress(done, total, path)`` is called after each file.

    Args:
        inputs: binary masks and colour photographs (:func:`read_input` tells which).
        out_dir: the output folder (made if missing).
        segmenter: what segments the photographs (default: the shipped model).
        bridge: the probability down to which a photograph's map's gaps are bridged
            (None: measure the mask as cut).
        mm_per_pixel: the pixel size in millimetres (default: measure in pixels).
        fov_degrees: the camera's field of view in degrees, from which the pixel size
            is computed instead (:func:`~.measures.pixel_size`).
        min_object_px: vessel fragments of this many pixels or fewer are dropped first.
        figures: also draw ``NAME_biomarkers.png`` per file.
        photographs: the folder of the artery/vein maps' photographs
            (:func:`photograph_of`), where their optic disc is found; without it, or
            with no photograph there, a map's disc measures are NaN with the reason.
        progress: called after each file with the files done, their total and the
            file's path.

    Returns:
        One row per input, in order; a file that could not be read or measured (wrong
        options included) has ``status="error"``.

    Raises:
        InputError: an input is ``biomarkers.csv`` or ``biomarkers.json`` in
            ``out_dir``, which would be overwritten.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in inputs]
    tables = [out_dir / "biomarkers.csv", out_dir / "biomarkers.json"]
    if clash := {t.resolve() for t in tables} & {p.resolve() for p in paths}:
        raise InputError(f"refusing to overwrite the input {sorted(clash)[0]}: choose another "
                         "output folder")
    model = _Model(segmenter)
    options = {"mm_per_pixel": mm_per_pixel, "fov_degrees": fov_degrees,
               "min_object_px": min_object_px}
    rows: list[BiomarkerRow] = []
    for i, (path, name) in enumerate(zip(paths, _output_names(paths, out_dir), strict=True)):
        start = time.perf_counter()
        try:
            if name is None:
                raise InputError(f"{path}: its outputs would overwrite an input")
            rows.append(_analyze_one(path, name, out_dir, model, options, bridge, figures,
                                     None if photographs is None else Path(photographs)))
            log.info("%s: %s (%.1f s)", path, _row_summary(rows[-1]), time.perf_counter() - start)
        except (QsegmentError, OSError, ValueError) as err:  # unreadable or unmeasurable:
            log.warning("%s: %s", path, err)  # one bad file must not stop the others
            rows.append(BiomarkerRow(name or path.stem, str(path), status="error",
                                     error=f"{type(err).__name__}: {err}"))
        if progress is not None:
            progress(i + 1, len(paths), str(path))
    write_rows(rows, out_dir)
    return rows


def _row_summary(row: BiomarkerRow) -> str:
    return ", ".join(f"{k} {row.values[k]:.4g}" for k in ("area_density", "fractal_dimension",
                                                          "tortuosity", "calibre_mean"))


def write_rows(rows: Sequence[BiomarkerRow], out_dir: str | Path) -> tuple[Path, Path]:
    """``biomarkers.csv`` and ``biomarkers.json`` (``schema_version``, each field's
    meaning, the rows) of ``rows``, written atomically.

    Args:
        rows: the rows, as :func:`analyze` makes them.
        out_dir: the folder to write into (made if missing).

    Returns:
        The paths of the CSV and the JSON file.
    """
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / "biomarkers.csv", out_dir / "biomarkers.json"
    table = [row.to_dict() for row in rows]
    atomic_write(csv_path, _csv_text(table, ROW_COLUMNS))
    document = {"schema_version": SCHEMA_VERSION,
                "fields": {f.name: f.doc for f in (*FIELDS, *AV_FIELDS)},
                "rows": _json_safe(table)}
    atomic_write(json_path, json.dumps(document, indent=1) + "\n")
    return csv_path, json_path


def icc_a1(ratings: np.ndarray) -> float:
    """ICC(2,1) of Shrout & Fleiss (1979), ICC(A,1) of McGraw & Wong (1996): two-way
    random effects, absolute agreement, one rater, from the two-way ANOVA of an
    (n subjects, k raters) table. Absolute agreement, because a model that reads every
    vessel 20 % wider than the annotator does not agree with them."""
    x = np.asarray(ratings, dtype=float)
    n, k = x.shape
    grand = x.mean()
    ms_rows = k * np.sum((x.mean(axis=1) - grand) ** 2) / (n - 1)
    ms_cols = n * np.sum((x.mean(axis=0) - grand) ** 2) / (k - 1)
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand
    ms_error = np.sum(residual ** 2) / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else math.nan


def _compare(values: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean absolute relative difference, Pearson r and ICC(A,1) of two sources."""
    ok = np.isfinite(values) & np.isfinite(reference)
    a, b = values[ok], reference[ok]
    nonzero = b != 0
    mard = float(np.mean(np.abs(a - b)[nonzero] / np.abs(b[nonzero]))) if nonzero.any() \
        else math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        r = float(stats.pearsonr(a, b).statistic) if ok.sum() >= 3 else math.nan
    icc = icc_a1(np.column_stack([a, b])) if ok.sum() >= 3 else math.nan
    return {"mard": mard, "r": r, "icc": icc}


def agreement_table(values: Sequence[SourceValues]) -> list[AgreementRow]:
    """Per biomarker of :data:`AGREEMENT_FIELDS`, its :class:`AgreementRow`: how close
    the model (int8) and the second observer come to the first observer, and how far
    the int8 model is from the float one."""
    by_source = {s: {v.name: v.values for v in values if v.source == s} for s in SOURCES}
    names = sorted(by_source["observer1"])
    units = {f.name: f.unit for f in FIELDS}
    table = []
    for biomarker in AGREEMENT_FIELDS:
        col = {s: np.array([by_source[s][n][biomarker] if n in by_source[s] else math.nan
                            for n in names], dtype=float) for s in SOURCES}
        model, human = _compare(col["model"], col["observer1"]), \
            _compare(col["observer2"], col["observer1"])
        drift = _compare(col["model"], col["model_float"])
        diff = np.abs(col["model"] - col["model_float"])
        table.append(AgreementRow(
            biomarker=biomarker, unit=units[biomarker], images=len(names),
            observer1_mean=float(np.nanmean(col["observer1"])),
            observer2_mean=float(np.nanmean(col["observer2"])),
            model_mean=float(np.nanmean(col["model"])),
            model_mard=model["mard"], observer2_mard=human["mard"],
            model_r=model["r"], observer2_r=human["r"],
            model_icc=model["icc"], observer2_icc=human["icc"],
            goal_met=bool(model["mard"] <= human["mard"] and model["icc"] >= human["icc"]),
            int8_vs_float_mard=drift["mard"],
            int8_vs_float_max_abs=float(np.nanmax(diff)) if np.isfinite(diff).any()
            else math.nan,
        ))
    return table


def agreement_values(data_dir: str | Path | None = None, *, segmenter: Segmenter | None = None,
                     float_segmenter: Segmenter | None = None, names: Sequence[str] | None = None,
                     images: str = "val", bridge: float | None = BRIDGE_LOW,
                     mm_per_pixel: float | None = None, fov_degrees: float | None = None,
                     min_object_px: int = 0, progress: Progress | None = None
                     ) -> list[SourceValues]:
    """Biomarkers of CHASE_DB1's validation images (``images="train"``: its training
    images, on which settings are chosen; ``names``: only those among them) from each
    of :data:`SOURCES`: the two observers' labels, ``segmenter`` (default: the int8
    ``Segmenter.from_pretrained()``) and ``float_segmenter`` (default: the default
    model on the ``torch`` runtime when ``segmenter`` is the default too; none
    otherwise), all inside the image's FOV; the models' maps bridged down to ``bridge``
    as :func:`measure_photograph` does. One record per image and source.

    Args:
        data_dir: the CHASE_DB1 folder (default: its default folder).
        segmenter: the model to compare with the observers (default: the shipped one).
        float_segmenter: its float counterpart (default: see above).
        names: measure only these images (default: all of ``images``).
        images: ``val`` or ``train``.
        bridge: the probability down to which the models' gaps are bridged (None: no
            bridging).
        mm_per_pixel: the pixel size in millimetres (default: measure in pixels).
        fov_degrees: the camera's field of view in degrees, from which the pixel size
            is computed instead (:func:`~.measures.pixel_size`).
        min_object_px: vessel fragments of this many pixels or fewer are dropped first.
        progress: called as ``progress(done, total, name)`` after each image.

    Returns:
        One record per image and source, the images in the split's order.

    Raises:
        UsageError: ``images`` is neither ``val`` nor ``train``.
        DatasetError: ``data_dir`` is no complete CHASE_DB1 folder.
        BiomarkerError: the pixel-size options are wrong.
        ModuleNotFoundError: PyTorch, which runs the default float model, is not
            installed.
    """
    from ..datasets import load_split
    from ..inference.predict import Segmenter

    if segmenter is None:
        segmenter = Segmenter.from_pretrained()
        if float_segmenter is None:
            float_segmenter = Segmenter.from_pretrained(segmenter.name, runtime="torch")
    if images not in ("val", "train"):
        raise UsageError(f"images must be 'val' or 'train', not {images!r}")
    part = images == "val"
    first = load_split(data_dir)[part]
    second = {s.name: s for s in load_split(data_dir, observer=2)[part]}
    chosen = [s for s in first if names is None or s.name in names]
    models = {"model": segmenter, "model_float": float_segmenter}
    rows = []
    for i, sample in enumerate(chosen):
        rgb = np.round(sample.image * 255).astype(np.uint8)
        masks = {"observer1": sample.label, "observer2": second[sample.name].label}
        for source, model in models.items():
            if model is not None:
                prediction = model.predict(rgb)
                masks[source] = prediction.mask if bridge is None else \
                    bridge_gaps(prediction.mask, prediction.probability, bridge)
        for source, mask in masks.items():
            analysis = measure(mask, sample.fov, mm_per_pixel=mm_per_pixel,
                               fov_degrees=fov_degrees, min_object_px=min_object_px)
            model = models.get(source)
            rows.append(SourceValues(sample.name, source, dict(analysis.values),
                                     analysis.pixel_size.unit,
                                     f"{model.name} ({model.runtime})" if model else None))
        log.info("agreement: %s measured from %s", sample.name, ", ".join(masks))
        if progress is not None:
            progress(i + 1, len(chosen), sample.name)
    return rows


def agreement(data_dir: str | Path | None = None, out_dir: str | Path | None = None,
              **kwargs: Any) -> list[AgreementRow]:
    """:func:`agreement_table` of :func:`agreement_values` (``kwargs`` go there); with
    ``out_dir``, also ``agreement.json`` (``schema_version``, the settings, the table, the
    int8 model's per-image differences from the float model's and every value) and
    ``agreement.md`` there.

    Args:
        data_dir: the CHASE_DB1 folder (default: its default folder).
        out_dir: the folder for ``agreement.json`` and ``agreement.md`` (None: nothing
            written).
        **kwargs: :func:`agreement_values`' other arguments.

    Returns:
        One row per biomarker of :data:`AGREEMENT_FIELDS`.

    Raises:
        UsageError: an unknown ``images`` (:func:`agreement_values` measures them).
        DatasetError: an incomplete CHASE_DB1 folder.
        BiomarkerError: wrong pixel-size options.
        ModuleNotFoundError: no PyTorch for the default float model.
    """
    values = agreement_values(data_dir, **kwargs)
    table = agreement_table(values)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bound = inspect.signature(agreement_values).bind(data_dir, **kwargs)
        bound.apply_defaults()
        settings = {name: bound.arguments[name] for name in
                    ("images", "names", "bridge", "min_object_px", "mm_per_pixel", "fov_degrees")}
        settings["models"] = {v.source: v.model for v in values if v.model}
        document = {"schema_version": SCHEMA_VERSION, "settings": settings,
                    "table": [dataclasses.asdict(row) for row in table],
                    "int8_minus_float": source_differences(values),
                    "values": [v.to_dict() for v in values]}
        atomic_write(out / "agreement.json", json.dumps(_json_safe(document), indent=1) + "\n")
        atomic_write(out / "agreement.md", agreement_markdown(table) + "\n")
    return table


def source_differences(values: Sequence[SourceValues], source: str = "model",
                       reference: str = "model_float") -> list[dict[str, Any]]:
    """Per image, its ``name`` and ``source`` minus ``reference`` on each of
    :data:`AGREEMENT_FIELDS` (by default how far the int8 model's biomarkers are from
    the float model's)."""
    pairs: dict[str, dict[str, dict[str, float]]] = {}
    for v in values:
        pairs.setdefault(v.name, {})[v.source] = v.values
    return [{"name": name, **{f: float(p[source][f]) - float(p[reference][f])
                              for f in AGREEMENT_FIELDS}}
            for name, p in sorted(pairs.items()) if source in p and reference in p]


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def markdown(rows: Sequence[dict], columns: Sequence[str],
             header: Sequence[str] | None = None) -> str:
    """``rows`` as a Markdown table of ``columns`` (numbers to 3 significant digits),
    text columns left-aligned and numbers right-aligned."""
    header = header or columns
    numeric = [not isinstance(rows[0][c], str) if rows else False for c in columns]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_fmt(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def agreement_markdown(table: Sequence[AgreementRow]) -> str:
    """The :func:`agreement_table` as Markdown, one biomarker a row."""
    columns = ("biomarker", "unit", "observer1_mean", "observer2_mean", "model_mean",
               "model_mard", "observer2_mard", "model_r", "observer2_r", "model_icc",
               "observer2_icc", "goal_met", "int8_vs_float_mard")
    header = ("biomarker", "unit", "mean 1st obs.", "mean 2nd obs.", "mean model",
              "MARD model", "MARD 2nd obs.", "r model", "r 2nd obs.", "ICC model",
              "ICC 2nd obs.", "model as good", "MARD int8 vs float")
    return markdown([dataclasses.asdict(row) for row in table], columns, header)
