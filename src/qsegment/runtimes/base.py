"""The one protocol every way of running a model follows.

A runtime maps an (N, 3, H, W) float32 batch in [0, 1] to (N, C, H, W) float32 logits as
numpy (C = 1 for a vessel model, 4 for an artery/vein model), whatever runs underneath
(PyTorch, ONNX Runtime, LiteRT, TFLite-Micro). It says what it accepts: ``fixed_size``
(a square input it was built for, or None for any size that is a multiple of
``size_multiple``) and ``accepts_uint8`` (whether :meth:`outputs_uint8` takes 8-bit RGB
straight). A runtime opened for shipped weights also carries their default tiling
(``tile_shape``, ``tile_margin``: :func:`read_manifest`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..card import Card
from ..errors import QsegmentError, UsageError


class ModelFileError(QsegmentError, ValueError):
    """A model file that a runtime cannot open; the message names it and says why."""


class Runtime:
    """Base class of the runtimes in :data:`qsegment.runtimes.RUNTIMES`."""

    name: ClassVar[str]
    accepts_uint8: ClassVar[bool] = False
    size_multiple: int = 1
    fixed_size: int | None = None
    tile_shape: tuple[int, int] | None = None  # what Segmenter tiles large images into
    tile_margin: int | None = None  # each tile's margin: at least the receptive radius
    # a new input shape costs little (OpenVINO compiles one in about a second, kept in its
    # disk cache): Segmenter then fits its tiles to each image instead of one tile shape
    fits_tiles: ClassVar[bool] = False
    card: Card = Card()

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x)

    def outputs_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """The sigmoid of every output channel (C, H, W) of an (H, W, 3) uint8 image
        (``accepts_uint8``): channel 0 the vessel probability; an artery/vein model's class
        channels after it, ranked as their logits are."""
        raise NotImplementedError(f"the {self.name} runtime takes float input only")

    def probability_uint8(self, rgb: np.ndarray) -> np.ndarray:
        """Vessel probability (H, W) of an (H, W, 3) uint8 image (``accepts_uint8``)."""
        return self.outputs_uint8(rgb)[0]

    def check_input(self, x: np.ndarray, where: Path | str) -> None:
        """Refuse a batch that a fixed-size model cannot take, saying what size would do."""
        s = self.fixed_size
        if s is not None and (x.ndim != 4 or x.shape[1:] != (3, s, s)):
            raise UsageError(f"{where} takes (N, 3, {s}, {s}) inputs, got {tuple(x.shape)}: "
                             f"infer at size {s}")


def read_manifest(weights: Path) -> dict:
    """``NAME.int8.json`` beside ``NAME.safetensors``: the int8 runtimes' files shipped
    with the weights, the network's size multiple and its default tiling (written by
    :func:`qsegment.export.cpu.export_cpu_int8`); {} where there is none."""
    path = weights.with_suffix(".int8.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def shipped_int8_onnx(weights: Path) -> tuple[Path, int] | None:
    """The static int8 ONNX shipped beside ``weights`` (its manifest,
    :func:`read_manifest`, names it) and the network's size multiple; None where none
    ships."""
    info = read_manifest(weights)
    return (weights.with_name(info["onnx"]), int(info["size_multiple"])) if "onnx" in info else None


def with_shipped_tiling(runtime: Runtime, manifest: dict) -> Runtime:
    """``runtime`` with the default tiling of a weights' ``manifest``
    (:func:`read_manifest`), where it has one: its margin, and its tile unless the runtime
    has a tile of its own (one that runs larger images whole)."""
    if tile := manifest.get("tile"):
        runtime.tile_shape = runtime.tile_shape or tuple(tile["shape"])
        runtime.tile_margin = int(tile["margin"])
    return runtime


def depth_to_space(phases: np.ndarray, factor: int) -> np.ndarray:
    """Interleave (N, C*factor**2, h, w) phase logits, each output's phases together, into
    (N, C, h*factor, w*factor), as ``torch.nn.functional.pixel_shuffle`` does: what the
    host does with the output of a network that the sensor runs at reduced resolution
    (``qsegment-imx``: one output; ``qsegment-imx-av``: four)."""
    n, c, h, w = phases.shape
    if c % (factor * factor):
        raise UsageError(f"expected a multiple of {factor * factor} phase channels, got {c}")
    grid = phases.reshape(n, c // factor**2, factor, factor, h, w).transpose(0, 1, 4, 2, 5, 3)
    return grid.reshape(n, c // factor**2, h * factor, w * factor)


def output_probabilities(logits: np.ndarray) -> np.ndarray:
    """Probabilities of a network's logits, channels on axis -3: of vessel logits (one
    channel, or none) their sigmoid; of artery/vein logits (C > 1) the vessel's sigmoid,
    then the softmax of the classes (artery, vein, uncertain given a vessel), as the
    model was trained."""
    if logits.ndim < 3 or logits.shape[-3] == 1:
        return sigmoid(logits)
    classes = np.exp(logits[..., 1:, :, :] - logits[..., 1:, :, :].max(-3, keepdims=True))
    return np.concatenate([sigmoid(logits[..., :1, :, :]),
                           classes / classes.sum(-3, keepdims=True)], axis=-3)


def output_logits(probabilities: np.ndarray) -> np.ndarray:
    """Logits with the :func:`output_probabilities` ``probabilities`` (channels on axis
    -3), e.g. of maps blended in probability: the vessel's logit, the classes'
    log-probabilities."""
    classes = np.clip(probabilities[..., 1:, :, :], 1e-7, 1 - 1e-7)
    return np.concatenate([logit(probabilities[..., :1, :, :]), np.log(classes)], axis=-3)


def logit(probabilities: np.ndarray) -> np.ndarray:
    """The inverse of :func:`sigmoid`, the probabilities clipped to [1e-7, 1 - 1e-7]
    first (a float32 sigmoid saturates at 1)."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of logits, float32, as ``0.5 + 0.5 tanh(x / 2)``: no overflow for
    any logit, and 5x faster than ``1 / (1 + exp(-x))`` in float64 (1 ms for a CHASE_DB1
    image; SciPy's ``expit`` is 2.6 ms, and its import costs a cold predict 0.2 s)."""
    out = np.tanh(np.multiply(logits, 0.5, dtype=np.float32))
    out *= 0.5
    out += 0.5
    return out
