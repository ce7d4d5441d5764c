"""What a training run depends on: :class:`TrainConfig`, presets as YAML files of its
fields, and the registries of the losses, optimizers and schedulers a config names.
PyTorch-free, so that ``qsegment train --help`` is built from the fields and the rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..datasets import DATASETS, DEFAULT_DATASET, Split
from ..errors import QsegmentError
from ..registry import Entry, Registry

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(QsegmentError, ValueError):
    """A preset or a field that does not exist."""


# Losses take (logits, target) -> loss (qsegment.losses).
LOSSES: Registry[Entry] = Registry("loss", [
    Entry("structure", "qsegment.losses:structure_loss",
          "the paper's: PraNet's boundary-weighted BCE + weighted IoU"),
    Entry("bce_dice", "qsegment.losses:bce_dice_loss", "plain BCE + soft Dice"),
    Entry("structure_cldice", "qsegment.losses:structure_cldice_loss",
          "structure + 2x MONAI's soft clDice, a connectivity term"),
])
# Optimizers take (config, parameters) -> torch.optim.Optimizer (qsegment.engine.train).
OPTIMIZERS: Registry[Entry] = Registry("optimizer", [
    Entry("sgd", "qsegment.engine.train:sgd", "SGD with momentum and weight decay (the paper's)"),
    Entry("adamw", "qsegment.engine.train:adamw", "AdamW with decoupled weight decay"),
])
# Schedulers map (config, fractional epoch) -> learning-rate factor (qsegment.engine.train).
SCHEDULERS: Registry[Entry] = Registry("scheduler", [
    Entry("cosine_restarts", "qsegment.engine.train:cosine_restarts",
          "SGDR: cosine restarting every --restart-epochs (the paper's)"),
    Entry("cosine", "qsegment.engine.train:cosine",
          "linear warm-up over --warmup-epochs, then one cosine decay to zero"),
])


def _field(default: Any, help: str) -> Any:
    """A config field with the help text its command-line flag shows."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a run depends on; ``qsegment train --FIELD`` overrides any of them."""

    model: str = _field("qsegment", "architecture: a name from `qsegment models`")
    model_args: dict[str, Any] = field(default_factory=dict,
                                       metadata={"help": "keyword arguments of the model"})
    dataset: str = _field(DEFAULT_DATASET, "dataset name, or several comma-separated for a "
                                           "mixture, e.g. chasedb1,hrf-av,les-av")
    dataset_weights: list[float] = field(
        default_factory=list,
        metadata={"help": "each dataset's share of an epoch's samples, comma-separated "
                          "(default: equal shares)"})
    data: str | None = _field(None, "dataset folder, or one per dataset comma-separated "
                                    "(empty or default: each dataset's own, e.g. "
                                    "$QSEGMENT_DATA, else ../shared/data/CHASEDB1)")
    train_images: list[str] = field(
        default_factory=list,
        metadata={"help": "comma-separated image names to train on (default: the dataset's "
                          "training split, e.g. CHASE_DB1's Image_01L..10R)"})
    val_images: list[str] = field(
        default_factory=list,
        metadata={"help": "comma-separated image names to validate on (default: the "
                          "dataset's, e.g. CHASE_DB1's Image_11L..14R)"})
    label_scale: bool = _field(False, "see each photograph (training and validation) at the "
                                      "scale where its labelled vessels have CHASE_DB1's "
                                      "calibre: cameras of other sizes and field angles")
    epochs: int = _field(4000, "number of epochs")
    batch_size: int = _field(8, "global batch size (split across torchrun ranks)")
    crop: int = _field(0, "random square crop size (0: whole images)")
    resize: int = _field(0, "train and validate on images resized to this square, e.g. the "
                            "IMX500's 312 (0: full size)")
    repeats: int = _field(1, "visits of each image per epoch")
    rotate90: bool = _field(False, "augment with random quarter turns too (all 8 symmetries "
                                   "of a crop)")
    acquisition: bool = _field(False, "augment for other cameras too: zoom 0.8-1.25, colour "
                                      "cast, gamma, contrast, red-free, blur, noise, JPEG "
                                      "(qsegment.data.transforms.AcquisitionShift)")
    acquisition_jpeg: float = _field(0.2, "share of --acquisition samples JPEG-compressed "
                                          "(quality 30-95)")
    acquisition_colour: bool = _field(True, "--acquisition shifts colour and tone too (cast, "
                                            "gamma, contrast, red-free); off: blur, noise and "
                                            "JPEG only, for artery/vein fine-tuning, where "
                                            "colour tells the classes apart")
    loss: str = _field("structure", "; ".join(f"{k}: {v}" for k, v in LOSSES.describe().items()))
    optimizer: str = _field("sgd", " | ".join(OPTIMIZERS.names()))
    lr: float = _field(1e-3, "initial learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(0.0, "weight decay")
    scheduler: str = _field("cosine_restarts", " | ".join(SCHEDULERS.names()))
    restart_epochs: int = _field(20, "period of the warm restarts")
    warmup_epochs: int = _field(0, "linear warm-up of the cosine schedule")
    init: str = _field("", "start from these weights (name, run folder or .safetensors) "
                           "instead of random ones: fine-tuning; weights of another model "
                           "(qsegment into qsegment-imx) give the tensors that match")
    ema: float = _field(0.0, "per-step decay of a moving average of the weights, validated "
                             "and saved instead of them, e.g. 0.999 (0: none)")
    teacher: str = _field("", "distil from these weights (name or path): training targets "
                              "blend the labels with their d8-averaged probabilities; "
                              "several, comma-separated, are averaged")
    teacher_mix: float = _field(0.5, "the teacher's share of each training target")
    amp: bool = _field(True, "mixed precision (fp16 on CUDA, bf16 on CPU)")
    channels_last: bool = _field(False, "NHWC activations (the presets use them: faster on "
                                        "CPU and GPU)")
    compile: bool = _field(False, "torch.compile the training step (on an H100 10%% faster "
                                  "per epoch after a 1.5-minute first epoch; slower on a "
                                  "small CPU)")
    qat: bool = _field(False, "quantization-aware fine-tuning, usually from --init weights: "
                              "the steps run through the CPU int8 export's network, its "
                              "ranges calibrated as the export does and fixed (BatchNorm "
                              "folded, fp32, one process)")
    val_every: int = _field(50, "epochs between validations (and at the end)")
    seed: int = _field(0, "random seed (weights, augmentation, order)")
    threads: int | None = _field(None, "torch CPU threads per process")
    max_minutes: float | None = _field(None, "stop cleanly after this many minutes of this "
                                             "call")
    device: str = _field("auto", "auto | cpu | cuda | cuda:N")

    def __post_init__(self) -> None:
        for registry, name in (*((DATASETS, d) for d in self.datasets), (LOSSES, self.loss),
                               (OPTIMIZERS, self.optimizer), (SCHEDULERS, self.scheduler)):
            registry.get(name)  # an unknown name fails here, before any work
        count = len(self.datasets)
        if self.dataset_weights and len(self.dataset_weights) != count:
            raise ConfigError(f"{len(self.dataset_weights)} dataset weight(s) for {count} "
                              f"dataset(s) ({self.dataset})")
        if self.data and len(self.data.split(",")) != count:
            raise ConfigError(f"{len(self.data.split(','))} data folder(s) for {count} "
                              f"dataset(s) ({self.dataset}): give one data folder per dataset, "
                              f"empty for its own, not {self.data}")
        if count > 1 and (self.train_images or self.val_images):
            raise ConfigError("a mixture of datasets trains on each one's own split: drop "
                              "--train-images and --val-images")

    @classmethod
    def recorded(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The recipe a card or run folder records; fields this version no longer has are
        dropped, and ones it added take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def datasets(self) -> list[str]:
        """The dataset names of the run (one, or a mixture's)."""
        return self.dataset.split(",")

    @property
    def folders(self) -> list[str | None]:
        """Each dataset's folder (None: its own default)."""
        given = self.data.split(",") if self.data else [""] * len(self.datasets)
        return [folder or None for folder in given]

    @property
    def split(self) -> Split:
        """The images named by the config; an empty part is each dataset's own."""
        return Split(tuple(self.train_images), tuple(self.val_images))


# How a call runs rather than what it trains: a resumed run takes these from its caller.
RUNTIME_FIELDS = ("device", "threads", "max_minutes", "channels_last", "compile")


def preset_path(preset: str | Path) -> Path:
    """The YAML file of a preset given by name (``paper``, ``fast``) or path."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = ", ".join(p.stem for p in sorted(PRESETS_DIR.glob("*.yaml")))
        raise ConfigError(f"{path}: preset not found (built-in presets: {names})")
    return path


def load_config(preset: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A preset by name (``paper``, ``fast``) or YAML path, with field overrides.

    Args:
        preset: a built-in preset's name or a YAML file of fields (default: none, the
            fields' defaults).
        **overrides: fields that replace the preset's; None leaves a field as it is.

    Returns:
        The config.

    Raises:
        ConfigError: no such preset, or a field :class:`TrainConfig` does not have.
        UnknownNameError: an unknown dataset, loss, optimizer or scheduler; the message
            lists the names.
    """
    import yaml

    values: dict[str, Any] = {}
    if preset is not None:
        values = yaml.safe_load(preset_path(preset).read_text()) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(values) - known):
        raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
    return TrainConfig(**values)
