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
import numpy as np
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


def configure_runtime(seed: int, deterministic: bool, threads: int) -> dict[str, str]:
    """A clean, seeded TensorFlow for this job; returns the facts that identical results depend on."""
    _set_threads(threads)
    keras.backend.clear_session()  # sweeps run many jobs in one process: start each from nothing
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow, including fit's shuffling
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    tf_threads = tf.config.threading
    return {
        "runtime.deterministic_ops": str(deterministic),
        "runtime.onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "runtime.intra_op_threads": str(tf_threads.get_intra_op_parallelism_threads() or "auto"),
        "runtime.inter_op_threads": str(tf_threads.get_inter_op_parallelism_threads() or "auto"),
        "runtime.cpu_count": str(os.cpu_count()),
        "runtime.machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "runtime.devices": ",".join(device.device_type for device in tf.config.list_physical_devices()),
    }


def _set_threads(threads: int) -> None:
    """TensorFlow's thread pools (0 = its default, one thread per core). They are fixed once
    TensorFlow has run anything, so later jobs of a sweep in the same process keep the first setting."""
    tf_threads = tf.config.threading
    if (tf_threads.get_intra_op_parallelism_threads(), tf_threads.get_inter_op_parallelism_threads()) == (threads,) * 2:
        return
    try:
        tf_threads.set_intra_op_parallelism_threads(threads)
        tf_threads.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already running: the runtime.* tags record what this job actually used


def compile_model(model: keras.Model, optimizer_cfg: DictConfig, trainer_cfg: DictConfig) -> None:
    optimizer = OPTIMIZER_CLASSES[optimizer_cfg.name](learning_rate=optimizer_cfg.learning_rate)
    model.compile(optimizer=optimizer, loss=trainer_cfg.loss, metrics=["accuracy"])


def fit(model: keras.Model, data: Dataset, trainer_cfg: DictConfig, callbacks: list[keras.callbacks.Callback],
        seed: int) -> FitResult:
    """Train on the training split with the configured engine; a NaN loss stops training and raises.

    Both engines make the same updates: `batch_size` examples per step, the training set
    reshuffled every epoch, the loss and metrics Keras's `fit` would compute.
    """
    callbacks = [keras.callbacks.TerminateOnNaN(), *callbacks]
    with _signals_wait_for_batch_end() as stop:
        if trainer_cfg.engine == "keras_fit":
            started = time.perf_counter()
            history = model.fit(data.x_train, data.y_train, epochs=trainer_cfg.epochs,
                                batch_size=trainer_cfg.batch_size, shuffle=trainer_cfg.shuffle,
                                verbose=trainer_cfg.verbose, callbacks=[stop, *callbacks]).history
        else:
            tensors = tf.constant(data.x_train), tf.constant(data.y_train.astype(np.int32))
            started = time.perf_counter()
            history = _fit_compiled(model, tensors, trainer_cfg, [stop, *callbacks], seed)
        seconds = time.perf_counter() - started
    losses = history.get("loss", [])
    if model.stop_training and losses and not all(map(math.isfinite, losses)):
        raise TrainingDiverged(
            f"training loss became NaN/inf in epoch {len(losses)}; try a lower optimizer.learning_rate"
        )
    samples = len(data.x_train) * len(losses)
    return FitResult(history, seconds, samples / seconds if seconds > 0 else 0.0)


def _fit_compiled(model: keras.Model, tensors: tuple[tf.Tensor, tf.Tensor], trainer_cfg: DictConfig,
                  callbacks: list[keras.callbacks.Callback], seed: int) -> dict[str, list[float]]:
    """Whole epochs as one compiled TensorFlow loop over in-memory tensors.

    `model.fit` pays Python and dispatch overhead on each of its 1,875 steps an epoch, which
    costs more than the arithmetic of these small models. Here one `tf.function` call (XLA
    when `trainer.jit_compile`) runs every step of an epoch; Keras callbacks still see each
    epoch begin and end, with one batch-end call carrying the epoch's figures.
    """
    images, labels = tensors
    size, batch = int(images.shape[0]), trainer_cfg.batch_size
    full_steps, remainder = divmod(size, batch)
    steps = full_steps + (1 if remainder else 0)
    train_steps = _compiled_steps(model, images, labels, trainer_cfg.jit_compile)
    shuffler = np.random.default_rng(seed)
    callback_list = keras.callbacks.CallbackList(
        callbacks, add_history=True, add_progbar=trainer_cfg.verbose != 0, model=model,
        verbose=trainer_cfg.verbose, epochs=trainer_cfg.epochs, steps=steps,
    )
    model.stop_training = False
    callback_list.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(trainer_cfg.epochs):
        callback_list.on_epoch_begin(epoch)
        order = (shuffler.permutation(size) if trainer_cfg.shuffle else np.arange(size)).astype(np.int32)
        loss_sum, correct = train_steps(order[: full_steps * batch].reshape(full_steps, batch))
        if remainder:  # the last, smaller batch, as fit makes it
            last_loss, last_correct = train_steps(order[full_steps * batch:].reshape(1, remainder))
            loss_sum, correct = loss_sum + last_loss, correct + last_correct
        logs = {"loss": float(loss_sum) / size, "accuracy": float(correct) / size}
        callback_list.on_train_batch_end(steps - 1, logs)
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return model.history.history


def _compiled_steps(model: keras.Model, images: tf.Tensor, labels: tf.Tensor, jit_compile: bool):
    """A function of a [steps, batch] block of example indices that runs those optimizer steps and
    returns the sample-weighted loss sum and the number of correct predictions."""
    optimizer, variables = model.optimizer, model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def train_steps(index_block: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def step(i, loss_sum, correct):
            indices = index_block[i]
            x, y = tf.gather(images, indices), tf.gather(labels, indices)
            with tf.GradientTape() as tape:
                scores = model(x, training=True)
                loss = model.compute_loss(x=x, y=y, y_pred=scores, training=True)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), y), tf.int32))
            weight = tf.cast(tf.shape(indices)[0], tf.float32)
            return i + 1, loss_sum + loss * weight, correct + hits

        _, loss_sum, correct = tf.while_loop(
            lambda i, *_: i < tf.shape(index_block)[0], step, (tf.constant(0), tf.constant(0.0), tf.constant(0)),
        )
        return loss_sum, correct

    return train_steps


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
