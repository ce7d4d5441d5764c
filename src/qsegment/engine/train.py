"""Training: one function, :func:`train`, driven by a :class:`TrainConfig`.

Every run writes a folder that explains itself: ``config.yaml`` (the resolved
config), ``command.txt``, ``log.csv``, TensorBoard events and ``curve.png``
(validation Dice against wall time), ``last.safetensors``
(weights plus optimizer and RNG state, written atomically after every
epoch, so ``resume`` loses at most one epoch), ``best.safetensors`` (best
validation Dice) and a JSON card beside each checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .. import checkpoint as ckpt
from .. import viz
from ..data import Sample, SegmentationDataset, Split, load_split, paper_augmentation, resize_sample
from ..losses import get_loss
from ..models import create_model
from ..pretrained import checkpoint_reference, load_model, resolve_checkpoint
from . import distributed as dist
from .evaluate import predict_samples, score, train_threshold

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint stays."""


@dataclass
class TrainConfig:
    """Everything a run depends on; presets are YAML files of these fields."""

    model: str = "qsegment"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str | None = None
    train_images: list[str] = field(default_factory=lambda: list(Split().train))
    val_images: list[str] = field(default_factory=lambda: list(Split().val))
    epochs: int = 4000
    batch_size: int = 8
    crop: int = 0  # random square crop size; 0 trains on whole images
    resize: int = 0  # train and validate on images resized to this square (0: full size)
    repeats: int = 1  # times each image is visited per epoch
    rotate90: bool = False  # also random quarter turns (all 8 symmetries of a square crop)
    loss: str = "structure"
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine_restarts"  # cosine_restarts | cosine
    restart_epochs: int = 20  # period of the warm restarts
    warmup_epochs: int = 0  # linear warm-up of the cosine schedule
    init: str = ""  # weights to start from (fine-tuning) instead of a random initialization
    ema: float = 0.0  # per-step decay of a moving average of the weights (0: none)
    teacher: str = ""  # weights (comma-separated: averaged) whose d8 probabilities soften labels
    teacher_mix: float = 0.5  # the teacher's share of each training target
    amp: bool = True  # fp16 autocast on CUDA, bf16 on CPU
    channels_last: bool = False  # NHWC activations: faster on CPU and GPU (bench_train.py)
    compile: bool = False  # torch.compile the training forward and loss (fuses BatchNorm+ReLU)
    val_every: int = 50  # epochs between validations (and at the end)
    seed: int = 0
    threads: int | None = None  # torch CPU threads per process
    max_minutes: float | None = None  # stop cleanly after this much wall time (this call)
    device: str = "auto"


# How a call runs rather than what it trains: a resumed run takes these from its caller.
RUNTIME_FIELDS = ("device", "threads", "max_minutes", "channels_last", "compile")


def load_config(preset: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A preset by name (``paper``, ``fast``) or YAML path, with field overrides."""
    values: dict[str, Any] = {}
    if preset is not None:
        path = Path(preset)
        if not path.suffix:
            path = PRESETS_DIR / f"{preset}.yaml"
        if not path.is_file():
            names = ", ".join(p.stem for p in sorted(PRESETS_DIR.glob("*.yaml")))
            raise ValueError(f"{path}: preset not found (built-in presets: {names})")
        values = yaml.safe_load(path.read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(values) - known):
        raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
    return TrainConfig(**values)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit() -> str | None:
    """The source checkout's commit (with ``+dirty`` for local changes), if any."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


class _SeededDataset(SegmentationDataset):
    """Each (epoch, index) gets its own augmentation seed, so an image receives the same
    random transform whichever process or batch position loads it."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed, self.epoch = seed, 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            return super().__getitem__(index)


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
        raise ValueError(f"teacher_mix must lie in [0, 1], not {mix}")
    teachers = [load_model(source)[0].to(device) for source in str(teacher).split(",")]
    maps = [predict_samples(t, samples, progress=progress, tta="d8") for t in teachers]
    probs = [np.mean(per_sample, axis=0) for per_sample in zip(*maps, strict=True)]
    return [dataclasses.replace(s, label=((1 - mix) * s.label + mix * p).astype(np.float32))
            for s, p in zip(samples, probs, strict=True)]


def _ema_update(decay: float) -> Callable[[list, list, torch.Tensor], None]:
    """An EMA step for :class:`AveragedModel` whose decay warms up as in TensorFlow's
    ExponentialMovingAverage: min(decay, (1 + n) / (10 + n)) after n updates. With a fixed
    decay of 0.998 the random initial weights would still weigh 37% after 500 steps."""
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, n_averaged)

    return update


def _optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")


def lr_factor(cfg: TrainConfig, t: float) -> float:
    """Learning-rate multiplier at fractional epoch ``t`` (a pure function of ``t``, so a
    resumed run needs no scheduler state).

    ``cosine_restarts``: SGDR (Loshchilov & Hutter), restarting every ``restart_epochs``,
    as PyTorch's CosineAnnealingWarmRestarts with T_mult=1 and eta_min=0.
    ``cosine``: linear warm-up over ``warmup_epochs``, then one cosine decay to zero.
    """
    if cfg.scheduler == "cosine_restarts":
        period = cfg.restart_epochs
        return 0.5 * (1 + math.cos(math.pi * (t % period) / period))
    if cfg.scheduler == "cosine":
        warm, total = cfg.warmup_epochs, cfg.epochs
        if t < warm:
            return (t + 1e-3) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - warm) / max(total - warm, 1e-9))))
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; choose cosine_restarts or cosine")


def _autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=cfg.amp)


def _forward_loss(net: nn.Module, loss_fn: Callable, cfg: TrainConfig, device: torch.device
                  ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of a batch, compiled with ``cfg.compile``: one static graph per
    batch size (the last batch of an epoch may be smaller), the model's weights shared
    with the eager module that validation and checkpoints use."""
    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with _autocast(cfg, device):
            logits = net(x)
        return loss_fn(logits, y)

    return torch.compile(forward_loss, dynamic=False) if cfg.compile else forward_loss


class _RunLog:
    """log.csv plus TensorBoard events, appended epoch by epoch."""

    COLUMNS = ("epoch", "step", "wall_s", "lr", "loss", "val_dice", "val_acc", "val_auc")

    def __init__(self, out: Path) -> None:
        self.path = out / "log.csv"
        if not self.path.exists():
            self.path.write_text(",".join(self.COLUMNS) + "\n")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.COLUMNS])
        for key, value in row.items():
            if key not in ("epoch", "step") and value != "":
                self.tb.add_scalar(key, value, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True
          ) -> dict[str, Any]:
    """Train ``cfg.model`` and write the run folder ``out``; returns the final card.

    With ``resume`` the run continues from ``out/last.safetensors``; its recipe comes from
    ``out/config.yaml``, and only the :data:`RUNTIME_FIELDS` from ``cfg``.
    Under ``torchrun`` the same call trains data-parallel.
    """
    out = Path(out)
    if resume:
        runtime = {name: getattr(cfg, name) for name in RUNTIME_FIELDS}
        cfg = dataclasses.replace(load_config(out / "config.yaml"), **runtime)
    elif (out / "last.safetensors").exists():
        raise TrainingError(f"{out}: holds a run already; pass --resume to continue it or "
                            "choose another --out")
    else:  # the card must name its source weights so that they resolve from anywhere
        cfg = dataclasses.replace(cfg, init=_portable(cfg.init), teacher=_portable(cfg.teacher))
    device = resolve_device(cfg.device)
    rank, world_size = dist.world()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {world_size} ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dist.init(device)
    torch.manual_seed(cfg.seed)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: tune once
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    train_samples, val_samples = load_split(
        cfg.data, Split(tuple(cfg.train_images), tuple(cfg.val_images)))
    model = create_model(cfg.model, **cfg.model_args)
    if cfg.init:
        ckpt.load_weights(model, resolve_checkpoint(cfg.init))
    if world_size > 1:  # before the optimizer is built: the swap makes new parameters
        model = dist.sync_batchnorm(model, device)
    model = model.to(device, memory_format=memory_format)
    size = cfg.resize or None  # inference resolution of validation and threshold choice
    augment = paper_augmentation(cfg.crop or None, rotate90=cfg.rotate90)
    fitted = [resize_sample(s, size) for s in train_samples] if size else list(train_samples)
    if cfg.teacher:
        fitted = soften_labels(fitted, cfg.teacher, cfg.teacher_mix, device, progress)
    dataset = _SeededDataset(fitted, augment,
                             repeats=cfg.repeats, multiple=model.size_multiple, seed=cfg.seed,
                             device=device)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size // world_size, sampler=sampler)
    optimizer = _optimizer(cfg, model.parameters())
    # with ``ema`` the average (BatchNorm statistics included) is what is validated, saved
    # and shipped; the raw weights travel in the checkpoint only to resume training
    ema = (AveragedModel(model, multi_avg_fn=_ema_update(cfg.ema), use_buffers=True)
           if cfg.ema else None)
    scored = model if ema is None else ema.module
    lr_factor(cfg, 0.0)  # fails early on an unknown scheduler
    loss_fn = get_loss(cfg.loss)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")

    start_epoch, best_dice, wall_before = 0, -1.0, 0.0
    if resume:
        start_epoch, best_dice, wall_before = _restore(out / "last.safetensors", model,
                                                       optimizer, ema)
    elif dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        (out / "command.txt").write_text(" ".join(sys.argv) + "\n")
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    forward_loss = _forward_loss(net, loss_fn, cfg, device)
    log = _RunLog(out) if dist.is_main() else None

    steps_per_epoch = len(loader)
    started = time.monotonic()
    bar = tqdm(total=(cfg.epochs - start_epoch) * steps_per_epoch, disable=not (
        progress and dist.is_main()), desc="train", unit="step", dynamic_ncols=True)
    metrics: dict[str, Any] | None = None
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            sampler.set_epoch(epoch)
            dataset.epoch = epoch
            step_losses = []  # kept on the device: reading each one would stall a GPU
            for i, (x, y, _fov) in enumerate(loader):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, epoch + i / steps_per_epoch)
                x = x.to(device, memory_format=memory_format, non_blocking=True)
                y = y.to(device, non_blocking=True)
                loss = forward_loss(x, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                step_losses.append(loss.detach())
                bar.update()
            losses = torch.stack(step_losses).float().cpu()
            _check_finite(losses, epoch, out)
            epoch_loss = dist.average(losses.mean().item())
            bar.set_postfix(epoch=epoch + 1, loss=f"{epoch_loss:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            wall = wall_before + time.monotonic() - started
            out_of_time = (cfg.max_minutes is not None
                           and time.monotonic() - started > cfg.max_minutes * 60)
            last_epoch = epoch + 1 == cfg.epochs or out_of_time
            if dist.is_main():
                row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                       "wall_s": round(wall, 3), "lr": optimizer.param_groups[0]["lr"],
                       "loss": epoch_loss}
                if (epoch + 1) % cfg.val_every == 0 or last_epoch:
                    metrics = score(predict_samples(scored, val_samples, size), val_samples)
                    pooled = metrics["pooled"]
                    row.update(val_dice=pooled["dice"], val_acc=pooled["acc"],
                               val_auc=pooled["auc"])
                    bar.write(f"epoch {epoch + 1}: val Dice {pooled['dice']:.4f} "
                              f"Acc {pooled['acc']:.4f} AUC {pooled['auc']:.4f}")
                    if pooled["dice"] > best_dice:
                        best_dice = pooled["dice"]
                        _save(out / "best.safetensors", scored, cfg, epoch + 1, wall, metrics)
                log.write(row)
                _save(out / "last.safetensors", scored, cfg, epoch + 1, wall, metrics,
                      optimizer, best_dice, ema, model)
            dist.barrier()
            if out_of_time:
                bar.write(f"stopping after epoch {epoch + 1}: --max-minutes {cfg.max_minutes} "
                          "reached")
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    card: dict[str, Any] = {}
    if dist.is_main():
        card = _finish(out, scored, cfg, train_samples, val_samples, epoch + 1, progress)
    dist.barrier()
    return card


def _check_finite(losses: torch.Tensor, epoch: int, out: Path) -> None:
    """Stop at an epoch with a non-finite loss, before its weights are saved."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = int(bad[0])
        raise TrainingError(
            f"loss became {losses[step].item()} at epoch {epoch + 1}, step {step + 1}; "
            f"stopped. The last good checkpoint is {out / 'last.safetensors'} "
            "(try a lower --lr)")


def _card(cfg: TrainConfig, epochs_done: int, wall: float, metrics: dict | None) -> dict:
    return {
        "model": cfg.model,
        "model_args": cfg.model_args,
        "data": {"dataset": "CHASE_DB1", "train": cfg.train_images, "val": cfg.val_images,
                 "reference": "first observer (1stHO)", "fov": "derived (qsegment.data.fov)"},
        "config": dataclasses.asdict(cfg),
        "epochs_done": epochs_done,
        "wall_time_s": round(wall, 1),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "val_metrics": metrics,
    }


def _save(path: Path, model: nn.Module, cfg: TrainConfig, epochs_done: int, wall: float,
          metrics: dict | None, optimizer: torch.optim.Optimizer | None = None,
          best_dice: float = -1.0, ema: AveragedModel | None = None,
          raw: nn.Module | None = None) -> None:
    """``model``'s weights with a card; with ``optimizer`` also the state to resume from
    (with ``ema``: its step count, and the ``raw`` weights it averages under ``train.``)."""
    card = _card(cfg, epochs_done, wall, metrics)
    extra: dict[str, torch.Tensor] = {}
    meta = {"card": card}
    if optimizer is not None:
        extra, optim_meta = ckpt.optimizer_tensors(optimizer)
        extra["rng.torch"] = torch.get_rng_state()
        if ema is not None:
            extra["ema.n_averaged"] = ema.n_averaged
            extra.update({f"train.{k}": v for k, v in raw.state_dict().items()})
        meta["resume"] = {"epoch": epochs_done, "best_dice": best_dice, "wall_s": wall,
                          "optimizer": optim_meta}
    ckpt.save_checkpoint(path, model, meta, extra)
    ckpt.write_json(path.with_suffix(".json"), card)


def _restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
             ema: AveragedModel | None = None) -> tuple[int, float, float]:
    ckpt.load_weights(model if ema is None else ema.module, path)  # the saved weights
    tensors, meta = ckpt.read_checkpoint(path)
    state = meta.get("resume")
    if state is None:
        raise ckpt.CheckpointError(f"{path}: holds no training state to resume from")
    if ema is not None:  # the raw weights the average follows are under train.
        model.load_state_dict({k.removeprefix("train."): v for k, v in tensors.items()
                               if k.startswith("train.")})
        ema.n_averaged.copy_(tensors["ema.n_averaged"])
    ckpt.restore_optimizer(optimizer, tensors, state["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    return state["epoch"], state["best_dice"], state["wall_s"]


def _finish(out: Path, model: nn.Module, cfg: TrainConfig, train_samples: list,
            val_samples: list, epochs_done: int, progress: bool) -> dict[str, Any]:
    """Choose the threshold on the training images and score the last weights with it."""
    size = cfg.resize or None
    threshold = train_threshold(model, train_samples, size, progress=progress)
    probs = predict_samples(model, val_samples, size)
    tensors, meta = ckpt.read_checkpoint(out / "last.safetensors")
    card = meta["card"]
    card["threshold"] = {"value": threshold, "rule": "maximizes pooled Dice on the training "
                         "images (last weights)", "inference_size": size}
    card["val_metrics"] = score(probs, val_samples)
    card["val_metrics_at_threshold"] = score(probs, val_samples, threshold)
    meta["card"] = card
    extra = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    ckpt.save_checkpoint(out / "last.safetensors", model, meta, extra)
    ckpt.write_json(out / "last.json", card)
    viz.training_curve(out / "log.csv", out / "curve.png")
    return card
