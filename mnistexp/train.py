"""Compile the model with the configured optimizer and loss, then fit it with Keras callbacks."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import keras
import tensorflow as tf
from omegaconf import DictConfig

from mnistexp.data import Dataset
from mnistexp.errors import Terminated, TrainingDiverged

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
    with _signals_wait_for_batch_end() as stop:
        started = time.perf_counter()
        history = model.fit(
            data.x_train, data.y_train,
            epochs=trainer_cfg.epochs,
            batch_size=trainer_cfg.batch_size,
            shuffle=trainer_cfg.shuffle,
            verbose=trainer_cfg.verbose,
            callbacks=[stop, terminate_on_nan, *callbacks],
        )
    seconds = time.perf_counter() - started
    losses = history.history.get("loss", [])
    if model.stop_training and losses and not all(map(math.isfinite, losses)):
        raise TrainingDiverged(
            f"training loss became NaN/inf in epoch {len(losses)}; try a lower optimizer.learning_rate"
        )
    samples = len(data.x_train) * len(losses)
    return FitResult(history.history, seconds, samples / seconds if seconds > 0 else 0.0)


class _StopAtBatchEnd(keras.callbacks.Callback):
    """Raises a signal recorded during fit at the next batch boundary, before the epoch is logged."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: int | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.pending is not None:
            raise Terminated() if self.pending == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def _signals_wait_for_batch_end() -> Iterator[_StopAtBatchEnd]:
    """Ctrl-C or SIGTERM during fit stop it at the end of the running batch.

    Raised at an arbitrary point inside a TensorFlow step, KeyboardInterrupt can corrupt its
    native state (seen here: "free(): invalid next size", abort, run left RUNNING). A second
    signal interrupts at once.
    """
    stop = _StopAtBatchEnd()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def record(signum: int, frame: object) -> None:
        if stop.pending is not None:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        stop.pending = signum

    previous = {signum: signal.signal(signum, record) for signum in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(signum) not in (signal.SIG_IGN, None)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
