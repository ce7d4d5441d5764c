"""INT8 quantization with Sony's Model Compression Toolkit (MCT) for the IMX500.

Three methods, all for MCT's ``imx500`` target platform (8-bit power-of-two
activations, 8-bit symmetric per-channel weights):

- ``ptq``: post-training quantization from calibration statistics;
- ``gptq``: PTQ followed by gradient-based rounding (GPTQ) on the same images;
- ``qat``: quantization-aware training, fine-tuned from the float model on the
  training images (augmented) at the deployment size with the paper's loss.

Calibration (and QAT) images are whole training images resized to NxN with
:func:`qsegment.engine.infer.to_input`, the resize evaluation uses: the camera's
ISP also scales the whole field of view into the input tensor, so the statistics
match what the sensor will see (random crops would show vessels at the wrong scale).

The result is MCT's ONNX (custom ops of the ``mct_quantizers`` domain, fixed NxN
input), with a JSON card beside it. :class:`QuantizedOnnxModel` runs it in ONNX
Runtime, callable like :class:`qsegment.export.onnx.OnnxModel`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

from .checkpoint import atomic_write, write_json
from .data import Sample, Split, load_split
from .engine.infer import to_input

METHODS = ("ptq", "gptq", "qat")
MCT_DOMAIN = "mct_quantizers"


class QuantizeError(ValueError):
    """A quantization request or a quantized model that cannot be used; says why."""


def target_platform() -> object:
    """MCT's target platform capabilities for the Sony IMX500 (MCT 2.5.1 signature)."""
    import model_compression_toolkit as mct

    return mct.get_target_platform_capabilities("pytorch", "imx500", "v1")


def calibration_images(samples: Sequence[Sample], size: int, count: int, seed: int = 0
                       ) -> tuple[list[str], torch.Tensor]:
    """(names, (count, 3, size, size) batch): ``count`` training images drawn at random
    (seeded), each resized whole to size x size."""
    if not 0 < count <= len(samples):
        raise QuantizeError(f"calibration needs 1..{len(samples)} images, got {count}")
    order = np.random.default_rng(seed).permutation(len(samples))[:count]
    chosen = [samples[i] for i in sorted(order)]
    return [s.name for s in chosen], torch.cat([to_input(s.image, size) for s in chosen])


def _batches(images: torch.Tensor, batch: int = 4) -> Callable[[], Iterator[list[torch.Tensor]]]:
    """MCT's representative dataset: a generator factory yielding lists of input batches."""
    return lambda: ([images[i:i + batch]] for i in range(0, len(images), batch))


def _qat_fine_tune(qat_model: nn.Module, samples: Sequence[Sample], size: int, epochs: int,
                   lr: float, seed: int, batch: int = 4) -> list[float]:
    """Train MCT's QAT model on augmented, resized training images; returns epoch losses."""
    from .data import paper_augmentation
    from .data.transforms import apply
    from .losses import structure_loss

    torch.manual_seed(seed)
    images = torch.cat([to_input(s.image, size) for s in samples])
    labels = torch.cat([to_input(s.label[..., None], size) for s in samples])
    augment = paper_augmentation()
    optimizer = torch.optim.Adam(qat_model.parameters(), lr=lr)
    qat_model.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(images)).split(batch):
            pairs = [apply(augment, images[i], labels[i], torch.ones_like(labels[i]))[:2]
                     for i in idx]
            x, y = (torch.stack(t) for t in zip(*pairs, strict=True))
            loss = structure_loss(qat_model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(images))
    qat_model.eval()
    return losses


def quantize_model(model: nn.Module, calibration: torch.Tensor, method: str = "ptq", *,
                   train: Sequence[Sample] = (), epochs: int = 3, lr: float = 1e-4,
                   seed: int = 0) -> tuple[nn.Module, dict]:
    """MCT-quantized copy of ``model`` (eval mode) and facts about the run.

    ``epochs``: GPTQ epochs over the calibration images, or QAT epochs over ``train``.
    """
    import model_compression_toolkit as mct

    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    model = model.eval()
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
        losses = _qat_fine_tune(qat_model, train, size, epochs, lr, seed)
        qmodel = mct.qat.pytorch_quantization_aware_training_finalize_experimental(qat_model)
        facts["qat"] = {"epochs": epochs, "lr": lr, "optimizer": "adam", "batch": 4,
                        "loss": "structure", "augmentation": "paper (flips, +-1 deg, brightness)",
                        "images": [s.name for s in train], "epoch_losses": losses}
    return qmodel.eval(), facts


@contextlib.contextmanager
def _legacy_onnx_exporter() -> Iterator[None]:
    """MCT's exporter calls ``torch.onnx.export`` without ``dynamo=``; torch >= 2.13 then
    picks the dynamo exporter, which needs ``onnxscript`` (not installed). The TorchScript
    exporter's graph is what imxconv-pt was checked to accept."""
    legacy = functools.partial(torch.onnx.export, dynamo=False)
    with mock.patch.object(torch.onnx, "export", legacy):
        yield


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


def is_mct_onnx(path: str | Path) -> bool:
    """Whether an ONNX file holds MCT's quantizer ops (the IMX500 converter needs them)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.domain == MCT_DOMAIN for node in graph.node)


def require_mct_onnx(path: str | Path) -> Path:
    """``path`` if it is an MCT-quantized ONNX, else a :class:`QuantizeError` saying why."""
    path = Path(path)
    if not path.is_file():
        raise QuantizeError(f"{path}: no such file")
    try:
        ok = is_mct_onnx(path)
    except Exception as err:  # onnx raises its own DecodeError types
        raise QuantizeError(f"{path}: not a readable ONNX file ({err})") from err
    if not ok:
        raise QuantizeError(f"{path}: not an MCT-quantized ONNX (no {MCT_DOMAIN} ops; a float "
                            "export cannot run on the IMX500): make one with `qsegment quantize`")
    return path


def read_card(path: str | Path) -> dict:
    """The JSON card beside a quantized ONNX (``model.onnx`` -> ``model.json``), or {}."""
    card = Path(path).with_suffix(".json")
    return json.loads(card.read_text()) if card.is_file() else {}


class QuantizedOnnxModel:
    """MCT's ONNX in ONNX Runtime with the ``mct_quantizers`` custom ops registered:
    ``runner(x)`` maps an (N, 3, S, S) float32 array to logits, S the deployment size."""

    size_multiple = 8

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        import mct_quantizers
        import onnxruntime as ort

        self.path = require_mct_onnx(path)
        options = mct_quantizers.get_ort_session_options()
        options.intra_op_num_threads = threads or 0
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[-1])
        self.card = read_card(self.path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 4 or x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"{self.path.name} was quantized for (N, 3, {self.size}, "
                             f"{self.size}) inputs, got {tuple(x.shape)}: infer at size "
                             f"{self.size}")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


def agreement(reference: np.ndarray, other: np.ndarray, threshold: float) -> dict[str, float]:
    """How close two logit maps are: logits, probabilities and the thresholded masks."""
    diff = np.abs(reference - other)
    p_ref, p_other = (1 / (1 + np.exp(-a.astype(np.float64))) for a in (reference, other))
    return {"logit_max_abs": float(diff.max()), "logit_mean_abs": float(diff.mean()),
            "identical_fraction": float((diff == 0).mean()),
            "prob_mean_abs": float(np.abs(p_ref - p_other).mean()),
            "mask_agreement": float(((p_ref >= threshold) == (p_other >= threshold)).mean())}


def package_versions() -> dict[str, str]:
    """Versions of qsegment and the toolchain, for cards and notes."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"qsegment": __version__}
    for dist in ("model-compression-toolkit", "mct-quantizers", "torch", "onnxruntime",
                 "imx500-converter", "litert-torch", "torchao", "ai-edge-litert", "tflite-micro"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


def deployable_size(model: nn.Module, train: Sequence[Sample]) -> int:
    """Largest square input of ``model`` that fits the IMX500: a quick PTQ at 64x64 on two
    images, exported to a temporary folder and searched with the converter's memory report
    (:func:`qsegment.export.imx500.largest_fitting_size`; needs Java)."""
    import tempfile

    from .export.imx500 import largest_fitting_size

    _, images = calibration_images(train, 64, 2)
    with tempfile.TemporaryDirectory(prefix="qsegment-probe-") as tmp:
        probe = export_quantized(quantize_model(model, images)[0], Path(tmp) / "probe.onnx",
                                 images)
        size, reports = largest_fitting_size(probe, cache=False)
    if size is None:
        raise QuantizeError(f"no input size fits the IMX500 ({reports[64].required} bytes "
                            f"needed at 64x64, {reports[64].available} available)")
    return size


def quantize(source: str | Path, out: str | Path, method: str = "ptq", size: int | None = None,
             calibration: int = 16, epochs: int = 3, lr: float = 1e-4, seed: int = 0,
             data: str | Path | None = None, split: Split | None = None) -> dict:
    """Quantize a checkpoint for the IMX500 at size x size and write ``out`` (ONNX) plus its
    card ``out.json``; returns the card. Without ``size``: the largest square that fits
    the sensor (:func:`deployable_size`).

    The card records the source, method, size, calibration images, versions and the
    agreement on the first validation image: float vs int8 (the quantization error) and
    ONNX Runtime vs MCT's PyTorch model (the runtime's fidelity). The decision threshold
    is the float model's (chosen on the training images).
    """
    from .engine.train import git_commit
    from .pretrained import checkpoint_reference, load_model

    out = Path(out)
    if out.suffix != ".onnx":
        raise QuantizeError(f"{out}: the output must be an .onnx file")
    if size is not None and (size <= 0 or size % 8):
        raise QuantizeError(f"size must be a positive multiple of 8 (the network's stride), "
                            f"got {size}")
    model, float_card = load_model(source)
    train, val = load_split(data, split)
    size = size or deployable_size(model, train)
    names, images = calibration_images(train, size, calibration, seed)
    threshold = float((float_card.get("threshold") or {}).get("value", 0.5))
    start = time.perf_counter()
    qmodel, facts = quantize_model(model, images, method, train=train, epochs=epochs, lr=lr,
                                   seed=seed)
    quantize_s = time.perf_counter() - start
    probe = to_input(val[0].image, size)
    with torch.no_grad():
        float_logits, mct_logits = model(probe).numpy(), qmodel(probe).numpy()
    export_quantized(qmodel, out, images)
    ort_logits = QuantizedOnnxModel(out)(probe.numpy())
    card = {
        "format": "mct-onnx",
        "name": f"{float_card.get('name', float_card['model'])} int8 {method}",
        "model": float_card["model"], "model_args": float_card.get("model_args", {}),
        "source_checkpoint": checkpoint_reference(source),
        **facts,
        "size": size,
        "input": {"shape": [1, 3, size, size], "layout": "NCHW", "colour": "RGB",
                  "range": [0.0, 1.0]},
        "calibration": {"images": names, "count": len(names), "seed": seed,
                        "how": "whole training images resized to NxN (bilinear, antialiased)"},
        "threshold": {"value": threshold, "rule": "the float model's, chosen on training images"},
        "target_platform": "imx500 (MCT TPC v1)",
        "agreement": {"image": val[0].name,
                      "float_vs_int8": agreement(float_logits, mct_logits, threshold),
                      "ort_vs_mct": agreement(mct_logits, ort_logits, threshold)},
        "quantize_s": round(quantize_s, 1),
        "versions": package_versions(), "git_commit": git_commit(),
    }
    write_json(out.with_suffix(".json"), card)
    return card
