"""Segmenting one's own fundus images: any size, channel layout and bit depth.

:class:`Segmenter` wraps a model with its decision threshold. Images larger than
``tile`` pixels on a side are processed in overlapping tiles whose origins lie on
the network's pooling grid; each tile keeps only its interior, so the stitched
map has no seams and memory stays bounded by the tile size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

from ..pretrained import DEFAULT_MODEL, load_model, resolve_checkpoint
from .infer import predict_proba, symmetries

RUNTIMES = ("tflite-int8", "torch", "onnx", "onnx-int8")
DEFAULT_RUNTIME = "tflite-int8"  # the fastest on a CPU (docs/BENCHMARKS.md)


def _onnx_runner(model: nn.Module, int8: bool, int8_onnx: Path | None) -> object:
    """The model in ONNX Runtime: exported to fp32 ONNX in a temporary folder, or for
    int8 the given statically quantized file, else one quantized now on CHASE_DB1
    training images (full resolution)."""
    import tempfile

    from ..export.onnx import OnnxModel, export_onnx, quantize_onnx_int8

    multiple = getattr(model, "size_multiple", 8)
    if int8 and int8_onnx is not None:
        return OnnxModel(int8_onnx, size_multiple=multiple)
    with tempfile.TemporaryDirectory(prefix="qsegment-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        if int8:
            path = quantize_onnx_int8(path, Path(tmp) / "model.int8.onnx")
        return OnnxModel(path, size_multiple=multiple)


def _runner(model: nn.Module, runtime: str, int8_onnx: Path | None,
            int8_tflite: Path | None) -> object:
    """What runs ``model`` for ``runtime``: the module itself, or an array-callable."""
    if runtime == "torch":
        return model
    if runtime == "tflite-int8":
        from ..export.tflite import LiteRtInt8Model, observers_for

        sidecar = None if int8_tflite is None else Path(f"{int8_tflite}-observers.safetensors")
        return LiteRtInt8Model(model, observers_for(model, sidecar), prebuilt=int8_tflite)
    return _onnx_runner(model, runtime == "onnx-int8", int8_onnx)


class ImageError(ValueError):
    """An input that cannot be read as an image; the message names the file."""


def to_rgb_float(image: np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from a PIL image or array: grayscale is repeated
    over the channels, alpha is dropped, 16-bit and float inputs are scaled."""
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image, dtype=np.float32)
            image = array / (65535.0 if image.mode.startswith("I;16") or array.max() > 255
                             else 255.0)
        elif image.mode == "F":
            image = np.asarray(image, dtype=np.float32)
        else:
            image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {array.shape}")
    if array.shape[2] in (1, 2):  # gray, gray + alpha
        array = np.repeat(array[..., :1], 3, axis=2)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    array = array.astype(np.float32)
    if array.min() < 0 or array.max() > 1:
        raise ValueError("float images must lie in [0, 1]")
    return array


def read_image(path: str | Path) -> np.ndarray:
    """Read any image file Pillow understands as (H, W, 3) float32 RGB in [0, 1]."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode fully: truncated files fail here
            return to_rgb_float(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"{path}: not a readable image ({err})") from err


@dataclass(frozen=True)
class Prediction:
    """A vessel probability map and its binary mask at the input's size."""

    probability: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    threshold: float


class Segmenter:
    """A model plus its threshold, ready for images of any size, on one of
    :data:`RUNTIMES` (``int8_onnx`` / ``int8_tflite``: the files of the int8 runtimes,
    see :meth:`from_pretrained`), optionally averaging ``tta`` views
    (:func:`~qsegment.engine.infer.symmetries`: more accurate, one pass per view).

    >>> seg = Segmenter.from_pretrained()              # the shipped Q-Segment
    >>> out = seg.predict(np.asarray(PIL.Image.open("fundus.jpg")))
    >>> out.mask.shape == out.probability.shape
    """

    def __init__(self, model: nn.Module, threshold: float = 0.5, tile: int = 1024,
                 overlap: int = 128, runtime: str = "torch", int8_onnx: Path | None = None,
                 int8_tflite: Path | None = None, tta: str = "none") -> None:
        multiple = 64  # a multiple of every registered model's total stride (<= 32)
        if tile % multiple or overlap % multiple or tile <= 2 * overlap:
            raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of "
                             f"{multiple} with tile > 2 * overlap")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
        self.model = model.eval()
        self.threshold = threshold
        self.tile, self.overlap = tile, overlap
        self.runtime = runtime
        self.tta = tta
        symmetries(tta)  # an unknown mode fails here, not at the first image
        self.runner = _runner(self.model, runtime, int8_onnx, int8_tflite)

    @classmethod
    def from_pretrained(cls, source: str | Path = DEFAULT_MODEL, threshold: float | None = None,
                        runtime: str = DEFAULT_RUNTIME, **kwargs: object) -> Segmenter:
        """A shipped model by name (or a run folder / checkpoint), with its card's threshold,
        on the fastest CPU runtime by default. The int8 runtimes use what sits beside the
        weights: ``NAME.int8.onnx``; ``NAME.int8-observers.safetensors`` (calibrated
        ranges) and ``NAME.int8-HxW.tflite`` (built models) for ``tflite-int8``."""
        model, card = load_model(source)
        weights = resolve_checkpoint(source)
        sidecar = weights.with_suffix(".int8.onnx")
        kwargs.setdefault("int8_onnx", sidecar if sidecar.is_file() else None)
        kwargs.setdefault("int8_tflite", weights.with_suffix(".int8"))
        if threshold is None:
            threshold = float((card.get("threshold") or {}).get("value", 0.5))
        return cls(model, threshold, runtime=runtime, **kwargs)

    def predict(self, image: np.ndarray | Image.Image) -> Prediction:
        array = np.asarray(image) if isinstance(image, np.ndarray) or image.mode == "RGB" else None
        if (array is not None and array.dtype == np.uint8 and array.ndim == 3
                and array.shape[2] == 3 and max(array.shape[:2]) <= self.tile
                and self.tta == "none" and hasattr(self.runner, "probability_uint8")):
            prob = self.runner.probability_uint8(array)  # 8-bit RGB straight to int8
        else:
            prob = self.probability(to_rgb_float(image))
        return Prediction(prob, prob >= self.threshold, self.threshold)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """Probability map of an (H, W, 3) float image, tiled when it exceeds ``tile``."""
        h, w = rgb.shape[:2]
        if max(h, w) <= self.tile:
            return predict_proba(self.runner, rgb, tta=self.tta)
        out = np.empty((h, w), dtype=np.float32)
        step, margin = self.tile - 2 * self.overlap, self.overlap
        for y in range(0, h, step):
            for x in range(0, w, step):
                y0, x0 = max(0, y - margin), max(0, x - margin)
                y1, x1 = min(h, y + step + margin), min(w, x + step + margin)
                tile = predict_proba(self.runner, rgb[y0:y1, x0:x1], tta=self.tta)
                ye, xe = min(h, y + step), min(w, x + step)
                out[y:ye, x:xe] = tile[y - y0:ye - y0, x - x0:xe - x0]
        return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp")


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files from paths, folders (their images, not recursive) and glob patterns;
    returns (files, [(input, problem)]) so one bad input does not stop the others."""
    import glob

    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            files += matches
            if not matches:
                problems.append((item, "no file matches this pattern"))
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files += matches
            if not matches:
                problems.append((item, "folder holds no image files"))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((item, "no such file or folder"))
    return files, problems


@dataclass
class RunSummary:
    """What ``predict_files`` did: written outputs per input and failures with reasons."""

    written: dict[Path, list[Path]]
    failed: list[tuple[str, str]]


def predict_files(segmenter: Segmenter, inputs: list[str], out: Path, probability: bool = False,
                  overlay: bool = False, progress: bool = True) -> RunSummary:
    """Segment every input into ``out``: ``NAME_mask.png`` (0/255, the input's size), and on
    request ``NAME_prob.png`` (probability x 255) and ``NAME_overlay.png``. Each file is
    written atomically; a failing input is reported and the others go on."""
    from tqdm import tqdm

    from ..checkpoint import atomic_write
    from ..viz import overlay as make_overlay

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImageError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    files, failed = collect_inputs(inputs)
    sources = {f.resolve() for f in files}
    claimed: dict[str, Path] = {}
    written: dict[Path, list[Path]] = {}
    for path in tqdm(files, desc="predict", unit="image", disable=not progress):
        stem = path.stem
        if stem in claimed and claimed[stem] != path:
            failed.append((str(path), f"output name {stem}_mask.png collides with the output of "
                                      f"{claimed[stem]}; rename one of them"))
            continue
        targets = {"mask": out / f"{stem}_mask.png"}
        if probability:
            targets["prob"] = out / f"{stem}_prob.png"
        if overlay:
            targets["overlay"] = out / f"{stem}_overlay.png"
        if clash := [t for t in targets.values() if t.resolve() in sources]:
            failed.append((str(path), f"would overwrite the input {clash[0]}; choose another -o"))
            continue
        claimed[stem] = path
        try:
            rgb = read_image(path)
        except ImageError as err:
            failed.append((str(path), str(err).removeprefix(f"{path}: ")))
            continue
        result = segmenter.predict(rgb)
        arrays = {"mask": result.mask.astype(np.uint8) * 255,
                  "prob": np.round(result.probability * 255).astype(np.uint8),
                  "overlay": make_overlay(rgb, result.mask) if overlay else None}
        for kind, target in targets.items():
            image = Image.fromarray(arrays[kind])
            atomic_write(target, lambda p, im=image: im.save(p, format="PNG"))
        written[path] = list(targets.values())
    return RunSummary(written, failed)
