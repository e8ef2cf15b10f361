"""Figures from numbers: the confusion-matrix heatmap and a grid of sample images with labels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or inside sweeps

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure


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
    """The images in a near-square grid, titled `true / predicted`, mistakes in red."""
    count = len(images)
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = max(1, int(np.ceil(count / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        axis.imshow(images[index], cmap="gray_r")
        true, predicted = class_names[labels[index]], class_names[predictions[index]]
        axis.set_title(
            f"{true} / {predicted}", fontsize=9, color="black" if labels[index] == predictions[index] else "red"
        )
    figure.suptitle("First test images: true / predicted")
    figure.tight_layout()
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
