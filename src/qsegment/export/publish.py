"""Publishing weights with the files the CPU int8 runtimes read, so that every shipped
model runs on every runtime on a fresh machine, without the dataset and (for the
int8 runtimes) without PyTorch.

Beside ``NAME.safetensors`` and its card: ``NAME.int8-observers.safetensors`` (the
ranges calibrated on the dataset's training images), ``NAME.int8-HxW.tflite`` for each
of :data:`TFLITE_SHAPES` (rounded up to the network's size multiple; the ``tflite-int8``
runtime pads an image up to the smallest
that holds it), ``NAME.int8.onnx`` (static int8 for ONNX Runtime) and ``NAME.int8.json``,
the manifest that lists them with the network's size multiple, its measured receptive
radius and the tiling that :class:`~qsegment.engine.predict.Segmenter` uses by default.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..checkpoint import save_checkpoint
from ..files import write_json
from ..images import round_up
from ..models.profile import receptive_radius
from ..pretrained import WEIGHTS_DIR, load_model, resolve_checkpoint
from ..runtimes.litert import Int8Session
from .onnx import export_onnx, quantize_onnx_int8
from .tflite import ConversionError, convert_int8, observers_for, save_observers

log = logging.getLogger(__name__)

# Segmenter's default tile: three cover a CHASE_DB1 image (960x999) and its 0.40 MP bound
# what XNNPACK sets up (about 390 MB per megapixel of input, benchmarks/bench_litert_memory.py)
TILE_SHAPE = (400, 1008)
# 512x512 for small photographs, 960x1000 for CHASE_DB1's 960x999 whole (evaluate), the tile
TFLITE_SHAPES = ((512, 512), (960, 1000), TILE_SHAPE)


def publish_int8_files(source: str | Path, shapes: tuple[tuple[int, int], ...] = TFLITE_SHAPES
                       ) -> dict:
    """Write the int8 runtimes' files beside the weights ``source`` (a name or a
    .safetensors file) and their manifest; returns the manifest. The last of ``shapes`` is
    the default tile, with a margin of the receptive radius (rounded up to the size
    multiple: the kept interiors then equal the whole image's map). Files already there are
    kept (calibrated ranges are reused, so rebuilt flatbuffers are identical); a model a
    converter cannot express (max-unpooling, in TFLite and in the ONNX tracer) is listed
    without that runtime, and runs on PyTorch only."""
    weights = resolve_checkpoint(source)
    model, _ = load_model(weights)
    m = model.size_multiple
    shapes = tuple((round_up(h, m), round_up(w, m)) for h, w in shapes)  # e.g. 960x1008 at 16
    radius = receptive_radius(model)
    manifest: dict = {"size_multiple": m, "receptive_radius": radius,
                      "tile": {"shape": list(shapes[-1]), "margin": round_up(radius + 1, m)},
                      "tflite": {}, "unsupported": {}}
    observers_path = weights.with_suffix(".int8-observers.safetensors")
    try:
        observers = observers_for(model, observers_path)
        for height, width in shapes:
            path = weights.with_name(f"{weights.stem}.int8-{height}x{width}.tflite")
            if not path.is_file():
                flatbuffer = convert_int8(model, observers=observers,
                                          shape=(1, 3, height, width))
                Int8Session(flatbuffer)  # LiteRT must accept the graph, not only the converter
                path.write_bytes(flatbuffer)
            manifest["tflite"][f"{height}x{width}"] = path.name
        manifest["observers"] = save_observers(observers_path, observers).name
    except (ConversionError, RuntimeError) as err:  # RuntimeError: LiteRT refuses the graph
        log.warning("%s: no int8 TFLite model (%s)", weights.name, str(err).splitlines()[0])
        manifest["tflite"] = {}
        manifest["unsupported"]["tflite-int8"] = str(err).splitlines()[0]
    onnx_int8 = weights.with_suffix(".int8.onnx")
    try:
        if not onnx_int8.is_file():
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = export_onnx(model, Path(tmp) / "model.onnx", shapes[1])
                quantize_onnx_int8(fp32, onnx_int8, multiple=model.size_multiple)
        manifest["onnx"] = onnx_int8.name
    except (RuntimeError, TypeError) as err:  # the ONNX tracer cannot take max-unpooling
        log.warning("%s: no int8 ONNX model (%s)", weights.name, err)
        manifest["unsupported"]["onnx-int8"] = manifest["unsupported"]["onnx"] = str(err)
    write_json(weights.with_suffix(".int8.json"), manifest)
    return manifest


def publish(run: str | Path, name: str, dest: Path = WEIGHTS_DIR, cpu_int8: bool = True) -> Path:
    """Copy a run's last weights (no optimizer state) and card to ``dest/NAME.*``, with
    the CPU int8 runtimes' files (:func:`publish_int8_files`) unless ``cpu_int8`` is off.

    This is how the shipped weights were made; the card keeps the run's config, split,
    threshold, metrics and git commit, plus the name.
    """
    model, card = load_model(run)
    card = card.replace(name=name, source_run=str(run))
    path = Path(dest) / f"{name}.safetensors"
    save_checkpoint(path, model, {"card": card.to_dict()})
    card.write(path.with_suffix(".json"))
    if cpu_int8:
        publish_int8_files(path)
    return path
