"""Finding a model's weights and its card: a shipped pretrained name, a run folder or a
checkpoint.

The shipped weights are the rows of :data:`WEIGHTS`, each tied to the architecture it
builds (a :data:`qsegment.models.MODELS` name) and the data it learned from, with its
terms. Finding weights and reading their card need no PyTorch (the card lives in the
safetensors metadata, read with safetensors' numpy API); building the network is
:func:`qsegment.checkpoint.load_model`'s, on PyTorch's floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .card import Card
from .errors import CheckpointError
from .registry import Entry, Registry

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the CPU default: the half-resolution network, in 0.6x of the time of the default before
# it and within 0.003 Dice of it on every test split at predict's defaults, and of the best
# one-pass weights at the cards' cuts (issue #35, docs/BENCHMARKS.md, "A network that
# does less work")
DEFAULT_MODEL = "qsegment-half"
# what `qsegment quantize` takes for the IMX500 unless told: a network MCT quantizes whole,
# the CPU default until 2026-12-06 (qsegment-half's refinement is for CPUs)
SENSOR_MODEL = "qsegment-nearest-transfer-jpeg"
# what --av and artery_vein=True take unless told: the best shipped artery/vein model in
# int8, chosen on the training photographs (the defaults before it, qsegment-imx-av,
# qsegment-imx-av-crop896 and qsegment-imx-av-qat, keep their names and their figures)
AV_MODEL = "qsegment-imx-av-truecolour"


def default_model(artery_vein: bool = False) -> str:
    """The weights a command or a Segmenter uses when none are named."""
    return AV_MODEL if artery_vein else DEFAULT_MODEL


CHASE_TRAIN = "CHASE_DB1 training split (Image_01L-10R, 20 photographs; CC BY 4.0)"
AV_TRAIN = ("HRF-AV training split (24 photographs; research use), LES-AV training split "
            "(11; scientific use only, no commercial use) and, for the vessel channel, "
            "CHASE_DB1's (20; CC BY 4.0): research use only")


@dataclass(frozen=True)
class Weights(Entry):
    """A shipped weights row: its target is the file in ``qsegment/weights``, its card
    (NAME.json and the file's metadata) says the recipe and the measured metrics."""

    architecture: str  # the qsegment.models.MODELS row it builds
    data: str = CHASE_TRAIN  # what it was trained on, and the data's terms

    def load(self) -> Path:
        """The weights file."""
        return WEIGHTS_DIR / self.target


def _weights(name: str, architecture: str, description: str, data: str = CHASE_TRAIN
             ) -> Weights:
    return Weights(name, f"{name}.safetensors", description, architecture, data)


WEIGHTS: Registry[Weights] = Registry("pretrained weights", [
    _weights("qsegment-half", "qsegment-half",
             "the CPU default: qsegment-imx-transfer with a refinement from the "
             "full-resolution image, taught further: Dice 0.8102, in 0.6x of "
             "qsegment-nearest-transfer-jpeg's time on OpenVINO"),
    _weights("qsegment-imx", "qsegment-imx",
             "the half-resolution sensor variant (fits the IMX500 up to 704x704): Dice "
             "0.8069 on a CPU"),
    _weights("qsegment-imx-704", "qsegment-imx",
             "qsegment-imx trained at 704x704, the whole fundus in one sensor frame"),
    _weights("qsegment-imx-av", "qsegment-imx-av",
             "the artery/vein default until 2026-12-06: the half-resolution network with a "
             "fourth level and an artery/vein head, BF-Net F1 0.6789 on HRF-AV and 0.7157 on "
             "LES-AV (research use only)", AV_TRAIN),
    _weights("qsegment-imx-av-crop896", "qsegment-imx-av",
             "the artery/vein default on 2026-12-06: qsegment-imx-av trained a fourth cycle "
             "on crops of 896 px, BF-Net F1 0.6932 on HRF-AV and 0.7261 on LES-AV, the best "
             "in float (research use only)", AV_TRAIN),
    _weights("qsegment-imx-av-qat", "qsegment-imx-av",
             "the artery/vein default from 2026-12-06 to 2026-12-07: qsegment-imx-av-crop896 "
             "fine-tuned through its int8 network (--qat), BF-Net F1 0.6827 on HRF-AV and "
             "0.7228 on LES-AV in int8; the better one in the sensor (research use only)",
             AV_TRAIN),
    _weights(AV_MODEL, "qsegment-imx-av",
             "arteries and veins (`--av`): qsegment-imx-av-crop896 trained one more cycle "
             "without the colour and tone shifts (--no-acquisition-colour), then through its "
             "int8 network (--qat): BF-Net F1 0.6902 on HRF-AV and 0.7213 on LES-AV in int8, "
             "within 0.01 of float (research use only: its training data's terms)", AV_TRAIN),
    _weights("qsegment-imx-transfer", "qsegment-imx",
             "the half-resolution variant taught by two models' 8-view maps and fine-tuned "
             "for other cameras: Dice 0.8096, a quarter of qsegment-nearest-transfer-jpeg's work"),
    _weights("qsegment-nearest", "qsegment",
             "the fast recipe, nearest up-sampling (IMX500-deployable): Dice 0.8017"),
    _weights("qsegment-nearest-312", "qsegment",
             "trained at the IMX500's 312x312: Dice 0.7805 at that size"),
    _weights("qsegment-nearest-crop384", "qsegment",
             "200 epochs of 384x384 crops: Dice 0.8095, 0.8150 with --tta d8"),
    _weights("qsegment-nearest-distill", "qsegment",
             "the fast recipe taught by qsegment-nearest-crop384's 8-view maps: Dice 0.8126"),
    _weights("qsegment-nearest-long", "qsegment",
             "the fast recipe for 200 epochs: Dice 0.8069, AUC 0.9850"),
    _weights("qsegment-nearest-transfer", "qsegment",
             "qsegment-nearest-distill fine-tuned for other cameras (--acquisition): Dice "
             "0.8128"),
    _weights("qsegment-nearest-transfer-jpeg", "qsegment",
             "the default until 2026-12-06 and `qsegment quantize`'s: qsegment-nearest-distill "
             "fine-tuned for other cameras, JPEG for half the samples: Dice 0.8123, 0.8128 "
             "in int8"),
    _weights("qsegment-unpool", "qsegment",
             "the paper's max-unpooling decoder: Dice 0.8015 (PyTorch only)"),
])


def list_pretrained() -> list[str]:
    """Names of the weights shipped inside the package."""
    return WEIGHTS.names()


def is_sensor_file(source: str | Path) -> bool:
    """Whether a model source names the IMX500's int8 file (``qsegment quantize``'s
    ``.onnx``) rather than weights: what a Segmenter runs as the sensor does."""
    return Path(source).suffix == ".onnx"


def resolve_checkpoint(source: str | Path) -> Path:
    """A shipped name, a run folder (its ``last.safetensors``) or a .safetensors file."""
    path = Path(source)
    if path.is_dir():
        path = path / "last.safetensors"
    elif not path.exists() and str(source) in WEIGHTS:
        path = WEIGHTS.load(str(source))
    if not path.is_file():
        shipped = ", ".join(list_pretrained()) or "none"
        raise CheckpointError(f"{source}: no such checkpoint, run folder or pretrained name "
                              f"(shipped: {shipped})")
    return path


def checkpoint_reference(source: str | Path) -> str:
    """How a card names its source checkpoint so that it resolves from anywhere: a shipped
    name as is, a path made absolute."""
    return str(source) if str(source) in list_pretrained() else str(Path(source).resolve())


def read_card(path: Path) -> Card:
    """The card of a checkpoint: in its metadata, else the JSON beside it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("qsegment", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    card = Card.from_dict(meta["card"]) if meta.get("card") else Card.beside(path)
    if not card.model:
        raise CheckpointError(f"{path}: no card naming its model (expected a qsegment checkpoint)")
    return card
