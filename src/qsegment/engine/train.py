"""Training: :func:`train` runs a :class:`~qsegment.engine.config.TrainConfig`.

The loop is short: batches through one :class:`TrainStep` (forward under autocast,
loss, scaled backward, optimizer step; with ``qat`` through the int8 export's fake
quantization, and the sensor's QAT uses the same step), then
the epoch's handlers (:mod:`qsegment.engine.handlers`): time budget, NaN stop,
weight averaging, validation, the run log and checkpoints. Distillation prepares the
labels before training (:func:`soften_labels`).

Every run writes a folder that explains itself: ``config.yaml`` (the resolved
config), ``command.txt``, ``log.csv``, TensorBoard events and ``curve.png``
(validation Dice against wall time), ``last.safetensors`` (weights plus optimizer
and RNG state, written atomically after every epoch, so ``resume`` loses at most one
epoch), ``best.safetensors`` (best validation Dice) and a JSON card beside each
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import checkpoint as ckpt
from .. import viz
from ..card import Card, Threshold
from ..data import SegmentationDataset, paper_augmentation, resize_sample
from ..data.dataset import Tensors
from ..data.mixture import Part, describe_parts, run_parts, visits
from ..datasets import Sample
from ..losses import UNKNOWN_CLASS, artery_vein_loss
from ..models import SegmentationModel, create_model
from ..pretrained import checkpoint_reference, resolve_checkpoint
from ..provenance import git_commit
from . import distributed as dist
from .config import (
    LOSSES,
    OPTIMIZERS,
    RUNTIME_FIELDS,
    SCHEDULERS,
    ConfigError,
    TrainConfig,
    load_config,
)
from .evaluate import predict_samples, train_threshold
from .handlers import (
    Checkpoints,
    EpochState,
    FiniteLoss,
    Handler,
    MovingAverage,
    QuantizationAware,
    RunLog,
    TimeBudget,
    TrainingError,
    Validation,
    validation_metrics,
)

__all__ = ["TrainConfig", "TrainStep", "TrainingError", "class_target", "load_config",
           "lr_factor", "soften_labels", "train"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type that pays on ``device``: fp16 on CUDA, bf16 on a CPU with
    AVX-512 (3.7x faster than fp32 there), none on other CPUs: emulated on AVX2, a bf16
    step of the fast preset took 8x longer than fp32 (52.7 against 6.3 s, 2-core EPYC)."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return torch.bfloat16
    return None


class TrainStep:
    """One optimisation step on a batch: forward and loss under autocast when ``amp`` and
    the device gains from it (:func:`autocast_dtype`; fp16 with a gradient scaler),
    backward, optimizer step. With ``compile`` the forward and loss are one
    ``torch.compile`` graph per batch size (the last batch of an epoch may be smaller),
    sharing the module's weights."""

    def __init__(self, net: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                 device: torch.device, amp: bool = False, compile: bool = False) -> None:
        self.optimizer = optimizer
        dtype = autocast_dtype(device)
        amp = amp and dtype is not None

        def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                logits = net(x)
            return loss_fn(logits, y)

        self.forward_loss = (torch.compile(forward_loss, dynamic=False) if compile
                             else forward_loss)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's loss (detached, on the device: reading it would stall a GPU)."""
        loss = self.forward_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


def sgd(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def adamw(cfg: TrainConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_restarts(cfg: TrainConfig, t: float) -> float:
    """SGDR (Loshchilov & Hutter), restarting every ``restart_epochs``, as PyTorch's
    CosineAnnealingWarmRestarts with T_mult=1 and eta_min=0."""
    period = cfg.restart_epochs
    return 0.5 * (1 + math.cos(math.pi * (t % period) / period))


def cosine(cfg: TrainConfig, t: float) -> float:
    """Linear warm-up over ``warmup_epochs``, then one cosine decay to zero."""
    warm, total = cfg.warmup_epochs, cfg.epochs
    if t < warm:
        return (t + 1e-3) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(total - warm, 1e-9))))


def lr_factor(cfg: TrainConfig, t: float) -> float:
    """Learning-rate multiplier at fractional epoch ``t`` from the config's scheduler (a
    pure function of ``t``, so a resumed run needs no scheduler state)."""
    return SCHEDULERS.load(cfg.scheduler)(cfg, t)


class _SeededDataset(SegmentationDataset):
    """Each (epoch, index) gets its own augmentation seed, so an image receives the same
    random transform whichever process or batch position loads it."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def __getitem__(self, index: int) -> Tensors:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return super().__getitem__(index)


def class_target(sample: Sample) -> Sample:
    """The sample with its artery/vein class map as the target of an artery/vein model;
    a dataset without one gives its vessels as :data:`~qsegment.losses.UNKNOWN_CLASS`,
    which trains the vessel channel only."""
    classes = sample.classes if sample.classes is not None else \
        np.where(sample.label, UNKNOWN_CLASS, 0).astype(np.uint8)
    return dataclasses.replace(sample, label=classes)


def _portable(sources: str) -> str:
    """Comma-separated weights, each named as a shipped name or an absolute path."""
    return ",".join(checkpoint_reference(source) for source in sources.split(",") if source)


def soften_labels(samples: list[Sample], teacher: str | Path, mix: float,
                  device: torch.device | str = "cpu", progress: bool = False) -> list[Sample]:
    """The samples with targets ``(1 - mix) * label + mix * p``, ``p`` the teacher's
    probabilities averaged over the eight symmetries (``d8``): self-distillation, so that
    one forward pass of the student may learn what the teacher gives only with eight.
    Several teachers, comma-separated, are averaged as one ensemble."""
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(f"teacher_mix must lie in [0, 1], not {mix}")
    teachers = [ckpt.load_model(source)[0].to(device) for source in str(teacher).split(",")]
    maps = [predict_samples(t, samples, progress=progress, tta="d8") for t in teachers]
    probs = [np.mean(per_sample, axis=0) for per_sample in zip(*maps, strict=True)]
    return [dataclasses.replace(s, label=((1 - mix) * s.label + mix * p).astype(np.float32))
            for s, p in zip(samples, probs, strict=True)]


def _resolve_config(cfg: TrainConfig, out: Path, resume: bool) -> TrainConfig:
    """The recipe of this call: a resumed run's own, with this call's :data:`RUNTIME_FIELDS`;
    a new run's with its source weights named so that they resolve from anywhere."""
    if resume:
        runtime = {name: getattr(cfg, name) for name in RUNTIME_FIELDS}
        return dataclasses.replace(load_config(out / "config.yaml"), **runtime)
    if (out / "last.safetensors").exists():
        raise TrainingError(f"{out}: holds a run already; pass --resume to continue it or "
                            "choose another --out")
    return dataclasses.replace(cfg, init=_portable(cfg.init), teacher=_portable(cfg.teacher))


def _model(cfg: TrainConfig, device: torch.device, world_size: int) -> SegmentationModel:
    model = create_model(cfg.model, **cfg.model_args)
    if cfg.init:
        path = resolve_checkpoint(cfg.init)
        source = ckpt.read_checkpoint(path)[1].get("card", {}).get("model", cfg.model)
        related = source != cfg.model and source in getattr(model, "init_from", ())
        meta = ckpt.load_weights(model, path, matching_only=related)
        if "loaded" in meta:
            print(f"init: {len(meta['loaded'])} of {len(model.state_dict())} tensors from "
                  f"{source} ({path.name}); the rest start random", file=sys.stderr)
    if world_size > 1:  # before the optimizer is built: the swap makes new parameters
        model = cast(SegmentationModel, dist.sync_batchnorm(model, device))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    # torch's stubs give Module.to no memory_format keyword, and .to returns the same module
    return model.to(device).to(memory_format=memory_format)  # type: ignore[call-overload,return-value]


def _quantization_aware(cfg: TrainConfig, model: SegmentationModel, world_size: int
                        ) -> nn.Module:
    """``model``'s int8 network as quantization-aware training steps through it: the
    export's ranges, calibrated as the export calibrates them for this recipe
    (:func:`~qsegment.export.tflite.calibration_inputs`), fixed, and fake quantization
    (:func:`~qsegment.export.onnx.fake_quantized`)."""
    from ..export.onnx import fake_quantized
    from ..export.tflite import calibrate, calibration_inputs

    if world_size > 1:
        raise ConfigError("--qat trains in one process; run it without torchrun")
    device = next(model.parameters()).device
    observers = calibrate(model, calibration_inputs(model, cfg).to(device))
    return fake_quantized(model, observers)


def _loader(cfg: TrainConfig, parts: list[Part], multiple: int, device: torch.device,
            progress: bool, classes: bool = False) -> tuple[DataLoader, _SeededDataset]:
    """Batches of augmented training images (resized to ``cfg.resize``, labels softened by
    ``cfg.teacher``, or artery/vein class maps with ``classes``; of a mixture, each
    dataset its share), split over the data-parallel ranks."""
    rank, world_size = dist.world()
    samples = [s for part in parts for s in part.train]
    repeats: int | list[int] = cfg.repeats
    if len(parts) > 1:
        counts = visits([len(p.train) for p in parts], _shares(cfg), cfg.repeats)
        repeats = [count for part, count in zip(parts, counts, strict=True) for _ in part.train]
    fitted = [resize_sample(s, cfg.resize) for s in samples] if cfg.resize else samples
    if cfg.teacher:
        fitted = soften_labels(fitted, cfg.teacher, cfg.teacher_mix, device, progress)
    if classes:
        fitted = [class_target(s) for s in fitted]
    augment = paper_augmentation(cfg.crop or None, rotate90=cfg.rotate90,
                                 acquisition=cfg.acquisition, jpeg=cfg.acquisition_jpeg,
                                 acquisition_colour=cfg.acquisition_colour)
    dataset = _SeededDataset(fitted, augment, repeats=repeats, multiple=multiple,
                             seed=cfg.seed, device=device)
    sampler: DistributedSampler = DistributedSampler(dataset, num_replicas=world_size,
                                                     rank=rank, shuffle=True, seed=cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size // world_size, sampler=sampler), dataset


def _shares(cfg: TrainConfig) -> list[float]:
    return cfg.dataset_weights or [1.0] * len(cfg.datasets)


def _card_maker(cfg: TrainConfig, parts: list[Part]) -> Callable[[int, float, dict | None],
                                                                 Card]:
    def card(epochs_done: int, wall: float, metrics: dict | None) -> Card:
        return Card(cfg.model, cfg.model_args, extra={
            "data": describe_parts(parts, _shares(cfg), cfg.label_scale),
            "config": dataclasses.asdict(cfg),
            "epochs_done": epochs_done,
            "wall_time_s": round(wall, 1),
            "git_commit": git_commit(),
            "torch": torch.__version__,
            "val_metrics": metrics,
        })

    return card


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
          ) -> Card | None:
    """Train ``cfg.model`` and write the run folder ``out``; returns the final card (None
    on the data-parallel ranks other than the first).

    With ``resume`` the run continues from ``out/last.safetensors``; its recipe comes from
    ``out/config.yaml``, and only the :data:`RUNTIME_FIELDS` from ``cfg``.
    Under ``torchrun`` the same call trains data-parallel.

    Args:
        cfg: the recipe (:func:`~qsegment.engine.config.load_config`).
        out: the run folder (made if missing).
        resume: continue the run in ``out``.
        progress: show progress bars.

    Returns:
        The final card, with the threshold chosen on the training images and the
        validation metrics; None on the ranks other than the first.

    Raises:
        TrainingError: ``out`` holds a run already and ``resume`` is not set, or the
            loss stopped being finite.
        ConfigError: a batch size that the ranks do not divide, a ``teacher_mix``
            outside [0, 1], or (with ``resume``) no ``out/config.yaml``.
        CheckpointError: ``init`` or ``teacher`` names no readable checkpoint, weights
            that do not fit, or (with ``resume``) ``out`` holds no training state.
        UnknownNameError: an unknown architecture.
        DatasetError: ``data`` is no readable dataset folder, or lacks an image of the
            split.
    """
    out = Path(out)
    cfg = _resolve_config(cfg, out, resume)
    device = resolve_device(cfg.device)
    if cfg.amp and autocast_dtype(device) is None:
        print(f"amp: off, training in fp32 (no fast half precision on this {device.type}: "
              f"{torch.backends.cpu.get_cpu_capability()})", file=sys.stderr)
    _, world_size = dist.world()
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch size {cfg.batch_size} is not divisible by {world_size} ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist.init(device)
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: tune once

    parts = run_parts(cfg, progress)
    model = _model(cfg, device, world_size)
    classes = len(model.outputs) > 1
    if classes and cfg.teacher:
        raise ConfigError(f"{cfg.model} learns artery/vein classes; a teacher's soft vessel "
                          "labels cannot train it (leave teacher empty)")
    loader, data = _loader(cfg, parts, model.size_multiple, device, progress, classes)
    handlers: list[Handler] = [TimeBudget(cfg.max_minutes), FiniteLoss(out)]
    trained: nn.Module = model  # what the steps run through
    if cfg.qat:
        trained = _quantization_aware(cfg, model, world_size)
        handlers.append(QuantizationAware(model, trained))
    optimizer = OPTIMIZERS.load(cfg.optimizer)(cfg, trained.parameters())
    average = MovingAverage(model, cfg.ema) if cfg.ema else None
    scored = model if average is None else average.module  # what is validated and saved
    handlers += [average] if average else []
    checkpoints = Checkpoints(out, scored, optimizer, _card_maker(cfg, parts), handlers[2:])
    start_epoch, wall_before = checkpoints.restore_from(out / "last.safetensors") if resume \
        else (0, 0.0)
    if dist.is_main():
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg),
                                                            sort_keys=False))
            (out / "command.txt").write_text(" ".join(sys.argv) + "\n")
        groups = {part.dataset.name: part.val for part in parts}
        handlers += [Validation(scored, groups, cfg.resize or None, cfg.val_every, tqdm.write),
                     RunLog(out, list(groups) if len(groups) > 1 else []), checkpoints]
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else trained
    loss = LOSSES.load(cfg.loss)
    step = TrainStep(net, artery_vein_loss(loss) if classes else loss, optimizer, device,
                     cfg.amp and not cfg.qat, cfg.compile)
    try:
        _run(cfg, step, device, loader, data, handlers, (start_epoch, wall_before), progress)
    finally:
        for handler in handlers:
            handler.close()
    card = None
    if dist.is_main():
        card = _finish(out, scored, cfg, parts, progress)
    dist.barrier()
    return card


def _run(cfg: TrainConfig, step: TrainStep, device: torch.device, loader: DataLoader,
         data: _SeededDataset, handlers: list[Handler], done: tuple[int, float],
         progress: bool) -> None:
    """The epochs after the ``done`` ones (count, wall seconds): batches through ``step``,
    then the epoch's loss over every rank and each handler in order (the time budget
    first: it decides whether this epoch is the last)."""
    start_epoch, wall_before = done
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    steps_per_epoch = len(loader)
    started = time.monotonic()
    bar = tqdm(total=(cfg.epochs - start_epoch) * steps_per_epoch, disable=not (
        progress and dist.is_main()), desc="train", unit="step", dynamic_ncols=True)
    with bar:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            cast(DistributedSampler, loader.sampler).set_epoch(epoch - 1)
            data.epoch = epoch - 1
            losses = []
            for i, (x, y, _fov) in enumerate(loader):
                for group in step.optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, epoch - 1 + i / steps_per_epoch)
                losses.append(step(x.to(device, memory_format=memory_format, non_blocking=True),
                                   y.to(device, non_blocking=True)))
                for handler in handlers:
                    handler.step_end()
                bar.update()
            state = EpochState(epoch, epoch * steps_per_epoch,
                               step.optimizer.param_groups[0]["lr"],
                               torch.stack(losses).float().cpu(), last=epoch == cfg.epochs,
                               wall_s=wall_before + time.monotonic() - started)
            state.loss = dist.average(state.losses.mean().item())
            bar.set_postfix(epoch=epoch, loss=f"{state.loss:.4f}", lr=f"{state.lr:.2e}")
            for handler in handlers:
                handler.epoch_end(state)
            dist.barrier()
            if state.out_of_time:
                bar.write(f"stopping after epoch {epoch}: --max-minutes {cfg.max_minutes} "
                          "reached")
            if state.last:
                break


def _finish(out: Path, model: nn.Module, cfg: TrainConfig, parts: list[Part], progress: bool
            ) -> Card:
    """Choose the threshold on the training images (of every dataset, pooled) and score
    the last weights with it."""
    size = cfg.resize or None
    train_samples = [s for part in parts for s in part.train]
    threshold = train_threshold(model, train_samples, size, progress=progress)
    groups = {part.dataset.name: part.val for part in parts}
    at_half, at_threshold = validation_metrics(model, groups, size, (0.5, threshold))
    tensors, meta = ckpt.read_checkpoint(out / "last.safetensors")
    card = Card.from_dict(meta["card"]).replace(
        threshold=Threshold(threshold, "maximizes pooled Dice on the training images (last "
                            "weights)", size),
        val_metrics=at_half, val_metrics_at_threshold=at_threshold)
    meta["card"] = card.to_dict()
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    ckpt.save_checkpoint(out / "last.safetensors", model, meta, extra)
    card.write(out / "last.json")
    viz.training_curve(out / "log.csv", out / "curve.png")
    return card
