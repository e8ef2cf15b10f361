"""Compile the model with the configured optimizer and loss, then fit it with Keras callbacks."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass

import keras
import tensorflow as tf
from omegaconf import DictConfig

from mnistexp.data import Dataset

OPTIMIZER_CLASSES = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
    "nadam": keras.optimizers.Nadam,
    "adagrad": keras.optimizers.Adagrad,
}


@dataclass(frozen=True)
class FitResult:
    history: dict[str, list[float]]  # metric name -> one value per epoch
    fit_seconds: float
    samples_per_second: float


def configure_runtime(seed: int, deterministic: bool) -> dict[str, str]:
    """A clean, seeded TensorFlow for this job; returns the facts that identical results depend on."""
    keras.backend.clear_session()  # sweeps run many jobs in one process: start each from nothing
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow, including fit's shuffling
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    threading = tf.config.threading
    return {
        "runtime.deterministic_ops": str(deterministic),
        "runtime.onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "runtime.intra_op_threads": str(threading.get_intra_op_parallelism_threads() or "auto"),
        "runtime.inter_op_threads": str(threading.get_inter_op_parallelism_threads() or "auto"),
        "runtime.cpu_count": str(os.cpu_count()),
        "runtime.machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "runtime.devices": ",".join(device.device_type for device in tf.config.list_physical_devices()),
    }


def compile_model(model: keras.Model, optimizer_cfg: DictConfig, trainer_cfg: DictConfig) -> None:
    optimizer = OPTIMIZER_CLASSES[optimizer_cfg.name](learning_rate=optimizer_cfg.learning_rate)
    model.compile(optimizer=optimizer, loss=trainer_cfg.loss, metrics=["accuracy"])


def fit(model: keras.Model, data: Dataset, trainer_cfg: DictConfig,
        callbacks: list[keras.callbacks.Callback]) -> FitResult:
    """Train on the training split; NaN losses stop training (TerminateOnNaN) and raise."""
    terminate_on_nan = keras.callbacks.TerminateOnNaN()
    started = time.perf_counter()
    history = model.fit(
        data.x_train, data.y_train,
        epochs=trainer_cfg.epochs,
        batch_size=trainer_cfg.batch_size,
        shuffle=trainer_cfg.shuffle,
        verbose=trainer_cfg.verbose,
        callbacks=[terminate_on_nan, *callbacks],
    )
    seconds = time.perf_counter() - started
    losses = history.history.get("loss", [])
    if model.stop_training and losses and not all(map(math.isfinite, losses)):
        raise FloatingPointError(
            f"training loss became NaN/inf in epoch {len(losses)}; lower optimizer.learning_rate"
        )
    samples = len(data.x_train) * len(losses)
    return FitResult(history.history, seconds, samples / seconds if seconds > 0 else 0.0)
