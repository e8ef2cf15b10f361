"""Test-set figures as plain numbers: loss, accuracy, predictions, confusion matrix, per-class precision/recall."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mnistexp.config.schema import DataConfig, TrainerConfig
from mnistexp.pipeline.data import Dataset


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray  # predicted class per test image
    confidences: np.ndarray  # the model's score for that predicted class, per test image
    confusion: np.ndarray  # confusion[true, predicted] = count
    precision: np.ndarray  # per class; NaN where the class was never predicted
    recall: np.ndarray  # per class; NaN where the class never occurs


def evaluate(model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, data_cfg: DataConfig) -> Evaluation:
    """The test split through the model once, `trainer.eval_batch_size` images at a time: the loss
    (the model's own, averaged over the images as `model.evaluate` does), the predictions, and from
    them the accuracy and the confusion matrix."""
    num_classes = len(data_cfg.class_names)
    loss_sum, predictions, confidences = compiled_pass(model, data.x_test, data.y_test, trainer_cfg.eval_batch_size)()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (data.y_test, predictions), 1)
    precision, recall = per_class_precision_recall(confusion)
    return Evaluation(
        loss_sum / len(data.y_test),
        float(np.trace(confusion)) / len(data.y_test),
        predictions,
        confidences,
        confusion,
        precision,
        recall,
    )


def compiled_pass(
    model: keras.Model, images: np.ndarray, labels: np.ndarray, batch: int
) -> Callable[[], tuple[float, np.ndarray, np.ndarray]]:
    """A function that runs a whole split through the model as a TensorFlow graph, `batch` images
    per call, and returns the sample-weighted loss sum, computed as Keras computes the training
    loss, the predicted class of every image, in order, and its score. No XLA: these one-step graphs compile
    for longer than they run (BENCHMARKS.md)."""

    chunk_pass = _chunk_pass(model)
    chunks = [
        (tf.constant(images[start : start + batch]), tf.constant(labels[start : start + batch].astype(np.int32)))
        for start in range(0, len(labels), batch)
    ]

    def run() -> tuple[float, np.ndarray, np.ndarray]:
        results = [chunk_pass(x, y) for x, y in chunks]
        return (
            sum(float(loss) for loss, _, _ in results),
            np.concatenate([predicted.numpy() for _, predicted, _ in results]),
            np.concatenate([score.numpy() for _, _, score in results]),
        )

    return run


def _chunk_pass(model: keras.Model) -> Callable:
    """The model's traced pass over one chunk, made once per model: a model this process keeps
    for later jobs (pipeline.programs) traces it once per chunk shape, not once per job."""
    cached = getattr(model, "_mnistexp_chunk_pass", None)
    if cached is not None:
        return cached

    @tf.function(autograph=False)
    def chunk_pass(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        scores = model(x, training=False)
        loss = model.compute_loss(x=x, y=loss_targets(model, y), y_pred=scores, training=False)
        predicted = tf.argmax(scores, axis=1, output_type=tf.int32)
        return loss * tf.cast(tf.shape(y)[0], tf.float32), predicted, tf.reduce_max(scores, axis=1)

    model._mnistexp_chunk_pass = chunk_pass
    return chunk_pass


def loss_targets(model: keras.Model, labels: Any) -> Any:
    """Class indices as the model's loss takes them: themselves for a sparse_* loss, one-hot rows for
    a categorical_* one (trainer.loss). Tensors in, tensors out; NumPy arrays likewise."""
    if not str(model.loss).startswith("categorical"):
        return labels
    classes = model.output_shape[-1]
    if isinstance(labels, np.ndarray):
        return np.eye(classes, dtype=np.float32)[labels]
    return tf.one_hot(labels, classes)


def per_class_precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision = diagonal / column sums (predicted), recall = diagonal / row sums (true)."""
    hits = np.diag(confusion).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / confusion.sum(axis=0), hits / confusion.sum(axis=1)
