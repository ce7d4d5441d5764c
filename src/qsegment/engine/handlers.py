"""The optional parts of a training run, each a small handler the loop calls.

A handler may act after every optimisation step (:meth:`Handler.step_end`) and after
every epoch (:meth:`Handler.epoch_end`), reading and writing the shared
:class:`EpochState`; it may add tensors to the checkpoint (:meth:`Handler.extra`) and
take them back on resume (:meth:`Handler.restore`). The loop in
:mod:`qsegment.engine.train` stays a plain loop over batches (MONAI's engines and
handlers, in small).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import checkpoint as ckpt
from ..card import Card
from ..datasets import Sample
from ..errors import QsegmentError


class TrainingError(QsegmentError, RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint stays."""


@dataclass
class EpochState:
    """What the handlers of one epoch share."""

    epoch: int  # epochs done, this one included
    step: int  # optimizer steps done
    lr: float
    losses: torch.Tensor  # this epoch's step losses, on the CPU
    loss: float = float("nan")  # their mean over every rank
    wall_s: float = 0.0  # training time of the whole run so far
    last: bool = False  # the run ends after this epoch (its length, or the time budget)
    out_of_time: bool = False  # ... because the time budget is spent
    metrics: dict | None = None  # validation metrics, on the epochs that validate
    row: dict[str, Any] = field(default_factory=dict)  # this epoch's log.csv row


class Handler:
    """Does nothing; subclasses override what they need."""

    def step_end(self) -> None:
        pass

    def epoch_end(self, state: EpochState) -> None:
        pass

    def extra(self) -> dict[str, torch.Tensor]:
        return {}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def close(self) -> None:
        pass


class TimeBudget(Handler):
    """Ends the run cleanly after the epoch during which ``minutes`` of this call passed."""

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.started = time.monotonic()

    def epoch_end(self, state: EpochState) -> None:
        if self.minutes is not None and time.monotonic() - self.started > self.minutes * 60:
            state.last = state.out_of_time = True


class FiniteLoss(Handler):
    """Stops at an epoch with a non-finite loss, before its weights are saved."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def epoch_end(self, state: EpochState) -> None:
        bad = (~torch.isfinite(state.losses)).nonzero()
        if len(bad):
            step = int(bad[0])
            raise TrainingError(
                f"loss became {state.losses[step].item()} at epoch {state.epoch}, step "
                f"{step + 1}; stopped. The last good checkpoint is "
                f"{self.out / 'last.safetensors'} (try a lower --lr)")


Tensors = tuple[torch.Tensor, ...] | list[torch.Tensor]


def _ema_update(decay: float) -> Callable[[Tensors, Tensors, torch.Tensor | int], None]:
    """An EMA step for :class:`AveragedModel` whose decay warms up as in TensorFlow's
    ExponentialMovingAverage: min(decay, (1 + n) / (10 + n)) after n updates. With a fixed
    decay of 0.998 the random initial weights would still weigh 37% after 500 steps."""
    def update(averaged: Tensors, current: Tensors, n_averaged: torch.Tensor | int) -> None:
        n = int(n_averaged)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, n_averaged)

    return update


class QuantizationAware(Handler):
    """Quantization-aware training: the steps run through ``graph``
    (:func:`~qsegment.export.onnx.fake_quantized`, the int8 export's network), and after
    each its weights are written into ``model`` (BatchNorm as the identity), which is what
    is averaged, validated and saved. Its weights and their per-channel scales travel in
    the checkpoint under ``qat.``; its activation ranges are constants of the graph, which
    a resumed run calibrates again from the same starting weights, so they are the same."""

    def __init__(self, model: nn.Module, graph: nn.Module) -> None:
        self.model, self.graph = model, graph

    def step_end(self) -> None:
        from ..export.tflite import load_folded

        load_folded(self.model, self.graph)

    def extra(self) -> dict[str, torch.Tensor]:
        return {f"qat.{k}": v for k, v in self.graph.state_dict().items()}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        self.graph.load_state_dict({k.removeprefix("qat."): v for k, v in tensors.items()
                                    if k.startswith("qat.")})


class MovingAverage(Handler):
    """An exponential moving average of the weights (BatchNorm statistics included): what
    is validated, saved and shipped. The raw weights it follows travel in the checkpoint
    under ``train.`` only, to resume training."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = model
        self.average = AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=True)

    @property
    def module(self) -> nn.Module:
        return self.average.module

    def step_end(self) -> None:
        self.average.update_parameters(self.model)

    def extra(self) -> dict[str, torch.Tensor]:
        return {"ema.n_averaged": self.average.n_averaged,
                **{f"train.{k}": v for k, v in self.model.state_dict().items()}}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k.removeprefix("train."): v for k, v in tensors.items()
                                    if k.startswith("train.")})
        self.average.n_averaged.copy_(tensors["ema.n_averaged"])


class Validation(Handler):
    """Scores the model on the validation images every ``every`` epochs and at the end:
    pooled over each dataset, and (several datasets) the mean of their Dice, so that the
    largest photographs do not outvote the other cameras."""

    def __init__(self, model: nn.Module, groups: Mapping[str, Sequence[Sample]],
                 size: int | None, every: int, write: Callable[[str], object] = print) -> None:
        self.model, self.groups, self.size, self.every = model, groups, size, every
        self.write = write

    def epoch_end(self, state: EpochState) -> None:
        if state.epoch % self.every and not state.last:
            return
        state.metrics = validation_metrics(self.model, self.groups, self.size)[0]
        pooled = state.metrics["pooled"]
        state.row.update(val_dice=pooled["dice"], val_acc=pooled["acc"], val_auc=pooled["auc"])
        each = state.metrics.get("datasets", {})
        state.row.update({f"val_dice_{name}": m["pooled"]["dice"] for name, m in each.items()})
        per_dataset = ", ".join(f"{name} {m['pooled']['dice']:.4f}" for name, m in each.items())
        self.write(f"epoch {state.epoch}: val Dice {pooled['dice']:.4f} "
                   f"Acc {pooled['acc']:.4f} AUC {pooled['auc']:.4f}"
                   + (f" (mean of {per_dataset})" if per_dataset else ""))


def validation_metrics(model: nn.Module, groups: Mapping[str, Sequence[Sample]],
                       size: int | None = None, thresholds: Sequence[float] = (0.5,)
                       ) -> list[dict]:
    """At each of ``thresholds``, :func:`~qsegment.engine.evaluate.score` of one dataset;
    of several, each one's under ``datasets`` and the mean of their pooled metrics as
    ``pooled``. Each map is predicted once."""
    from .evaluate import predict_samples, score

    maps = {name: predict_samples(model, samples, size) for name, samples in groups.items()}
    results = []
    for threshold in thresholds:
        each = {name: score(maps[name], samples, threshold) for name, samples in groups.items()}
        if len(each) == 1:
            results.append(next(iter(each.values())))
            continue
        pooled = {key: float(np.mean([m["pooled"][key] for m in each.values()]))
                  for key in next(iter(each.values()))["pooled"]}
        results.append({"threshold": threshold, "pooled": pooled, "datasets": each})
    return results


class RunLog(Handler):
    """log.csv plus TensorBoard events, appended epoch by epoch."""

    COLUMNS = ("epoch", "step", "wall_s", "lr", "loss", "val_dice", "val_acc", "val_auc")

    def __init__(self, out: Path, datasets: Sequence[str] = ()) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.columns = (*self.COLUMNS, *(f"val_dice_{name}" for name in datasets))
        self.path = out / "log.csv"
        if not self.path.exists():
            self.path.write_text(",".join(self.columns) + "\n")
        self.tb = SummaryWriter(str(out / "tensorboard"))

    def epoch_end(self, state: EpochState) -> None:
        row = {"epoch": state.epoch, "step": state.step, "wall_s": round(state.wall_s, 3),
               "lr": state.lr, "loss": state.loss, **state.row}
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row.get(c, "") for c in self.columns])
        for key in self.columns[2:]:
            if row.get(key, "") != "":
                self.tb.add_scalar(key, row[key], state.step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


class Checkpoints(Handler):
    """``last.safetensors`` after every epoch (weights, card, and the state to resume:
    optimizer, RNG, the other handlers' tensors) and ``best.safetensors`` at the best
    validation Dice, each with its JSON card; written atomically."""

    def __init__(self, out: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 card: Callable[[int, float, dict | None], Card],
                 handlers: Sequence[Handler]) -> None:
        self.out, self.model, self.optimizer, self.card = out, model, optimizer, card
        self.handlers = handlers
        self.best_dice = -1.0
        self.metrics: dict | None = None

    def epoch_end(self, state: EpochState) -> None:
        if state.metrics is not None:
            self.metrics = state.metrics
            if state.metrics["pooled"]["dice"] > self.best_dice:
                self.best_dice = state.metrics["pooled"]["dice"]
                self._save(self.out / "best.safetensors", state, resume=False)
        self._save(self.out / "last.safetensors", state, resume=True)

    def _save(self, path: Path, state: EpochState, resume: bool) -> None:
        card = self.card(state.epoch, state.wall_s, self.metrics)
        meta: dict[str, Any] = {"card": card.to_dict()}
        extra: dict[str, torch.Tensor] = {}
        if resume:
            extra, optim_meta = ckpt.optimizer_tensors(self.optimizer)
            extra["rng.torch"] = torch.get_rng_state()
            for handler in self.handlers:
                extra.update(handler.extra())
            meta["resume"] = {"epoch": state.epoch, "best_dice": self.best_dice,
                              "wall_s": state.wall_s, "optimizer": optim_meta}
        ckpt.save_checkpoint(path, self.model, meta, extra)
        card.write(path.with_suffix(".json"))

    def restore_from(self, path: Path) -> tuple[int, float]:
        """Load ``path`` into the model, optimizer, RNG and handlers; (epoch, wall_s)."""
        ckpt.load_weights(self.model, path)  # the saved (validated) weights
        tensors, meta = ckpt.read_checkpoint(path)
        state = meta.get("resume")
        if state is None:
            raise ckpt.CheckpointError(f"{path}: holds no training state to resume from")
        for handler in self.handlers:
            handler.restore(tensors)
        ckpt.restore_optimizer(self.optimizer, tensors, state["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.best_dice = state["best_dice"]
        return state["epoch"], state["wall_s"]
