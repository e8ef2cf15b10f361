"""Compile the model with the configured optimizer and loss, then fit it with Keras callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from mnistexp import interrupts
from mnistexp.config.schema import OPTIMIZERS, EarlyStoppingConfig, OptimizerConfig, TrainerConfig
from mnistexp.errors import TrainingDivergedError
from mnistexp.pipeline.data import Dataset
from mnistexp.pipeline.evaluation import compiled_pass, loss_targets


@dataclass(frozen=True)
class FitResult:
    history: dict[str, list[float]]  # metric name -> one value per epoch trained (val_* with a validation split)
    fit_seconds: float  # validation passes and compilation included
    samples_per_second: float
    validation_seconds: float  # the part of fit_seconds spent on the validation split
    compile_seconds: float  # the part spent tracing and compiling the compiled engine's loops
    stopped_epoch: int  # the last epoch trained (0-based, as Keras counts)
    best_epoch: int | None  # early stopping's best epoch by its monitor; None without early stopping
    kept_epoch: int  # the epoch whose weights the model holds now (best_epoch if restored)

    def kept_metrics(self) -> dict[str, float]:
        """Every per-epoch figure of the epoch whose weights were kept."""
        return {name: values[self.kept_epoch] for name, values in self.history.items()}


def compile_model(model: keras.Model, optimizer_cfg: OptimizerConfig, trainer_cfg: TrainerConfig) -> None:
    """The configured optimizer (config.OPTIMIZERS names its Keras class) and loss."""
    optimizer = getattr(keras.optimizers, OPTIMIZERS[optimizer_cfg.name])(learning_rate=optimizer_cfg.learning_rate)
    # Keras's own functions (fit, evaluate, predict) turn XLA off under op determinism anyway.
    keras_xla = trainer_cfg.jit_compile and not trainer_cfg.deterministic
    model.compile(optimizer=optimizer, loss=trainer_cfg.loss, metrics=["accuracy"], jit_compile=keras_xla)


def fit(
    model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, callbacks: list[keras.callbacks.Callback], seed: int
) -> FitResult:
    """Train on the training split with the configured engine; a NaN loss stops training and raises.

    Both engines make the same updates: `batch_size` examples per step, the training set
    reshuffled every epoch, the loss and metrics Keras's `fit` would compute, and with a
    validation split `val_loss` and `val_accuracy` after every epoch. Early stopping is Keras's.
    `fit_seconds` includes compiling the compiled engine's loops, also reported on its own.
    """
    early_stopping = _early_stopping(trainer_cfg.early_stopping)
    timer = _ValidationTimer()
    callbacks = [keras.callbacks.TerminateOnNaN(), *([early_stopping] if early_stopping else []), *callbacks, timer]
    with interrupts.deferred():
        started = time.perf_counter()
        history, compile_seconds = _train(model, data, trainer_cfg, [_StopAtBatchEnd(), *callbacks], seed)
        seconds = time.perf_counter() - started
    losses = history.get("loss", [])
    if model.stop_training and losses and not all(map(math.isfinite, losses)):
        raise TrainingDivergedError(
            f"training loss became NaN/inf in epoch {len(losses)}; try a lower optimizer.learning_rate"
        )
    stopped = len(losses) - 1
    best_epoch = early_stopping.best_epoch if early_stopping is not None else None
    restored = early_stopping is not None and early_stopping.restore_best_weights and early_stopping.best_weights
    return FitResult(
        history,
        seconds,
        len(data.x_train) * len(losses) / seconds if seconds > 0 else 0.0,
        validation_seconds=timer.seconds,
        compile_seconds=compile_seconds,
        stopped_epoch=stopped,
        best_epoch=best_epoch,
        kept_epoch=best_epoch if restored and best_epoch is not None else stopped,
    )


def _train(
    model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, callbacks: list[keras.callbacks.Callback], seed: int
) -> tuple[dict[str, list[float]], float]:
    """The engine's epochs; returns the history and the seconds spent compiling (the compiled engine's)."""
    if trainer_cfg.engine == "compiled":
        started = time.perf_counter()
        engine = CompiledEngine(model, data, trainer_cfg, seed)
        engine.compile()
        compile_seconds = time.perf_counter() - started
        return engine.fit(callbacks), compile_seconds
    validation = data.validation
    history = model.fit(
        data.x_train,
        loss_targets(model, data.y_train),
        epochs=trainer_cfg.epochs,
        batch_size=trainer_cfg.batch_size,
        shuffle=trainer_cfg.shuffle,
        validation_data=None if validation is None else (validation[0], loss_targets(model, validation[1])),
        validation_batch_size=trainer_cfg.eval_batch_size,
        verbose=trainer_cfg.verbose,
        callbacks=callbacks,
    ).history
    return history, 0.0


def _early_stopping(cfg: EarlyStoppingConfig) -> keras.callbacks.EarlyStopping | None:
    if not cfg.enabled:
        return None
    return keras.callbacks.EarlyStopping(
        monitor=cfg.monitor,
        mode=cfg.mode,
        patience=cfg.patience,
        min_delta=cfg.min_delta,
        restore_best_weights=cfg.restore_best_weights,
    )


class CompiledEngine:
    """Epochs as compiled TensorFlow loops over the training set held in memory.

    `model.fit` pays Python and dispatch overhead on each of its 1,875 steps an epoch, which
    costs more than the arithmetic of these small models. Here a `tf.function` (XLA when
    `trainer.jit_compile`) runs a slice of an epoch's steps per call, sized to take about
    SLICE_SECONDS: a signal is answered at the next slice's end and the progress bar moves
    within the epoch, while the steps are those one call over the whole epoch would make.
    Keras callbacks see every epoch begin and end, and every slice end as a batch end.
    """

    SLICE_SECONDS = 0.2

    def __init__(self, model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, seed: int) -> None:
        self.model, self.cfg = model, trainer_cfg
        self.images, self.labels = tf.constant(data.x_train), tf.constant(data.y_train.astype(np.int32))
        self.train_steps = _compiled_train_steps(model, self.images, self.labels, trainer_cfg.jit_compile)
        self.validation = None
        if data.validation is not None:
            x_val, y_val = data.validation
            evaluate = compiled_pass(model, x_val, y_val, trainer_cfg.eval_batch_size)
            self.validation = (evaluate, y_val)
        self.orders = epoch_orders(int(self.images.shape[0]), seed, trainer_cfg.shuffle)
        self.steps_per_slice = 8  # grows to SLICE_SECONDS' worth once a slice has been timed

    def compile(self) -> None:
        """Trace and compile the loops for this data's shapes without running a step (an empty
        step range), and the validation pass by running it once (it changes nothing)."""
        full_steps, remainder = divmod(int(self.images.shape[0]), self.cfg.batch_size)
        no_steps = tf.constant(0)
        for shape in ([full_steps, self.cfg.batch_size], [1, remainder]):
            if shape[0] and shape[1]:
                self.train_steps(tf.zeros(shape, tf.int32), no_steps, no_steps)
        if self.validation is not None:
            self.validation[0]()

    def fit(self, callbacks: list[keras.callbacks.Callback]) -> dict[str, list[float]]:
        size, batch = int(self.images.shape[0]), self.cfg.batch_size
        steps = -(-size // batch)
        callback_list = keras.callbacks.CallbackList(
            callbacks,
            add_history=True,
            add_progbar=self.cfg.verbose != 0,
            model=self.model,
            verbose=self.cfg.verbose,
            epochs=self.cfg.epochs,
            steps=steps,
        )
        self.model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(self.cfg.epochs):
            callback_list.on_epoch_begin(epoch)
            order = next(self.orders)
            loss_sum, correct = 0.0, 0
            for done, slice_loss, slice_correct in self._epoch_in_slices(order, batch):
                loss_sum, correct = loss_sum + slice_loss, correct + slice_correct
                seen = min(done * batch, size)
                logs = {"loss": loss_sum / seen, "accuracy": correct / seen}
                callback_list.on_train_batch_end(done - 1, logs)
            if self.validation is not None:
                evaluate, y_val = self.validation
                callback_list.on_test_begin()
                val_loss_sum, predictions = evaluate()
                callback_list.on_test_end()
                logs = {
                    **logs,
                    "val_loss": val_loss_sum / len(y_val),
                    "val_accuracy": float(np.mean(predictions == y_val)),
                }
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end(logs)
        return self.model.history.history

    def _epoch_in_slices(self, order: np.ndarray, batch: int) -> Iterator[tuple[int, float, int]]:
        """Runs the epoch's steps a slice at a time; yields (steps done, slice loss sum, slice hits)."""
        full_steps, remainder = divmod(len(order), batch)
        blocks = [(order[: full_steps * batch].reshape(full_steps, batch), full_steps)]
        if remainder:  # the last, smaller batch, as fit makes it
            blocks.append((order[full_steps * batch :].reshape(1, remainder), 1))
        done = 0
        for block, block_steps in blocks:
            block = tf.constant(block)
            start = 0
            while start < block_steps:
                stop = min(start + self.steps_per_slice, block_steps)
                began = time.perf_counter()
                loss_sum, correct = self.train_steps(block, tf.constant(start), tf.constant(stop))
                loss_sum, correct = float(loss_sum), int(correct)
                self._resize_slices(stop - start, time.perf_counter() - began)
                done += stop - start
                start = stop
                yield done, loss_sum, correct

    def _resize_slices(self, steps: int, seconds: float) -> None:
        if steps == self.steps_per_slice and seconds > 0:
            self.steps_per_slice = max(1, min(int(steps * self.SLICE_SECONDS / seconds), 4 * steps))


def epoch_orders(size: int, seed: int, shuffle: bool) -> Iterator[np.ndarray]:
    """The order the compiled engine visits the training examples in, epoch after epoch: a new
    permutation every epoch from NumPy's generator seeded with `seed`, or 0..size-1 without shuffle."""
    shuffler = np.random.default_rng(seed)
    while True:
        yield (shuffler.permutation(size) if shuffle else np.arange(size)).astype(np.int32)


def _compiled_train_steps(model: keras.Model, images: tf.Tensor, labels: tf.Tensor, jit_compile: bool):
    """A function of a [steps, batch] block of example indices and a step range that runs those
    optimizer steps and returns their sample-weighted loss sum and number of correct predictions."""
    optimizer, variables = model.optimizer, model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
    def train_steps(index_block: tf.Tensor, start: tf.Tensor, stop: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        def step(i, loss_sum, correct):
            indices = index_block[i]
            x, y = tf.gather(images, indices), tf.gather(labels, indices)
            with tf.GradientTape() as tape:
                scores = model(x, training=True)
                loss = model.compute_loss(x=x, y=loss_targets(model, y), y_pred=scores, training=True)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            weight = tf.cast(tf.shape(indices)[0], tf.float32)
            return i + 1, loss_sum + loss * weight, correct + _hits(scores, y)

        _, loss_sum, correct = tf.while_loop(lambda i, *_: i < stop, step, (start, tf.constant(0.0), tf.constant(0)))
        return loss_sum, correct

    return train_steps


def _hits(scores: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(scores, axis=1, output_type=tf.int32), labels), tf.int32))


class _ValidationTimer(keras.callbacks.Callback):
    """The time spent evaluating the validation split (both engines call on_test_begin/end around it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds, self._started = 0.0, 0.0

    def on_test_begin(self, logs: dict | None = None) -> None:
        self._started = time.perf_counter()

    def on_test_end(self, logs: dict | None = None) -> None:
        self.seconds += time.perf_counter() - self._started


class _StopAtBatchEnd(keras.callbacks.Callback):
    """Raises a signal held back during fit at the next batch boundary, before the epoch is logged.

    Raised at an arbitrary point inside a TensorFlow step, KeyboardInterrupt can corrupt its
    native state (seen here: "free(): invalid next size", abort, run left RUNNING). A second
    signal interrupts at once.
    """

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        interrupts.phase("training")

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()
