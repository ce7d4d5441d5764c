"""Evaluation the way the vessel literature does it: full-resolution labels, FOV only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from tqdm import tqdm

from .. import viz
from ..card import Card
from ..datasets import AV_CLASSES, DatasetError, FundusDataset, Sample, Split, open_dataset
from ..errors import UsageError
from ..files import write_json
from ..images import class_map, round_up
from ..inference.arteryvein import (
    calibrated_outputs,
    check_artery_vein,
    class_probabilities,
    full_size_scores,
    vote_segments,
    with_vessel_probability,
)
from ..inference.calibrate import CalibratedMap, Calibration, calibrated_map
from ..inference.maps import Scale, as_runtime, predict_outputs, predict_proba
from ..metrics import (
    AV_METRICS,
    artery_vein_scores,
    best_threshold,
    centreline_accuracy,
    confusion,
    evaluate,
    scores,
)
from ..models import create_model
from ..runtimes import open_file
from ..runtimes.base import ModelFileError, Runtime

if TYPE_CHECKING:
    from torch import nn

Data = str | Path | FundusDataset | None  # a folder of the default dataset, or a dataset


def calibrated_samples(model: Runtime | nn.Module, samples: Sequence[Sample],
                       size: int | None = None, progress: bool = False, tta: str = "none",
                       scale: Scale = "none", calibration: Calibration | None = None
                       ) -> list[CalibratedMap]:
    """Each sample's probability map at its full resolution (inferred at ``size`` if given,
    averaged over the ``tta`` views of :func:`~qsegment.inference.maps.symmetries`, at the
    scale ``scale`` asks for), with the scale and the per-image cut that ``calibration``
    finds (:func:`~qsegment.inference.calibrate.calibrated_map`).

    Args:
        model: a runtime (:mod:`qsegment.runtimes`) or a PyTorch module.
        samples: the images to predict.
        size: the inference resolution NxN (default: each image's own size).
        progress: show a progress bar.
        tta: test-time views to average: ``none``, ``flip`` or ``d8``.
        scale: ``none``, ``auto``, ``fov`` or a factor by which each image is resized
            first.
        calibration: the model's constants for the label-free rules (None: the FOV rule
            and no per-image cut).

    Raises:
        UsageError: an unknown ``tta`` or ``scale``.
    """
    probability = _probability(model, size, tta)
    items = tqdm(samples, desc="predict", leave=False, disable=not progress)
    return [calibrated_map(s.image, probability, scale, calibration, name=s.name)
            for s in items]


def _probability(model: Runtime | nn.Module, size: int | None, tta: str
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`~qsegment.inference.maps.predict_proba` of an image; a PyTorch module's in
    :class:`~qsegment.inference.predict.Segmenter`'s tiles, with a margin of its measured
    receptive radius (so the map is the whole image's), where the image exceeds a tile:
    its forward over a whole HRF-AV photograph at the training scale held 3-5 GB of
    activations during validation. A network whose reach cannot be measured (global
    pooling) runs whole. The reach is measured (a second or two) at the first image
    over a tile only: CHASE_DB1's never need it."""
    from torch import nn

    from ..inference.predict import TILE

    runtime = as_runtime(model)
    whole = partial(predict_proba, runtime, size=size, tta=tta)
    if size is not None or not isinstance(model, nn.Module):
        return whole

    @cache  # made at the first large image
    def tiled() -> Callable[[np.ndarray], np.ndarray]:
        return _tiled_probability(model, runtime, tta) or whole

    def probability(image: np.ndarray) -> np.ndarray:
        return whole(image) if max(image.shape[:2]) <= TILE else tiled()(image)

    return probability


def _tiled_probability(model: nn.Module, runtime: Runtime, tta: str
                       ) -> Callable[[np.ndarray], np.ndarray] | None:
    """``Segmenter.probability`` in tiles of about :data:`~qsegment.inference.predict.TILE`
    px with a margin of ``model``'s receptive radius; None where that cannot be measured
    or does not fit in a tile."""
    from ..inference.predict import TILE, Segmenter
    from ..models.profile import receptive_radius

    multiple = runtime.size_multiple
    try:
        margin = round_up(receptive_radius(model) + 1, multiple)
    except UsageError:
        return None
    tile = round_up(TILE, multiple)
    if 2 * margin >= tile:
        return None
    return Segmenter(runtime, tile=tile, overlap=margin, tta=tta, scale="none").probability


def predict_samples(model: Runtime | nn.Module, samples: Sequence[Sample],
                    size: int | None = None, progress: bool = False, tta: str = "none",
                    scale: Scale = "none") -> list[np.ndarray]:
    """Probability maps at each sample's full resolution: :func:`calibrated_samples`'
    maps, without a calibration (the FOV rule where ``scale`` is ``auto``).

    Args:
        model: a runtime (:mod:`qsegment.runtimes`) or a PyTorch module.
        samples: the images to predict.
        size: the inference resolution NxN (default: each image's own size).
        progress: show a progress bar.
        tta: test-time views to average: ``none``, ``flip`` or ``d8``.
        scale: ``none``, ``auto``, ``fov`` or a factor by which each image is resized
            first.

    Returns:
        One float32 (H, W) probability map per sample, at the sample's size.

    Raises:
        UsageError: an unknown ``tta`` or ``scale``.
    """
    return [m.probability for m in calibrated_samples(model, samples, size, progress, tta, scale)]


def score(probs: Sequence[np.ndarray], samples: Sequence[Sample],
          threshold: float | Sequence[float] = 0.5, inside_fov: bool = True) -> dict:
    """Metrics of probability maps against the samples' labels, inside their FOV (or over
    the whole image, as some papers report: the dark border inflates Acc, Sp and AUC).

    Args:
        probs: one probability map per sample, at its size.
        samples: the samples with their labels and FOV masks.
        threshold: the probability from which a pixel is vessel, or one per sample.
        inside_fov: score inside each FOV only (else the whole image).

    Returns:
        ``threshold`` and the metrics (:data:`qsegment.metrics.METRICS`) ``pooled`` over
        all pixels, the ``mean`` over images and ``per_image``.

    Raises:
        UsageError: no maps, not one map per sample, or a map whose shape is not its
            label's.
    """
    fovs = [s.fov if inside_fov else None for s in samples]
    return evaluate(probs, [s.label for s in samples], fovs, threshold)


def train_threshold(model: Runtime | nn.Module, train: Sequence[Sample], size: int | None = None,
                    progress: bool = False, tta: str = "none") -> float:
    """The Dice-maximizing threshold on the training images (never on validation).

    Args:
        model: a runtime (:mod:`qsegment.runtimes`) or a PyTorch module.
        train: the training samples (at least one).
        size: the inference resolution NxN (default: each image's own size).
        progress: show a progress bar.
        tta: test-time views to average: ``none``, ``flip`` or ``d8``.

    Returns:
        The threshold that maximizes the pooled Dice inside the FOVs.

    Raises:
        UsageError: an unknown ``tta``.
    """
    probs = predict_samples(model, train, size, progress, tta)
    return best_threshold(probs, [s.label for s in train], [s.fov for s in train])


def second_observer(samples: Sequence[Sample], second: Sequence[Sample]) -> dict:
    """The human reference: second observer's binary map scored against the first's,
    inside the FOV (with the whole-image pooled scores under ``whole_image``)."""
    probs = [s.label.astype(np.float32) for s in second]
    result = score(probs, samples, threshold=0.5)
    result["whole_image"] = score(probs, samples, threshold=0.5, inside_fov=False)["pooled"]
    return result


def table_iv(model: Runtime | nn.Module, card: Card, data: Data = None,
             sizes: Sequence[int | None] = (None,), split: Split | None = None,
             out: Path | None = None, figures: bool = True, progress: bool = True,
             tta: str = "none", scale: Scale = "none", calibration: Calibration | None = None
             ) -> dict:
    """The Table IV rows of a model on the validation images, plus the human reference
    (when the dataset has a second observer).

    One row per inference resolution (``None``: full resolution; N: the image resized
    to NxN, the probabilities resized back, scored against the full-size label). The
    threshold is the card's (chosen on the training images) or 0.5 if it has none; with
    a test-time augmentation (``tta``) it is chosen anew on the training images, with
    the same views, at the card's inference size.
    Writes ``metrics.json`` and, with ``figures``, the predictions panel and the ROC
    curve into ``out``.

    Args:
        model: a runtime (:mod:`qsegment.runtimes`) or a PyTorch module.
        card: the model's card: its label and its train-chosen threshold.
        data: a folder of CHASE_DB1, or a dataset (default: CHASE_DB1's default folder).
        sizes: the inference resolutions, one row each.
        split: the training and validation images (default: the dataset's).
        out: the folder for ``metrics.json`` and the figures (None: nothing written).
        figures: also draw ``predictions_SIZE.png`` and ``roc.png``.
        progress: show progress bars.
        tta: test-time views to average: ``none``, ``flip`` or ``d8``.
        scale: ``none``, ``fov``, ``auto`` or a factor by which each image is resized
            first (:func:`~qsegment.inference.calibrate.calibrated_map`).
        calibration: the model's label-free calibration: the vessel rule of ``auto``, and
            a second row per resolution with each image's own cut (``cuts``).

    Returns:
        ``threshold`` and ``threshold_rule``, ``tta``, the ``train_images`` and
        ``val_images``, ``rows`` (per label: ``size``, the :func:`score` metrics and
        the pooled ``whole_image`` ones) and, with two observers, ``second_observer``.

    Raises:
        DatasetError: ``data`` is no readable dataset folder, or lacks an image of the
            split.
        UsageError: a ``tta`` without training images, an unknown ``tta`` or ``scale``.
    """
    dataset = open_dataset(data)
    model = as_runtime(model)
    split = split or dataset.default_split
    _, val = dataset.split(Split((), split.val))  # training images only where TTA needs them
    train = dataset.split(Split(split.train, ()))[0] if tta != "none" else []
    if tta != "none" and not train:
        raise UsageError(f"--tta chooses its threshold on training images, and {dataset.title} "
                         "has none: score without --tta")
    threshold = card.threshold_value
    rule = "card (train-chosen)" if card.threshold else "fixed 0.5"
    if tta != "none":
        size = card.threshold.inference_size if card.threshold else None
        threshold = train_threshold(model, train, size, progress, tta)
        rule = f"chosen now on the training images with {tta} test-time augmentation"
    views = "" if tta == "none" else f" + {tta} TTA"
    rows, curves = {}, {}
    for size in sizes:
        resolution = "full" if size is None else f"{size}x{size}"
        label = f"{card.label} @ {resolution}{views}"
        found = calibrated_samples(model, val, size, progress, tta, scale, calibration)
        probs = [m.probability for m in found]
        metrics = score(probs, val, threshold)
        rows[label] = {"size": size, **metrics, "scales": [m.scale for m in found],
                       "whole_image": score(probs, val, threshold, inside_fov=False)["pooled"]}
        if calibration is not None:  # beside the fixed cut: each image's own
            cuts = [threshold if m.cut is None else m.cut for m in found]
            rows[f"{label}, cut per image"] = {
                "size": size, **score(probs, val, cuts), "scales": rows[label]["scales"],
                "cuts": cuts,
                "whole_image": score(probs, val, cuts, inside_fov=False)["pooled"]}
        curves[label] = (np.concatenate([p[s.fov] for p, s in zip(probs, val, strict=True)]),
                         np.concatenate([s.label[s.fov] for s in val]))
        if figures and out is not None:
            tag = "full" if size is None else str(size)
            viz.predictions_figure([s.image for s in val], [s.label for s in val], probs,
                                   [s.fov for s in val],
                                   [f"{s.name}\nDice {m['dice']:.3f}"
                                    for s, m in zip(val, metrics["per_image"], strict=True)],
                                   threshold,
                                   Path(out) / f"predictions_{tag}.png", title=label)
    result = {"threshold": threshold, "threshold_rule": rule, "tta": tta,
              "val_images": [s.name for s in val], "rows": rows,
              "train_images": list(split.train)}
    points = {}
    if dataset.observers >= 2:
        second = dataset.split(Split((), split.val), 2)[1]
        result["second_observer"] = human = second_observer(val, second)
        points["second observer"] = (1 - human["pooled"]["sp"], human["pooled"]["se"])
    if out is not None:
        out = Path(out)
        if figures:
            viz.roc_figure(curves, out / "roc.png", points=points)
        write_json(out / "metrics.json", result)
    return result


def table_av(model: Runtime | nn.Module, card: Card, data: Data = None,
             split: Split | None = None, out: Path | None = None, figures: bool = True,
             progress: bool = True, scale: Scale = "auto",
             calibration: Calibration | None = None, tta: str = "none",
             segment_vote: bool = True) -> dict:
    """An artery/vein model's scores on a dataset's test (validation) split, as the
    artery/vein literature reports them (:func:`~qsegment.metrics.artery_vein_scores`:
    BF-Net's protocol, per class and weighted, averaged over images; the classic
    accuracy on the manual centreline pixels; the vessel map's Dice), each image at the
    scale the vessel rules choose and cut as the model's vessel map is, its logits
    averaged over the ``tta`` views (:func:`~qsegment.inference.maps.symmetries`), one
    class per vessel segment with ``segment_vote`` (as ``qsegment predict --av`` gives
    them: :func:`~qsegment.inference.arteryvein.vote_segments`). Writes
    ``metrics_av.json`` and, with ``figures``, ``artery_vein.png`` into ``out``.

    Raises:
        DatasetError: the dataset has no artery/vein labels, or lacks an image.
        UsageError: the model has no artery/vein outputs.
    """
    dataset = open_dataset(data)
    if not dataset.vessel_classes:
        raise DatasetError(f"{dataset.title} has vessel labels only; scoring arteries and "
                           "veins needs a dataset with artery/vein labels (hrf-av, les-av)")
    runtime = as_runtime(model)
    check_artery_vein(create_model(card.model, **card.model_args).outputs, card.label)
    _, val = dataset.split(Split((), (split or dataset.default_split).val))
    per_image: list[dict] = []
    panels: list[tuple[Sample, np.ndarray]] = []
    for sample in tqdm(val, desc="artery/vein", leave=False, disable=not progress):
        found, class_logits = calibrated_outputs(
            lambda image: with_vessel_probability(predict_outputs(runtime, image, tta=tta)),
            sample.image, scale, calibration, name=sample.name)
        class_logits = full_size_scores(class_logits, sample.image.shape[:2])
        cut = card.threshold_value if found.cut is None else found.cut
        mask = found.probability >= cut
        if segment_vote:
            class_logits = vote_segments(mask, class_logits)
        predicted = class_map(mask, class_logits)
        probabilities = class_probabilities(found.probability, class_logits)
        label = cast(np.ndarray, sample.classes)
        classes = artery_vein_scores(predicted, probabilities, label, sample.fov)
        centre, pixels = centreline_accuracy(
            probabilities[0] / np.maximum(probabilities[:2].sum(0), 1e-12), label, sample.fov)
        vessel = confusion(predicted > 0, sample.label, sample.fov)
        per_image.append({"name": sample.name, **classes, "centreline_acc": centre,
                          "centreline_pixels": pixels, "vessel_dice": scores(vessel)["dice"],
                          "scale": round(found.scale, 3), "cut": round(cut, 4)})
        if figures and out is not None and len(panels) < 4:
            panels.append((sample, predicted))
    mean = {group: {k: float(np.nanmean([m[group][k] for m in per_image]))
                    for k in (*AV_METRICS, "acc")} for group in ("weighted", *AV_CLASSES)}
    scored = "training" if split and split.val == dataset.default_split.train else "test"
    result = {"model": card.label, "dataset": dataset.title, "images": len(val),
              "scored": scored,
              "mean": mean, "centreline_acc": float(np.nanmean(
                  [m["centreline_acc"] for m in per_image])),
              "vessel_dice": float(np.mean([m["vessel_dice"] for m in per_image])),
              "scale_rule": scale, "tta": tta, "segment_vote": segment_vote,
              "per_image": per_image}
    if out is not None:
        out = Path(out)
        if figures:
            viz.artery_vein_figure(
                [s.image for s, _ in panels], [cast(np.ndarray, s.classes) for s, _ in panels],
                [c for _, c in panels], [s.fov for s, _ in panels],
                [s.name for s, _ in panels], out / "artery_vein.png",
                title=f"{card.label} on {dataset.title}")
        write_json(out / "metrics_av.json", result)
    return result


def format_av_table(result: dict) -> str:
    """The rows of :func:`table_av` as a markdown table: BF-Net's columns per class and
    weighted, then the centreline accuracy and the vessel Dice."""
    head = ["| class | Se | AUC-ROC | F1 | AUC-PR | MSE |", "|---|---:|---:|---:|---:|---:|"]
    rows = [f"| {group} | " + " | ".join(f"{result['mean'][group][k]:.4f}" for k in AV_METRICS)
            + " |" for group in ("weighted", *AV_CLASSES)]
    classes = "one class per vessel segment" if result["segment_vote"] else "per pixel"
    return "\n".join([f"{result['model']} on {result['dataset']} {result['scored']} "
                      f"({result['images']} images; {classes})", *head, *rows,
                      f"artery/vein accuracy on the manual centreline: "
                      f"{result['centreline_acc']:.4f}; vessel Dice (mean of images): "
                      f"{result['vessel_dice']:.4f}"])


def int8_table(model_path: str | Path, size: int | None = None, data: Data = None,
               split: Split | None = None, out: Path | None = None, figures: bool = True,
               progress: bool = True) -> dict:
    """Table IV of an int8 model file (its runtime by suffix:
    :func:`qsegment.runtimes.open_file`) beside its float source model, both at the
    deployment size (default: the size in the model's card), with the same train-chosen
    threshold; ``dice_drop`` is float minus int8 pooled Dice.

    Args:
        model_path: the int8 model file, its card (``.json``) beside it.
        size: the deployment size (default: the card's, else the file's fixed size).
        data: a folder of CHASE_DB1, or a dataset (default: CHASE_DB1's default folder).
        split: the training and validation images (default: the dataset's).
        out: the folder for ``metrics.json`` and the figures (None: nothing written).
        figures: also draw the int8 model's predictions panel and ROC curve.
        progress: show progress bars.

    Returns:
        :func:`table_iv`'s result with the float row before the int8 one, plus
        ``dice_drop`` and ``quantized_model``.

    Raises:
        ModelFileError: no runtime opens the file, or no card beside it names its
            source checkpoint.
        CardError: the card beside the file cannot be read.
        UsageError: a ``size`` the file does not run at.
        CheckpointError: the source checkpoint cannot be found or read.
        DatasetError: ``data`` is no readable dataset folder, or lacks an image of the
            split.
        ModuleNotFoundError: PyTorch, which runs the float model, is not installed.
    """
    from ..checkpoint import load_model

    runner = open_file(model_path)
    card = runner.card
    if not card.source_checkpoint:
        raise ModelFileError(f"{model_path}: no card with its source checkpoint beside it "
                         "(expected the .json `qsegment quantize` or `export` writes)")
    size = size or card.size or runner.fixed_size
    if size != runner.fixed_size:
        raise UsageError(f"{model_path} runs at {runner.fixed_size}x{runner.fixed_size} only, "
                         f"not {size}")
    float_model, float_card = load_model(card.source_checkpoint)
    reference = table_iv(float_model, float_card, data, [size], split, progress=progress,
                         figures=False)
    result = table_iv(runner, card, data, [size], split, out=out, figures=figures,
                      progress=progress)
    result["rows"] = {**reference["rows"], **result["rows"]}
    float_dice, int8_dice = (r["pooled"]["dice"] for r in result["rows"].values())
    result["dice_drop"] = float_dice - int8_dice
    result["quantized_model"] = str(model_path)
    if out is not None:
        write_json(Path(out) / "metrics.json", result)
    return result


def format_table(result: dict) -> str:
    """Markdown table of the pooled metrics, one row per model/resolution plus the human.

    Args:
        result: what :func:`table_iv` or :func:`int8_table` returned.

    Returns:
        Two Markdown tables, inside the FOV and over the whole image, with a title each.
    """
    fov = {k: v["pooled"] for k, v in result["rows"].items()}
    whole = {k: v["whole_image"] for k, v in result["rows"].items()}
    if "second_observer" in result:
        human = "second observer vs first"
        fov[human] = result["second_observer"]["pooled"]
        whole[human] = result["second_observer"]["whole_image"]
    lines = ["inside the FOV:", "", *_table_lines(fov), "",
             "whole image (as papers without FOV masks report; the border inflates Acc and AUC):",
             "", *_table_lines(whole)]
    return "\n".join(lines)


def _table_lines(rows: dict[str, dict[str, float]]) -> list[str]:
    cols = ("dice", "acc", "auc", "se", "sp", "iou", "mcc")
    heads = {"dice": "Dice", "acc": "Acc", "auc": "AUC", "se": "Se", "sp": "Sp", "iou": "IoU",
             "mcc": "MCC"}
    lines = ["| model | " + " | ".join(heads[c] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for name, m in rows.items():
        # a binary map has no meaningful ROC curve: no AUC for the human observer
        cells = ["-" if name.startswith("second") and c == "auc" else f"{m[c]:.4f}"
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
