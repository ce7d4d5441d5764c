"""INT8 quantization with Sony's Model Compression Toolkit (MCT) for the IMX500.

Three methods, all for MCT's ``imx500`` target platform (8-bit power-of-two
activations, 8-bit symmetric per-channel weights):

- ``ptq``: post-training quantization from calibration statistics;
- ``gptq``: PTQ followed by gradient-based rounding (GPTQ) on the same images;
- ``qat``: quantization-aware training, fine-tuned from the float model on the
  training images (augmented) at the deployment size with the paper's loss.

Calibration (and QAT) images are, by default, whole training images resized to NxN
with :func:`qsegment.data.to_input`, the resize evaluation uses: the camera's ISP also
scales the whole field of view into the input tensor, so the statistics match what the
sensor will see (random crops would show vessels at the wrong scale). A network run in
ROI tiles at native resolution (the artery/vein model on large photographs) sees windows
of the photograph instead: ``view="tiles"`` calibrates on such windows
(:func:`~qsegment.deploy.tiling.calibration_tiles`), the photographs at the scale the
model was trained at.

A network with a ``forward_phases`` (``qsegment-imx``) is quantized as the sensor runs
it: up to its phase output, which the host interleaves into the full-resolution map
(the converter has no DepthToSpace); the card records ``output_phases``.

The result is MCT's ONNX (custom ops of the ``mct_quantizers`` domain, fixed NxN
input), with a JSON card beside it. The ``mct-int8`` runtime
(:class:`qsegment.runtimes.onnxrt.MctOnnxRuntime`) runs it in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ...card import Card
from ...data import calibration_images, to_input
from ...datasets import Sample, Split
from ...deploy.tiling import calibration_tiles
from ...errors import QsegmentError
from ...files import atomic_write
from ...metrics import agreement
from ...models import SegmentationModel
from ...models.qsegment import QSegmentIMX, depth_to_space
from ...provenance import git_commit, package_versions
from ...runtimes.onnxrt import MctOnnxRuntime
from ..common import check_size, float_threshold

METHODS = ("ptq", "gptq", "qat")
# what a calibration input shows: the photograph, or a window of it
CALIBRATION_HOW = {
    "whole": "whole training images resized to NxN (bilinear, antialiased)",
    "tiles": "NxN windows of the training photographs at native resolution (the ROI tiles "
             "over each FOV box), the photographs at the model's training scale"}
VIEWS = tuple(CALIBRATION_HOW)


class QuantizeError(QsegmentError, ValueError):
    """A quantization request or a quantized model that cannot be used; says why."""


def target_platform() -> object:
    """MCT's target platform capabilities for the Sony IMX500 (MCT 2.5.1 signature)."""
    import model_compression_toolkit as mct

    return mct.get_target_platform_capabilities("pytorch", "imx500", "v1")


class _Phases(nn.Module):
    """The part of a reduced-resolution network that runs in the sensor: up to its phase
    logits (N, k*k, H/k, W/k)."""

    def __init__(self, model: QSegmentIMX) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_phases(x)


class _Interleaved(nn.Module):
    """A quantized phase network seen at full resolution (for QAT's loss and checks)."""

    def __init__(self, phases: nn.Module, factor: int) -> None:
        super().__init__()
        self.phases, self.factor = phases, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.phases(x), self.factor)


def output_phases(model: nn.Module) -> int:
    """k where the sensor returns k x k phases of the map (``forward_phases``), else 1."""
    return int(getattr(model, "factor", 1)) if hasattr(model, "forward_phases") else 1


def sensor_graph(model: nn.Module) -> nn.Module:
    """What MCT quantizes and the sensor runs: the model, or its phase part."""
    if output_phases(model) == 1:
        return model
    return _Phases(cast(QSegmentIMX, model))  # a network with forward_phases, as it is


def full_resolution(qmodel: nn.Module, factor: int) -> nn.Module:
    """A quantized sensor graph with its phases interleaved (itself when factor is 1)."""
    return _Interleaved(qmodel, factor) if factor > 1 else qmodel


def _batches(images: torch.Tensor, batch: int = 4) -> Callable[[], Iterator[list[torch.Tensor]]]:
    """MCT's representative dataset: a generator factory yielding lists of input batches."""
    return lambda: ([images[i:i + batch]] for i in range(0, len(images), batch))


def _qat_fine_tune(qat_model: nn.Module, samples: Sequence[Sample], size: int, epochs: int,
                   lr: float, seed: int, batch: int = 4) -> list[float]:
    """Train MCT's QAT model on augmented, resized training images with the training
    loop's own step (:class:`qsegment.engine.train.TrainStep`); returns epoch losses."""
    from ...data import paper_augmentation
    from ...data.transforms import apply
    from ...engine.train import TrainStep
    from ...losses import structure_loss

    torch.manual_seed(seed)
    images = torch.cat([to_input(s.image, size) for s in samples])
    labels = torch.cat([to_input(s.label[..., None], size) for s in samples])
    augment = paper_augmentation()
    step = TrainStep(qat_model, structure_loss, torch.optim.Adam(qat_model.parameters(), lr=lr),
                     torch.device("cpu"))
    qat_model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(images)).split(batch):
            pairs = [apply(augment, images[i], labels[i], torch.ones_like(labels[i]))[:2]
                     for i in idx]
            x, y = (torch.stack(t) for t in zip(*pairs, strict=True))
            total += step(x, y).item() * len(idx)
        losses.append(total / len(images))
    qat_model.eval()
    return losses


def quantize_model(model: nn.Module, calibration: torch.Tensor, method: str = "ptq", *,
                   train: Sequence[Sample] = (), epochs: int = 3, lr: float = 1e-4,
                   seed: int = 0) -> tuple[nn.Module, dict]:
    """MCT-quantized copy of ``model``'s sensor graph (eval mode) and facts about the run.

    ``epochs``: GPTQ epochs over the calibration images, or QAT epochs over ``train``.
    """
    import model_compression_toolkit as mct

    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    factor = output_phases(model)
    model = sensor_graph(model.eval())
    data = _batches(calibration)
    tpc = target_platform()
    facts: dict = {"method": method}
    if method == "ptq":
        qmodel, _ = mct.ptq.pytorch_post_training_quantization(
            model, data, target_platform_capabilities=tpc)
    elif method == "gptq":
        # Hessian-weighted losses cost ~27 s per iteration x 100 on a 2-core CPU: plain loss
        config = mct.gptq.get_pytorch_gptq_config(n_epochs=epochs, use_hessian_based_weights=False,
                                                  use_hessian_sample_attention=False)
        qmodel, _ = mct.gptq.pytorch_gradient_post_training_quantization(
            model, data, gptq_config=config, target_platform_capabilities=tpc)
        facts["gptq_epochs"] = epochs
    else:
        if not train:
            raise QuantizeError("QAT needs training images")
        qat_model, _ = mct.qat.pytorch_quantization_aware_training_init_experimental(
            model, data, target_platform_capabilities=tpc)
        size = calibration.shape[-1]
        losses = _qat_fine_tune(full_resolution(qat_model, factor), train, size, epochs,
                                lr, seed)
        qmodel = mct.qat.pytorch_quantization_aware_training_finalize_experimental(qat_model)
        facts["qat"] = {"epochs": epochs, "lr": lr, "optimizer": "adam", "batch": 4,
                        "loss": "structure", "augmentation": "paper (flips, +-1 deg, brightness)",
                        "images": [s.name for s in train], "epoch_losses": losses}
    if factor > 1:
        facts["output_phases"] = factor
    return qmodel.eval(), facts


@contextlib.contextmanager
def _legacy_onnx_exporter() -> Iterator[None]:
    """MCT's exporter calls ``torch.onnx.export`` without ``dynamo=``; torch >= 2.13 then
    picks the dynamo exporter, which needs ``onnxscript`` (not installed). The TorchScript
    exporter's graph is what imxconv-pt was checked to accept. MCT has no option for
    it, so for the length of one export call (never at import) the default is pinned."""
    export = torch.onnx.export
    torch.onnx.export = functools.partial(export, dynamo=False)
    try:
        yield
    finally:
        torch.onnx.export = export


def export_quantized(qmodel: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Write MCT's ONNX (``mct_quantizers`` custom ops) of a quantized model, atomically."""
    import warnings

    import model_compression_toolkit as mct

    path = Path(path)

    def write(tmp: Path) -> None:
        with _legacy_onnx_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and constant-tensor warnings
            mct.exporter.pytorch_export_model(qmodel, save_model_path=str(tmp),
                                              repr_dataset=_batches(example[:1]))

    atomic_write(path, write)
    return path


def deployable_size(model: SegmentationModel, train: Sequence[Sample]) -> int:
    """Largest square input of ``model`` that fits the IMX500: a quick PTQ at 64x64 on two
    images, exported to a temporary folder and searched with the converter's memory report
    (:func:`qsegment.export.imx500.largest_fitting_size`; needs Java)."""
    import tempfile

    from .convert import largest_fitting_size

    _, images = calibration_images(train, 64, 2)
    with tempfile.TemporaryDirectory(prefix="qsegment-probe-") as tmp:
        probe = export_quantized(quantize_model(model, images)[0], Path(tmp) / "probe.onnx",
                                 images)
        size, reports = largest_fitting_size(probe, multiple=model.size_multiple, cache=False)
    if size is None:
        raise QuantizeError(f"no input size fits the IMX500 ({reports[64].required} bytes "
                            f"needed at 64x64, {reports[64].available} available)")
    return size


def quantize(source: str | Path, out: str | Path, method: str = "ptq", size: int | None = None,
             calibration: int = 16, epochs: int = 3, lr: float = 1e-4, seed: int = 0,
             data: str | Path | None = None, split: Split | None = None,
             datasets: str = "chasedb1", view: str = "whole") -> Card:
    """Quantize a checkpoint for the IMX500 at size x size and write ``out`` (ONNX) plus its
    card ``out.json``; returns the card. Without ``size``: the largest square that fits
    the sensor (:func:`deployable_size`).

    Calibration: ``calibration`` inputs from the training splits of ``datasets``
    (comma-separated; ``data``: their folders, one per dataset, read as a training run
    reads them, :func:`~qsegment.data.mixture.run_parts`), whole photographs resized
    (``view`` "whole") or native-resolution windows of them at the model's training scale
    ("tiles", :func:`~qsegment.deploy.tiling.calibration_tiles`).

    The card records the source, method, size, calibration inputs, versions and the
    agreement on the first validation image: float vs int8 (the quantization error) and
    ONNX Runtime vs MCT's PyTorch model (the runtime's fidelity). The decision threshold
    is the float model's (chosen on the training images).
    """
    from ...checkpoint import load_model
    from ...data.mixture import run_parts
    from ...engine.config import TrainConfig
    from ...pretrained import checkpoint_reference

    out = Path(out)
    if out.suffix != ".onnx":
        raise QuantizeError(f"{out}: the output must be an .onnx file")
    if view not in VIEWS:
        raise QuantizeError(f"unknown calibration view {view!r}; choose one of: "
                            f"{', '.join(VIEWS)}")
    model, float_card = load_model(source)
    multiple = model.size_multiple
    check_size(size, multiple, QuantizeError)
    scaled = view == "tiles" and TrainConfig.recorded(float_card.get("config") or {}).label_scale
    split = split or Split((), ())
    parts = run_parts(TrainConfig(dataset=datasets, data=str(data) if data else None,
                                  train_images=list(split.train), val_images=list(split.val),
                                  label_scale=scaled), progress=True)
    train = [sample for part in parts for sample in part.train]
    val = [sample for part in parts for sample in part.val]
    size = size or deployable_size(model, train)
    try:
        if view == "tiles":
            names, windows = calibration_tiles(train, size, calibration, seed)
            images = torch.from_numpy(windows)
        else:
            names, images = calibration_images(train, size, calibration, seed)
    except ValueError as err:
        raise QuantizeError(str(err)) from err
    threshold = float_threshold(float_card)
    start = time.perf_counter()
    qmodel, facts = quantize_model(model, images, method, train=train, epochs=epochs, lr=lr,
                                   seed=seed)
    factor = facts.get("output_phases", 1)
    quantize_s = time.perf_counter() - start
    probe = to_input(val[0].image, size)
    with torch.no_grad():
        float_logits = model(probe).numpy()
        mct_logits = full_resolution(qmodel, factor)(probe).numpy()
    export_quantized(qmodel, out, images)
    ort_logits = MctOnnxRuntime(out, output_phases=factor).logits(probe.numpy())
    card = Card(
        name=f"{float_card.label} int8 {method}",
        model=float_card.model, model_args=float_card.model_args,
        source_checkpoint=checkpoint_reference(source), size=size, threshold=threshold,
        extra={
            "format": "mct-onnx", **facts, "size_multiple": multiple,
            "outputs": list(model.outputs),
            "input": {"shape": [1, 3, size, size], "layout": "NCHW", "colour": "RGB",
                      "range": [0.0, 1.0]},
            "calibration": {"datasets": datasets.split(","), "view": view,
                            "images": names, "count": len(names), "seed": seed,
                            "how": CALIBRATION_HOW[view]},
            "target_platform": "imx500 (MCT TPC v1)",
            "agreement": {"image": val[0].name,
                          "float_vs_int8": agreement(float_logits, mct_logits, threshold.value),
                          "ort_vs_mct": agreement(mct_logits, ort_logits, threshold.value)},
            "quantize_s": round(quantize_s, 1),
            "versions": package_versions(), "git_commit": git_commit(),
        })
    card.write(out.with_suffix(".json"))
    return card
