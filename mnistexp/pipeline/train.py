"""Compile the model with the configured optimizer and loss, then fit it with Keras callbacks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
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


@dataclass
class Learner:
    """One job of what trains together: the model its steps update, its data, seed and callbacks."""

    model: keras.Model
    data: Dataset
    trainer_cfg: TrainerConfig
    callbacks: list[keras.callbacks.Callback]
    seed: int


def fit(
    model: keras.Model, data: Dataset, trainer_cfg: TrainerConfig, callbacks: list[keras.callbacks.Callback], seed: int
) -> FitResult:
    """Train on the training split with the configured engine; a NaN loss stops training and raises.

    Both engines make the same updates: `batch_size` examples per step, the training set
    reshuffled every epoch, the loss and metrics Keras's `fit` would compute, and with a
    validation split `val_loss` and `val_accuracy` after every epoch. Early stopping is Keras's.
    `fit_seconds` includes compiling the compiled engine's loops, also reported on its own.
    """
    [outcome] = fit_together([Learner(model, data, trainer_cfg, callbacks, seed)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def fit_together(
    learners: Sequence[Learner], train_steps: Callable | None = None, pool: tuple[np.ndarray, np.ndarray] | None = None
) -> list[FitResult | TrainingDivergedError]:
    """Train jobs as one program (the compiled engine; one job alone may use keras_fit), each with
    its own steps, early stopping and callbacks: a job that stops is frozen while the others go on,
    one whose loss becomes NaN gets its TrainingDivergedError. `train_steps` is a program made by
    `compiled_train_steps` on these models (made here if None); `pool` is the training split the
    jobs' own were drawn from (their `train_positions`), needed for more than one job."""
    stoppers = [_early_stopping(learner.trainer_cfg.early_stopping) for learner in learners]
    timers = [_ValidationTimer() for _ in learners]
    for learner, stopper, timer in zip(learners, stoppers, timers, strict=True):
        stopping = [stopper] if stopper else []
        learner.callbacks = [keras.callbacks.TerminateOnNaN(), *stopping, *learner.callbacks, timer]
    with interrupts.deferred():
        started = time.perf_counter()
        histories, compile_seconds, ended = _train(learners, train_steps, pool)
    return [
        _outcome(learner, history, stopper, timer, compile_seconds, finished - started)
        for learner, history, stopper, timer, finished in zip(learners, histories, stoppers, timers, ended, strict=True)
    ]


def _outcome(
    learner: Learner,
    history: dict[str, list[float]],
    stopper: keras.callbacks.EarlyStopping | None,
    timer: _ValidationTimer,
    compile_seconds: float,
    seconds: float,
) -> FitResult | TrainingDivergedError:
    losses = history.get("loss", [])
    if learner.model.stop_training and losses and not all(map(math.isfinite, losses)):
        return TrainingDivergedError(
            f"training loss became NaN/inf in epoch {len(losses)}; try a lower optimizer.learning_rate"
        )
    stopped = len(losses) - 1
    best_epoch = stopper.best_epoch if stopper is not None else None
    restored = stopper is not None and stopper.restore_best_weights and stopper.best_weights
    return FitResult(
        history,
        seconds,
        len(learner.data.x_train) * len(losses) / seconds if seconds > 0 else 0.0,
        validation_seconds=timer.seconds,
        compile_seconds=compile_seconds,
        stopped_epoch=stopped,
        best_epoch=best_epoch,
        kept_epoch=best_epoch if restored and best_epoch is not None else stopped,
    )


def _train(
    learners: Sequence[Learner], train_steps: Callable | None, pool: tuple[np.ndarray, np.ndarray] | None
) -> tuple[list[dict[str, list[float]]], float, list[float]]:
    """The engine's epochs: each job's history, the seconds spent compiling (the compiled engine's),
    and when each job's training ended."""
    if learners[0].trainer_cfg.engine == "compiled":
        started = time.perf_counter()
        engine = CompiledEngine(learners, train_steps, pool)
        engine.compile()
        compile_seconds = time.perf_counter() - started
        return engine.fit(), compile_seconds, engine.ended
    [learner] = learners  # keras_fit trains one model at a time
    data, trainer_cfg, model = learner.data, learner.trainer_cfg, learner.model
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
        callbacks=[_StopAtBatchEnd(), *learner.callbacks],
    ).history
    return [history], 0.0, [time.perf_counter()]


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
    """Epochs as compiled TensorFlow loops over the training set held in memory, for one job or a
    group trained as one program.

    `model.fit` pays Python and dispatch overhead on each of its 1,875 steps an epoch, which
    costs more than the arithmetic of these small models. Here a `tf.function` (XLA when
    `trainer.jit_compile`) runs a slice of an epoch's steps per call, sized to take about
    SLICE_SECONDS: a signal is answered at the next slice's end and the progress bar moves
    within the epoch, while the steps are those one call over the whole epoch would make.
    Keras callbacks see every epoch begin and end, and every slice end as a batch end.

    In a group, every job has its own ops in the loop (its own batch gather, model and optimizer),
    so each computes what it would alone; a job that has stopped skips its ops (`active`).
    """

    SLICE_SECONDS = 0.2

    def __init__(
        self, learners: Sequence[Learner], train_steps: Callable | None, pool: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        self.learners, self.cfg = list(learners), learners[0].trainer_cfg
        if pool is None:
            [learner] = learners  # a group needs the split the jobs' training sets were drawn from
            pool = (learner.data.x_train, learner.data.y_train)
        self.images, self.labels = tf.constant(pool[0]), tf.constant(pool[1].astype(np.int32))
        self.rows = [learner.data.train_positions if len(learners) > 1 else None for learner in learners]
        models = [learner.model for learner in learners]
        self.train_steps = train_steps or compiled_train_steps(models, self.cfg.jit_compile)
        self.validations = [_validation_pass(learner) for learner in learners]
        self.orders = [epoch_orders(len(learner.data.y_train), learner.seed, self.cfg.shuffle) for learner in learners]
        self.size = len(learners[0].data.y_train)
        self.steps_per_slice = 8  # grows to SLICE_SECONDS' worth once a slice has been timed
        self.ended = [0.0] * len(learners)
        steps = -(-self.size // self.cfg.batch_size)
        self.progress = _GroupProgress(len(learners), self.cfg, steps) if len(learners) > 1 else None
        self.callback_lists = [
            keras.callbacks.CallbackList(
                learner.callbacks,
                add_history=True,
                add_progbar=self.progress is None and self.cfg.verbose != 0,
                model=learner.model,
                verbose=self.cfg.verbose,
                epochs=self.cfg.epochs,
                steps=steps,
            )
            for learner in learners
        ]

    def compile(self) -> None:
        """Trace and compile the loops for this data's shapes without running a step (an empty
        step range), and each validation pass by running it once (it changes nothing)."""
        full_steps, remainder = divmod(self.size, self.cfg.batch_size)
        no_steps, members = tf.constant(0), len(self.learners)
        for shape in ([members, full_steps, self.cfg.batch_size], [members, 1, remainder]):
            if shape[1] and shape[2]:
                self._run(tf.zeros(shape, tf.int32), no_steps, no_steps, self._active())
        for validation in self.validations:
            if validation is not None:
                validation[0]()

    def fit(self) -> list[dict[str, list[float]]]:
        for learner, callbacks in zip(self.learners, self.callback_lists, strict=True):
            learner.model.stop_training = False
            callbacks.on_train_begin()
        live = list(range(len(self.learners)))
        for epoch in range(self.cfg.epochs):
            interrupts.phase("training")
            for k in live:
                self.callback_lists[k].on_epoch_begin(epoch)
            logs = self._epoch(epoch, live)
            for k in live:
                self.callback_lists[k].on_epoch_end(epoch, logs[k])
            for k in list(live):
                if self.learners[k].model.stop_training or epoch == self.cfg.epochs - 1:
                    live.remove(k)
                    self.callback_lists[k].on_train_end(logs[k])
                    self.ended[k] = time.perf_counter()
            if not live:
                break
        return [learner.model.history.history for learner in self.learners]

    def _epoch(self, epoch: int, live: list[int]) -> dict[int, dict[str, float]]:
        """One epoch of every live job: its training figures, then its validation figures."""
        batch = self.cfg.batch_size
        orders = {k: next(self.orders[k]) for k in live}
        sums = dict.fromkeys(live, (0.0, 0))
        logs: dict[int, dict[str, float]] = {k: {} for k in live}
        if self.progress:
            self.progress.begin(epoch, len(live))
        for done, slice_losses, slice_hits in self._epoch_in_slices(orders, live, batch):
            interrupts.check()
            seen = min(done * batch, self.size)
            for k in live:
                loss_sum = sums[k][0]
                for step_loss in slice_losses[k]:  # one step at a time: the same sum however the epoch is sliced
                    loss_sum += float(step_loss)
                sums[k] = (loss_sum, sums[k][1] + int(slice_hits[k]))
                correct = sums[k][1]
                logs[k] = {"loss": loss_sum / seen, "accuracy": correct / seen}
                self.callback_lists[k].on_train_batch_end(done - 1, logs[k])
            if self.progress:
                self.progress.update(done)
        for k in live:
            validation = self.validations[k]
            if validation is not None:
                evaluate, y_val = validation
                self.callback_lists[k].on_test_begin()
                val_loss_sum, predictions, _ = evaluate()
                self.callback_lists[k].on_test_end()
                logs[k] = {
                    **logs[k],
                    "val_loss": val_loss_sum / len(y_val),
                    "val_accuracy": float(np.mean(predictions == y_val)),
                }
        return logs

    def _epoch_in_slices(
        self, orders: dict[int, np.ndarray], live: list[int], batch: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Runs the epoch's steps a slice at a time; yields (steps done, each step's loss in the slice,
        slice hits), one row of losses and one count of hits per job."""
        indices = np.zeros((len(self.learners), self.size), np.int32)  # a stopped job's rows go unread
        for k, order in orders.items():
            rows = self.rows[k]
            indices[k] = order if rows is None else rows[order]
        full_steps, remainder = divmod(self.size, batch)
        blocks = [(indices[:, : full_steps * batch].reshape(len(indices), full_steps, batch), full_steps)]
        if remainder:  # the last, smaller batch, as fit makes it
            blocks.append((indices[:, full_steps * batch :].reshape(len(indices), 1, remainder), 1))
        active, done = self._active(live), 0
        for block, block_steps in blocks:
            block = tf.constant(block)
            start = 0
            while start < block_steps:
                stop = min(start + self.steps_per_slice, block_steps)
                began = time.perf_counter()
                losses, hits = self._run(block, tf.constant(start), tf.constant(stop), active)
                self._resize_slices(stop - start, time.perf_counter() - began)
                done += stop - start
                start = stop
                yield done, losses, hits

    def _run(self, block: tf.Tensor, start: tf.Tensor, stop: tf.Tensor, active: tf.Tensor) -> tuple[np.ndarray, ...]:
        losses, hits = self.train_steps(self.images, self.labels, block, start, stop, active)
        return losses.numpy()[:, int(start) : int(stop)], hits.numpy()

    def _active(self, live: Sequence[int] | None = None) -> tf.Tensor:
        chosen = set(range(len(self.learners)) if live is None else live)
        return tf.constant([k in chosen for k in range(len(self.learners))])

    def _resize_slices(self, steps: int, seconds: float) -> None:
        if steps == self.steps_per_slice and seconds > 0:
            self.steps_per_slice = max(1, min(int(steps * self.SLICE_SECONDS / seconds), 4 * steps))


def _validation_pass(learner: Learner) -> tuple[Callable[[], tuple[float, np.ndarray, np.ndarray]], np.ndarray] | None:
    if learner.data.validation is None:
        return None
    x_val, y_val = learner.data.validation
    return compiled_pass(learner.model, x_val, y_val, learner.trainer_cfg.eval_batch_size), y_val


class _GroupProgress:
    """One progress bar for a group's epoch: steps done, and how many of its jobs still train."""

    def __init__(self, members: int, trainer_cfg: TrainerConfig, steps: int) -> None:
        self.members, self.cfg, self.steps = members, trainer_cfg, steps
        self.bar: keras.utils.Progbar | None = None

    def begin(self, epoch: int, training: int) -> None:
        if self.cfg.verbose == 0:
            return
        print(f"Epoch {epoch + 1}/{self.cfg.epochs}: {training} of {self.members} jobs training", flush=True)
        self.bar = keras.utils.Progbar(self.steps, verbose=self.cfg.verbose)

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done)


def epoch_orders(size: int, seed: int, shuffle: bool) -> Iterator[np.ndarray]:
    """The order the compiled engine visits the training examples in, epoch after epoch: a new
    permutation every epoch from NumPy's generator seeded with `seed`, or 0..size-1 without shuffle."""
    shuffler = np.random.default_rng(seed)
    while True:
        yield (shuffler.permutation(size) if shuffle else np.arange(size)).astype(np.int32)


def compiled_train_steps(models: Sequence[keras.Model], jit_compile: bool) -> Callable:
    """One program for these models: a function of the training images and labels, a [jobs, steps,
    batch] block of example rows, a step range and which jobs are active, that runs those optimizer
    steps of each active job and returns each job's sample-weighted loss at each step of the block
    (zero outside the range) and its correct predictions. Each step's loss, not a float32 sum: the
    caller sums them in float64 in step order, so a job's epoch loss does not depend on how the
    epoch was cut into timed slices (alone or fused, loaded machine or not). Alone, a job's steps run
    unconditionally (it is active for as long as it trains)."""
    for model in models:
        model.optimizer.build(model.trainable_variables)

    def job_steps(model: keras.Model, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            scores = model(x, training=True)
            loss = model.compute_loss(x=x, y=loss_targets(model, y), y_pred=scores, training=True)
        model.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss * tf.cast(tf.shape(y)[0], tf.float32), _hits(scores, y)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
    def train_steps(images, labels, blocks, start, stop, active) -> tuple[tf.Tensor, tf.Tensor]:
        def step(i, step_losses, corrects):
            new_losses, new_corrects = [], []
            for k, model in enumerate(models):
                indices = blocks[k, i]
                x, y = tf.gather(images, indices), tf.gather(labels, indices)
                if len(models) == 1:
                    loss, hits = job_steps(model, x, y)
                else:  # a stopped job is frozen: its ops do not run
                    loss, hits = tf.cond(
                        active[k],
                        lambda model=model, x=x, y=y: job_steps(model, x, y),
                        lambda: (tf.constant(0.0), tf.constant(0)),
                    )
                new_losses.append(tf.tensor_scatter_nd_update(step_losses[k], tf.reshape(i, [1, 1]), [loss]))
                new_corrects.append(corrects[k] + hits)
            return i + 1, new_losses, new_corrects

        steps = tf.shape(blocks)[1]
        zeros = ([tf.zeros([steps])] * len(models), [tf.constant(0)] * len(models))
        _, step_losses, corrects = tf.while_loop(lambda i, *_: i < stop, step, (start, *zeros))
        return tf.stack(step_losses), tf.stack(corrects)

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
