"""Sony IMX500 export: MCT's quantized ONNX -> ``packerOut.zip`` with ``imxconv-pt``.

The converter (imx500-converter, Java 17) compiles the network for the sensor's
DSP and reports the on-chip memory it needs (weights plus activations, 8 MB in
all). Activation memory grows with the input area, so the largest square input
that fits is searched with the converter's fast ``--memory-report`` mode on
copies of the ONNX re-shaped to each candidate size: the network is fully
convolutional and its quantization parameters do not depend on the input size.

On the Raspberry Pi, ``imx500-package -i packerOut.zip -o out`` turns the result
into ``out/network.rpk`` for :mod:`qsegment.deploy.camera`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ...card import Card
from ...errors import QsegmentError
from ...files import atomic_folder, write_json
from ...provenance import package_versions
from ...runtimes.onnxrt import require_mct_onnx
from ..common import ExportNote, check_size, search_largest

NETWORK = "qsegment"  # the converter names its outputs after the ONNX file
# The camera app never reads the input tensor back, so the sensor need not keep it: the
# Raspberry Pi documentation recommends this flag for memory (1.2 MB at 640x640).
CONVERTER_FLAGS = ["--no-input-persistency"]


class Imx500Error(QsegmentError, RuntimeError):
    """The IMX500 export cannot be done; the message says why and what to do."""


class ModelTooLargeError(Imx500Error):
    """The network does not fit the sensor's on-chip memory at the requested size."""

    def __init__(self, size: int, required: int, available: int, largest: int | None) -> None:
        self.size, self.required, self.available, self.largest = size, required, available, largest
        hint = (f"the largest square input that fits is {largest}x{largest}: "
                f"use --size {largest}" if largest else "no input size fits")
        super().__init__(f"the network at {size}x{size} needs {required / 2**20:.2f} MB of "
                         f"on-chip memory but the IMX500 has {available / 2**20:.2f} MB; {hint}")


@dataclass(frozen=True)
class MemoryReport:
    """The converter's memory figures for one input size, in bytes."""

    size: int
    required: int
    available: int
    weights: int
    activations: int
    fits: bool  # the converter's own verdict ("Fit In Chip")


def converter() -> str:
    """Path of ``imxconv-pt`` (on PATH or beside this Python), after checking for Java."""
    if shutil.which("java") is None:
        raise Imx500Error("java not found on PATH: the IMX500 converter (imxconv-pt) needs "
                          "Java 17 (for example `apt install openjdk-17-jre-headless`)")
    found = shutil.which("imxconv-pt") or shutil.which("imxconv-pt", path=str(
        Path(sys.executable).parent))
    if found is None:
        raise Imx500Error("imxconv-pt not found: install imx500-converter (edge-mdt[pt]) into "
                          "this environment")
    return found


def _run(args: list[str], what: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the converter with TMPDIR pointed at a folder deleted afterwards (it leaves
    folders there, especially on failure); a failure shows its last log lines."""
    with tempfile.TemporaryDirectory(prefix="qsegment-imxconv-") as tmp:
        env = {**os.environ, "TMPDIR": tmp, "TMP": tmp, "TEMP": tmp}
        proc = subprocess.run([converter(), *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise _failure(proc, what)
    return proc


def _failure(proc: subprocess.CompletedProcess, what: str) -> Imx500Error:
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines()
             if not line.lstrip().startswith("at ")]  # Java stack frames say little
    tail = "\n".join(lines[-12:])
    return Imx500Error(f"imxconv-pt failed ({what}, exit code {proc.returncode}); "
                       f"its last lines:\n{tail}")


def onnx_size(path: str | Path) -> int:
    """The square input size an MCT ONNX was exported for."""
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return int(dims[-1].dim_value)


def size_multiple(card: Card) -> int:
    """The network's stride, from the card `qsegment quantize` wrote beside the ONNX (older
    cards name only the model, which is then built to ask)."""
    if "size_multiple" in card:
        return int(card["size_multiple"])
    from ...models import create_model

    return create_model(card.model, **card.model_args).size_multiple


def resize_onnx(src: str | Path, dst: str | Path, size: int) -> Path:
    """Copy of an MCT ONNX for size x size inputs: the spatial dims of every activation
    (the tensors with the dynamic batch axis) are scaled; weights are untouched. The
    converter needs these shapes in ``value_info``."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    old = int(graph.input[0].type.tensor_type.shape.dim[-1].dim_value)
    for value in (*graph.input, *graph.output, *graph.value_info):
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[0].dim_param:
            for dim in dims[2:]:
                if dim.dim_value * size % old:
                    raise Imx500Error(f"{size} is not a size this network can take: use a "
                                      "multiple of its stride")
                dim.dim_value = dim.dim_value * size // old
    onnx.save(model, str(dst))
    return Path(dst)


def _parse_report(path: Path, size: int) -> MemoryReport:
    report = json.loads(path.read_text())["Memory Report"]

    def nbytes(key: str) -> int:
        return int(str(report[key]).removesuffix("B"))

    return MemoryReport(size=size, required=nbytes("Memory Usage"),
                        available=nbytes("Total Memory Available On Chip"),
                        weights=nbytes("Model Memory Physical Size"),
                        activations=nbytes("Runtime Memory Physical Size"),
                        fits=bool(report["Fit In Chip"]))


def memory_report(onnx_path: str | Path, size: int | None = None) -> MemoryReport:
    """The converter's memory report (about 15 s) for the ONNX at ``size`` (default: its own).

    When the network does not fit, the converter exits with an error but still writes
    the report (with the smallest figure its tiling advisor found): that is a result.
    """
    size = size or onnx_size(onnx_path)
    what = f"memory report at {size}x{size}"
    with tempfile.TemporaryDirectory(prefix="qsegment-memory-") as tmp:
        model = resize_onnx(onnx_path, Path(tmp) / f"{NETWORK}.onnx", size)
        report = Path(tmp) / "out" / f"{NETWORK}_MemoryReport.json"
        proc = _run(["-i", str(model), "-o", str(report.parent), "--memory-report",
                     "--report-size-unit", "B", *CONVERTER_FLAGS], what, check=False)
        if not report.is_file():
            raise _failure(proc, what)
        return _parse_report(report, size)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fit_cache(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + ".imx500-fit.json")


def _fit_key(onnx_path: Path) -> dict:
    """What the memory figures depend on: the ONNX (its SHA-256), the converter's version
    and the flags it runs with."""
    return {"onnx_sha256": _sha256(onnx_path),
            "converter": package_versions().get("imx500-converter"),
            "converter_flags": CONVERTER_FLAGS}


def _cached_fit(onnx_path: Path) -> tuple[int | None, dict[int, MemoryReport]] | None:
    """The size search's answer and reports cached beside the ONNX, if they were measured
    on this ONNX by this converter with these flags (None: search again)."""
    path = _fit_cache(onnx_path)
    if not path.is_file():
        return None
    cached = json.loads(path.read_text())
    if any(cached.get(k) != v for k, v in _fit_key(onnx_path).items()):
        return None
    return cached["largest_size"], {int(k): MemoryReport(**v)
                                    for k, v in cached["reports"].items()}


def largest_fitting_size(onnx_path: str | Path, multiple: int | None = None, cache: bool = True
                         ) -> tuple[int | None, dict]:
    """(largest square size that fits the IMX500, {size: MemoryReport} of the sizes tried).

    The search starts at the ONNX's own size and aims by the activation memory, which
    grows with the area. Memory is not quite monotone in the size (the converter tiles
    large layers: 296 can need less than 288), so the answer is the edge the search
    bracketed: it fits and the next size multiple does not. The answer is cached in
    ``NAME.imx500-fit.json`` beside the ONNX, keyed by its SHA-256, the converter's
    version and its flags.
    """
    onnx_path = require_mct_onnx(onnx_path)
    multiple = multiple or size_multiple(Card.beside(onnx_path))
    if cache and (cached := _cached_fit(onnx_path)):
        return cached
    reports: dict[int, MemoryReport] = {}

    def usage(size: int) -> float:
        """The activations' share of the memory the rest leaves (> 1 where the
        converter's verdict is that it does not fit)."""
        report = reports[size] = memory_report(onnx_path, size)  # a size is probed once
        fixed = report.required - report.activations
        share = report.activations / max(report.available - fixed, 1)
        return min(share, 1.0) if report.fits else max(share, 1.0 + 1e-9)

    largest = search_largest(usage, onnx_size(onnx_path), multiple,
                             "the IMX500's memory left for activations")
    if cache:
        write_json(_fit_cache(onnx_path), {
            **_fit_key(onnx_path), "largest_size": largest,
            "reports": {str(k): asdict(v) for k, v in sorted(reports.items())}})
    return largest, reports


def _tensor_info(dnn_params: Path) -> dict:
    """Input and output quantization of the compiled network, from ``dnnParams.xml``."""
    root = ET.parse(dnn_params).getroot()
    info = {}
    for kind in ("inputTensor", "outputTensor"):
        node = root.find(f".//{kind}")
        if node is None:
            raise Imx500Error(f"{dnn_params}: the converter wrote no {kind}")
        dims = [int(d.attrib["size"]) for d in node.iter("dimension")]
        info[kind] = {"scale": float(node.attrib["scale"]), "format": node.get("format"),
                      "bits": int(node.attrib["bitsPerElement"]), "dims": dims}
    return info


def normalisation_note(size: int, tensors: dict, threshold: float, phases: int = 1,
                       outputs: Sequence[str] = ("vessel",)) -> dict:
    """What the camera must feed the network and how to read its output (``phases``: the
    sensor returns phases x phases interleaved sub-maps, see ``output_phases``;
    ``outputs``: the maps, each with its phases together, as the model's ``outputs``)."""
    scale_in, scale_out = tensors["inputTensor"]["scale"], tensors["outputTensor"]["scale"]
    maps = ("vessel logits" if len(outputs) == 1 else
            f"{len(outputs)} maps ({', '.join(outputs)}): the vessel logit, then the "
            "artery, vein and uncertain logits given a vessel (softmax over the three)")
    return {
        "input": {
            "shape": [1, 3, size, size], "colour_order": "RGB",
            "model_expects": "RGB in [0, 1] (the training images divided by 255), no mean/std",
            "sensor_tensor": f"{tensors['inputTensor']['bits']}-bit "
                             f"{tensors['inputTensor']['format']}, scale {scale_in}",
            "camera_must_apply": (
                "nothing beyond the ISP's 8-bit RGB: the network's first quantizer reads a "
                f"pixel value v (0..255) as v * {scale_in} = v/{round(1 / scale_in)}, i.e. "
                "[0, 1] as in training; do not subtract a mean, do not divide by a std, do "
                "not swap to BGR"),
            "region_of_interest": "the whole fundus as a centred square of the sensor "
                                  "(IMX500.set_auto_aspect_ratio()); the ISP scales it to "
                                  f"{size}x{size}",
        },
        "output": {
            "shape": [1, len(outputs) * phases**2, size // phases, size // phases],
            "outputs": list(outputs),
            "meaning": maps if phases == 1 else (
                f"the {phases}x{phases} phases of {size}x{size} {maps}, each map's phases "
                "together: interleave them (depth-to-space, as torch's pixel_shuffle)"),
            "sensor_tensor": f"{tensors['outputTensor']['bits']}-bit "
                             f"{tensors['outputTensor']['format']}, scale {scale_out}",
            "probability": "sigmoid(logit)", "threshold": threshold,
        },
    }


def export_imx500(onnx_path: str | Path, out: str | Path, size: int | None = None
                  ) -> ExportNote:
    """Convert an MCT-quantized ONNX for the IMX500 into the folder ``out``.

    ``out`` receives ``packerOut.zip``, ``qsegment_MemoryReport.json``, ``dnnParams.xml``,
    the ONNX at the converted size and ``deploy.json``, the returned note (size, memory,
    normalisation the camera must apply, threshold, conversion time). ``size`` defaults to
    the largest square that fits. A size that does not fit raises
    :class:`ModelTooLargeError`.
    Everything is built in a temporary folder beside ``out`` and moved there at the end.
    """
    onnx_path = require_mct_onnx(onnx_path)
    converter()  # fail early on a missing Java or converter
    card = Card.beside(onnx_path)
    multiple = size_multiple(card)
    calibrated = onnx_size(onnx_path)
    largest = None
    if size is None:
        largest, reports = largest_fitting_size(onnx_path, multiple)
        size = largest or multiple
    else:  # the size search's reports, where it measured this size, spare the converter
        _, reports = _cached_fit(onnx_path) or (None, {})
    check_size(size, multiple, Imx500Error)
    report = reports.get(size) or memory_report(onnx_path, size)
    if not report.fits:
        largest, _ = largest_fitting_size(onnx_path, multiple)
        raise ModelTooLargeError(size, report.required, report.available, largest)
    with atomic_folder(Path(out)) as staging:
        model = resize_onnx(onnx_path, staging / f"{NETWORK}.onnx", size)
        start = time.perf_counter()
        _run(["-i", str(model), "-o", str(staging), "--overwrite-output",
              "--report-size-unit", "B", *CONVERTER_FLAGS], f"conversion at {size}x{size}")
        seconds = time.perf_counter() - start
        if not (staging / "packerOut.zip").is_file():
            raise Imx500Error("imxconv-pt finished without writing packerOut.zip")
        threshold = card.threshold_value
        phases = int(card.get("output_phases", 1))
        details = {
            "network": NETWORK, "size": size, "source_onnx": str(onnx_path),
            "calibrated_size": calibrated, "method": card.get("method"),
            "memory": asdict(_parse_report(staging / f"{NETWORK}_MemoryReport.json", size)),
            **({"largest_fitting_size": largest} if largest else {}),
            "output_phases": phases,
            **normalisation_note(size, _tensor_info(staging / "dnnParams.xml"), threshold,
                                 phases, card.get("outputs", ["vessel"])),
            "conversion_s": round(seconds, 1),
            "converter": package_versions().get("imx500-converter"),
            "next": "on the Raspberry Pi: imx500-package -i packerOut.zip -o out; "
                    "qsegment camera out/network.rpk --info deploy.json",
        }
        if calibrated != size:
            details["warning"] = (f"quantized (calibrated) at {calibrated}x{calibrated}, converted "
                               f"at {size}x{size}: re-run `qsegment quantize --size {size}` "
                               "to calibrate at the deployment size")
        files = (*sorted(p.name for p in staging.iterdir()), "deploy.json")
        note = ExportNote("imx500", Path(out), files, details)
        note.write(staging / "deploy.json")
    return note



def report_lines(note: ExportNote) -> list[str]:
    """What the terminal shows after an IMX500 export."""
    details = note.details
    memory, size = details["memory"], details["size"]
    lines = [f"imx500: {size}x{size} uses {memory['required'] / 2**20:.2f} of "
             f"{memory['available'] / 2**20:.2f} MB; converted in "
             f"{details['conversion_s']:.0f} s",
             f"camera input: {details['input']['camera_must_apply']}"]
    if "warning" in details:
        lines.append(f"warning: {details['warning']}")
    return lines
