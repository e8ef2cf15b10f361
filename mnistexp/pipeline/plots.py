"""Figures from numbers: the confusion-matrix heatmap, grids of test images with labels (the first ones,
the most confident mistakes), learning curves, and a sweep's metric by key."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, CI or inside sweeps

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnistexp import imports

imports.seaborn()  # without SciPy, which seaborn only needs for plots mnistexp does not draw
import seaborn as sns  # noqa: E402

if TYPE_CHECKING:
    from mnistexp.multirun.replicates import Group


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
    """The images in a near-square grid, each labelled `true / predicted`, mistakes in red."""
    pairs = list(zip(labels[: len(images)], predictions[: len(images)], strict=True))  # labels may be the whole split
    captions = [f"{class_names[label]} / {class_names[predicted]}" for label, predicted in pairs]
    colors = ["black" if label == predicted else "red" for label, predicted in pairs]
    return _image_grid(images, captions, colors, "First test images: true / predicted")


def most_confident_mistakes(
    labels: np.ndarray, predictions: np.ndarray, confidences: np.ndarray, count: int
) -> np.ndarray:
    """The positions of the wrong predictions, highest score first (ties: the earlier image), at most `count`."""
    wrong = np.flatnonzero(labels != predictions)
    order = np.argsort(-confidences[wrong], kind="stable")  # stable: equal scores keep the test set's order
    return wrong[order[:count]]


def mistakes_grid(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    confidences: np.ndarray,
    class_names: Sequence[str],
    count: int,
) -> Figure:
    """The `count` most confident wrong predictions, each titled with its true label, the predicted
    one and the model's score for it: where the model is sure and wrong."""
    chosen = most_confident_mistakes(labels, predictions, confidences, count)
    captions = [f"{class_names[labels[k]]} → {class_names[predictions[k]]}\n{confidences[k]:.2f}" for k in chosen]
    title = "Most confident mistakes: true → predicted, score" if len(chosen) else "No mistakes on the test split"
    return _image_grid(images[chosen], captions, ["red"] * len(chosen), title, lines=2)


def _image_grid(
    images: np.ndarray, captions: Sequence[str], colors: Sequence[str], title: str, lines: int = 1
) -> Figure:
    """Images in a near-square grid, each with its caption (`lines` lines) above it.

    One mosaic on one axes: a figure of 25 small axes is slow to lay out (BENCHMARKS.md).
    """
    count = len(images)
    columns = max(1, int(np.ceil(np.sqrt(count))))
    rows = max(1, int(np.ceil(count / columns)))
    height, width = images.shape[1:3] if count else (28, 28)
    band, gap = lines * height // 2, width // 6  # room for each caption, and between images
    cell_height, cell_width = height + band, width + gap
    mosaic = np.zeros((rows * cell_height, columns * cell_width), dtype=np.float32)
    inches = 1.35 + 0.35 * (lines - 1)
    figure = Figure(figsize=(1.2 * columns, inches * rows + 0.4))
    axes = figure.add_axes((0.01, 0.01, 0.98, 1 - 0.4 / (inches * rows + 0.4) - 0.01))
    for index in range(count):
        top, left = (index // columns) * cell_height + band, (index % columns) * cell_width
        mosaic[top : top + height, left : left + width] = images[index]
        axes.text(
            left + width / 2,
            top - 1,
            captions[index],
            ha="center",
            va="bottom",
            fontsize=9,
            color=colors[index],
        )
    axes.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    axes.axis("off")
    figure.suptitle(title)
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
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5 between 1 and 2
        axis.set_ylabel(name)
        axis.set_title(name.capitalize())
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def close(figure: Figure) -> None:
    plt.close(figure)


def metric_by_key(configurations: Sequence[Group], key: str, others: Sequence[str]) -> Figure:
    """A configuration's metric against one swept key: its mean with the 95% interval as an error bar,
    every finished seed as a dot, one line per combination of the other swept keys. The key's values
    are evenly spaced categories (numbers in numeric order), so no tick falls between two values."""
    drawn = [group for group in configurations if group.n]
    metric = drawn[0].metric if drawn else (configurations[0].metric if configurations else "metric")
    categories = sorted({group.values.get(key, "-") for group in drawn}, key=_category_order)
    position = {value: index for index, value in enumerate(categories)}
    lines: dict[tuple[str, ...], list[Group]] = {}
    for group in drawn:
        lines.setdefault(tuple(group.values.get(other, "-") for other in others), []).append(group)
    replicated = any(group.n > 1 for group in drawn)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.1 * len(categories) + 2), 4.5))
    for index, (line, members) in enumerate(sorted(lines.items())):
        offset = (index - (len(lines) - 1) / 2) * 0.08  # side by side, so error bars do not hide each other
        members = sorted(members, key=lambda group: position[group.values.get(key, "-")])
        xs = [position[group.values.get(key, "-")] + offset for group in members]
        means = [group.figures[metric].mean for group in members]
        errors = [0.0 if math.isnan(group.figures[metric].ci95) else group.figures[metric].ci95 for group in members]
        label = ", ".join(f"{name}={value}" for name, value in zip(others, line, strict=True)) or None
        drawn_line = axes.errorbar(xs, means, yerr=errors, marker="o", capsize=4, label=label)
        if replicated:  # each seed a dot beside its configuration's bar
            for x, group in zip(xs, members, strict=True):
                seeds = [row.metric(metric) for row in group.finished]
                color = drawn_line[0].get_color()
                axes.scatter([x + 0.04] * len(seeds), seeds, s=12, alpha=0.5, color=color, zorder=3)
    axes.set_xticks(range(len(categories)), categories)
    axes.set_xlim(-0.5, len(categories) - 0.5)
    axes.set_xlabel(key)
    axes.set_ylabel(metric)
    note = "\nmean ± 95% interval over seeds, a dot per seed" if replicated else ""
    axes.set_title(f"{metric} by {key}{note}", fontsize=11)
    axes.grid(alpha=0.3)
    if others:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def _category_order(value: str) -> tuple[int, float, str]:
    number = _as_number(value)
    return (0, number, "") if number is not None else (1, 0.0, value)


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
