"""Test-set figures as plain numbers: loss, accuracy, predictions, confusion matrix, per-class precision/recall."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from mnistexp.config import DataConfig, TrainerConfig
from mnistexp.data import Dataset


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray  # predicted class per test image
    confusion: np.ndarray  # confusion[true, predicted] = count
    precision: np.ndarray  # per class; NaN where the class was never predicted
    recall: np.ndarray  # per class; NaN where the class never occurs


def evaluate(model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, data_cfg: DataConfig) -> Evaluation:
    """The test split through the model, `trainer.eval_batch_size` images at a time."""
    batch_size, num_classes = trainer_cfg.eval_batch_size, len(data_cfg.class_names)
    loss, accuracy = model.evaluate(data.x_test, data.y_test, batch_size=batch_size, verbose=0)
    scores = model.predict(data.x_test, batch_size=batch_size, verbose=0)
    predictions = scores.argmax(axis=1)
    confusion = tf.math.confusion_matrix(data.y_test, predictions, num_classes=num_classes).numpy()
    precision, recall = per_class_precision_recall(confusion)
    return Evaluation(float(loss), float(accuracy), predictions, confusion, precision, recall)


def per_class_precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision = diagonal / column sums (predicted), recall = diagonal / row sums (true)."""
    hits = np.diag(confusion).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / confusion.sum(axis=0), hits / confusion.sum(axis=1)
