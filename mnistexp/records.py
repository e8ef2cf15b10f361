"""What a job writes into its open MLflow run: params, config, data, metrics, the model, test figures."""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf

if TYPE_CHECKING:
    import keras
    from matplotlib.figure import Figure

    from mnistexp.config import MnistexpConfig
    from mnistexp.data import Dataset
    from mnistexp.evaluate import Evaluation
    from mnistexp.train import FitResult


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


def log_config(config: MnistexpConfig, overrides: Sequence[str]) -> None:
    """The resolved config as dotted params, as YAML to rerun from, and the command-line overrides."""
    import mlflow

    from mnistexp.config import as_dict

    resolved = as_dict(config)
    mlflow.log_params({key: _param(value) for key, value in flatten(resolved).items()})
    mlflow.log_text(OmegaConf.to_yaml(resolved), "config/resolved.yaml")
    mlflow.log_text("".join(f"- {item}\n" for item in overrides) or "[]\n", "config/overrides.yaml")


def _param(value: Any) -> Any:
    return "null" if value is None else value


def log_data(data: Dataset, name: str) -> None:
    """The data summary (shapes, first labels, split sizes, digest) as JSON; every split as a dataset input."""
    import mlflow

    summary = data.summary()
    mlflow.log_dict(summary, "data/summary.json")
    mlflow.set_tag("mnistexp.data_sha256", summary["sha256"])
    splits = [("training", data.x_train, data.y_train), ("testing", data.x_test, data.y_test)]
    if data.validation is not None:
        splits.insert(1, ("validation", *data.validation))
    for context, x, y in splits:
        _log_input(x, y, data, f"{name}-{context}", context)


def log_test_input(data: Dataset, name: str) -> None:
    """The test split as an MLflow dataset input with context `evaluation`, and its summary."""
    import mlflow

    mlflow.log_dict(data.summary(), "data/summary.json")
    _log_input(data.x_test, data.y_test, data, f"{name}-evaluation", "evaluation")


def _log_input(x: np.ndarray, y: np.ndarray, data: Dataset, dataset_name: str, context: str) -> None:
    import mlflow
    from mlflow.data.numpy_dataset import from_numpy

    with warnings.catch_warnings():
        # MLflow finds two equal readings of a local path ("LocalArtifactDatasetSource") and says so.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = from_numpy(x, targets=y, source=data.source, name=dataset_name, digest=data.digest[:8])
    mlflow.log_input(dataset, context=context)


def epoch_metrics_callback() -> keras.callbacks.Callback:
    """MLflow's own Keras callback: every epoch's figures at its end, step = epoch.

    Its start-of-training logging (optimizer settings, model summary) is done by `log_model_setup`
    before training instead, so the time it takes stays out of `fit_seconds`.
    """
    import mlflow
    from mlflow.keras.callback import MlflowCallback

    class EpochMetrics(MlflowCallback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            pass

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # Synchronously: MLflow's asynchronous queue takes about a second to shut down at
            # the end of the run, more than a job's few epochs take to log.
            if logs:
                mlflow.log_metrics(logs, step=epoch)

        def on_test_end(self, logs: dict | None = None) -> None:
            pass  # val_loss and val_accuracy come with the epoch's figures already

    return EpochMetrics(log_every_epoch=True)


def log_model_setup(model: keras.Model) -> None:
    """The optimizer's settings as `optimizer_*` params and the Keras model summary, as MLflow's callback would."""
    import mlflow

    mlflow.log_params({f"optimizer_{key}": value for key, value in model.optimizer.get_config().items()})
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    mlflow.log_text("\n".join(lines), "model_summary.txt")


def log_fit(fitted: FitResult) -> None:
    """Training time, the epochs early stopping chose, and the kept epoch's figures as the latest values.

    When the weights are restored from an earlier epoch, that epoch's figures are logged once
    more at step `stopped_epoch + 1`, as MLflow's Keras autologging does: a run's latest
    `val_accuracy` is then its kept model's, which is what selection reads.
    """
    import mlflow

    mlflow.log_metrics(
        {
            "fit_seconds": fitted.fit_seconds,
            "samples_per_second": fitted.samples_per_second,
            "validation_seconds": fitted.validation_seconds,
            "compile_seconds": fitted.compile_seconds,
            "stopped_epoch": fitted.stopped_epoch,
        }
    )
    if fitted.best_epoch is not None:
        mlflow.log_metric("best_epoch", fitted.best_epoch)
    if fitted.kept_epoch != fitted.stopped_epoch:
        mlflow.log_metrics(fitted.kept_metrics(), step=fitted.stopped_epoch + 1)


def log_model(model: keras.Model, image_shape: Sequence[int]) -> str:
    """Log the Keras model (raw uint8 images in, class scores out); returns its LoggedModel id."""
    import mlflow.keras
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    num_classes = model.output_shape[-1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *image_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]),
    )
    # Explicit requirements: MLflow's inference would re-import the model (seconds per run).
    requirements = [f"tensorflow=={metadata.version('tensorflow')}", f"keras=={metadata.version('keras')}"]
    info = mlflow.keras.log_model(model, name="model", signature=signature, pip_requirements=requirements)
    return info.model_id


def log_evaluation(evaluation: Evaluation, class_names: Sequence[str], model_id: str | None) -> None:
    """Test metrics (linked to the logged model when there is one) and the confusion matrix as CSV."""
    import mlflow

    metrics = {"test_loss": evaluation.loss, "test_accuracy": evaluation.accuracy}
    for index, (precision, recall) in enumerate(zip(evaluation.precision, evaluation.recall, strict=True)):
        metrics[f"test_precision_class_{index}"] = float(precision)
        metrics[f"test_recall_class_{index}"] = float(recall)
    mlflow.log_metrics(metrics, model_id=model_id)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    writer.writerows([name, *row] for name, row in zip(class_names, evaluation.confusion.tolist(), strict=True))
    mlflow.log_text(table.getvalue(), "evaluation/confusion_matrix.csv")


def log_figure(figure: Figure, artifact_file: str) -> None:
    import mlflow

    mlflow.log_figure(figure, artifact_file)
