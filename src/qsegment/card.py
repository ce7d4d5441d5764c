"""The card: what a weights file or an int8 model file says about itself.

One typed record, read and written here only. The JSON keeps its historical shape
(``threshold`` is ``{"value", "rule", "inference_size"}``; everything a trainer or an
exporter adds, such as ``val_metrics``, ``config`` or ``agreement``, stays as is), and
a card reads like that JSON (``card["threshold"]["value"]``) for code that only looks.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import QsegmentError
from .files import write_json

DEFAULT_THRESHOLD = 0.5


class CardError(QsegmentError, ValueError):
    """A card that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Threshold:
    """The decision threshold on the vessel probability, and how it was chosen."""

    value: float = DEFAULT_THRESHOLD
    rule: str = "fixed 0.5"
    inference_size: int | None = None  # the resolution it was chosen at (None: full)


@dataclass(frozen=True)
class Card(Mapping):
    """Model name and arguments, threshold, fixed input size (int8 files), source weights;
    ``extra`` holds every other key of the JSON (data, config, metrics, versions...)."""

    model: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    threshold: Threshold | None = None
    size: int | None = None
    source_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How tables name the model: its published name, else its architecture."""
        return self.name or self.model

    @property
    def threshold_value(self) -> float:
        return (self.threshold or Threshold()).value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Card:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "threshold"}
        core = {k: data.pop(k) for k in list(data) if k in known}
        threshold = data.pop("threshold", None)
        return cls(**core, threshold=Threshold(**threshold) if threshold else None, extra=data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "model_args": self.model_args}
        for key in ("name", "size", "source_checkpoint"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.threshold is not None:  # inference_size only where one was recorded
            out["threshold"] = {k: v for k, v in dataclasses.asdict(self.threshold).items()
                                if k != "inference_size" or v is not None}
        return {**out, **self.extra}

    def replace(self, **changes: Any) -> Card:
        """A copy with fields (or ``extra`` keys, by name) changed."""
        fields = {f.name for f in dataclasses.fields(self)}
        extra = {k: v for k, v in changes.items() if k not in fields}
        core = {k: v for k, v in changes.items() if k in fields}
        return dataclasses.replace(self, **core, extra={**self.extra, **extra})

    @classmethod
    def read(cls, path: str | Path) -> Card:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise CardError(f"{path}: not a readable card ({err})") from err

    @classmethod
    def beside(cls, path: str | Path) -> Card:
        """The card next to a model file (``model.onnx`` -> ``model.json``), or an empty one."""
        sidecar = Path(path).with_suffix(".json")
        return cls.read(sidecar) if sidecar.is_file() else cls()

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    # reading like the JSON it is stored as
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
