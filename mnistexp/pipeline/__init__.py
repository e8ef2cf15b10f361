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

    def figures(self, data: Dataset, class_names: Sequence[str], sample_images: int) -> Iterator[tuple[str, Figure]]:
        """The run's plots, drawn one at a time as they are asked for: (name, figure); close each after use."""
        from mnistexp.pipeline import plots

        evaluation = self.evaluation
        yield "confusion_matrix", plots.confusion_heatmap(evaluation.confusion, class_names, evaluation.accuracy)
        if sample_images:  # 0: no grid of images at all (an empty figure tells nobody anything)
            images = data.x_test[:sample_images]
            yield "sample_predictions", plots.sample_grid(images, data.y_test, evaluation.predictions, class_names)
        yield "learning_curves", plots.learning_curves(self.fitted.history, self.fitted.best_epoch)


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
    from mnistexp import interrupts
    from mnistexp.config.validation import parameter_count
    from mnistexp.pipeline import evaluation, model, runtime, train

    threads = runtime.threads_for(cfg.trainer, parameter_count(cfg.model, cfg.data), thread_share)
    facts = runtime.configure_runtime(cfg.seed, cfg.trainer, threads, onednn)
    network = model.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(network, cfg.optimizer, cfg.trainer)
    fitted = train.fit(network, data, cfg.trainer, list(callbacks), cfg.seed)
    interrupts.phase("evaluating")
    tested = evaluation.evaluate(network, data, cfg.trainer, cfg.data)
    return Trained(network, fitted, tested, facts)
