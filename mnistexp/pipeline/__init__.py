"""The computation: config and data in, a trained model and its numbers out. No MLflow here.

`train_and_evaluate` is what flax's examples/mnist calls by the same name: the job, the benchmark
and the Python API call it, and the tracking layer records what it returns. The submodules import
TensorFlow at their top, so this file imports them only inside the function: `pipeline.data`
(NumPy only) stays cheap to import before anything heavy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from mnistexp.config.schema import MnistexpConfig
    from mnistexp.pipeline.data import Dataset
    from mnistexp.pipeline.evaluation import Evaluation
    from mnistexp.pipeline.train import FitResult


@dataclass(frozen=True)
class Trained:
    """What a job computes: the model with the weights kept, its training, its test figures."""

    model: keras.Model
    fitted: FitResult  # per-epoch history, timings, the epochs early stopping chose
    evaluation: Evaluation  # the test split through the kept model
    runtime: dict[str, str]  # the facts identical results depend on: threads, op determinism, oneDNN, devices

    @property
    def history(self) -> dict[str, list[float]]:
        return self.fitted.history

    def metrics(self) -> dict[str, float]:
        """The kept model's figures, as a run logs them last: val_* and train figures of the kept epoch,
        the test loss and accuracy, and the training time."""
        return {
            **self.fitted.kept_metrics(),
            "test_loss": self.evaluation.loss,
            "test_accuracy": self.evaluation.accuracy,
            "fit_seconds": self.fitted.fit_seconds,
            "samples_per_second": self.fitted.samples_per_second,
        }

    def figures(
        self, data: Dataset, class_names: Sequence[str], sample_images: int, mistake_images: int
    ) -> Iterator[tuple[str, Figure]]:
        """The run's plots, drawn one at a time as they are asked for: (artifact name, figure); close each after use."""
        from mnistexp.pipeline import plots
        from mnistexp.tracking import names  # the names alone: no MLflow

        evaluation = self.evaluation
        yield names.CONFUSION_PLOT, plots.confusion_heatmap(evaluation.confusion, class_names, evaluation.accuracy)
        if sample_images:  # 0: no grid of images at all (an empty figure tells nobody anything)
            images = data.x_test[:sample_images]
            yield names.SAMPLES_PLOT, plots.sample_grid(images, data.y_test, evaluation.predictions, class_names)
        if mistake_images:
            yield (
                names.MISTAKES_PLOT,
                plots.mistakes_grid(
                    data.x_test,
                    data.y_test,
                    evaluation.predictions,
                    evaluation.confidences,
                    class_names,
                    mistake_images,
                ),
            )
        yield names.CURVES_PLOT, plots.learning_curves(self.fitted.history, self.fitted.best_epoch)


@dataclass(frozen=True)
class Job:
    """One job of a group trained together: its config, its data, the Keras callbacks that record it."""

    cfg: MnistexpConfig
    data: Dataset
    callbacks: Sequence[Any] = ()


def train_and_evaluate(
    cfg: MnistexpConfig,
    data: Dataset,
    *,
    callbacks: Sequence[Any] = (),
    thread_share: int | None = None,
    onednn: str = "default (on)",
) -> Trained:
    """Seed TensorFlow, build and compile the model the config describes, fit it on `data`'s training
    split (validation after each epoch, with one), and evaluate the kept weights on its test split.

    `callbacks` are Keras callbacks (how a run logs each epoch); `thread_share` is a sweep's share of
    the cores for `trainer.threads: auto`; `onednn` is what the runtime facts report for oneDNN.
    """
    [outcome] = train_together([Job(cfg, data, callbacks)], thread_share=thread_share, onednn=onednn)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def train_together(
    jobs: Sequence[Job],
    *,
    pool: tuple[Any, Any] | None = None,
    thread_share: int | None = None,
    onednn: str = "default (on)",
) -> list[Trained | Exception]:
    """`train_and_evaluate` for jobs that share their data, batch size, epochs, shuffle and engine,
    trained as one program (the fused launcher's groups): each job's outcome, its Trained or the
    error that ended it alone (a NaN loss). `pool` is the training split their own were drawn from
    (`Dataset.train_positions`); a single job needs none. Each job's result is bit-identical to its
    training alone: every job keeps its own ops, seed, data order, early stopping and callbacks."""
    from mnistexp import interrupts
    from mnistexp.config.validation import parameter_count
    from mnistexp.pipeline import evaluation, model, programs, runtime, train

    networks, facts = [], []
    for job in jobs:
        cfg = job.cfg
        threads = runtime.threads_for(cfg.trainer, parameter_count(cfg.model, cfg.data), thread_share)
        facts.append(runtime.configure_runtime(cfg.seed, cfg.trainer, threads, onednn))
        networks.append(model.build(cfg.model, cfg.preprocess, cfg.data))
        train.compile_model(networks[-1], cfg.optimizer, cfg.trainer)
    trainees, steps, slots = networks, None, None
    if jobs[0].cfg.trainer.engine == "compiled":  # keras_fit's model.fit makes its own functions
        slots = programs.PROGRAMS.slots(
            [programs.slot_key(job.cfg, network) for job, network in zip(jobs, networks, strict=True)],
            lambda k: _fresh_network(jobs[k].cfg),
        )
        for slot, network in zip(slots, networks, strict=True):
            slot.load(network)
        trainees = [slot.model for slot in slots]
        jit = jobs[0].cfg.trainer.jit_compile
        steps = programs.PROGRAMS.program(slots, lambda: train.compiled_train_steps(trainees, jit))
    learners = [
        train.Learner(trainee, job.data, job.cfg.trainer, list(job.callbacks), job.cfg.seed)
        for trainee, job in zip(trainees, jobs, strict=True)
    ]
    fitted = train.fit_together(learners, steps, pool)
    interrupts.phase("evaluating")
    outcomes: list[Trained | Exception] = []
    for k, (job, trainee, network, fit) in enumerate(zip(jobs, trainees, networks, fitted, strict=True)):
        if isinstance(fit, Exception):
            outcomes.append(fit)
            continue
        tested = evaluation.evaluate(trainee, job.data, job.cfg.trainer, job.cfg.data)
        if slots is not None:
            slots[k].unload(network)  # the job's own model leaves with the trained state
        outcomes.append(Trained(network, fit, tested, facts[k]))
    interrupts.check()  # a signal during evaluation is acted on as it ends: the runs end KILLED
    return outcomes


def _fresh_network(cfg: MnistexpConfig) -> keras.Model:
    """A model of this config's shapes for a slot (its initial values are never used)."""
    from mnistexp.pipeline import model, train

    network = model.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(network, cfg.optimizer, cfg.trainer)
    return network
