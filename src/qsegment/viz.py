"""Figures: the paper's Table V as a picture (with an error map) and ROC curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend
import numpy as np
from sklearn.metrics import roc_curve

from .files import atomic_write
from .images import artery_vein_colours

# Error-map colours: true positive, false positive, false negative (colour-blind safe).
TP, FP, FN = (1.0, 1.0, 1.0), (0.90, 0.60, 0.0), (0.0, 0.45, 0.70)


def error_map(pred: np.ndarray, label: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """RGB float image: TP white, FP orange, FN blue, TN black; outside the FOV dark grey."""
    rgb = np.zeros((*label.shape, 3), dtype=np.float32)
    label = label.astype(bool)
    for mask, colour in ((pred & label, TP), (pred & ~label, FP), (~pred & label, FN)):
        rgb[mask] = colour
    if fov is not None:
        rgb[~fov] = 0.15
    return rgb


def _save(fig: plt.Figure, path: Path) -> None:
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=fig.dpi, format=path.suffix.lstrip(".")))
    plt.close(fig)


def _panel_grid(rows: Sequence[Sequence[np.ndarray]], heads: Sequence[str],
                names: Sequence[str], path: Path, title: str = "", row_height: float = 3.0,
                fontsize: int = 9) -> None:
    """Save a figure of one row of image panels per item: ``heads`` over the columns,
    ``names`` beside the rows."""
    fig, axes = plt.subplots(len(rows), len(heads), figsize=(12, row_height * len(rows)),
                             dpi=100, squeeze=False)
    for r, (panels, name) in enumerate(zip(rows, names, strict=True)):
        for c, (panel, head) in enumerate(zip(panels, heads, strict=True)):
            ax = axes[r, c]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None,
                      interpolation="antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=fontsize)
        axes[r, 0].set_ylabel(name, fontsize=fontsize)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / len(rows)))
    _save(fig, path)


def predictions_figure(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       probs: Sequence[np.ndarray], fovs: Sequence[np.ndarray],
                       names: Sequence[str], threshold: float, path: Path,
                       title: str = "") -> None:
    """One row per image: input, ground truth, prediction, error map (paper Table V).
    ``names`` label the rows (for example the image name and its Dice)."""
    rows = []
    for image, label, prob, fov in zip(images, labels, probs, fovs, strict=True):
        pred = (prob >= threshold) & fov
        rows.append([image, label, pred, error_map(pred, label, fov)])
    heads = ["input", "ground truth", f"prediction (t={threshold:.2f})",
             "errors: TP white, FP orange, FN blue"]
    _panel_grid(rows, heads, names, path, title)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
               points: dict[str, tuple[float, float]] | None = None) -> None:
    """ROC curves from (scores, binary targets) per label; ``points`` are (FPR, TPR) markers
    such as the second human observer."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (scores, targets) in curves.items():
        fpr, tpr, _ = roc_curve(targets, scores)
        ax.plot(fpr, tpr, label=name)
    for name, (fpr, tpr) in (points or {}).items():
        ax.plot([fpr], [tpr], "o", label=name)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(0, 0.3)
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("ROC inside the FOV, validation images (zoomed)")
    fig.tight_layout()
    _save(fig, path)


def training_curve(log_csv: Path | Mapping[str, Path], path: Path, label: str = "") -> None:
    """Validation Dice against wall-clock minutes of a run's log, with its training loss;
    given {name: log} for several runs, their Dice curves side by side (to compare
    recipes by the time they take)."""
    import csv

    runs = log_csv if isinstance(log_csv, Mapping) else {Path(log_csv).parent.name: log_csv}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for i, (name, log) in enumerate(runs.items()):
        with open(log, newline="") as f:
            rows = list(csv.DictReader(f))
        val = [(float(r["wall_s"]) / 60, float(r["val_dice"])) for r in rows if r["val_dice"]]
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=f"C{2 * i}",
                    label=name if len(runs) > 1 else None)
        if len(runs) == 1:
            twin = ax.twinx()
            twin.plot([float(r["wall_s"]) / 60 for r in rows], [float(r["loss"]) for r in rows],
                      color="C1", alpha=0.6)
            twin.set_ylabel("training loss", color="C1")
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel("validation Dice (t=0.5)", color="C0" if len(runs) == 1 else "black")
    ax.grid(alpha=0.3)
    if len(runs) > 1:
        ax.legend(loc="lower right")
    ax.set_title(label or f"training curve: {', '.join(runs)}")
    fig.tight_layout()
    _save(fig, path)


def artery_vein_errors(predicted: np.ndarray, label: np.ndarray, fov: np.ndarray
                       ) -> np.ndarray:
    """RGB errors of a class map: right class white, wrong class (a vessel found, its
    class not the label's) magenta, vessel missed blue, vessel where there is none
    orange; the label's uncertain pixels count as right whatever vessel class is found."""
    found, vessel = (predicted > 0) & fov, (label > 0) & fov
    right = found & vessel & ((predicted == label) | (label == 3))
    out = np.zeros((*label.shape, 3), np.uint8)
    out[right] = (255, 255, 255)
    out[found & vessel & ~right] = (230, 0, 230)
    out[vessel & ~found] = (40, 90, 230)
    out[found & ~vessel] = (255, 150, 0)
    return out


def artery_vein_figure(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                       predicted: Sequence[np.ndarray], fovs: Sequence[np.ndarray],
                       names: Sequence[str], path: Path, title: str = "") -> None:
    """One row per image: photograph, manual artery/vein map, predicted map, errors
    (:func:`artery_vein_errors`)."""
    rows = [[image, artery_vein_colours(label), artery_vein_colours(pred),
             artery_vein_errors(pred, label, fov)]
            for image, label, pred, fov in zip(images, labels, predicted, fovs, strict=True)]
    heads = ["photograph", "manual: artery red, vein blue, uncertain green", "predicted",
             "errors: right white, wrong class magenta,\nmissed blue, extra orange"]
    _panel_grid(rows, heads, names, path, title, row_height=2.6, fontsize=8)
