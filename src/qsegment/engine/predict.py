"""Segmenting one's own fundus images: any size, channel layout and bit depth.

:class:`Segmenter` wraps a runtime (:mod:`qsegment.runtimes`) with the model's decision
threshold. Images larger than ``tile`` pixels on a side are processed in overlapping
tiles whose origins lie on the network's pooling grid; each tile keeps only its
interior, so the stitched map has no seams and memory stays bounded by the tile size.
8-bit RGB on a runtime that takes it (``tflite-int8``) goes from pixels to the mask in
numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..images import ImageError, collect_inputs, read_image, to_rgb_float
from ..pretrained import DEFAULT_MODEL, load_model, resolve_checkpoint
from ..runtimes import DEFAULT_RUNTIME, open_runtime
from .infer import predict_proba, symmetries

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Prediction:
    """A vessel probability map and its binary mask at the input's size."""

    probability: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    threshold: float


class Segmenter:
    """A model plus its threshold, ready for images of any size, on one of the checkpoint
    runtimes (:func:`qsegment.runtimes.checkpoint_runtimes`; ``weights``: its
    .safetensors file, beside which the int8 runtimes find their files), optionally
    averaging ``tta`` views (:func:`~qsegment.engine.infer.symmetries`: more accurate,
    one pass per view).

    >>> seg = Segmenter.from_pretrained()              # the shipped Q-Segment
    >>> out = seg.predict(np.asarray(PIL.Image.open("fundus.jpg")))
    >>> out.mask.shape == out.probability.shape
    """

    def __init__(self, model: nn.Module, threshold: float = 0.5, tile: int = 1024,
                 overlap: int = 128, runtime: str = "torch", weights: Path | None = None,
                 tta: str = "none") -> None:
        multiple = model.size_multiple
        if tile % multiple or overlap % multiple or tile <= 2 * overlap:
            raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of "
                             f"{multiple} with tile > 2 * overlap")
        symmetries(tta)  # an unknown mode fails here, not at the first image
        self.model = model.eval()
        self.threshold = threshold
        self.tile, self.overlap = tile, overlap
        self.runtime = runtime
        self.tta = tta
        self.runner = open_runtime(runtime, self.model, weights)

    @classmethod
    def from_pretrained(cls, source: str | Path = DEFAULT_MODEL, threshold: float | None = None,
                        runtime: str = DEFAULT_RUNTIME, **kwargs: object) -> Segmenter:
        """A shipped model by name (or a run folder / checkpoint), with its card's threshold,
        on the fastest CPU runtime by default; int8 runtimes use the files shipped beside
        the weights (``NAME.int8.onnx``, ``NAME.int8-observers.safetensors``,
        ``NAME.int8-HxW.tflite``)."""
        model, card = load_model(source)
        if threshold is None:
            threshold = card.threshold_value
        return cls(model, threshold, runtime=runtime, weights=resolve_checkpoint(source),
                   **kwargs)

    def predict(self, image: np.ndarray | Image.Image) -> Prediction:
        array = np.asarray(image) if isinstance(image, np.ndarray) or image.mode == "RGB" else None
        if (array is not None and array.dtype == np.uint8 and array.ndim == 3
                and array.shape[2] == 3 and max(array.shape[:2]) <= self.tile
                and self.tta == "none" and self.runner.accepts_uint8):
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

    from ..files import atomic_write
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
