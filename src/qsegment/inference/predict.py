"""Segmenting one's own fundus images: any size, channel layout and bit depth.

:class:`Segmenter` wraps a runtime (:mod:`qsegment.runtimes`) with the model's decision
threshold. Images larger than the tile (by default the one shipped with the weights,
400x1008) are processed in overlapping tiles of that one shape, whose origins lie on the
network's pooling grid; each tile keeps only its interior, so the stitched map has no
seams, memory stays bounded by the tile size and no image size needs a new interpreter.
8-bit RGB on a runtime that takes it (``tflite-int8``) goes from pixels to the mask in
numpy alone. :func:`predict_files` is ``qsegment predict``: files in, PNGs out.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import count, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from ..datasets.fov import TRAINING_FOV_DIAMETER
from ..errors import QsegmentError, UsageError
from ..files import atomic_write
from ..images import (
    ImageError,
    artery_vein_image,
    collect_inputs,
    encode_gray_png,
    encode_image,
    overlay_classes,
    read_rgb,
    round_up,
    to_rgb_float,
    unit_to_uint8,
)
from ..images import overlay as tint_vessels
from ..pretrained import default_model, is_sensor_file, read_card, resolve_checkpoint
from ..runtimes import DEFAULT_RUNTIME, open_weights
from ..runtimes.base import Runtime
from .arteryvein import (
    calibrated_outputs,
    check_artery_vein,
    check_vote_installed,
    vessel_classes,
    with_vessel_probability,
)
from .calibrate import CalibratedMap, Calibration, calibrated_map
from .maps import Scale, as_runtime, check_scale, predict_outputs, predict_proba, symmetries

if TYPE_CHECKING:
    from torch import nn

    from ..card import Card

log = logging.getLogger(__name__)


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


def fitted_tile(length: int, tile: int, margin: int, grid: int) -> int:
    """The shortest tile, at most ``tile``, that covers an axis of ``length`` in as few
    windows as ``tile`` needs (:func:`tile_windows`): a 2336 px side in tiles of 1024
    with 56 px margins takes three of 856 instead of three of 1024, so the network runs
    on 1.1x the image's pixels, not 1.3x."""
    count = len(tile_windows(length, tile, margin, grid))
    if count == 1:
        return tile
    fitted = round_up(-(-(round_up(length, grid) - 2 * margin) // count) + 2 * margin, grid)
    while fitted < tile and len(tile_windows(length, fitted, margin, grid)) > count:
        fitted += grid
    return min(fitted, tile)


THRESHOLD_RULES = ("auto", "card")
Threshold = str | float  # "auto" (per image), "card" or a probability


@dataclass(frozen=True)
class Prediction:
    """A vessel probability map and its binary mask at the input's size, with the scale
    and the cut found for the image and how (:mod:`qsegment.inference.calibrate`)."""

    probability: np.ndarray  # (H, W) float32 in [0, 1]
    mask: np.ndarray  # (H, W) bool
    threshold: float
    scale: float = 1.0  # the factor the image was resized by before the network
    scale_rule: str = "none"  # "vessels", "fov", "none" or "fixed"
    fov_scale: float | None = None  # the FOV rule's factor, reported beside
    threshold_rule: str = "fixed"  # "auto" (expected Dice, per image), "card" or "fixed"
    quality: tuple[str, ...] = ()  # warnings (calibrate.QUALITY); empty when all looks right
    # (H, W) uint8 artery/vein map of an artery/vein Segmenter: 0 background, 1 artery,
    # 2 vein, 3 uncertain, vessel where ``mask`` is; None for a vessel map alone
    classes: np.ndarray | None = None


class Segmenter:
    """A runtime plus the model's threshold, ready for images of any size, optionally
    averaging test-time views (more accurate, one pass per view).

    >>> seg = Segmenter.from_pretrained()              # the shipped Q-Segment
    >>> out = seg.predict(np.asarray(PIL.Image.open("fundus.jpg")))
    >>> out.mask.shape == out.probability.shape
    """

    def __init__(self, model: nn.Module | Runtime, threshold: float = 0.5,
                 tile: int | tuple[int, int] | None = None, overlap: int | None = None,
                 tta: str = "none", name: str | None = None, scale: Scale = "auto",
                 fov_diameter: float = TRAINING_FOV_DIAMETER,
                 calibration: Calibration | None = None, auto_threshold: bool = False,
                 threshold_source: str = "fixed", artery_vein: bool = False,
                 segment_vote: bool = True) -> None:
        """A Segmenter on ``model``, which any runtime of :mod:`qsegment.runtimes` can be.

        Args:
            model: a runtime (:mod:`qsegment.runtimes`; a PyTorch module on another one
                is :func:`qsegment.export.cpu.open_runtime`'s), or a PyTorch module, run
                on the ``torch`` runtime.
            threshold: the probability from which a pixel is vessel (the fallback of
                ``auto_threshold``).
            tile: the largest image run whole, as N or (height, width); larger ones go
                in overlapping tiles of this shape, or of at most it on a runtime that
                fits its tiles to the image (default: the runtime's own, OpenVINO's
                2048, else the weights' shipped tile, else 1024).
            overlap: each tile's margin, at least the receptive radius (default: the
                weights', else 64).
            tta: test-time views to average: ``none``, ``flip`` or ``d8``
                (:func:`~qsegment.inference.maps.symmetries`).
            name: how outputs name the model (default: its class).
            scale: ``auto`` (the FOV rule, then the vessels' calibre where
                ``calibration`` has it), ``fov`` (the FOV rule only), ``none`` or a factor
                (:func:`~qsegment.inference.calibrate.calibrated_map`).
            fov_diameter: the training images' FOV diameter in pixels.
            calibration: the model's constants for the label-free rules (its card's).
            auto_threshold: cut each image where its own map expects the best Dice
                (needs ``calibration``; else ``threshold``).
            threshold_source: how outputs name ``threshold``'s origin: ``fixed`` or
                ``card``.
            artery_vein: also give each vessel pixel its class (:attr:`Prediction.classes`);
                needs an artery/vein model (``qsegment-av``), on any runtime.
            segment_vote: with ``artery_vein``, one class per vessel segment
                (:func:`~qsegment.inference.arteryvein.vote_segments`; scikit-image);
                else each pixel's own.

        Raises:
            UsageError: an unknown ``tta`` or ``scale``, or a tile and overlap the
                network's stride does not divide, or a tile not over twice the overlap,
                or ``artery_vein`` for a model without artery/vein outputs (a model
                file: at its first map).
            ModuleNotFoundError: ``artery_vein`` with ``segment_vote`` and no scikit-image.
        """
        symmetries(tta)  # an unknown mode fails here, not at the first image
        check_scale(scale)
        self.scale, self.fov_diameter = scale, fov_diameter
        self.runner = as_runtime(model)
        self.model = getattr(self.runner, "model", None)
        multiple = self.runner.size_multiple
        shape = tile or self.runner.tile_shape or TILE
        height, width = (shape, shape) if isinstance(shape, int) else shape
        overlap = overlap or self.runner.tile_margin or TILE_OVERLAP
        if any(t % multiple or t <= 2 * overlap for t in (height, width)) or overlap % multiple:
            raise UsageError(f"tile ({height}x{width}) and overlap ({overlap}) must "
                             f"be multiples of {multiple} with tile > 2 * overlap")
        self.threshold, self.calibration = threshold, calibration
        self.auto_threshold = auto_threshold and calibration is not None
        self.threshold_rule = "auto" if self.auto_threshold else threshold_source
        self.tile, self.overlap = (height, width), overlap
        self.runtime = self.runner.name
        self.tta = tta
        self.name = name or type(self.model or self.runner).__name__  # how outputs name it
        if artery_vein and self.model is not None:  # a model file's channels: at the first map
            check_artery_vein(self.model.outputs, self.name)
        if artery_vein and segment_vote:
            check_vote_installed()
        self.artery_vein, self.segment_vote = artery_vein, segment_vote

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, threshold: Threshold = "auto",
                        runtime: str = DEFAULT_RUNTIME, threads: int | None = None,
                        **kwargs: Any) -> Segmenter:
        """Shipped or trained weights with their card's threshold, on the fastest CPU
        runtime by default (:func:`qsegment.runtimes.open_weights`): the int8 runtimes
        run the files shipped beside the weights (``NAME.int8.json`` lists them) without
        PyTorch; other runtimes, and weights without those files, need PyTorch. An IMX500
        int8 ``.onnx`` is run as the sensor runs it (:meth:`from_sensor_file`), so that
        every command that takes ``--model`` can show what the camera would give.

        Args:
            source: a shipped weights name, a run folder, a .safetensors file or an
                IMX500 int8 .onnx (``qsegment quantize``'s)
                (default: :data:`~qsegment.pretrained.DEFAULT_MODEL`, or with
                ``artery_vein=True`` :data:`~qsegment.pretrained.AV_MODEL`).
            threshold: ``auto`` (a cut per image by the model's calibration,
                ``NAME.calibration.json``, where it has one; else the card's threshold),
                ``card`` (the card's threshold) or a probability.
            runtime: a runtime that runs checkpoints
                (:func:`qsegment.runtimes.checkpoint_runtimes`), or ``auto``: the fastest installed
                for this CPU (:func:`qsegment.runtimes.auto_runtimes`); a sensor file takes
                only ``auto`` (it has one way to run).
            threads: CPU threads of the int8 runtimes (default: one per CPU).
            **kwargs: the constructor's other arguments (``tile``, ``tta``, ``scale``...).

        Returns:
            The Segmenter, named after the card's name (else ``source``).

        Raises:
            CheckpointError: ``source`` is no weights name, run folder or checkpoint.
            UnknownNameError: an unknown ``runtime``; the message lists them.
            ModelFileError: weights that cannot run on ``runtime`` (the manifest says why),
                or an .onnx that is not an IMX500 int8 file.
            UsageError: a sensor file with a ``runtime`` other than ``auto``.
            ModuleNotFoundError: PyTorch is needed (see above) and not installed, or
                MCT's operators (``qsegment[imx500]``) for a sensor file.
        """
        if source is None:
            source = default_model(kwargs.get("artery_vein", False))
        if is_sensor_file(source):
            if runtime != DEFAULT_RUNTIME:
                raise UsageError(f"{source}: an IMX500 int8 file runs as the sensor runs it, "
                                 f"in its ROI tiles on ONNX Runtime: the runtime {runtime} "
                                 "does not apply")
            return cls.from_sensor_file(source, threshold, **kwargs)
        weights = resolve_checkpoint(source)
        card = read_card(weights)
        kwargs.setdefault("name", card.name or str(source))
        return cls._cut_as(threshold, card, open_weights(runtime, weights, threads),
                           calibration=Calibration.beside(weights), **kwargs)

    @classmethod
    def from_sensor_file(cls, path: str | Path, threshold: Threshold = "auto",
                         **kwargs: Any) -> Segmenter:
        """The IMX500's int8 file (``qsegment quantize``'s ``.onnx``) run on the host as the
        camera runs it, in native ROI tiles (:class:`~qsegment.deploy.tiling.SensorTiles`,
        ONNX Runtime with MCT's operators), at the scale and cut of its float model's
        calibration: the maps, classes and measures the sensor would give.

        Args:
            path: the ``.onnx`` with its card (``.json``) beside it.
            threshold: as :meth:`from_pretrained` takes it (the card's, or the float
                model's calibration's cut per image).
            **kwargs: the constructor's other arguments (``artery_vein``, ``scale``...).
        """
        from ..deploy.tiling import SensorTiles

        sensor = SensorTiles.from_file(path)
        kwargs.setdefault("name", Path(path).name)
        return cls._cut_as(threshold, sensor.card, sensor,
                           calibration=sensor.float_calibration(), **kwargs)

    @classmethod
    def _cut_as(cls, threshold: Threshold, card: Card, runner: Runtime, **kwargs: Any
                ) -> Segmenter:
        """A Segmenter on ``runner`` cut as ``threshold`` asks: a probability, ``card``
        (its card's threshold) or ``auto`` (per image, where ``kwargs`` give a
        calibration)."""
        fixed = threshold not in THRESHOLD_RULES
        return cls(runner, float(threshold) if fixed else card.threshold_value,
                   auto_threshold=threshold == "auto",
                   threshold_source="fixed" if fixed else "card", **kwargs)

    def predict(self, image: np.ndarray | Image.Image, name: str = "image") -> Prediction:
        """The vessel map of one photograph; the network sees it at the training scale
        (``scale``), in tiles where it is large. 8-bit RGB goes to an int8 runtime as it
        is.

        Args:
            image: RGB, gray or RGBA, 8- or 16-bit integers or floats in [0, 1], as an
                array or a PIL image.
            name: how a warning about the image (``quality``) names it.

        Returns:
            The probability map and mask at the input's size, with the threshold, the
            factor the image was resized by, how each was found and any quality flags.

        Raises:
            ImageError: an array that is no image (floats outside [0, 1], a shape other
                than (H, W), (H, W, 3) or (H, W, 4)).
        """
        return self._network_pass(image, name)()

    def predict_many(self, images: Iterable[np.ndarray | Image.Image],
                     names: Iterable[str] | None = None) -> Iterator[Prediction]:
        """:meth:`predict` of each image (frames of a stream, a folder's photographs), in
        order, each finished (its cut, an artery/vein model's classes) in a thread while
        the network runs on the next, so that the classes no longer add their whole time
        to the network's (docs/RESULTS.md).

        Args:
            images: what :meth:`predict` takes, read as they are needed.
            names: how warnings name each image (default: ``image 0``, ``image 1``...).
        """
        if names is None:
            return self._pipelined(zip((f"image {i}" for i in count()), images, strict=False))
        return self._pipelined(zip(names, images, strict=True))

    def _pipelined(self, named: Iterable[tuple[str, np.ndarray | Image.Image]]
                   ) -> Iterator[Prediction]:
        """:meth:`predict_many` of (name, image) pairs."""
        with ThreadPoolExecutor(1) as finisher:
            finishing: Future[Prediction] | None = None
            for name, image in named:
                following = finisher.submit(self._network_pass(image, name))
                if finishing is not None:
                    yield finishing.result()
                finishing = following
            if finishing is not None:
                yield finishing.result()

    def _network_pass(self, image: np.ndarray | Image.Image, name: str
                      ) -> Callable[[], Prediction]:
        """:meth:`predict` in two steps: the network runs on ``image`` now, and the call
        returned finishes the prediction from its outputs (the cut, and an artery/vein
        model's classes per vessel segment), so that :meth:`predict_many` can finish one
        image in a thread while the network runs on the next."""
        if self.artery_vein:
            return self._artery_vein_pass(image, name)
        probability: Callable[[np.ndarray], np.ndarray]
        if (pixels := self._pixels(image)) is not None:
            rgb, probability = pixels, self.runner.probability_uint8  # 8-bit RGB to int8
        else:
            rgb, probability = to_rgb_float(image), self._float_probability
        found = calibrated_map(rgb, lambda scaled: self._tiled(scaled, probability), self.scale,
                               self.calibration, self.fov_diameter, name)
        return partial(self._finished, found)

    def _finished(self, found: CalibratedMap, class_scores: np.ndarray | None = None,
                  sigmoids: bool = False) -> Prediction:
        """The prediction of a network pass's map: cut at the image's own cut where
        ``auto_threshold`` found one, else at the Segmenter's, with the classes of each
        vessel pixel where ``class_scores`` are given (:func:`vessel_classes`)."""
        if self.auto_threshold and found.cut is not None:
            threshold, rule = found.cut, "auto"
        else:
            threshold, rule = self.threshold, self.threshold_rule
        mask = found.probability >= threshold
        classes = None if class_scores is None else vessel_classes(
            mask, class_scores, vote=self.segment_vote, sigmoids=sigmoids)
        return Prediction(found.probability, mask, threshold, found.scale, found.scale_rule,
                          found.fov_scale, rule, found.quality, classes)

    def _pixels(self, image: np.ndarray | Image.Image) -> np.ndarray | None:
        """``image`` as the (H, W, 3) uint8 array an int8 runtime takes as it is
        (``accepts_uint8``, no ``tta``); None where it must go in as floats."""
        array = np.asarray(image) if isinstance(image, np.ndarray) or image.mode == "RGB" else None
        if (array is not None and array.dtype == np.uint8 and array.ndim == 3
                and array.shape[2] == 3 and self.tta == "none" and self.runner.accepts_uint8):
            return array
        return None

    def _artery_vein_pass(self, image: np.ndarray | Image.Image, name: str
                          ) -> Callable[[], Prediction]:
        """:meth:`_network_pass` with the class of each vessel pixel: the vessel map from the
        model's channel 0 as for a vessel model, the classes from the others."""
        pixels = self._pixels(image)
        rgb = to_rgb_float(image) if pixels is None else pixels

        def checked(tile: np.ndarray) -> np.ndarray:
            result = with_vessel_probability(predict_outputs(self.runner, tile, tta=self.tta)) \
                if pixels is None else self.runner.outputs_uint8(tile)
            check_artery_vein(len(result), self.name)
            return result

        found, scores = calibrated_outputs(lambda scaled: self._tiled(scaled, checked), rgb,
                                           self.scale, self.calibration, self.fov_diameter, name)
        return partial(self._finished, found, scores, pixels is not None)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        """The vessel probability of an image at its own scale (no rescale), tiled when it
        exceeds ``tile``.

        Args:
            rgb: an (H, W, 3) float32 image in [0, 1].

        Returns:
            The (H, W) float32 probability map.
        """
        return self._tiled(rgb, self._float_probability)

    def _float_probability(self, rgb: np.ndarray) -> np.ndarray:
        """The probability of one whole float image (or tile), averaged over the ``tta``
        views."""
        return predict_proba(self.runner, rgb, tta=self.tta)

    def windows(self, height: int, width: int) -> tuple[list[tuple[int, int, int, int]], ...]:
        """The row and column windows (:func:`tile_windows`) an image of ``height`` x
        ``width`` is cut into: in ``tile``, or in tiles fitted to it
        (:func:`fitted_tile`) on a runtime for which a new shape costs little."""
        grid = self.runner.size_multiple
        return tuple(tile_windows(length, fitted_tile(length, tile, self.overlap, grid)
                                  if self.runner.fits_tiles else tile, self.overlap, grid)
                     for length, tile in zip((height, width), self.tile, strict=True))

    def _tiled(self, image: np.ndarray, probability: Callable[[np.ndarray], np.ndarray]
               ) -> np.ndarray:
        """``probability`` of the whole image, or of overlapping tiles whose interiors are
        stitched when the image exceeds ``tile`` (:meth:`windows`)."""
        h, w = image.shape[:2]
        if h <= self.tile[0] and w <= self.tile[1]:
            return probability(image)
        out: np.ndarray | None = None  # (..., h, w): one map, or every output channel
        rows, columns = self.windows(h, w)
        for y0, y1, ky0, ky1 in rows:
            for x0, x1, kx0, kx1 in columns:
                tile = probability(image[y0:y1, x0:x1])
                if out is None:
                    out = np.empty((*tile.shape[:-2], h, w), dtype=np.float32)
                out[..., ky0:ky1, kx0:kx1] = tile[..., ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
        assert out is not None
        return out


@dataclass
class RunSummary:
    """What ``predict_files`` did: written outputs per input, failures with reasons, and
    each segmented image's threshold, scale and quality (its :class:`Prediction` less the
    maps)."""

    written: dict[Path, list[Path]]
    failed: list[tuple[str, str]]
    predictions: list[Prediction] = field(default_factory=list)


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
    """Each requested PNG (``mask``, ``prob``, ``overlay``; ``av``, the class map as a
    palette image, from an artery/vein Segmenter) written atomically; returns the
    SHA-256 of each, with which ``qsegment batch`` recognises complete outputs."""
    classes = result.classes
    encoders = {"mask": lambda: encode_gray_png(result.mask),
                "prob": lambda: encode_gray_png(unit_to_uint8(result.probability)),
                "overlay": lambda: encode_image(tint_vessels(image, result.mask) if classes is None
                                                else overlay_classes(image, classes)),
                "av": lambda: encode_image(artery_vein_image(cast(np.ndarray, classes)))}
    digests = {}
    for kind, target in targets.items():
        data = encoders[kind]()
        atomic_write(target, data)
        digests[kind] = hashlib.sha256(data).hexdigest()
    return digests


def predict_files(segmenter: Segmenter, inputs: list[str], out: Path, probability: bool = False,
                  overlay: bool = False, progress: bool = True,
                  on_result: OnResult | None = None, workers: int = 2) -> RunSummary:
    """Segment every input into ``out`` (``qsegment predict``). Each file is written
    atomically; a failing input is reported and the others go on. While the network runs
    on one image, threads read the next ones, finish the last one (its cut, an
    artery/vein model's classes: :meth:`Segmenter.predict_many`) and write its PNGs (8-bit
    files stay 8-bit: the int8 runtime's fast path).

    Args:
        segmenter: what segments each image.
        inputs: image files, folders and glob patterns.
        out: the output folder (made if missing): ``NAME_mask.png`` (0/255, the input's
            size) for each input.
        probability: also write ``NAME_prob.png`` (probability x 255).
        overlay: also write ``NAME_overlay.png`` (the vessels tinted on the image; by
            class from an artery/vein Segmenter, which also writes ``NAME_av.png``: arteries
            red, veins blue, uncertain green).
        progress: show a progress bar.
        on_result: called with each (path, image, prediction), e.g. to measure
            biomarkers; a :class:`~qsegment.errors.QsegmentError` it raises fails that
            image only.
        workers: the reading and writing threads.

    Returns:
        The files written for each input, and each failed input with the reason.

    Raises:
        ImageError: ``out`` is a file.
        OSError: an output could not be written (a full disk): the run's error, not one
            image's.
    """
    from tqdm import tqdm

    out = output_folder(out)
    files, failed = collect_inputs(inputs)
    kinds = ["mask", *(["prob"] if probability else []), *(["overlay"] if overlay else []),
             *(["av"] if segmenter.artery_vein else [])]
    plan = plan_outputs(files, out, kinds, failed)
    written: dict[Path, list[Path]] = {}
    predictions: list[Prediction] = []
    ready: deque[tuple[Path, dict[str, Path], np.ndarray]] = deque()  # read, not finished
    with (ThreadPoolExecutor(max(1, workers)) as pool,
          tqdm(total=len(plan), desc="predict", unit="image", disable=not progress) as bar):
        reads = [pool.submit(read_rgb, path) for path, _ in plan[:workers + 1]]

        def readable() -> Iterator[tuple[str, np.ndarray]]:
            for i, (path, targets) in enumerate(plan):
                if i + workers + 1 < len(plan):  # keep the next images decoding
                    reads.append(pool.submit(read_rgb, plan[i + workers + 1][0]))
                try:
                    image = reads[i].result()
                except ImageError as err:
                    failed.append((str(path), str(err).removeprefix(f"{path}: ")))
                    bar.update()
                    continue
                ready.append((path, targets, image))
                yield str(path), image

        writes = []
        for result in segmenter._pipelined(readable()):
            path, targets, image = ready.popleft()
            writes.append(pool.submit(write_outputs, targets, image, result))
            written[path] = list(targets.values())
            empty = np.empty((0, 0), dtype=bool)
            predictions.append(replace(result, probability=empty, mask=empty))
            log.info("%s: threshold %.3f (%s), scale %.3f (%s%s)%s", path, result.threshold,
                     result.threshold_rule, result.scale, result.scale_rule,
                     "" if result.fov_scale is None else f"; fov rule {result.fov_scale:.3f}",
                     "".join(f"; {flag}" for flag in result.quality))
            if on_result is not None:
                try:
                    on_result(path, image, result)
                except QsegmentError as err:
                    failed.append((str(path), str(err)))
            bar.update()
        for done in writes:
            done.result()  # a failed write (disk full) is an error of the run, not one image
    return RunSummary(written, failed, predictions)
