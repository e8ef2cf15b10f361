"""Figures from numbers: the confusion-matrix heatmap and a grid of sample images with labels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or inside sweeps

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mnistexp import imports

imports.seaborn()  # without SciPy, which seaborn only needs for plots mnistexp does not draw
import seaborn as sns  # noqa: E402


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], accuracy: float) -> Figure:
    size = 1.0 + 0.65 * len(class_names)
    figure, axes = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(
        confusion,
        annot=True,
        fmt="d",
        cmap="Blues",
        square=True,
        cbar=True,
        xticklabels=class_names,
        yticklabels=class_names,
        ax=axes,
    )
    axes.set_xlabel("Predicted label")
    axes.set_ylabel("True label")
    axes.set_title(f"Confusion matrix (test accuracy {accuracy:.4f})")
    figure.tight_layout()
    return figure


def sample_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> Figure:
    """The images in a near-square grid, each labelled `true / predicted`, mistakes in red.

    One mosaic on one axes: a figure of 25 small axes took a second and a half to lay out.
    """
    count = len(images)
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = max(1, int(np.ceil(count / columns)))
    height, width = images.shape[1:3] if count else (28, 28)
    band, gap = height // 2, width // 6  # room for each label, and between images
    cell_height, cell_width = height + band, width + gap
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.float32)
    figure = Figure(figsize=(1.2 * columns, 1.35 * rows + 0.4))
    axes = figure.add_axes((0.01, 0.01, 0.98, 1 - 0.4 / (1.35 * rows + 0.4) - 0.01))
    for index in range(count):
        top, left = (index // columns) * cell_height + band, (index % columns) * cell_width
        mosaic[top : top + height, left : left + width] = images[index]
        right = labels[index] == predictions[index]
        axes.text(
            left + width / 2,
            top - 1,
            f"{class_names[labels[index]]} / {class_names[predictions[index]]}",
            ha="center",
            va="bottom",
            fontsize=9,
            color="black" if right else "red",
        )
    axes.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    axes.axis("off")
    figure.suptitle("First test images: true / predicted")
    return figure


def learning_curves(history: dict[str, list[float]], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, training and (with a validation split) validation."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, name in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label in ((name, "training"), (f"val_{name}", "validation")):
            if key in history:
                epochs = np.arange(1, len(history[key]) + 1)
                axis.plot(epochs, history[key], marker="o", label=label)
        if best_epoch is not None:
            axis.axvline(best_epoch + 1, color="gray", linestyle="--", label="best epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.set_title(name.capitalize())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def close(figure: Figure) -> None:
    plt.close(figure)


def metric_by_param(values: Sequence[str], metric: Sequence[float], key: str, metric_name: str) -> Figure:
    """A metric against one swept key: a line over numeric values, bars over anything else."""
    figure, axes = plt.subplots(figsize=(6, 4))
    numbers = [_as_number(value) for value in values]
    numeric = [number for number in numbers if number is not None]
    if len(numeric) == len(numbers):
        order = np.argsort(numeric)
        xs, ys = np.asarray(numeric)[order], np.asarray(metric)[order]
        axes.plot(xs, ys, marker="o")
        for x, y in zip(xs, ys, strict=True):
            axes.annotate(f"{y:.4f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    else:
        sns.barplot(x=list(values), y=list(metric), ax=axes, color="tab:blue")
        axes.set_ylim(max(0.0, min(metric) - 0.05) if len(metric) else 0, 1.0)
    axes.set_xlabel(key)
    axes.set_ylabel(metric_name)
    axes.set_title(f"{metric_name} by {key}")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
