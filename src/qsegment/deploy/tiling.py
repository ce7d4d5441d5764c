"""ROI tiling: the in-sensor network run on k overlapping regions of the fundus, one per
frame, stitched into one map at (near) the sensor's native resolution.

The IMX500 runs the network at a fixed NxN input (its 8 MB hold 312x312 for
Q-Segment, 704x704 for ``qsegment-imx``), and its ISP resizes the inference region of
interest (ROI) into that input. One ROI over the whole fundus shrinks a 920-px field
of view about three times for Q-Segment, and thin vessels vanish. The camera can move
the ROI every frame (picamera2's ``IMX500.set_inference_roi_abs((x, y, width,
height))``, full-sensor pixels), so a plan of k square ROIs of side close to N covers
the field of view at native resolution; the map refreshes once every k frames.

- :func:`plan_tiles` chooses the grid, :func:`native_tiles` the k that reaches native
  resolution;
- :func:`stitch` blends the tiles' probability maps into one frame-sized map;
- :class:`TileCycler` is the camera's state: the ROI to set next and the latest map of
  every tile;
- :func:`simulate` runs an NxN runtime on CHASE_DB1 images the way the sensor would.

Everything is numpy: the camera side runs without PyTorch. Only :func:`sensor_view`
(the simulation of the ISP's resize) imports PyTorch, through
:func:`qsegment.images.network_input`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..images import network_input, resize_map
from ..runtimes.base import Runtime, output_logits, output_probabilities

if TYPE_CHECKING:
    from ..datasets import Sample
    from ..inference.calibrate import Calibration

Roi = tuple[int, int, int, int]  # x, y, width, height: set_inference_roi_abs's order
DEFAULT_HALO = 16  # network pixels of overlap, the band each tile's border is faded over
# (zero padding disturbs the network's outer pixels; its receptive radius is about 52 px,
# qsegment.models.profile.receptive_radius)


@dataclass(frozen=True)
class TilePlan:
    """A grid of ``rows`` x ``cols`` square ROIs of ``side`` frame pixels covering ``box``.

    ``halo`` is the least overlap of neighbouring tiles in network-input pixels (the
    network's border effects are in its own pixels); in frame pixels it is ``overlap``.
    """

    frame: tuple[int, int]  # (height, width)
    box: Roi
    size: int
    halo: int
    rows: int
    cols: int
    side: int
    rois: tuple[Roi, ...]

    @property
    def tiles(self) -> int:
        """How many ROIs, i.e. frames per full map."""
        return len(self.rois)

    @property
    def resize_factor(self) -> float:
        """Network pixels per frame pixel: 1 at native resolution, below 1 when the ISP
        shrinks the ROI into the input."""
        return self.size / self.side

    @property
    def overlap(self) -> int:
        """The least overlap of neighbouring tiles, in frame pixels."""
        return _overlap(self.side, self.size, self.halo)


def fov_box(fov: np.ndarray) -> Roi:
    """The bounding box (x, y, width, height) of a boolean FOV mask's True pixels."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    if not len(rows):
        raise UsageError("the FOV mask is empty: no field of view to tile")
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1))


def _overlap(side: int, size: int, halo: int) -> int:
    """``halo`` network pixels in frame pixels, for tiles of ``side`` resized to ``size``."""
    return math.ceil(halo * side / size)


def _covers(length: int, count: int, side: int, overlap: int) -> bool:
    return count * side - (count - 1) * overlap >= length


def _smallest_side(length: int, count: int, size: int, halo: int) -> int:
    """The least side >= ``size`` with which ``count`` tiles overlapping by ``halo``
    network pixels span ``length`` frame pixels (the closed form, then up to the
    integer rounding of the overlap)."""
    side = max(size, math.floor(length / (count - (count - 1) * halo / size)))
    while not _covers(length, count, side, _overlap(side, size, halo)):
        side += 1
    return side


def _fewest_tiles(length: int, largest_side: int, size: int, halo: int) -> int:
    """The least number of tiles of side at most ``largest_side`` that span ``length``."""
    count = 1
    while _smallest_side(length, count, size, halo) > largest_side:
        count += 1
    return count


def _starts(start: int, length: int, count: int, side: int, frame_length: int) -> list[int]:
    """Tile origins along one axis: one tile centred on the box (kept inside the frame),
    or ``count`` tiles spread evenly from the box's start to its end."""
    if count == 1:
        return [min(max(start + (length - side) // 2, 0), frame_length - side)]
    return [start + round(i * (length - side) / (count - 1)) for i in range(count)]


def _check(frame: tuple[int, int], box: Roi, size: int, halo: int) -> None:
    height, width = frame
    x, y, w, h = box
    if size <= 0 or not 0 <= halo < size:
        raise UsageError(f"need a network input size > 0 and 0 <= halo < size, got size "
                         f"{size}, halo {halo}")
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise UsageError(f"the box {box} (x, y, width, height) is empty or leaves the "
                         f"{width}x{height} frame")
    if size > min(frame):
        raise UsageError(f"the {width}x{height} frame is smaller than the {size}x{size} "
                         "network input: no square ROI of side >= the input fits in it")


def native_tiles(frame: tuple[int, int], size: int, box: Roi | None = None,
                 halo: int = DEFAULT_HALO) -> int:
    """The least k for which :func:`plan_tiles` reaches native resolution (side = N)."""
    box = box or (0, 0, frame[1], frame[0])
    _check(frame, box, size, halo)
    return _fewest_tiles(box[3], size, size, halo) * _fewest_tiles(box[2], size, size, halo)


def plan_tiles(frame: tuple[int, int], size: int, tiles: int, box: Roi | None = None,
               halo: int = DEFAULT_HALO) -> TilePlan:
    """At most ``tiles`` square ROIs covering ``box`` (default: the whole ``frame``,
    given as (height, width)), as small as the count allows but never below ``size``
    (the network's input: a smaller ROI would only be upsampled), inside the frame and
    overlapping by at least ``halo`` network pixels. Of the grids that reach the
    smallest side, the one with the fewest tiles (fewer frames per map).

    Raises ValueError when ``tiles`` squares inside the frame cannot cover the box,
    naming the least count that can.
    """
    box = box or (0, 0, frame[1], frame[0])
    _check(frame, box, size, halo)
    if tiles < 1:
        raise UsageError(f"need at least one tile, got {tiles}")
    x, y, w, h = box
    largest = min(frame)
    side_for_rows = {n: _smallest_side(h, n, size, halo) for n in range(1, tiles + 1)}
    side_for_cols = {n: _smallest_side(w, n, size, halo) for n in range(1, tiles + 1)}
    grids = [(max(side_for_rows[r], side_for_cols[c]), r * c, r, c)
             for r in range(1, tiles + 1) for c in range(1, tiles // r + 1)]
    feasible = [g for g in grids if g[0] <= largest]
    if not feasible:
        least = _fewest_tiles(h, largest, size, halo) * _fewest_tiles(w, largest, size, halo)
        raise UsageError(f"{tiles} tile(s) cannot cover the {w}x{h} box: a square ROI must "
                         f"fit the {frame[1]}x{frame[0]} frame (side <= {largest}) and "
                         f"overlap its neighbours by {halo} network pixels; use at least "
                         f"{least} tiles")
    side, _, rows, cols = min(feasible)
    ys = _starts(y, h, rows, side, frame[0])
    xs = _starts(x, w, cols, side, frame[1])
    rois = tuple((tx, ty, side, side) for ty in ys for tx in xs)
    return TilePlan((frame[0], frame[1]), (x, y, w, h), size, halo, rows, cols, side, rois)


# --- stitching ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Stitched:
    """A frame-sized vessel probability map and where it comes from a tile: 0 (no vessel)
    outside every tile, so ``covered`` says where the map means something."""

    probability: np.ndarray  # (H, W) float32, or (C, H, W) for a network of C outputs
    covered: np.ndarray  # (H, W) bool


def blend_window(height: int, width: int, ramp: float) -> np.ndarray:
    """(height, width) float32 weights: 1 inside, falling linearly to about 0 over
    ``ramp`` pixels towards every border, so that where tiles overlap each one counts
    less near its own border (where the network sees zero padding). Never 0: a pixel
    that only one tile covers keeps that tile's value whatever its weight."""
    def ramp_1d(n: int) -> np.ndarray:
        distance = np.minimum(np.arange(n), np.arange(n)[::-1]) + 0.5
        return np.minimum(distance / max(ramp, 1.0), 1.0).astype(np.float32)

    return np.outer(ramp_1d(height), ramp_1d(width))


def _scaled(roi: Roi, scale: float) -> Roi:
    """``roi`` in a frame scaled by ``scale`` (edges rounded, so neighbours stay adjacent)."""
    x, y, w, h = roi
    x0, y0 = round(x * scale), round(y * scale)
    return x0, y0, round((x + w) * scale) - x0, round((y + h) * scale) - y0


def stitch(maps: Sequence[np.ndarray | None], plan: TilePlan, scale: float = 1.0
           ) -> Stitched:
    """The tiles' probability maps (each NxN, or CxNxN for a network of C outputs; the
    network's output for ``plan.rois[i]``; None for a tile not seen yet) resized back onto
    their ROIs (bilinear) and blended with :func:`blend_window` over the plan's overlap, in
    a frame scaled by ``scale`` (1: the frame's pixels; smaller for a preview)."""
    if len(maps) != plan.tiles:
        raise UsageError(f"the plan has {plan.tiles} tiles, got {len(maps)} maps")
    seen = [m for m in maps if m is not None]
    channels = seen[0].shape[:-2] if seen else ()
    shape = (round(plan.frame[0] * scale), round(plan.frame[1] * scale))
    weighted = np.zeros((*channels, *shape), np.float32)
    weights = np.zeros(shape, np.float32)
    for tile_map, roi in zip(maps, plan.rois, strict=True):
        if tile_map is None:
            continue
        x, y, w, h = _scaled(roi, scale)
        window = blend_window(h, w, plan.overlap * scale)
        resized = (resize_map(tile_map, (h, w)) if tile_map.ndim == 2 else
                   np.stack([resize_map(m, (h, w)) for m in tile_map]))
        weighted[..., y:y + h, x:x + w] += window * resized
        weights[y:y + h, x:x + w] += window
    covered = weights > 0
    probability = np.divide(weighted, weights, out=np.zeros_like(weighted),
                            where=np.broadcast_to(covered, weighted.shape))
    return Stitched(probability, covered)


class TileCycler:
    """The camera's side of tiling: which ROI the sensor should see, and the latest map
    of every tile.

    Each output tensor is credited to the current tile, then the next tile's ROI is due.
    ``settle_frames`` outputs after each ROI change are dropped first, for a sensor
    whose new ROI takes effect only some frames later (not measured: 0 assumes the
    very next frame).
    """

    def __init__(self, plan: TilePlan, settle_frames: int = 0) -> None:
        if settle_frames < 0:
            raise UsageError(f"settle_frames must be >= 0, got {settle_frames}")
        self.plan = plan
        self.settle_frames = settle_frames
        self.index = 0
        self.outputs_on_tile = 0
        self.latest: list[np.ndarray | None] = [None] * plan.tiles

    @property
    def roi(self) -> Roi:
        """The ROI the sensor should be looking at now."""
        return self.plan.rois[self.index]

    @property
    def complete(self) -> bool:
        """Whether every tile has reported at least once (the stitched map is whole)."""
        return all(m is not None for m in self.latest)

    def add(self, probability: np.ndarray) -> Roi | None:
        """Take one frame's (N, N) (or (C, N, N)) probability map; returns the ROI to set
        now when the tile changes, None when it stays (settling, or a one-tile plan)."""
        self.outputs_on_tile += 1
        if self.outputs_on_tile <= self.settle_frames:
            return None
        self.latest[self.index] = probability
        self.index = (self.index + 1) % self.plan.tiles
        self.outputs_on_tile = 0
        return self.roi if self.plan.tiles > 1 else None

    def stitched(self, scale: float = 1.0) -> Stitched:
        """The latest map of every tile seen so far, blended (:func:`stitch`)."""
        return stitch(self.latest, self.plan, scale)

    def status(self) -> str:
        """The current tile and, until every tile has reported, how many have."""
        seen = sum(m is not None for m in self.latest)
        return (f"tile {self.index + 1}/{self.plan.tiles}"
                + ("" if self.complete else f" (map {seen}/{self.plan.tiles})"))


# --- simulation on images ----------------------------------------------------------------

def sensor_view(image: np.ndarray, roi: Roi, size: int) -> np.ndarray:
    """The (1, 3, N, N) input the sensor gives the network for ``roi`` of an (H, W, 3)
    image in [0, 1]: the crop resized as calibration resizes whole images (bilinear,
    antialiased; the ISP's own filter is not documented)."""
    x, y, w, h = roi
    return network_input(image[y:y + h, x:x + w], size, 1)[0]


def calibration_tiles(samples: Sequence[Sample], size: int, count: int, seed: int = 0
                      ) -> tuple[list[str], np.ndarray]:
    """(names, (count, 3, size, size) float32 batch): ``count`` calibration windows as
    ROI tiling at native resolution shows a network the photographs (:func:`native_tiles`
    over each one's FOV box), one window of each photograph in turn, photographs and
    windows drawn at random (seeded); a name is ``PHOTOGRAPH@x,y``."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    if not order.size:
        raise UsageError("calibration needs training photographs, got none")
    names, windows = [], []
    for i in range(count):
        sample = samples[order[i % len(order)]]
        frame, box = sample.fov.shape, fov_box(sample.fov)
        try:
            rois = plan_tiles(frame, size, native_tiles(frame, size, box), box).rois
        except UsageError as err:
            raise UsageError(f"{sample.path}: {err}") from err
        x, y, w, h = rois[rng.integers(len(rois))]
        names.append(f"{sample.name}@{x},{y}")
        windows.append(sensor_view(sample.image, (x, y, w, h), size))
    return names, np.concatenate(windows)


def _fixed_size(runtime: Runtime) -> int:
    """The input side of a fixed-size runtime (what the sensor runs); tiling needs one."""
    if runtime.fixed_size is None:
        raise UsageError(f"ROI tiling needs a fixed-size runtime (an int8 model file), not "
                         f"{runtime.name}")
    return runtime.fixed_size


def roi_probability(runtime: Runtime, image: np.ndarray, roi: Roi) -> np.ndarray:
    """The (N, N) vessel probability of a fixed-size runtime on one ROI of ``image``; of
    an artery/vein network all its (C, N, N) maps (:func:`output_probabilities`)."""
    logits = runtime.logits(sensor_view(image, roi, _fixed_size(runtime)))[0]
    return output_probabilities(logits[0] if len(logits) == 1 else logits)


def simulate_image(runtime: Runtime, image: np.ndarray, plan: TilePlan) -> Stitched:
    """The stitched map the camera would show for ``image`` as its frame."""
    return stitch([roi_probability(runtime, image, roi) for roi in plan.rois], plan)


def simulate(runtime: Runtime, samples: Sequence[Sample], tiles: int, halo: int = DEFAULT_HALO,
             threshold: float | None = None) -> dict:
    """Tiling with at most ``tiles`` ROIs per image, each image's own FOV box planned
    (:func:`plan_tiles`), run by a fixed-size runtime (the int8 network), stitched and
    scored against the samples' labels inside their FOV, pooled over the images as
    ``qsegment evaluate`` does. ``threshold`` defaults to the runtime's card's.
    Returns the plans' grid, side and resize factor (ranges over the images) and the
    metrics."""
    from ..metrics import evaluate  # scikit-learn: not needed on the camera

    threshold = runtime.card.threshold_value if threshold is None else threshold
    plans = [plan_tiles(s.fov.shape, _fixed_size(runtime), tiles, fov_box(s.fov), halo)
             for s in samples]
    maps = [simulate_image(runtime, s.image, p).probability
            for s, p in zip(samples, plans, strict=True)]
    probs = [m if m.ndim == 2 else m[0] for m in maps]  # the vessel map
    metrics = evaluate(probs, [s.label for s in samples], [s.fov for s in samples], threshold)
    sides = [p.side for p in plans]
    return {"tiles_requested": tiles, "tiles": max(p.tiles for p in plans),
            "grids": sorted({f"{p.rows}x{p.cols}" for p in plans}),
            "side": [min(sides), max(sides)],
            "resize_factor": [min(p.resize_factor for p in plans),
                              max(p.resize_factor for p in plans)],
            "halo": halo, "threshold": threshold, "images": [s.name for s in samples],
            "pooled": metrics["pooled"],
            "per_image_dice": [m["dice"] for m in metrics["per_image"]]}


class SensorTiles(Runtime):
    """A fixed-size network (the sensor's int8 file) run on an image of any size as the
    camera runs it with ROI tiling at native resolution: the fewest NxN windows that
    cover it overlapping by ``halo`` (:func:`native_tiles`), each window's maps blended
    in probability (:func:`stitch`), returned as logits of every output channel. With it
    whole-photograph scores (``qsegment evaluate MODEL.onnx --task av``) measure what the
    sensor gives."""

    name = "in-sensor ROI tiles"
    # it cuts any image into the sensor's windows itself: a Segmenter must not tile first
    tile_shape = (1 << 15, 1 << 15)

    def __init__(self, runtime: Runtime, halo: int = DEFAULT_HALO) -> None:
        self.runtime, self.size, self.halo = runtime, _fixed_size(runtime), halo
        self.card = runtime.card

    @classmethod
    def from_file(cls, path: str | Path) -> SensorTiles:
        """The sensor's int8 file (``qsegment quantize``'s MCT ONNX) in ONNX Runtime, run
        in the camera's ROI tiles."""
        from ..runtimes.onnxrt import MctOnnxRuntime

        return cls(MctOnnxRuntime(path))

    def float_calibration(self) -> Calibration | None:
        """The calibration of the float model this file was quantized from (its card's
        ``source_checkpoint``), which sets the scale and cut it is run at; None where
        that model has none or is gone."""
        from ..errors import CheckpointError
        from ..inference.calibrate import Calibration
        from ..pretrained import resolve_checkpoint

        source = self.card.get("source_checkpoint")
        try:
            return Calibration.beside(resolve_checkpoint(source)) if source else None
        except CheckpointError:
            return None

    def logits(self, x: np.ndarray) -> np.ndarray:
        height, width = x.shape[-2:]
        frame = (max(height, self.size), max(width, self.size))  # a small image: padded
        padded = np.zeros((*x.shape[:2], *frame), np.float32)
        padded[..., :height, :width] = x
        plan = plan_tiles(frame, self.size, native_tiles(frame, self.size, halo=self.halo),
                          halo=self.halo)
        blended = [simulate_image(self.runtime, item.transpose(1, 2, 0), plan).probability
                   for item in padded]
        return np.stack([output_logits(m if m.ndim == 3 else m[None])
                         for m in blended])[..., :height, :width]
