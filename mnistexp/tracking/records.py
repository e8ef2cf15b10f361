"""What a job writes into its run (a Recording): params, config, data, metrics, the model, test figures."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

from mnistexp.tracking import names
from mnistexp.tracking.masking import mask, masked

if TYPE_CHECKING:
    import keras

    from mnistexp.config.schema import MnistexpConfig
    from mnistexp.pipeline import Trained
    from mnistexp.pipeline.data import Dataset
    from mnistexp.pipeline.evaluation import Evaluation
    from mnistexp.pipeline.train import FitResult
    from mnistexp.tracking.recording import Recording


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'hidden_units': 0}} -> {'model.hidden_units': 0}; lists stay single values."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_config(run: Recording, config: MnistexpConfig, overrides: Sequence[str]) -> None:
    """The resolved config as dotted params, as YAML to rerun from, and the command-line overrides
    (a password in any URL of them masked)."""
    from mnistexp.config.schema import as_dict

    resolved = masked(as_dict(config))
    run.params({key: _param(value) for key, value in flatten(resolved).items()})
    run.text(OmegaConf.to_yaml(resolved), names.RESOLVED_CONFIG_ARTIFACT)
    run.text("".join(f"- {mask(item)}\n" for item in overrides) or "[]\n", names.OVERRIDES_ARTIFACT)


def _param(value: Any) -> Any:
    return "null" if value is None else value


def log_data(run: Recording, data: Dataset, name: str) -> None:
    """The data summary (shapes, first labels, split sizes, digest) as JSON; every split as a dataset input."""
    overview = data.overview()
    run.dict(overview, names.DATA_SUMMARY_ARTIFACT)
    run.tags({names.DATA_DIGEST_TAG: overview["sha256"]})
    splits = [("training", data.x_train, data.y_train), ("testing", data.x_test, data.y_test)]
    if data.validation is not None:
        splits.insert(1, ("validation", *data.validation))
    run.inputs([_dataset_input(x, y, data, f"{name}-{context}", context) for context, x, y in splits])


def log_test_input(run: Recording, data: Dataset, name: str) -> None:
    """The test split as an MLflow dataset input with context `evaluation`, and its summary."""
    run.dict(data.overview(), names.DATA_SUMMARY_ARTIFACT)
    run.inputs([_dataset_input(data.x_test, data.y_test, data, f"{name}-evaluation", "evaluation")])


def _dataset_input(x: np.ndarray, y: np.ndarray, data: Dataset, dataset_name: str, context: str) -> Any:
    """A split as MLflow's DatasetInput, as mlflow.log_input makes it."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():
        # MLflow finds two equal readings of a local path ("LocalArtifactDatasetSource") and says so.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = from_numpy(x, targets=y, source=data.source, name=dataset_name, digest=data.digest[:8])
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def epoch_metrics_callback(run: Recording) -> keras.callbacks.Callback:
    """Every epoch's figures at its end, step = epoch (a server that stops answering is waited for)."""
    import keras

    class EpochMetrics(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs:
                run.metrics({key: float(value) for key, value in logs.items()}, step=epoch)

    return EpochMetrics()


def log_model_setup(run: Recording, model: keras.Model) -> None:
    """The optimizer's settings as `optimizer_*` params and the Keras model summary (what MLflow's callback logs)."""
    run.params({f"optimizer_{key}": value for key, value in model.optimizer.get_config().items()})
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    run.text("\n".join(lines), "model_summary.txt")


def log_fit(run: Recording, fitted: FitResult) -> None:
    """Training time, the epochs early stopping chose, and the kept epoch's figures as the latest values.

    When the weights are restored from an earlier epoch, that epoch's figures are logged once
    more at step `stopped_epoch + 1`, as MLflow's Keras autologging does: a run's latest
    `val_accuracy` is then its kept model's, which is what selection reads.
    """
    figures = {
        "fit_seconds": fitted.fit_seconds,
        "samples_per_second": fitted.samples_per_second,
        "validation_seconds": fitted.validation_seconds,
        "compile_seconds": fitted.compile_seconds,
        "stopped_epoch": fitted.stopped_epoch,
    }
    if fitted.best_epoch is not None:
        figures["best_epoch"] = fitted.best_epoch
    run.metrics(figures)
    if fitted.kept_epoch != fitted.stopped_epoch:
        run.metrics(fitted.kept_metrics(), step=fitted.stopped_epoch + 1)


def log_model(run: Recording, model: keras.Model, image_shape: Sequence[int]) -> str:
    """Log the Keras model (raw uint8 images in, class scores out) as the run's LoggedModel; returns
    the key that links the test metrics to it."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    num_classes = model.output_shape[-1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    # Explicit requirements: MLflow's inference would re-import the model (seconds per run).
    requirements = [f"tensorflow=={metadata.version('tensorflow')}", f"keras=={metadata.version('keras')}"]
    return run.model(model, signature, requirements)


def log_evaluation(run: Recording, evaluation: Evaluation, class_names: Sequence[str], model: str | None) -> None:
    """Test metrics (linked to the logged model when there is one) and the confusion matrix as CSV."""
    metrics = {"test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy}
    for index, (precision, recall) in enumerate(zip(evaluation.precision, evaluation.recall, strict=True)):
        metrics[f"test_precision_class_{index}"] = float(precision)
        metrics[f"test_recall_class_{index}"] = float(recall)
    run.metrics(metrics, model=model)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    writer.writerows([name, *row] for name, row in zip(class_names, evaluation.confusion.tolist(), strict=True))
    run.text(table.getvalue(), "evaluation/confusion_matrix.csv")


def log_trained(run: Recording, cfg: MnistexpConfig, data: Dataset, trained: Trained) -> None:
    """Everything the pipeline computed: the runtime facts, the model's setup, training time and the
    epochs early stopping chose, the model (tracking.log_model), the test figures and the plots."""
    from mnistexp import interrupts
    from mnistexp.pipeline import plots

    run.tags(trained.runtime)
    log_model_setup(run, trained.model)
    log_fit(run, trained.fitted)
    interrupts.phase("logging the model")
    logged = log_model(run, trained.model, cfg.data.image_shape) if cfg.tracking.log_model else None
    log_evaluation(run, trained.evaluation, list(cfg.data.class_names), logged)
    interrupts.check()  # a signal while the model was logged: the run, with its test figures, ends KILLED
    interrupts.phase("logging the plots")
    shown = cfg.tracking.sample_images, cfg.tracking.mistake_images
    for name, figure in trained.figures(data, list(cfg.data.class_names), *shown):
        run.figure(figure, name)
        plots.close(figure)
    interrupts.check()  # ... or while the plots were drawn
