"""The ``qsegment`` command: one thin sub-command per pipeline stage.

Each command declares its options (the choices come from the registries: models,
runtimes, export targets, training config fields) and calls the library, so
everything here is also importable. Heavy libraries are imported inside the
handlers: ``--help`` costs no PyTorch import.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from .cli_types import (
    checked,
    decay,
    existing_dir,
    existing_file,
    fraction,
    host,
    non_negative_float,
    non_negative_int,
    output_file,
    output_folder,
    port,
    positive_float,
    positive_int,
    probability,
    ranged,
    threshold_rule,
    url,
)
from .console import configure_logging
from .datasets import DATASETS, Split
from .engine.config import LOSSES, OPTIMIZERS, SCHEDULERS, preset_path
from .errors import QsegmentError, UsageError
from .export import TARGETS
from .pretrained import (
    AV_MODEL,
    DEFAULT_MODEL,
    SENSOR_MODEL,
    default_model,
    is_sensor_file,
    resolve_checkpoint,
)
from .runtimes import AUTO, DEFAULT_RUNTIME, RUNTIMES, checkpoint_runtimes

if TYPE_CHECKING:
    import numpy as np

    from .biomarkers.report import BiomarkerRow
    from .card import Card
    from .datasets import FundusDataset
    from .inference.predict import Prediction
    from .runtimes.base import Runtime

Handler = Callable[[argparse.Namespace], int]
Commands = argparse._SubParsersAction


class Parser(argparse.ArgumentParser):
    """argparse's parser with usage errors in one line, as the commands' own errors are:
    ``qsegment COMMAND: error: argument --x: ...``, exit code 2. Sub-commands' parsers
    are of this class too (``add_subparsers`` makes its parser's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


class Deprecated(argparse.Action):
    """An option's old spelling, kept for one release: it says so on stderr, then stores
    its value where the new spelling ``instead`` does."""

    def __init__(self, option_strings: list[str], dest: str, instead: str,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.instead = instead

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.instead}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


# --- the values of options: each refused at the door with one line (cli_types) ------------

# "the model to use": a shipped weights name, a run folder or a .safetensors file
weights = checked(resolve_checkpoint, "weights")


def model_or_file(text: str) -> str:
    """Weights (:data:`weights`), or a model file that an export made (an int8 .onnx or
    .tflite)."""
    return text if Path(text).is_file() else weights(text)


def _check_weights_list(text: str) -> None:
    for item in text.split(","):
        resolve_checkpoint(item)


weights_list = checked(_check_weights_list, "weights_list")


def _check_architecture(name: str) -> None:
    """Imports PyTorch (the model registry's home), which the commands that take an
    architecture (train, bench) import anyway."""
    from .models import MODELS

    MODELS.get(name)


architecture = checked(_check_architecture, "architecture")
preset = checked(preset_path, "preset")


def _check_scale(text: str) -> None:
    from .inference.maps import check_scale

    check_scale(text)


scale = checked(_check_scale, "scale")
degrees = ranged("degrees", float, lambda v: 0 < v < 180,
                 "an angle in degrees between 0 and 180")


def device(text: str) -> str:
    """A PyTorch device name."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, mps, cuda or cuda:N, got {text!r}")
    return text


def config_folders(text: str) -> str:
    """Existing folders, comma-separated (one per dataset, empty for the dataset's own),
    as the text that a training config records."""
    return ",".join(folder and str(existing_dir(folder)) for folder in text.split(","))


def _check_dataset_names(text: str) -> None:
    for name in text.split(","):
        DATASETS.get(name)


dataset_names = checked(_check_dataset_names, "dataset_names")


def positive_floats(text: str) -> list[float]:
    """Comma-separated numbers > 0."""
    return [positive_float(item) for item in text.split(",")]


def image_names(text: str) -> list[str]:
    """Comma-separated image names (the dataset says whether it has them)."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated image names, got {text!r}")
    return names


def ray_address(text: str) -> str:
    """A Ray cluster: auto, local, ray://HOST[:PORT] or HOST:PORT."""
    if not re.fullmatch(r"auto|local|ray://[\w.-]+(:\d+)?|[\w.-]+:\d+", text):
        raise argparse.ArgumentTypeError(
            f"expected auto, local, ray://HOST:PORT or HOST:PORT, got {text!r}")
    return text


def _command(sub: Commands, name: str, summary: str, examples: str,
             handler: Handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=summary,
                       epilog="examples:\n" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=handler)
    return p


def _add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=threshold_rule, default="auto", metavar="auto|card|T",
                   help="auto: cut each image where its own map expects the best Dice, by "
                   "the card's calibration fitted on training images (the card's threshold "
                   "for models without one); card: the model card's threshold, chosen on "
                   "training data; a number between 0 and 1: that (auto)")


def _add_segment_vote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--segment-vote", action=argparse.BooleanOptionalAction, default=True,
                   help="artery/vein maps: one class per vessel segment, the skeleton cut "
                   "at branch points and crossings (default; needs scikit-image); "
                   "--no-segment-vote: each pixel's own class")


def _add_tta(p: argparse.ArgumentParser, note: str) -> None:
    p.add_argument("--tta", choices=["none", "flip", "d8"], default="none",
                   help="test-time augmentation: average the logits over flips (4 passes) or "
                   f"flips and transposes (d8, 8 passes){note} (none)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", type=existing_dir,
                   help="CHASE_DB1 folder (default: $QSEGMENT_DATA, else ../shared/data/CHASEDB1)")


def _add_datasets(p: argparse.ArgumentParser, purpose: str, default: str | None = None
                  ) -> None:
    """``--dataset NAME[,NAME]`` (whose training splits serve ``purpose``) and ``--data
    DIR[,DIR]``, one folder per dataset, as a training config records them."""
    p.add_argument("--dataset", type=dataset_names, metavar="NAME[,NAME]", default=default,
                   help=f"which datasets' training splits {purpose}")
    p.add_argument("--data", metavar="DIR[,DIR]", type=config_folders,
                   help="the dataset folder, one per dataset (default: each dataset's own)")


def _tile(text: str) -> int | tuple[int, int]:
    """N (square) or HxW."""
    try:
        sides = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        sides = ()
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"expected N or HEIGHTxWIDTH in pixels, got {text!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _add_tile(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=_tile, metavar="N|HxW",
                   help="larger images run in overlapping tiles of this size, multiples of the "
                   "network's stride (default: the one shipped with the weights, 400x1008 for "
                   "Q-Segment: bounded memory, one interpreter for every size)")


def _add_scale_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", default="auto", metavar="auto|fov|none|FACTOR", type=scale,
                   help="fov: resize each photograph so that its field of view is as wide "
                   "as the training images' (917 px), the map resized back (a no-op on "
                   "CHASE_DB1; crops without a visible FOV rim stay as they are); auto: "
                   "then measure its widest vessels and, where their calibre is not the "
                   "training images', run again at the scale that makes it so (the card's "
                   "calibration; docs/RESULTS.md, Other cameras); none: as it is; a number: "
                   "that factor (auto)")


def _add_model(p: argparse.ArgumentParser, what: str = "the model") -> None:
    """``--model`` of the commands with ``--av``: unless named, main() makes it
    :func:`~qsegment.pretrained.default_model`'s for the command's ``--av``."""
    p.add_argument("--model", type=weights, metavar="MODEL",
                   help=f"{what}: pretrained name, run folder, .safetensors, or an IMX500 "
                   "int8 .onnx (qsegment quantize's), run as the sensor runs it "
                   f"({DEFAULT_MODEL}; with --av {AV_MODEL})")


def _add_runtime(p: argparse.ArgumentParser, default: str) -> None:
    names = checkpoint_runtimes()
    auto = [AUTO] if default == AUTO else []
    p.add_argument("--runtime", choices=auto + names, default=default,
                   help="; ".join([f"{AUTO}: the fastest of these installed for this CPU "
                                   "(--verbose says which and why)"] * len(auto)
                                  + [f"{n}: {RUNTIMES.get(n).description}" for n in names])
                   + f" ({default})")


# --- models -----------------------------------------------------------------------------

def _models(args: argparse.Namespace) -> int:
    from .models import MODELS, create_model
    from .models.profile import model_stats
    from .pretrained import WEIGHTS

    rows = []
    for name, description in MODELS.describe().items():
        stats = model_stats(create_model(name), args.size, args.size)
        rows.append({"model": name, "description": description, **stats})
    shipped = [{"weights": w.name, "architecture": w.architecture, "trained_on": w.data,
                "description": w.description} for w in WEIGHTS]
    if args.json:
        print(json.dumps({"input": [args.size, args.size], "models": rows,
                          "weights": shipped}, indent=2))
        return 0
    print(f"| model | params (M) | fp32 weights (MB) | int8 weights (MB) | "
          f"GMACs @ {args.size}x{args.size} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params_m']:.3f} | {r['fp32_mb']:.3f} | {r['int8_mb']:.3f} | "
              f"{r['gmacs']:.2f} |")
    print("\n| shipped weights | architecture | trained on (the data's terms) |\n|---|---|---|")
    for w in shipped:
        print(f"| {w['weights']} | {w['architecture']} | {w['trained_on']} |")
    return 0


def _add_models(sub: Commands) -> None:
    p = _command(sub, "models", "Print the models table (paper Table II): parameters, "
                 "weight sizes and MACs, computed from the models; then the shipped "
                 "weights, each with the data it was trained on and that data's terms.",
                 "  qsegment models\n  qsegment models --size 336 --json", _models)
    p.add_argument("--size", type=positive_int, default=960,
                   help="square input size for MACs (960)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


# --- train ------------------------------------------------------------------------------

def _config_fields() -> list[dataclasses.Field]:
    """The training config fields that are command-line flags (all but ``model_args``,
    which ``--upsample`` sets)."""
    from .engine.config import TrainConfig

    return [f for f in dataclasses.fields(TrainConfig) if f.name != "model_args"]


def _train(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.train import train

    overrides = {f.name: getattr(args, f.name) for f in _config_fields()}
    if args.upsample:
        overrides["model_args"] = {"upsample": args.upsample}
    card = train(load_config(args.preset, **overrides), args.out, resume=args.resume)
    if card:
        m, t = card["val_metrics"]["pooled"], card["threshold"]["value"]
        mt = card["val_metrics_at_threshold"]["pooled"]
        print(f"validation (t=0.5): Dice {m['dice']:.4f} Acc {m['acc']:.4f} AUC {m['auc']:.4f}")
        print(f"validation (t={t:.3f}, chosen on training images): Dice {mt['dice']:.4f} "
              f"Acc {mt['acc']:.4f}")
        print(f"run folder: {args.out}")
    return 0


def _add_train(sub: Commands) -> None:
    p = _command(sub, "train", "Train a model on CHASE_DB1, or on a mixture of datasets, from "
                 "a preset (paper: the paper's GPU recipe; fast: a 2-core CPU recipe; multi: "
                 "fast on CHASE_DB1, HRF-AV and LES-AV, each photograph at one vessel scale). "
                 "Any preset field can be overridden. Runs data-parallel under torchrun.",
                 "  qsegment train --preset fast --out runs/fast\n"
                 "  qsegment train --preset multi --out runs/multi\n"
                 "  qsegment train --preset multi --dataset hrf-av --out runs/hrf\n"
                 "  qsegment train --preset paper --out runs/paper --device cuda\n"
                 "  qsegment train --out runs/fast --resume\n"
                 "  torchrun --nproc-per-node 2 -m qsegment train --preset fast --out runs/ddp",
                 _train)
    p.add_argument("--preset", default="fast", type=preset,
                   help="paper | fast | multi | path to a YAML file (fast)")
    p.add_argument("--out", required=True, type=output_folder, help="run folder to write")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its recipe; "
                   "--device, --threads, --max-minutes, --channels-last and --compile apply")
    p.add_argument("--upsample", choices=["nearest", "unpool"],
                   help="Q-Segment up-sampling (nearest: IMX500-deployable)")
    for f in _config_fields():
        flag = "--arch" if f.name == "model" else "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=f.metadata["help"])
            continue
        parse = TRAIN_OPTIONS[f.name]  # a new field needs its row there
        if "choices" not in parse:
            parse = {"metavar": flag[2:].replace("-", "_").upper(), **parse}
        p.add_argument(flag, dest=f.name, help=f.metadata["help"], **parse)
    p.add_argument("--model", action=Deprecated, instead="--arch", dest="model",
                   type=architecture)


# How each training config field's flag is parsed (the bool ones are --X/--no-X).
TRAIN_OPTIONS: dict[str, dict] = {
    "model": {"type": architecture}, "dataset": {"type": dataset_names, "metavar": "NAME[,NAME]"},
    "dataset_weights": {"type": positive_floats, "metavar": "W[,W]"},
    "data": {"type": config_folders, "metavar": "DIR[,DIR]"},
    "train_images": {"type": image_names}, "val_images": {"type": image_names},
    "epochs": {"type": positive_int}, "batch_size": {"type": positive_int},
    "crop": {"type": non_negative_int}, "resize": {"type": non_negative_int},
    "repeats": {"type": positive_int}, "acquisition_jpeg": {"type": fraction},
    "loss": {"choices": LOSSES.names()}, "optimizer": {"choices": OPTIMIZERS.names()},
    "lr": {"type": positive_float}, "momentum": {"type": decay},
    "weight_decay": {"type": non_negative_float}, "scheduler": {"choices": SCHEDULERS.names()},
    "restart_epochs": {"type": positive_int}, "warmup_epochs": {"type": non_negative_int},
    "init": {"type": weights}, "ema": {"type": decay}, "teacher": {"type": weights_list},
    "teacher_mix": {"type": fraction}, "val_every": {"type": positive_int},
    "seed": {"type": non_negative_int}, "threads": {"type": positive_int},
    "max_minutes": {"type": positive_float}, "device": {"type": device},
}


# --- evaluate ---------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    from .datasets import detect_dataset, open_dataset
    from .engine.evaluate import format_table, int8_table, table_iv

    data = (detect_dataset(args.data) if args.dataset == "auto"
            else open_dataset(args.data, args.dataset))
    suffixes = tuple(i.suffix for i in RUNTIMES if i.suffix)
    if args.task == "av":
        return _evaluate_av(args, data)
    if str(args.model).endswith(suffixes):
        if args.images != "val":
            raise UsageError("--images train scores checkpoints; an int8 model file is "
                             "scored on the validation images")
        if args.tta != "none":
            raise UsageError("--tta applies to float checkpoints, not to an int8 model file")
        if len(args.size) > 1:
            raise UsageError("an int8 model runs at one size: give at most one --size")
        result = int8_table(args.model, (args.size or [None])[0], data, out=args.out,
                            figures=not args.no_figures)
    else:
        from .inference.calibrate import Calibration

        runner, card = _scored_runtime(args)
        result = table_iv(runner, card, data, [None, *args.size], _scored_split(args, data),
                          out=args.out, figures=not args.no_figures, tta=args.tta,
                          scale=args.scale,
                          calibration=Calibration.beside(resolve_checkpoint(args.model)))
    print(format_table(result))
    if "dice_drop" in result:
        print(f"int8 minus float Dice at the same resolution: {-result['dice_drop']:+.4f}")
    print(f"threshold {result['threshold']:.3f} ({result['threshold_rule']}); pooled over "
          f"{len(result['val_images'])} {'training' if args.images == 'train' else 'validation'} "
          "images, inside the FOV")
    if cuts := [c for row in result["rows"].values() for c in row.get("cuts", [])]:
        print(f"cut per image: {min(cuts):.3f}-{max(cuts):.3f} (expected Dice, the model's "
              "calibration)")
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics.json'}" +
              ("" if args.no_figures else " and figures"))
    return 0


def _scored_runtime(args: argparse.Namespace) -> tuple[Runtime, Card]:
    """The checkpoint ``args.model`` on ``args.runtime``, with its card named after the
    runtime where it is not the float network itself (the tables' row label)."""
    from .checkpoint import load_model
    from .export.cpu import open_runtime

    model, card = load_model(args.model)
    runner = open_runtime(args.runtime, model, resolve_checkpoint(args.model))
    if args.runtime != "torch":
        card = card.replace(name=f"{card.label} ({args.runtime})")
    return runner, card


def _scored_split(args: argparse.Namespace, data: FundusDataset) -> Split | None:
    """The images ``--images`` scores: None for the dataset's own split, or its training
    images in the validation images' place."""
    if args.images == "val":
        return None
    return Split(data.default_split.train, data.default_split.train)


def _evaluate_av(args: argparse.Namespace, data: FundusDataset) -> int:
    from .engine.evaluate import format_av_table, table_av
    from .inference.calibrate import Calibration

    in_sensor = is_sensor_file(args.model)
    if args.size or (str(args.model).endswith(tuple(i.suffix for i in RUNTIMES if i.suffix))
                     and not in_sensor):
        raise UsageError("--task av scores a checkpoint at full resolution (on --runtime), or "
                         "an IMX500 int8 .onnx in native ROI tiles: give a run folder, "
                         ".safetensors, shipped name or .onnx, and no --size")
    if in_sensor:
        from .deploy.tiling import SensorTiles

        sensor = SensorTiles.from_file(args.model)
        runner: Runtime = sensor
        card = sensor.card.replace(
            name=f"{sensor.card.label} ({sensor.name} of {sensor.size}x{sensor.size})")
        calibration = sensor.float_calibration()
    else:
        runner, card = _scored_runtime(args)
        calibration = Calibration.beside(resolve_checkpoint(args.model))
    result = table_av(runner, card, data, _scored_split(args, data), out=args.out,
                      figures=not args.no_figures, scale=args.scale, tta=args.tta,
                      calibration=calibration, segment_vote=args.segment_vote)
    print(format_av_table(result))
    if args.out:
        print(f"wrote {Path(args.out) / 'metrics_av.json'}" +
              ("" if args.no_figures else " and artery_vein.png"))
    return 0


def _add_evaluate(sub: Commands) -> None:
    files = ", ".join(f"{i.suffix} ({i.name})" for i in RUNTIMES if i.suffix)
    p = _command(sub, "evaluate", "Score a model on the validation images the way the "
                 "literature does (Dice, Acc, AUC, Se, Sp, IoU, MCC inside the FOV, at full "
                 "resolution and optionally at lower inference sizes), beside the second "
                 "human observer; writes metrics.json and figures.",
                 "  qsegment evaluate qsegment-nearest --out eval/\n"
                 "  qsegment evaluate runs/fast --size 336 256 --out runs/fast/eval\n"
                 "  qsegment evaluate q/ptq.onnx --out q/eval   # int8 beside float\n"
                 "  qsegment evaluate mcu/qsegment.tflite      # TFLite-Micro interpreter\n"
                 "  qsegment evaluate --data my_images/        # your own labelled images\n"
                 "  qsegment evaluate --task av --dataset les-av   # arteries and veins\n"
                 "  qsegment evaluate q/imxav.onnx --task av --dataset les-av  # in-sensor tiles",
                 _evaluate)
    p.add_argument("model", nargs="?", type=model_or_file, metavar="MODEL",
                   help="pretrained name, run folder, .safetensors, or an int8 model file "
                        f"scored beside its float model at its size: {files}; with --task "
                        "av an .onnx is run in the sensor's native ROI tiles "
                        f"({DEFAULT_MODEL}; with --task av {AV_MODEL})")
    p.add_argument("--data", metavar="DIR", type=existing_dir,
                   help="the images to score: a CHASE_DB1 folder (default: $QSEGMENT_DATA, "
                   "else ../shared/data/CHASEDB1), or your own images with vessel labels "
                   "(NAME_manual1 / _1stHO / .ah / _label, DRIVE-, STARE- and HRF-style "
                   "folders; FOV masks used where given), all of them scored")
    p.add_argument("--dataset", choices=["auto", *DATASETS.names()], default="auto",
                   help="how to read --data (auto: CHASE_DB1 when it holds the whole "
                   "CHASE_DB1 split, HRF-AV or LES-AV when laid out as they are, else a "
                   "labelled folder)")
    p.add_argument("--size", type=positive_int, nargs="*", default=[],
                   help="extra square inference sizes (image resized, probabilities resized back)")
    p.add_argument("--out", type=output_folder, help="folder for metrics.json and figures")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--task", choices=["vessel", "av"], default="vessel",
                   help="vessel: the vessel map (Table IV); av: an artery/vein model's "
                   "classes by BF-Net's protocol (Se, AUC-ROC, F1, AUC-PR, MSE per class "
                   "and weighted) and the accuracy on the manual centreline, on a dataset "
                   "with artery/vein labels (default: vessel)")
    p.add_argument("--images", choices=("val", "train"), default="val",
                   help="score the validation (test) images (val), or the training images, "
                   "where a choice between models may be made (train; the model learned "
                   "from them, so its scores there are higher)")
    _add_segment_vote(p)
    _add_runtime(p, "torch")
    _add_tta(p, "; the threshold is then chosen anew on the training images with the same "
             "views")
    _add_scale_option(p)


# --- calibrate --------------------------------------------------------------------------

def _calibrate(args: argparse.Namespace) -> int:
    from .data.mixture import run_parts
    from .engine.calibrate import fit_calibration, fov_rule_corrections
    from .engine.config import TrainConfig
    from .files import write_json
    from .inference.calibrate import calibration_path
    from .inference.predict import Segmenter
    from .pretrained import read_card
    from .runtimes import open_weights

    weights = resolve_checkpoint(args.model)
    card = read_card(weights)
    recipe = TrainConfig.recorded(card.get("config") or {})  # its datasets and their scale
    given = {"dataset": args.dataset, "train_images": [], "val_images": []} \
        if args.dataset else {}
    parts = run_parts(dataclasses.replace(recipe, data=args.data, **given), progress=True)
    train = [sample for part in parts for sample in part.train]
    segmenter = Segmenter(open_weights(args.runtime, weights), scale="none")
    calibration, report = fit_calibration(
        lambda rgb: segmenter.predict(rgb).probability, train, card.threshold_value,
        fov_corrections=fov_rule_corrections(parts) if recipe.label_scale else ())
    target = calibration_path(weights)
    write_json(target, {**calibration.to_dict(), "runtime": segmenter.runtime, **report})
    a, b = calibration.platt
    print(f"scale rule: widest vessels {calibration.vessel_width:.2f} px at the training "
          f"scale, calibre ~ scale^{calibration.width_gamma:.3f}, corrections within "
          f"{calibration.dead_band:.0%} ignored\n"
          f"cut rule: expected Dice of sigmoid({a:g} * logit + {b:g}); pooled Dice "
          f"{report['mean_dice']:.4f} averaged over {len(report['conditions'])} conditions\n"
          f"wrote {target}")
    return 0


def _add_calibrate(sub: Commands) -> None:
    p = _command(sub, "calibrate", "Fit a model's label-free per-image calibration on its "
                 "training images (and shifts simulated from them): the vessel calibre that "
                 "`--scale auto` restores and the recalibration behind `--threshold auto`; "
                 "written beside the weights as NAME.calibration.json.",
                 "  qsegment calibrate runs/fast\n"
                 "  qsegment calibrate runs/hrf --dataset hrf-av --data ../shared/data/HRF-AV",
                 _calibrate)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, type=weights, metavar="MODEL",
                   help=f"pretrained name, run folder or .safetensors ({DEFAULT_MODEL})")
    _add_datasets(p, "to fit on (default: the model's own, from its card)")
    _add_runtime(p, AUTO)


# --- predict ----------------------------------------------------------------------------

def _measure_options(args: argparse.Namespace) -> dict:
    given = {"bridge": args.bridge} if "bridge" in args else {}  # else the library's default
    return {"mm_per_pixel": args.mm_per_pixel, "fov_degrees": args.fov_degrees,
            "min_object_px": args.min_object_px, **given}


def _bridge(text: str) -> float | None:
    """``none``, or the probability that a vessel's centreline keeps while bridged."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _add_measure_options(p: argparse.ArgumentParser, note: str = "") -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mm-per-pixel", type=positive_float,
                       help=f"{note}lengths in mm, a pixel being this long (default: pixels)")
    group.add_argument("--fov-degrees", type=degrees,
                       help=f"{note}lengths in mm from the camera's field of view angle, "
                       "e.g. 45 (0.29 mm per degree; docs/BIOMARKERS.md)")
    p.add_argument("--min-object-px", type=non_negative_int, default=0,
                   help=f"{note}drop vessel fragments smaller than this before measuring (0)")
    p.add_argument("--bridge", type=_bridge, default=argparse.SUPPRESS, metavar="LOW",
                   help=f"{note}before measuring a model's map, join its pieces along the "
                   "centreline of where the probability stays at least LOW, and drop the "
                   "specks left alone; 'none' measures the map as cut (0.3: "
                   "qsegment.biomarkers.BRIDGE_LOW)")


def _predict(args: argparse.Namespace) -> int:
    from .inference.predict import Segmenter, predict_files

    segmenter = Segmenter.from_pretrained(args.model, threshold=args.threshold, tile=args.tile,
                                          runtime=args.runtime, tta=args.tta, scale=args.scale,
                                          artery_vein=args.av, segment_vote=args.segment_vote)
    rows: list[BiomarkerRow] = []
    measure = None
    if args.biomarkers:
        from .biomarkers.report import measure_prediction

        def measure(path: Path, rgb: np.ndarray, prediction: Prediction) -> None:
            rows.append(measure_prediction(path, path.stem, rgb, prediction, segmenter,
                                           **_measure_options(args))[1])

    summary = predict_files(segmenter, args.inputs, args.out, probability=args.prob,
                            overlay=args.overlay, on_result=measure, workers=args.workers)
    for source, problem in summary.failed:
        print(f"qsegment predict: {source}: {problem}", file=sys.stderr)
    print(f"{len(summary.written)} image(s) segmented into {args.out} "
          f"({_calibration_summary(summary.predictions)}, runtime {segmenter.runtime}), "
          f"{len(summary.failed)} failed")
    if args.biomarkers:
        from .biomarkers.report import write_rows

        csv_path, _ = write_rows(rows, args.out)
        print(f"biomarkers of {len(rows)} image(s) in {csv_path} and .json")
    return 1 if summary.failed else 0


def _calibration_summary(found: Sequence[Prediction]) -> str:
    """The scales and thresholds the images got, and by which rule: ``threshold 0.74
    (auto), scale 0.52 (vessels)``, or ranges with the count of each rule."""
    def spread(values: list[float], rules: list[str]) -> str:
        counts = ", ".join(f"{rule} {rules.count(rule)}" if len(set(rules)) > 1 else rule
                           for rule in sorted(set(rules)))
        low, high = min(values), max(values)
        number = f"{low:.3f}" if high - low < 5e-4 else f"{low:.3f}-{high:.3f}"
        return f"{number} ({counts})"

    if not found:
        return "no image"
    return (f"threshold {spread([p.threshold for p in found], [p.threshold_rule for p in found])}"
            f", scale {spread([p.scale for p in found], [p.scale_rule for p in found])}")


def _add_predict(sub: Commands) -> None:
    p = _command(sub, "predict", "Segment your own fundus images (files, folders or glob "
                 "patterns) on the CPU: writes NAME_mask.png (0/255, the input's size) and "
                 "on request the probability map and a colour overlay. Any size, gray, RGBA "
                 "or 16-bit; large images are tiled. Exit code 1 if any input failed.",
                 "  qsegment predict fundus.jpg -o out/\n"
                 "  qsegment predict photos/ 'more/*.png' -o out/ --prob --overlay\n"
                 "  qsegment predict big.tif -o out/ --model runs/fast --threshold 0.5",
                 _predict)
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("-o", "--out", required=True, type=output_folder, help="output folder")
    _add_model(p)
    _add_threshold(p)
    p.add_argument("--prob", action="store_true", help="also write NAME_prob.png")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    p.add_argument("--av", action="store_true",
                   help=f"arteries and veins too, with an artery/vein model (--model; "
                   f"{AV_MODEL} unless named): NAME_av.png (a palette PNG: its values are "
                   "the classes 0-3, shown as arteries red, veins blue, uncertain green) "
                   "and a class-coloured overlay")
    _add_segment_vote(p)
    _add_runtime(p, DEFAULT_RUNTIME)
    _add_tile(p)
    _add_tta(p, "; the card's threshold still applies")
    _add_scale_option(p)
    p.add_argument("--workers", type=positive_int, default=2,
                   help="threads that read the next images and write PNGs while the network "
                   "runs (2)")
    p.add_argument("--biomarkers", action="store_true",
                   help="also measure each map's vessel biomarkers inside the FOV: "
                   "biomarkers.csv and .json (docs/BIOMARKERS.md)")
    _add_measure_options(p, "with --biomarkers: ")


# --- batch ------------------------------------------------------------------------------

def _batch(args: argparse.Namespace) -> int:
    from .batch import segment_batch

    summary = segment_batch(args.inputs, args.out, model=args.model, runtime=args.runtime,
                            threshold=args.threshold, scale=args.scale, tile=args.tile,
                            probability=args.prob, artery_vein=args.av,
                            biomarkers=args.biomarkers, address=args.address, workers=args.workers,
                            cpus_per_worker=args.cpus_per_worker, **_measure_options(args))
    shown = 20  # a million inputs can fail by the thousand: the manifest lists them all
    for source, problem in summary.failed[:shown]:
        print(f"qsegment batch: {source}: {problem}", file=sys.stderr)
    if len(summary.failed) > shown:
        print(f"qsegment batch: and {len(summary.failed) - shown} more (status 'failed' in "
              f"{summary.manifest})", file=sys.stderr)
    rate = summary.segmented / summary.seconds if summary.seconds else 0.0
    print(f"{summary.segmented} image(s) segmented into {args.out} by {summary.workers} "
          f"worker(s), {rate:.1f} images/s; {summary.skipped} complete already, "
          f"{len(summary.failed)} failed; one row per input in {summary.manifest}")
    return 1 if summary.failed else 0


def _add_batch(sub: Commands) -> None:
    p = _command(sub, "batch", "Segment images by the hundred thousand on Ray (pip install "
                 "'qsegment[ray]'): the same PNGs as predict, written by a pool of workers "
                 "that each hold the model, and DIR/manifest.parquet with one row per input "
                 "(status, error, model, threshold, scale, vessel fraction, timings, and the "
                 "biomarkers on request). Resumable: rerunning the same command skips the "
                 "images whose outputs are complete (record and SHA-256 checked) and does "
                 "the rest; a worker that dies is restarted and its batch retried. Inputs: "
                 "files, folders, glob patterns, URIs (s3://, gs://) and lists of them (.csv "
                 "or .parquet with a 'path' column). Exit code 1 if any input failed.",
                 "  qsegment batch photos/ -o out/                  # a local Ray, all CPUs\n"
                 "  qsegment batch 'scans/*.jpg' list.csv -o out/ --workers 2 --biomarkers\n"
                 "  qsegment batch paths.parquet -o /mnt/shared/out --address auto\n"
                 "  qsegment batch photos/ -o out/                  # again: finishes the rest",
                 _batch)
    p.add_argument("inputs", nargs="+", help="image files, folders, glob patterns, URIs, or "
                   ".csv / .parquet lists of paths or URIs (relative to the list)")
    p.add_argument("-o", "--out", required=True, type=output_folder,
                   help="output folder (on a cluster: a folder every node sees at this path)")
    p.add_argument("--address", type=ray_address,
                   help="the Ray cluster: auto (the one this machine belongs to: its head "
                   "node, a KubeRay job) or ray://HEAD:10001 (default: a local Ray, started "
                   "and stopped by the command)")
    p.add_argument("--workers", type=positive_int,
                   help="workers, each holding the model (default: the cluster's CPUs divided "
                   "by --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=positive_int, default=1,
                   help="CPUs each worker reserves and runs the network on (1)")
    _add_model(p)
    _add_threshold(p)
    p.add_argument("--prob", action="store_true", help="also write NAME_prob.png")
    p.add_argument("--av", action="store_true",
                   help="also write NAME_av.png, the artery/vein map of an artery/vein "
                   f"model (--model; {AV_MODEL} unless named; the manifest's av columns)")
    _add_runtime(p, DEFAULT_RUNTIME)
    _add_tile(p)
    _add_scale_option(p)
    p.add_argument("--biomarkers", action="store_true",
                   help="also measure each map's vessel biomarkers inside the FOV, as columns "
                   "of the manifest (docs/BIOMARKERS.md)")
    _add_measure_options(p, "with --biomarkers: ")


# --- analyze ----------------------------------------------------------------------------

def _analyze(args: argparse.Namespace) -> int:
    from .biomarkers import report
    from .images import collect_inputs
    from .inference.predict import Segmenter

    if not args.inputs and not args.agreement:
        raise UsageError("give masks or photographs to measure, or --agreement")
    if args.agreement and is_sensor_file(args.model):
        raise UsageError(f"{args.model}: --agreement sets a model's int8 maps beside its "
                         "float ones: give its weights, not a sensor file")
    segmenter = Segmenter.from_pretrained(args.model, args.threshold, runtime=args.runtime,
                                          artery_vein=args.av)
    if args.agreement:  # the float model beside it: how much int8 moves the biomarkers
        reference = Segmenter.from_pretrained(args.model, args.threshold, runtime="torch")
        table = report.agreement(args.data, args.out, segmenter=segmenter, images=args.images,
                                 float_segmenter=reference, **_measure_options(args))
        print(report.agreement_markdown(table))
        print(f"wrote {Path(args.out) / 'agreement.md'} and agreement.json")
        return 0
    files, failed = collect_inputs(args.inputs)
    rows = report.analyze(files, args.out, segmenter=segmenter, figures=not args.no_figures,
                          photographs=args.photographs, **_measure_options(args))
    failed += [(r.input, r.error) for r in rows if r.status != "ok"]
    for source, problem in failed:
        print(f"qsegment analyze: {source}: {problem}", file=sys.stderr)
    measured = sum(r.status == "ok" for r in rows)
    print(f"{measured} image(s) measured into {Path(args.out) / 'biomarkers.csv'} and .json, "
          f"{len(failed)} failed")
    return 1 if failed else 0


def _add_analyze(sub: Commands) -> None:
    p = _command(sub, "analyze", "Vessel biomarkers of binary vessel masks or of photographs "
                 "(segmented first): densities, fractal dimension, tortuosity, calibre, "
                 "branching, inside the FOV; biomarkers.csv and .json (one row per image), "
                 "NAME_segments.csv and a figure per image. Artery/vein maps (the datasets' "
                 "0-3 coding, or predict --av's NAME_av.png), or photographs with --av, add "
                 "the optic disc, CRAE, CRVE, AVR and each class's measures. --agreement "
                 "compares the model's biomarkers with CHASE_DB1's two human annotators.",
                 "  qsegment analyze out/Image_11L_mask.png -o bio/\n"
                 "  qsegment analyze HRF-AV/test/1st_manual -o av/ --photographs "
                 "HRF-AV/test/images\n"
                 "  qsegment analyze photos/ -o av/ --av\n"
                 "  qsegment analyze photos/ -o bio/ --fov-degrees 45\n"
                 "  qsegment analyze --agreement -o bio/agreement",
                 _analyze)
    p.add_argument("inputs", nargs="*", help="mask or photograph files, folders or glob "
                   "patterns (a gray image of two values is a mask)")
    p.add_argument("-o", "--out", required=True, type=output_folder, help="output folder")
    _add_model(p, "the model that segments photographs")
    _add_threshold(p)
    _add_runtime(p, DEFAULT_RUNTIME)
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument("--av", action="store_true",
                   help=f"segment photographs with an artery/vein model (--model; {AV_MODEL} "
                   "unless named) and add the optic disc, CRAE, CRVE, AVR and each "
                   "class's measures")
    p.add_argument("--photographs", type=existing_dir, metavar="DIR",
                   help="where artery/vein map inputs find their photographs, in which the "
                   "optic disc is found (09_dr.JPG for 09_dr_AVmanual.png; the same name "
                   "for LES-AV's)")
    p.add_argument("--agreement", action="store_true",
                   help="the agreement study on CHASE_DB1's validation images (--data)")
    p.add_argument("--images", choices=("val", "train"), default="val",
                   help="with --agreement: the validation images (val), or the training "
                   "images, on which settings such as --bridge are chosen (train)")
    _add_data(p)
    _add_measure_options(p)


# --- data -------------------------------------------------------------------------------

def _data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .datasets.download import check_dataset, download_dataset

    for flag, value, action in (("--to", args.to, "download"), ("--url", args.url, "download"),
                                ("--data", args.data, "check")):
        if value is not None and args.action != action:
            raise UsageError(f"{flag} goes with `qsegment data {action}`, not {args.action}")
    with tqdm(total=0, unit="B", unit_scale=True, desc=args.dataset, delay=1.0) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        if args.action == "check":
            folder, files = check_dataset(args.dataset, args.data, progress)
            done = f"{args.dataset} in {folder}: {files} files, every checksum matches"
        else:
            folder = download_dataset(args.dataset, args.to, args.url, progress)
            done = (f"CHASE_DB1 in {folder}: every file matches CHASEDB1.sha256 (CC BY 4.0: "
                    "cite Fraz et al. 2012 and Owen et al. 2009)")
    print(done)  # after the bar has gone
    return 0


def _add_data_command(sub: Commands) -> None:
    from .datasets.download import CHASEDB1_URL, SERVED

    p = _command(sub, "data", "Get a dataset and check it. download: CHASE_DB1 from its "
                 "publisher, every file checked against the SHA-256 list shipped with "
                 "qsegment, unpacked where the commands look for it (resumes a broken "
                 "download; retries); HRF-AV and LES-AV, which no publisher offers in the "
                 "layout qsegment reads: where to get the files and how to arrange them. "
                 "check: every file of a dataset folder against its shipped SHA-256 list.",
                 "  qsegment data download chasedb1\n"
                 "  qsegment data download chasedb1 --to data/CHASEDB1\n"
                 "  qsegment data download hrf-av      # where to get it, how to arrange it\n"
                 "  qsegment data check les-av --data ~/data/LES-AV\n"
                 "  qsegment data check chasedb1       # the folder the commands use", _data)
    p.add_argument("action", choices=["download", "check"], help="what to do")
    p.add_argument("dataset", choices=SERVED, help="which dataset")
    p.add_argument("--to", metavar="DIR", type=output_folder, help="download: the folder to create "
                   "(default: ~/.cache/qsegment/data/NAME, where the commands look for it)")
    p.add_argument("--url", type=url, help=f"download: the archive ({CHASEDB1_URL})")
    p.add_argument("--data", metavar="DIR", type=existing_dir,
                   help="check: the dataset's folder (default: where the commands look: "
                   "$QSEGMENT_DATA_NAME, ../shared/data/FOLDER, ~/.cache/qsegment/data/FOLDER)")


# --- quantize, export, camera -----------------------------------------------------------

def _quantize(args: argparse.Namespace) -> int:
    from .export.imx500.quantize import quantize

    card = quantize(args.model, args.out, method=args.method, size=args.size,
                    calibration=args.calibration, epochs=args.epochs, lr=args.lr,
                    seed=args.seed, data=args.data, datasets=args.dataset,
                    view=args.calibration_view)
    agree = card["agreement"]
    what = "training images" if args.calibration_view == "whole" else "training-image tiles"
    print(f"{card['method']} at {card['size']}x{card['size']}, calibrated on "
          f"{card['calibration']['count']} {what} of {args.dataset}: wrote {args.out} and "
          f"{Path(args.out).with_suffix('.json')}")
    for name, label in (("float_vs_int8", "float vs int8"), ("ort_vs_mct", "ORT vs MCT")):
        a = agree[name]
        print(f"{label} on {agree['image']}: mask agreement {a['mask_agreement']:.4%}, "
              f"mean |prob diff| {a['prob_mean_abs']:.5f}")
    return 0


def _add_quantize(sub: Commands) -> None:
    p = _command(sub, "quantize", "Quantize a model to INT8 for the Sony IMX500 with "
                 "Sony's Model Compression Toolkit: post-training (ptq), gradient-based "
                 "(gptq) or quantization-aware training from the float weights (qat). "
                 "Calibration: whole training images resized to the deployment size, or "
                 "windows of them at native resolution as ROI tiling shows them. "
                 "Writes MCT's ONNX and a JSON card beside it.",
                 "  qsegment quantize qsegment-nearest -o q/ptq.onnx --size 280\n"
                 "  qsegment quantize runs/fast -o q/gptq.onnx --method gptq --size 280\n"
                 "  qsegment quantize runs/fast -o q/qat.onnx --method qat --epochs 3\n"
                 "  qsegment quantize -o q/ptq.onnx     # size: largest that fits (Java)\n"
                 "  qsegment quantize runs/av -o q/av.onnx --size 704 --dataset hrf-av,les-av "
                 "--calibration-view tiles",
                 _quantize)
    p.add_argument("model", nargs="?", default=SENSOR_MODEL, type=weights, metavar="MODEL",
                   help=f"pretrained name, run folder or .safetensors ({SENSOR_MODEL})")
    p.add_argument("-o", "--out", required=True, type=output_file(".onnx"),
                   help="quantized .onnx to write")
    p.add_argument("--method", choices=["ptq", "gptq", "qat"], default="ptq",
                   help="quantization method (ptq)")
    p.add_argument("--size", type=positive_int,
                   help="square deployment size, a multiple of the network's stride (default: "
                        "the largest that fits the IMX500, found with the converter's memory "
                        "report)")
    p.add_argument("--calibration", type=positive_int, default=16,
                   help="number of training images for calibration (16)")
    p.add_argument("--epochs", type=positive_int, default=3, help="GPTQ or QAT epochs (3)")
    p.add_argument("--lr", type=positive_float, default=1e-4, help="QAT learning rate (1e-4)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="calibration draw and QAT order (0)")
    _add_datasets(p, "to calibrate on (chasedb1)", default="chasedb1")
    p.add_argument("--calibration-view", choices=["whole", "tiles"], default="whole",
                   help="whole: each photograph resized to the input, as the sensor sees a "
                   "whole field of view (default); tiles: windows at native resolution, the "
                   "photographs at the model's training scale, as ROI tiling sees them")


def _export(args: argparse.Namespace) -> int:
    from .export import export, report

    target = TARGETS.get(args.target)
    own = {o.dest for o in target.options}
    foreign = sorted({o.flag for t in TARGETS for o in t.options
                      if o.dest not in own and getattr(args, o.dest, None) not in (None, False)})
    if foreign:
        raise UsageError(f"{', '.join(foreign)} do(es) not apply to --target {args.target} "
                         f"(its options: {', '.join(o.flag for o in target.options) or 'none'})")
    options = {d: getattr(args, d) for d in own if getattr(args, d) not in (None, False)}
    note = export(args.target, args.model, args.out, **options)
    for line in report(args.target, note):
        print(line)
    print(f"output in {args.out}")
    return 0


def _add_export(sub: Commands) -> None:
    summary = "Export a model for a device. " + " ".join(
        f"{t.name}: {t.description}." for t in TARGETS)
    examples = "\n".join(f"  {e}" for t in TARGETS for e in t.examples)
    p = _command(sub, "export", summary, examples, _export)
    p.add_argument("model", type=model_or_file, metavar="MODEL",
                   help="; ".join(f"{t.name}: {t.source}" for t in TARGETS))
    p.add_argument("--target", choices=TARGETS.names(), default=TARGETS.names()[0],
                   help="; ".join(f"{t.name}: {t.description}" for t in TARGETS))
    p.add_argument("-o", "--out", required=True, type=output_folder, help="output folder")
    declared: dict[str, list[str]] = {}
    for t in TARGETS:
        for o in t.options:
            declared.setdefault(o.flag, []).append(t.name)
    for flag, names in declared.items():
        o = next(o for t in TARGETS for o in t.options if o.flag == flag)
        kwargs: dict[str, Any] = ({"action": o.action} if o.action
                                  else {"type": o.type, "choices": o.choices})
        p.add_argument(flag, help=f"{', '.join(names)}: {o.help}",
                       **{k: v for k, v in kwargs.items() if v is not None})


def _camera(args: argparse.Namespace) -> int:
    from .deploy.camera import read_deploy_info, run_camera, tiling_plan

    info_path = args.info or Path(args.network).with_name("deploy.json")
    info = read_deploy_info(info_path) if args.info or info_path.is_file() else {}
    threshold = args.threshold if args.threshold is not None else float(
        info.get("output", {}).get("threshold", 0.5))
    plan = None
    if args.tiles > 1 or args.fov is not None:
        plan = tiling_plan(info, args.tiles, args.fov)
        print(f"tiling: {plan.rows}x{plan.cols} ROIs of {plan.side}x{plan.side} sensor pixels "
              f"(resize factor {plan.resize_factor:.2f}), one per frame: a full map every "
              f"{plan.tiles * (1 + args.settle_frames)} frames")
    frames = run_camera(args.network, threshold, size=info.get("size"), save=args.save,
                        save_every=args.save_every, seconds=args.seconds,
                        preview=not args.no_preview, transpose=args.transpose, plan=plan,
                        settle_frames=args.settle_frames,
                        phases=int(info.get("output_phases", 1)),
                        channels=len(info.get("output", {}).get("outputs", ["vessel"])))
    print(f"{frames} frame(s) segmented in the sensor (threshold {threshold:.3f})")
    return 0


def _roi(text: str) -> tuple[int, int, int, int]:
    """X,Y,W,H in sensor pixels: a corner at or right of and below the origin, a size."""
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        x = y = w = h = -1
    if min(x, y) < 0 or min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"expected X,Y,WIDTH,HEIGHT in sensor pixels (X, Y "
                                          f">= 0; WIDTH, HEIGHT >= 1), got {text!r}")
    return x, y, w, h


def _add_camera(sub: Commands) -> None:
    p = _command(sub, "camera", "Run the exported network on the Raspberry Pi AI Camera "
                 "(picamera2): overlays the in-sensor vessel map on the preview, prints the "
                 "sensor's DNN runtime and the frame rate, optionally saves frames and maps. "
                 "With --tiles K the inference region cycles over K overlapping squares of "
                 "the fundus, one per frame, and the preview shows their stitched map: "
                 "closer to the sensor's native resolution, refreshed every K frames.",
                 "  qsegment camera out/network.rpk --info deploy/deploy.json\n"
                 "  qsegment camera out/network.rpk --save shots/ --save-every 30\n"
                 "  qsegment camera out/network.rpk --info deploy/deploy.json --tiles 16 "
                 "--fov 1000,500,2000,2000",
                 _camera)
    p.add_argument("network", type=existing_file, help="network.rpk from imx500-package")
    p.add_argument("--info", type=existing_file,
                   help="the export's deploy.json (default: deploy.json beside the .rpk)")
    p.add_argument("--threshold", type=probability,
                   help="decision threshold (default: deploy.json's)")
    p.add_argument("--save", type=output_folder,
                   help="folder for saved frames: the preview (frame_N.png), the photograph "
                   "the map covers (photo_N.png) and the map as predict writes it "
                   "(photo_N_mask.png, or photo_N_av.png: qsegment analyze "
                   "'DIR/photo_*_av.png' --photographs DIR measures CRAE, CRVE and AVR)")
    p.add_argument("--save-every", type=positive_int, default=30,
                   help="save every Nth frame (30)")
    p.add_argument("--seconds", type=positive_float,
                   help="stop after this long (default: Ctrl-C)")
    p.add_argument("--no-preview", action="store_true", help="no preview window")
    p.add_argument("--transpose", action="store_true",
                   help="swap the output map's axes (if the map appears mirrored diagonally)")
    p.add_argument("--tiles", type=positive_int, default=1,
                   help="at most this many overlapping square regions covering --fov, one "
                   "per frame, as small as that count allows but not below the network's "
                   "input (needs deploy.json for its size; 1: the whole fundus at once)")
    p.add_argument("--fov", type=_roi, metavar="X,Y,W,H",
                   help="the fundus's bounding box in sensor pixels (of 4056x3040) for the "
                   "tiles to cover; with --tiles 1, one square region around it (default: "
                   "the sensor's centred 3040x3040 square)")
    p.add_argument("--settle-frames", type=non_negative_int, default=0,
                   help="with tiles: outputs dropped after each region change, if the new "
                   "region takes effect only some frames later (0)")


# --- bench ------------------------------------------------------------------------------

def _bench(args: argparse.Namespace) -> int:
    from .bench import markdown, run_benchmark, write_report

    size, repeats = (128, 2) if args.quick else (args.size, args.repeats)
    runtimes = tuple(args.runtime or checkpoint_runtimes())
    result = run_benchmark(size, repeats, args.arch or None, runtimes)
    print(markdown(result))
    if args.out:
        write_report(result, args.out, "qsegment " + " ".join(sys.argv[1:]))
        print(f"wrote {args.out}")
    return 0


def _add_bench(sub: Commands) -> None:
    p = _command(sub, "bench", "Benchmark every model side by side on this CPU: parameters, "
                 "fp32/int8 size, MACs, latency (median, p90), throughput and peak RSS per "
                 "runtime (PyTorch, ONNX Runtime fp32 and int8, int8 TFLite in LiteRT), each "
                 "in its own process; the paper's Table III is printed beside, labelled as "
                 "the paper's.",
                 "  qsegment bench --out docs/BENCHMARKS.md\n"
                 "  qsegment bench --quick\n"
                 "  qsegment bench --arch qsegment tnet --runtime onnx onnx-int8",
                 _bench)
    p.add_argument("--size", type=positive_int, default=960, help="square input size (960)")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="timed runs after warm-up (10)")
    p.add_argument("--quick", action="store_true", help="128x128, 2 runs: a smoke test")
    p.add_argument("--arch", nargs="*", type=architecture,
                   help="architectures to run, names from `qsegment models` (default: all)")
    p.add_argument("--model", nargs="*", action=Deprecated, instead="--arch", dest="arch",
                   type=architecture)
    p.add_argument("--runtime", nargs="*", choices=checkpoint_runtimes(),
                   help="runtimes to run (default: all)")
    p.add_argument("--out", type=output_file(".md"),
                   help="write this Markdown report (with .json and _fig3.png beside it)")


# --- app --------------------------------------------------------------------------------

def _app(args: argparse.Namespace) -> int:
    from .app import serve

    serve(args.model, args.runtime, host=args.host, port=args.port,
          max_megapixels=args.max_megapixels, artery_vein=args.av)
    return 0


def _add_app(sub: Commands) -> None:
    from .app import LOOPBACK, MAX_MEGAPIXELS

    p = _command(sub, "app", "Start the web app: drop fundus photographs into a page, see "
                 "the vessel map (before/after slider, overlay, live threshold), download "
                 "mask and probability, read the biomarkers. Local and private by default: "
                 "listens on 127.0.0.1, stores nothing (a temporary folder removed at exit). "
                 "Needs pip install 'qsegment[app]'.",
                 "  qsegment app                       # then open http://127.0.0.1:7860\n"
                 "  qsegment app --port 8080 --model qsegment-nearest\n"
                 "  qsegment app --host 0.0.0.0        # reachable from your network\n"
                 "  qsegment app --av                  # arteries and veins too", _app)
    p.add_argument("--host", default=LOOPBACK, type=host,
                   help=f"address to listen on; 0.0.0.0 opens it to the network ({LOOPBACK})")
    p.add_argument("--port", type=port, default=7860, help="TCP port (7860)")
    _add_model(p)
    _add_runtime(p, DEFAULT_RUNTIME)
    p.add_argument("--max-megapixels", type=positive_float, default=MAX_MEGAPIXELS,
                   help=f"refuse larger photographs with a message ({MAX_MEGAPIXELS})")
    p.add_argument("--av", action="store_true",
                   help=f"show arteries and veins too, with an artery/vein model (--model; "
                   f"{AV_MODEL} unless named)")


# --- entry point ------------------------------------------------------------------------

VERBOSE_HELP = "also show other libraries' warnings, under their own names"
# Each command's name and the function that adds its sub-parser, in `--help`'s order.
COMMANDS = {"models": _add_models, "data": _add_data_command, "train": _add_train,
            "evaluate": _add_evaluate, "calibrate": _add_calibrate, "predict": _add_predict,
            "batch": _add_batch, "analyze": _add_analyze, "quantize": _add_quantize,
            "export": _add_export, "camera": _add_camera, "bench": _add_bench, "app": _add_app}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser: every command's, or only the command ``only`` (what one run
    needs: building the others costs 35-40 ms of imports and argparse work at each
    start, a fifteenth of a one-image ``qsegment predict``)."""
    parser = Parser(
        prog="qsegment",
        description="Ultra-low-power retinal vessel segmentation: train, evaluate and deploy "
                    "the Q-Segment network and its baselines (CHASE_DB1, HRF-AV, LES-AV), "
                    "segment your own fundus photographs (vessels, arteries and veins) and "
                    "measure their vessels (the optic disc, CRAE, CRVE, AVR).",
        epilog="examples:\n  qsegment models\n  qsegment train --preset fast --out runs/fast\n"
               "  qsegment evaluate runs/fast --size 336 --out runs/fast/eval\n"
               "  qsegment predict fundus.jpg -o out/ --overlay\n"
               "  qsegment quantize -o q/ptq.onnx\n"
               "  qsegment export q/ptq.onnx --target imx500 -o deploy/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"qsegment {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, add in COMMANDS.items():
        if only in (None, name):
            add(sub)
    for name, command in sub.choices.items():
        command.set_defaults(command=name)  # error lines name it whatever precedes it
        # also after the command; SUPPRESS: not given there, the global flag's value stands
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help=VERBOSE_HELP)
    return parser


# What each optional import needs (pyproject's extras): a light install says which to add.
EXTRAS = {"torch": "train", "torchvision": "train", "sklearn": "train", "matplotlib": "train",
          "yaml": "train", "tensorboard": "train", "onnxruntime": "onnx", "onnx": "onnx",
          "skimage": "biomarkers", "skan": "biomarkers", "model_compression_toolkit": "imx500",
          "mct_quantizers": "imx500", "litert_torch": "mcu", "tflite_micro": "mcu",
          "starlette": "app", "uvicorn": "app", "ray": "ray", "pyarrow": "ray",
          "openvino": "fast"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the first word that is not an option names the command (no global option takes a
    # value); anything else (`--help`, a typo) gets the whole parser and its choices
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    if ("av" in args or "task" in args) and args.model is None:  # weights not named
        args.model = default_model(getattr(args, "av", False) or
                                   getattr(args, "task", None) == "av")
    configure_logging(verbose=args.verbose)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qsegment models --json | head`: the reader left; end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"qsegment {args.command}: error: this needs {err.name}, which the base "
              f"install leaves out: pip install 'qsegment[{extra}]'", file=sys.stderr)
        return 2
    except QsegmentError as err:
        print(f"qsegment {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
