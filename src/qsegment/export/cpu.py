"""The CPU runtimes' files, made from a PyTorch network: export's half of every runtime
that runs a float checkpoint, and ``qsegment export --target cpu-int8``.

A runtime only opens files (:mod:`qsegment.runtimes`). Each row of
:data:`~qsegment.runtimes.RUNTIMES` that runs checkpoints names its ``build`` function
here: given the weights (and the network, where it is built already), it makes what the
runtime opens where the weights do not ship it (a float ONNX, an int8 ONNX quantized
now, int8 flatbuffers for the shapes an image needs), then opens it.
:func:`open_runtime` is that for a module in hand.

:func:`export_cpu_int8` writes a weights file with every file the CPU int8 runtimes read,
so that it runs on every runtime on a fresh machine without the dataset and (for the
int8 runtimes) without PyTorch. Beside ``NAME.safetensors`` and its card:
``NAME.int8-observers.safetensors`` (the ranges calibrated on the dataset's training
images), ``NAME.int8-HxW.tflite`` for each of :data:`TFLITE_SHAPES` (rounded up to the
network's size multiple; the ``tflite-int8`` runtime pads an image up to the smallest that
holds it), ``NAME.int8.onnx`` (static int8 for ONNX Runtime) and ``NAME.int8.json``, the
manifest that lists them with the network's size multiple, its measured receptive radius
and the tiling that :class:`~qsegment.inference.predict.Segmenter` uses by default.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from ..checkpoint import load_model, save_checkpoint
from ..errors import QsegmentError
from ..files import atomic_write, write_json
from ..images import round_up
from ..inference.calibrate import calibration_path
from ..models import SegmentationModel
from ..models.profile import receptive_radius
from ..pretrained import resolve_checkpoint
from ..registry import resolve
from ..runtimes import RUNTIMES, checkpoint_runtime
from ..runtimes.base import read_manifest, with_shipped_tiling
from ..runtimes.litert import Int8Session, LiteRtInt8
from ..runtimes.onnxrt import OnnxInt8Runtime, OnnxRuntime
from ..runtimes.openvino import OpenVinoInt8
from ..runtimes.pytorch import TorchRuntime
from .common import ExportNote, default_name
from .onnx import export_onnx, export_onnx_int8
from .tflite import (
    ConversionError,
    cache_dir,
    convert_int8,
    observers_for,
    save_observers,
    weights_digest,
)

if TYPE_CHECKING:
    import torch

    from ..runtimes.base import Runtime

log = logging.getLogger(__name__)

Shape = tuple[int, int]
# Segmenter's default tile: three cover a CHASE_DB1 image (960x999) and its 0.40 MP bound
# what XNNPACK sets up (about 390 MB per megapixel of input, benchmarks/bench_litert_memory.py)
TILE_SHAPE: Shape = (400, 1008)
# 512x512 for small photographs, 960x1000 for CHASE_DB1's 960x999 whole (evaluate), the tile
TFLITE_SHAPES: tuple[Shape, ...] = ((512, 512), (960, 1000), TILE_SHAPE)


class ExportError(QsegmentError, ValueError):
    """What ``--target cpu-int8`` was asked cannot be made; the message says why."""


# --- the runtimes of a network (the rows' ``build``) ---------------------------------------

def open_runtime(name: str, model: SegmentationModel, weights: Path | None = None) -> Runtime:
    """``model`` on the runtime ``name`` (one that runs float checkpoints); ``weights``,
    its .safetensors file, lets the int8 runtimes open the files shipped beside it, and
    gives their default tiling."""
    build = cast(str, checkpoint_runtime(name).build)  # a checkpoint runtime's row has one
    runtime = resolve(build)(weights, model)
    return with_shipped_tiling(runtime, read_manifest(weights) if weights is not None else {})


def _network(weights: Path | None, model: SegmentationModel | None) -> SegmentationModel:
    """``model``, else the network ``weights`` build."""
    if model is not None:
        return model.eval()
    if weights is None:
        raise TypeError("give the weights, the network or both")
    return load_model(weights)[0]


def torch_runtime(weights: Path | None, model: SegmentationModel | None = None) -> TorchRuntime:
    """The ``torch`` runtime: the network itself."""
    return TorchRuntime(_network(weights, model))


def onnx_float(weights: Path | None, model: SegmentationModel | None = None) -> OnnxRuntime:
    """The ``onnx`` runtime: the network exported to float ONNX in a temporary folder (the
    session keeps the graph)."""
    model = _network(weights, model)
    with tempfile.TemporaryDirectory(prefix="qsegment-") as tmp:
        return OnnxRuntime(export_onnx(model, Path(tmp) / "model.onnx"),
                           size_multiple=model.size_multiple)


Int8Onnx = TypeVar("Int8Onnx", OnnxInt8Runtime, OpenVinoInt8)


def _int8_onnx(runtime: type[Int8Onnx], weights: Path | None,
               model: SegmentationModel | None) -> Int8Onnx:
    """``runtime`` on the ``NAME.int8.onnx`` shipped beside ``weights``, else on the
    network quantized now with its calibrated ranges (:func:`write_onnx_int8`; the
    runtime reads the file before the temporary folder goes)."""
    shipped = runtime.from_weights(weights) if weights is not None else None
    if shipped is not None:
        return shipped
    model = _network(weights, model)
    with tempfile.TemporaryDirectory(prefix="qsegment-") as tmp:
        return runtime(write_onnx_int8(model, Path(tmp) / "model.int8.onnx",
                                       observers=observers_for(model, weights)),
                       size_multiple=model.size_multiple)


def onnx_int8(weights: Path | None, model: SegmentationModel | None = None) -> OnnxInt8Runtime:
    """The ``onnx-int8`` runtime: the static int8 ONNX of the weights (:func:`_int8_onnx`)."""
    return _int8_onnx(OnnxInt8Runtime, weights, model)


def openvino_int8(weights: Path | None, model: SegmentationModel | None = None
                  ) -> OpenVinoInt8:
    """The ``openvino`` runtime: the static int8 ONNX of the weights (:func:`_int8_onnx`)."""
    return _int8_onnx(OpenVinoInt8, weights, model)


def litert_int8(weights: Path | None, model: SegmentationModel | None = None) -> LiteRtInt8:
    """The ``tflite-int8`` runtime: the flatbuffers shipped beside ``weights``, and any
    other shape an image needs built from the network and its calibrated ranges
    (:class:`FlatbufferCache`)."""
    model = _network(weights, model)
    shipped = LiteRtInt8.from_weights(weights) if weights is not None else None
    cache = FlatbufferCache(model, observers_for(model, weights))
    return LiteRtInt8(shipped.flatbuffers if shipped else {}, model.size_multiple, cache)


class FlatbufferCache:
    """int8 flatbuffers of one network at any input shape, each built once (about 10 s)
    from the calibrated ranges ``observers`` and kept in
    :func:`~qsegment.export.tflite.cache_dir` under ``key``, a digest of the weights and
    ranges: what the ``tflite-int8`` runtime opens where the weights ship no model of
    that shape (:class:`~qsegment.runtimes.litert.LiteRtInt8`'s ``build``)."""

    def __init__(self, model: SegmentationModel, observers: dict[str, torch.Tensor]) -> None:
        self.model, self.observers = model.eval(), observers
        self.key = weights_digest(model.state_dict(), observers)

    def path(self, height: int, width: int) -> Path:
        """Where the flatbuffer for a height x width input is kept."""
        return cache_dir() / f"{self.key}-{height}x{width}.tflite"

    def __call__(self, height: int, width: int) -> Path:
        """The flatbuffer for a height x width input, built on first use."""
        path = self.path(height, width)
        if not path.is_file():
            log.warning("building the int8 TFLite model for %dx%d inputs (once, about 10 s; "
                        "cached in %s)", height, width, path.parent)
            atomic_write(path, convert_int8(self.model, observers=self.observers,
                                            shape=(1, 3, height, width)))
        return path


def write_onnx_int8(model: SegmentationModel, path: Path, example: Shape = (256, 256),
                    observers: dict[str, torch.Tensor] | None = None) -> Path:
    """Static int8 ONNX of ``model`` at ``path`` with the quantization of its int8
    flatbuffers (:func:`~qsegment.export.onnx.export_onnx_int8`), from the calibrated
    ranges ``observers`` (default: :func:`~qsegment.export.tflite.observers_for`'s
    without weights: calibrated on CHASE_DB1's training images); ``example`` is the input
    shape the graph is traced at (H and W stay dynamic)."""
    return export_onnx_int8(model, observers or observers_for(model), path, example)


# --- qsegment export --target cpu-int8 ------------------------------------------------------

def export_cpu_int8(source: str | Path, out: str | Path,
                    shape: Sequence[Shape] | None = None, name: str | None = None
                    ) -> ExportNote:
    """Write the weights ``source`` as ``out/NAME.safetensors`` with its card
    (``NAME.json``) and its calibration where it has one (``NAME.calibration.json``: the
    per-image scale and cut of ``--scale auto --threshold auto``), and beside them the CPU
    int8 runtimes' files and their manifest (``NAME.int8.json``), as the shipped weights
    have them. A file the source has beside
    it is the same weights' file and is copied; the others are built (calibrated ranges
    are reused, so rebuilt flatbuffers are identical). A model a converter cannot express
    (max-unpooling, in TFLite and in the ONNX tracer) is listed without that runtime, and
    runs on PyTorch only.

    Args:
        source: a shipped weights name, a run folder or a .safetensors file.
        out: the folder to write into (made if missing; other files there are left).
        shape: the TFLite input shapes, each rounded up to the network's size multiple
            (default :data:`TFLITE_SHAPES`); the last is the default tile.
        name: what the files are called (default: the card's name, else the run folder's
            or the file's).

    Returns:
        The note: the files in ``out`` (weights, card, int8 files, manifest); its details
        are the manifest with ``weights``, the .safetensors file written.

    Raises:
        CheckpointError: ``source`` is no weights name, run folder or checkpoint.
        ExportError: a tile (the last shape) not over twice its margin; nothing is written.
    """
    weights = resolve_checkpoint(source)
    model, card = load_model(weights)
    manifest = int8_manifest(model, shape or TFLITE_SHAPES)
    name = name or default_name(weights, card)
    dest = Path(out) / f"{name}.safetensors"
    if not dest.exists() or not dest.samefile(weights):
        published = card.replace(name=name, source_run=card.get("source_run") or str(source))
        save_checkpoint(dest, model, {"card": published.to_dict()})
        published.write(dest.with_suffix(".json"))
        if calibration_path(weights).is_file():
            atomic_write(calibration_path(dest), calibration_path(weights).read_bytes())
    _write_int8_files(dest, model, manifest, weights)
    beside = (dest.with_suffix(".json"), calibration_path(dest))  # where the source has them
    card_files = tuple(path.name for path in beside if path.is_file())
    files = (dest.name, *card_files, *manifest["tflite"].values(),
             *(manifest[key] for key in ("observers", "onnx") if key in manifest),
             dest.with_suffix(".int8.json").name)
    return ExportNote("cpu-int8", Path(out), files, {**manifest, "weights": str(dest)})


def int8_manifest(model: SegmentationModel, shapes: Sequence[Shape]) -> dict:
    """The manifest of ``model``'s int8 files, before they are made: its size multiple,
    its receptive radius and the tiling :class:`~qsegment.inference.predict.Segmenter`
    uses by default, the last of ``shapes`` (rounded up to the size multiple, as all
    are) with a margin of the receptive radius (rounded up to the size multiple: the kept
    interiors then equal the whole image's map)."""
    m = model.size_multiple
    shapes = [(round_up(h, m), round_up(w, m)) for h, w in shapes]  # e.g. 960x1008 at 16
    radius = receptive_radius(model)
    margin = round_up(radius + 1, m)
    if min(shapes[-1]) <= 2 * margin:
        raise ExportError(f"the tile {shapes[-1][0]}x{shapes[-1][1]} (the last shape) must "
                          f"exceed twice its margin, {margin} px (the network's receptive "
                          f"radius, {radius} px, rounded up to {m}): give --shape with a "
                          f"larger last shape, e.g. 512x512,{2 * margin + 512}x1024")
    return {"size_multiple": m, "receptive_radius": radius,
            "tile": {"shape": list(shapes[-1]), "margin": margin},
            "tflite": {f"{h}x{w}": None for h, w in shapes}, "unsupported": {}}


def _write_int8_files(weights: Path, model: SegmentationModel, manifest: dict, source: Path
                      ) -> None:
    """Fill ``manifest`` (:func:`int8_manifest`) with the int8 files written beside
    ``weights``, each copied from beside ``source`` (the same weights) where it is there,
    else built, and write it beside them."""
    def made(suffix: str, build: Callable[[Path], object]) -> Path:
        path, shipped = (w.with_name(f"{w.stem}{suffix}") for w in (weights, source))
        if not shipped.is_file():
            build(path)
        elif not path.exists() or not path.samefile(shipped):
            atomic_write(path, shipped.read_bytes())
        return path

    shapes = [(int(h), int(w)) for h, w in (key.split("x") for key in manifest["tflite"])]
    observers = None  # the ONNX calibrates afresh where these could not be had
    try:
        observers = observers_for(model, source)
        for height, width in shapes:
            path = made(f".int8-{height}x{width}.tflite",
                        partial(write_tflite_int8, model=model, observers=observers,
                                shape=(1, 3, height, width)))
            manifest["tflite"][f"{height}x{width}"] = path.name
        manifest["observers"] = made(".int8-observers.safetensors",
                                     lambda path: save_observers(path, observers)).name
    except (ConversionError, RuntimeError) as err:  # RuntimeError: LiteRT refuses the graph
        log.warning("%s: no int8 TFLite model (%s)", weights.name, str(err).splitlines()[0])
        manifest["tflite"] = {}
        manifest["unsupported"]["tflite-int8"] = str(err).splitlines()[0]
    try:
        largest = max(shapes, key=lambda s: s[0] * s[1])
        manifest["onnx"] = made(".int8.onnx",
                                lambda path: write_onnx_int8(model, path, largest,
                                                             observers)).name
    except (RuntimeError, TypeError) as err:  # the ONNX tracer cannot take max-unpooling
        log.warning("%s: no int8 ONNX model (%s)", weights.name, err)
        for info in RUNTIMES:  # every runtime that runs the network as ONNX
            if info.file_suffix in (".onnx", ".int8.onnx"):
                manifest["unsupported"][info.name] = str(err)
    write_json(weights.with_suffix(".int8.json"), manifest)


def write_tflite_int8(path: Path, model: SegmentationModel,
                      observers: dict[str, torch.Tensor], shape: tuple[int, int, int, int]
                      ) -> None:
    """``model`` as a fully int8 flatbuffer for inputs of ``shape`` (1, 3, H, W), from its
    calibrated ``observers``, at ``path``; LiteRT must accept it."""
    flatbuffer = convert_int8(model, observers=observers, shape=shape)
    Int8Session(flatbuffer)  # LiteRT must accept the graph, not only the converter
    atomic_write(path, flatbuffer)


def report_lines(note: ExportNote) -> list[str]:
    """What ``qsegment export --target cpu-int8`` prints: the files and what runs them."""
    manifest = note.details
    weights = Path(manifest["weights"])
    lines = [f"weights: {weights.name} (with its card, {weights.with_suffix('.json').name})",
             *(f"tflite-int8: {file}" for file in manifest["tflite"].values())]
    if "onnx" in manifest:
        lines.append(f"onnx-int8: {manifest['onnx']}")
    lines += [f"not for {runtime}: {reason}"
              for runtime, reason in manifest["unsupported"].items()]
    tile = manifest["tile"]
    lines.append(f"default tile {tile['shape'][0]}x{tile['shape'][1]}, margin {tile['margin']} "
                 f"px; run it without PyTorch: qsegment predict IMAGES --model {weights}")
    return lines


__all__ = ["TFLITE_SHAPES", "TILE_SHAPE", "ExportError", "FlatbufferCache",
           "export_cpu_int8", "int8_manifest", "litert_int8", "onnx_float", "onnx_int8",
           "open_runtime", "openvino_int8", "report_lines", "torch_runtime", "write_onnx_int8",
           "write_tflite_int8"]
