"""One model file for someone else's runtime: ``qsegment export --target
onnx|openvino|tflite-int8``, for any shipped or trained weights (the formats table in the
README).

Each target writes its file(s) into the output folder (other files there are left) and
``NAME.FORMAT.json``: the file sizes, the input contract (what goes in, what comes out,
how to cut it) and a check, run on a CHASE_DB1 image shipped with the package: the
exported file's logits against those of the ``--runtime`` that runs the weights in this
format (its map is what ``qsegment predict --runtime`` gives), and against the float
network.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_model
from ..files import atomic_write
from ..images import SAMPLE_IMAGES, network_input, read_image, round_up
from ..metrics import agreement
from ..models import SegmentationModel
from ..models.profile import receptive_radius
from ..pretrained import resolve_checkpoint
from ..runtimes import open_weights
from ..runtimes.base import Runtime
from ..runtimes.litert import Int8Session, LiteRtInt8
from ..runtimes.onnxrt import OnnxRuntime
from ..runtimes.openvino import OpenVinoInt8, import_openvino
from ..runtimes.pytorch import TorchRuntime
from .common import ExportNote, default_name
from .cpu import TILE_SHAPE, Shape, openvino_int8, write_tflite_int8
from .onnx import export_onnx
from .tflite import observers_for

PROBE = SAMPLE_IMAGES / "Image_11L.jpg"  # a CHASE_DB1 test image (CC BY 4.0)


def export_onnx_file(source: str | Path, out: str | Path, name: str | None = None
                     ) -> ExportNote:
    """``out/NAME.onnx``: the float network, any batch and any H and W that are multiples
    of its size multiple (ONNX Runtime, TensorRT, OpenCV's DNN module...).

    Args:
        source: a shipped weights name, a run folder or a .safetensors file.
        out: the folder to write into (made if missing; other files there are left).
        name: what the file is called (default: the card's name, else the source's).

    Returns:
        The note: the file, its input contract and its check against the ``onnx`` runtime.
    """
    weights = _Source(source, name)
    path = export_onnx(weights.model, Path(out) / f"{weights.name}.onnx")
    return _note("onnx", weights, [path], OnnxRuntime(path), weights.float_contract())


def export_openvino(source: str | Path, out: str | Path, name: str | None = None
                    ) -> ExportNote:
    """``out/NAME.xml`` and ``NAME.bin``: OpenVINO's own format of the static int8 network
    the ``openvino`` runtime runs (:func:`~qsegment.export.cpu.openvino_int8`: the int8
    ONNX shipped beside the weights, else one written now with the int8 flatbuffers'
    quantization), loaded by
    ``openvino.Core().read_model`` without converting; any H and W that are multiples of
    the size multiple. Compile it with ``INFERENCE_PRECISION_HINT=f32`` to get the
    runtime's maps on a CPU with bf16, where OpenVINO would otherwise run the float parts
    in bf16 (an IR's ``runtime_options`` do not carry that hint in OpenVINO 2026.4).

    Args:
        source: a shipped weights name, a run folder or a .safetensors file.
        out: the folder to write into (made if missing; other files there are left).
        name: what the files are called (default: the card's name, else the source's).

    Returns:
        The note: the files, their input contract and their check against the
        ``openvino`` runtime.
    """
    ov = import_openvino()
    weights = _Source(source, name)
    xml = Path(out) / f"{weights.name}.xml"
    network = openvino_int8(weights.file, weights.model).network
    with tempfile.TemporaryDirectory(prefix="qsegment-") as tmp:
        staged = Path(tmp) / xml.name
        ov.save_model(network, str(staged), compress_to_fp16=False)
        # the .bin first: a reader who finds the .xml finds its weights
        for path in (staged.with_suffix(".bin"), staged):
            atomic_write(xml.with_name(path.name), path.read_bytes())
    files = [xml.with_suffix(".bin"), xml]
    return _note("openvino", weights, files, OpenVinoInt8(xml), weights.float_contract())


def export_tflite_int8(source: str | Path, out: str | Path,
                       shape: Sequence[Shape] | None = None, name: str | None = None
                       ) -> ExportNote:
    """``out/NAME.int8-HxW.tflite`` for each shape: the fully int8 network (NHWC int8 in
    and out) as the ``tflite-int8`` runtime runs it, from the ranges calibrated on the
    dataset's training images (the shipped ones where the weights have them), for LiteRT
    on a phone, a Raspberry Pi or a browser. A TFLite file has one input shape; larger
    images go in tiles.

    Args:
        source: a shipped weights name, a run folder or a .safetensors file.
        out: the folder to write into (made if missing; other files there are left).
        shape: the input shapes, each rounded up to the network's size multiple (default:
            the default tile, 400x1008).
        name: what the files are called (default: the card's name, else the source's).

    Returns:
        The note: the files, their input contract (with each file's quantization) and
        the check of the first against the ``tflite-int8`` runtime.
    """
    weights = _Source(source, name)
    model = weights.model
    observers = observers_for(model, weights.file)
    files = []
    for height, width in shape or (TILE_SHAPE,):
        h, w = round_up(height, model.size_multiple), round_up(width, model.size_multiple)
        path = Path(out) / f"{weights.name}.int8-{h}x{w}.tflite"
        write_tflite_int8(path, model, observers, (1, 3, h, w))
        files.append(path)
    sessions = {path.name: Int8Session(path.read_bytes()) for path in files}
    contract = {
        "input": "int8 (1, H, W, 3) NHWC: RGB / 255, quantized as round(x / scale) + "
                 "zero_point", "output": f"int8 (1, H, W, {weights.channels}) NHWC logits, "
                 f"dequantized as (q - zero_point) * scale; {weights.channel_names}",
        "quantization": {file: {"input": list(session.input_quantization),
                                "output": list(session.output_quantization)}
                         for file, session in sessions.items()},
        "larger_images": "tiles with a margin of the network's receptive radius "
                         f"({receptive_radius(model)} px), as qsegment's Segmenter does"}
    first = LiteRtInt8.from_file(files[0])
    return _note("tflite-int8", weights, files, first, contract,
                 shape=next(iter(first.flatbuffers)))


# --- what the targets share ---------------------------------------------------------------

class _Source:
    """The weights to export: their file, network and card, and the name files get."""

    def __init__(self, source: str | Path, name: str | None) -> None:
        self.file = resolve_checkpoint(source)
        self.model, self.card = load_model(self.file)
        self.name = name or default_name(self.file, self.card)


    def float_contract(self) -> dict[str, Any]:
        """What the float-in, float-out files (ONNX, OpenVINO) take and give."""
        return {"input": "float32 (N, 3, H, W) NCHW named 'image': RGB / 255 in [0, 1], no "
                         f"mean or std; H and W multiples of {self.model.size_multiple} (pad "
                         "bottom and right with 0)",
                "output": f"float32 (N, {self.channels}, H, W) logits named 'logits'; "
                          f"{self.channel_names}"}

    @property
    def channels(self) -> int:
        return len(self.model.outputs)

    @property
    def channel_names(self) -> str:
        """What each output channel is: the vessel logit, and an artery/vein model's class
        logits given a vessel."""
        if self.channels == 1:
            return "channel 0: the vessel logit"
        classes = ", ".join(self.model.outputs[1:])
        return (f"channel 0: the vessel logit; channels 1-{self.channels - 1}: the logits of "
                f"{classes} given a vessel (softmax over them)")


def _note(target: str, weights: _Source, files: list[Path], exported: Runtime,
          contract: dict[str, Any], shape: Shape | None = None) -> ExportNote:
    """The note of ``files`` (the first opened as ``exported``, whose input is ``shape``
    where it has one), written beside them as ``NAME.TARGET.json``: sizes, the contract
    with the card's cut, and the check."""
    threshold = weights.card.threshold_value
    contract["vessel"] = (f"probability = sigmoid(logit) >= {threshold:.4f} (the card's "
                          f"threshold), i.e. logit >= {math.log(threshold / (1 - threshold)):.4f}")
    out = files[0].parent
    note = ExportNote(target, out, tuple(p.name for p in files), {
        "weights": str(weights.file), "bytes": {p.name: p.stat().st_size for p in files},
        "contract": contract,
        "check": check(exported, target, weights.file, weights.model, threshold, shape)})
    note.write(out / f"{weights.name}.{target}.json")
    return note


def check(exported: Runtime, runtime: str, weights: Path, model: SegmentationModel,
          threshold: float, shape: Shape | None = None, probe: Path = PROBE
          ) -> dict[str, Any]:
    """How the ``exported`` file's logits on ``probe`` (cropped or zero-padded to
    ``shape``, else padded to the size multiple) agree with the runtime ``runtime`` on
    the weights and with the float network (:func:`qsegment.metrics.agreement`)."""
    x, _ = network_input(read_image(probe), None, model.size_multiple)
    if shape is not None:
        x = x[..., :shape[0], :shape[1]]
        x = np.pad(x, ((0, 0), (0, 0), (0, shape[0] - x.shape[2]), (0, shape[1] - x.shape[3])))
    mine = exported.logits(x)
    return {"image": f"{probe.stem} (CHASE_DB1), {x.shape[2]}x{x.shape[3]}",
            f"vs_{runtime}_runtime": agreement(open_weights(runtime, weights).logits(x), mine,
                                              threshold),
            "vs_float_network": agreement(TorchRuntime(model).logits(x), mine, threshold)}


def report_lines(note: ExportNote) -> list[str]:
    """What ``qsegment export --target onnx|openvino|tflite-int8`` prints: each file with
    its size, the input contract and the check."""
    details = note.details
    lines = [f"{file}: {size / 1e3:.0f} kB" for file, size in details["bytes"].items()]
    lines += [f"{key}: {value}" for key, value in details["contract"].items()
              if isinstance(value, str)]
    check = details["check"]
    for key, result in check.items():
        if key.startswith("vs_"):
            lines.append(f"check on {check['image']} {key.replace('_', ' ')}: masks agree on "
                         f"{result['mask_agreement']:.4%} of pixels, logits max |diff| "
                         f"{result['logit_max_abs']:.3g}")
    return lines


__all__ = ["check", "export_onnx_file", "export_openvino", "export_tflite_int8",
           "report_lines"]
