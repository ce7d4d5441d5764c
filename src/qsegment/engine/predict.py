"""Segmenting one's own fundus images: any size, channel layout and bit depth.

:class:`Segmenter` wraps a runtime (:mod:`qsegment.runtimes`) with the model's decision
threshold. Images larger than the tile (by default the one shipped with the weights,
400x1008) are processed in overlapping tiles of that one shape, whose origins lie on the
network's pooling grid; each tile keeps only its interior, so the stitched map has no
seams, memory stays bounded by the tile size and no image size needs a new interpreter.
8-bit RGB on a runtime that takes it (``tflite-int8``) goes from pixels to the mask in
numpy alone.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..datasets.chasedb1 import ChaseDB1
from ..errors import QsegmentError, UsageError
from ..files import atomic_write
from ..images import ImageError, collect_inputs, read_rgb, round_up, to_rgb_float
from ..images import overlay as tint_vessels
from ..pretrained import DEFAULT_MODEL, read_card, resolve_checkpoint
from ..runtimes import DEFAULT_RUNTIME, open_runtime, open_weights
from ..runtimes.base import Runtime
from .infer import Scale, check_scale, predict_proba, rescaled, scale_factor, symmetries

if TYPE_CHECKING:
    from torch import nn


# Without shipped weights' tiling (Runtime.tile_shape, tile_margin): square tiles, and a
# margin of at least the receptive radius (Q-Segment's is 52 px,
# qsegment.models.profile.receptive_radius), which makes the stitched map equal the whole
# one (tests/test_predict.py); a multiple of the network's stride keeps tiles on its grid.
TILE = 1024
TILE_OVERLAP = 64


def tile_windows(length: int, tile: int, margin: int, grid: int
                 ) -> list[tuple[int, int, int, int]]:
    """Windows (start, stop, keep_start, keep_stop) that cover an axis of ``length`` with
    as few tiles of ``tile`` as can each keep their interior (``margin`` from a cut edge;
    starts on the ``grid``), all of that same length: one interpreter serves every image
    size. The kept parts partition the axis; the last window may run past the end (the
    runtime pads it)."""
    if length <= tile:
        return [(0, length, 0, length)]
    padded = round_up(length, grid)
    step = tile - 2 * margin
    n = -(-(padded - 2 * margin) // step)
    while True:
        starts = [(i * (padded - tile) // (n - 1)) // grid * grid for i in range(n)]
        if all(b - a <= step for a, b in pairwise(starts)):
            break
        n += 1
    cuts = [(b + margin + a + tile - margin) // 2 for a, b in pairwise(starts)]
    keeps = zip([0, *cuts], [*cuts, length], strict=True)
    return [(s, min(s + tile, length), k0, k1) for s, (k0, k1) in zip(starts, keeps, strict=True)]


@dataclass(frozen=True)
class Prediction:
    """A vessel probability map and its binary mask at the input's size."""

    probability: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    threshold: float
    scale: float = 1.0  # the factor the image was resized by before the network


class Segmenter:
    """A runtime plus the model's threshold, ready for images of any size: ``model`` is a
    runtime (:mod:`qsegment.runtimes`) or a PyTorch module run on ``runtime`` (``weights``:
    its .safetensors file, beside which the int8 runtimes find their files), optionally
    averaging ``tta`` views (:func:`~qsegment.engine.infer.symmetries`: more accurate, one
    pass per view).

    >>> seg = Segmenter.from_pretrained()              # the shipped Q-Segment
    >>> out = seg.predict(np.asarray(PIL.Image.open("fundus.jpg")))
    >>> out.mask.shape == out.probability.shape
    """

    def __init__(self, model: nn.Module | Runtime, threshold: float = 0.5,
                 tile: int | tuple[int, int] | None = None, overlap: int | None = None,
                 runtime: str = "torch",
                 weights: Path | None = None, tta: str = "none", name: str | None = None,
                 scale: Scale = "auto", fov_diameter: float = ChaseDB1.fov_diameter) -> None:
        symmetries(tta)  # an unknown mode fails here, not at the first image
        check_scale(scale)
        self.scale, self.fov_diameter = scale, fov_diameter
        if isinstance(model, Runtime):
            self.runner, self.model = model, getattr(model, "model", None)
        else:
            self.model = model.eval()
            self.runner = open_runtime(runtime, self.model, weights)
        multiple = self.runner.size_multiple
        tile = tile or self.runner.tile_shape or TILE
        tile = (tile, tile) if isinstance(tile, int) else tuple(tile)
        overlap = overlap or self.runner.tile_margin or TILE_OVERLAP
        if any(t % multiple or t <= 2 * overlap for t in tile) or overlap % multiple:
            raise UsageError(f"tile ({'x'.join(map(str, tile))}) and overlap ({overlap}) must "
                             f"be multiples of {multiple} with tile > 2 * overlap")
        self.threshold = threshold
        self.tile, self.overlap = tile, overlap
        self.runtime = self.runner.name
        self.tta = tta
        self.name = name or type(self.model or self.runner).__name__  # how outputs name it

    @classmethod
    def from_pretrained(cls, source: str | Path = DEFAULT_MODEL, threshold: float | None = None,
                        runtime: str = DEFAULT_RUNTIME, threads: int | None = None,
                        **kwargs: object) -> Segmenter:
        """A shipped model by name (or a run folder / checkpoint), with its card's threshold,
        on the fastest CPU runtime by default. The int8 runtimes run the files shipped
        beside the weights (``NAME.int8.json`` lists them) without PyTorch, on ``threads``
        threads (default: one per CPU)."""
        weights = resolve_checkpoint(source)
        card = read_card(weights)
        kwargs.setdefault("name", card.name or str(source))
        return cls(open_weights(runtime, weights, threads),
                   card.threshold_value if threshold is None else threshold, **kwargs)

    def predict(self, image: np.ndarray | Image.Image) -> Prediction:
        """The probability map and mask of an RGB, gray, RGBA, 8- or 16-bit image, at the
        input's size; the network sees it at the training scale (``scale``,
        :func:`~qsegment.engine.infer.scale_factor`). 8-bit RGB goes to an int8 runtime as
        it is."""
        array = np.asarray(image) if isinstance(image, np.ndarray) or image.mode == "RGB" else None
        if (array is not None and array.dtype == np.uint8 and array.ndim == 3
                and array.shape[2] == 3 and self.tta == "none" and self.runner.accepts_uint8):
            rgb, probability = array, self.runner.probability_uint8  # 8-bit RGB to int8
        else:
            rgb = to_rgb_float(image)
            def probability(part: np.ndarray) -> np.ndarray:
                return predict_proba(self.runner, part, tta=self.tta)
        factor = scale_factor(rgb, self.scale, self.fov_diameter)
        prob = rescaled(rgb, factor, lambda scaled: self._tiled(scaled, probability))
        return Prediction(prob, prob >= self.threshold, self.threshold, factor)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """Probability map of an (H, W, 3) float image at its own scale, tiled when it
        exceeds ``tile``."""
        return self._tiled(rgb, lambda part: predict_proba(self.runner, part, tta=self.tta))

    def _tiled(self, image: np.ndarray, probability: Callable[[np.ndarray], np.ndarray]
               ) -> np.ndarray:
        """``probability`` of the whole image, or of overlapping tiles whose interiors are
        stitched when the image exceeds ``tile`` (:func:`tile_windows`)."""
        h, w = image.shape[:2]
        if h <= self.tile[0] and w <= self.tile[1]:
            return probability(image)
        out = np.empty((h, w), dtype=np.float32)
        grid = self.runner.size_multiple
        for y0, y1, ky0, ky1 in tile_windows(h, self.tile[0], self.overlap, grid):
            for x0, x1, kx0, kx1 in tile_windows(w, self.tile[1], self.overlap, grid):
                tile = probability(image[y0:y1, x0:x1])
                out[ky0:ky1, kx0:kx1] = tile[ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        return out


@dataclass
class RunSummary:
    """What ``predict_files`` did: written outputs per input and failures with reasons."""

    written: dict[Path, list[Path]]
    failed: list[tuple[str, str]]


OnResult = Callable[[Path, np.ndarray, Prediction], None]


def output_folder(out: str | Path) -> Path:
    """``out``, created if needed; an existing file there is refused."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImageError(f"{out}: output path exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def plan_outputs(files: list[Path], out: Path, kinds: list[str], failed: list[tuple[str, str]]
                 ) -> list[tuple[Path, dict[str, Path]]]:
    """Each input with its output files (``out/STEM_KIND.png``), refusing an output name
    that another input already claimed or that would overwrite an input (appended to
    ``failed``). ``qsegment predict`` and ``qsegment batch`` name outputs alike."""
    sources = {f.resolve() for f in files}
    claimed: dict[str, Path] = {}
    plan = []
    for path in files:
        stem = path.stem
        if stem in claimed and claimed[stem] != path:
            failed.append((str(path), f"output name {stem}_mask.png collides with the output of "
                                      f"{claimed[stem]}; rename one of them"))
            continue
        targets = {kind: out / f"{stem}_{kind}.png" for kind in kinds}
        if clash := [t for t in targets.values() if t.resolve() in sources]:
            failed.append((str(path), f"would overwrite the input {clash[0]}; choose another -o"))
            continue
        claimed[stem] = path
        plan.append((path, targets))
    return plan


def write_outputs(targets: dict[str, Path], image: np.ndarray, result: Prediction
                  ) -> dict[str, str]:
    """Each requested PNG (``mask``, ``prob``, ``overlay``) written atomically; returns the
    SHA-256 of each, with which ``qsegment batch`` recognises complete outputs."""
    arrays = {"mask": lambda: result.mask.astype(np.uint8) * 255,
              "prob": lambda: np.round(result.probability * 255).astype(np.uint8),
              "overlay": lambda: tint_vessels(image, result.mask)}
    digests = {}
    for kind, target in targets.items():
        buffer = io.BytesIO()
        Image.fromarray(arrays[kind]()).save(buffer, format="PNG")
        data = buffer.getvalue()
        atomic_write(target, lambda p, data=data: p.write_bytes(data))
        digests[kind] = hashlib.sha256(data).hexdigest()
    return digests


def predict_files(segmenter: Segmenter, inputs: list[str], out: Path, probability: bool = False,
                  overlay: bool = False, progress: bool = True,
                  on_result: OnResult | None = None, workers: int = 2) -> RunSummary:
    """Segment every input into ``out``: ``NAME_mask.png`` (0/255, the input's size), and on
    request ``NAME_prob.png`` (probability x 255) and ``NAME_overlay.png``. Each file is
    written atomically; a failing input is reported and the others go on. ``workers``
    threads read the next images and write the last ones' PNGs while the network runs
    (8-bit files stay 8-bit: the int8 runtime's fast path). ``on_result`` receives each
    (path, image, prediction), e.g. to measure biomarkers; an error it raises for bad
    input fails that image only."""
    from tqdm import tqdm

    out = output_folder(out)
    files, failed = collect_inputs(inputs)
    kinds = ["mask", *(["prob"] if probability else []), *(["overlay"] if overlay else [])]
    plan = plan_outputs(files, out, kinds, failed)
    written: dict[Path, list[Path]] = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reads = [pool.submit(read_rgb, path) for path, _ in plan[:workers + 1]]
        writes = []
        for i, (path, targets) in enumerate(tqdm(plan, desc="predict", unit="image",
                                                 disable=not progress)):
            if i + workers + 1 < len(plan):  # keep the next images decoding
                reads.append(pool.submit(read_rgb, plan[i + workers + 1][0]))
            try:
                image = reads[i].result()
            except ImageError as err:
                failed.append((str(path), str(err).removeprefix(f"{path}: ")))
                continue
            result = segmenter.predict(image)
            writes.append(pool.submit(write_outputs, targets, image, result))
            written[path] = list(targets.values())
            if on_result is not None:
                try:
                    on_result(path, image, result)
                except QsegmentError as err:
                    failed.append((str(path), str(err)))
        for done in writes:
            done.result()  # a failed write (disk full) is an error of the run, not one image
    return RunSummary(written, failed)
