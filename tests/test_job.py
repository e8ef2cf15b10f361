"""The whole job in-process on data the test makes: what a run leaves in MLflow, checked against its own numbers."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from mnistexp import job
from mnistexp.config.validation import validate
from mnistexp.errors import TrainingDivergedError
from mnistexp.tracking.records import flatten

from .helpers import JOB_ARTIFACTS
from .helpers.data import learnable_npz

pytestmark = pytest.mark.xdist_group("job")  # tests that share this module's fixtures run on one worker


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One job with a validation split and early stopping, run in this process into a fresh store."""
    folder = tmp_path_factory.mktemp("job")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    overrides = [
        f"data.path={learnable_npz(folder / 'toy.npz')}",
        f"tracking.uri={store}",
        "model.hidden_units=16",
        "data.validation_size=0.2",
        "trainer.epochs=4",
        "trainer.verbose=0",
        "optimizer.learning_rate=0.01",
        "trainer.early_stopping.enabled=true",
        "trainer.early_stopping.patience=1",
    ]
    from mnistexp.config.schema import compose
    from mnistexp.pipeline.data import Dataset

    split = Dataset.split_validation

    def misleading_validation(self, size, seed):
        """The validation labels shifted by one: training makes them worse from the first epoch on,
        so early stopping must stop after epoch 1 and restore epoch 0's weights."""
        made = split(self, size, seed)
        return replace(made, y_val=(made.y_val + 1) % 10)

    config = validate(compose(overrides))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Dataset, "split_validation", misleading_validation)
        result = job.train_and_record(config, overrides)
    client = MlflowClient(store)
    return {
        "result": result,
        "client": client,
        "run": client.get_run(result.run_id),
        "store": store,
        "folder": folder,
        "config": config,
        "overrides": overrides,
    }


def artifact(finished, path: str) -> str:
    return Path(
        finished["client"].download_artifacts(finished["run"].info.run_id, path, str(finished["folder"]))
    ).read_text()


def test_the_run_finishes_with_every_artifact(finished):
    run = finished["run"]
    assert run.info.status == "FINISHED" and run.info.run_name == "dense_16"
    listed = set()
    for folder in (None, "config", "data", "evaluation", "plots"):
        listed |= {item.path for item in finished["client"].list_artifacts(run.info.run_id, folder)}
    assert listed >= JOB_ARTIFACTS


def test_params_are_the_validated_config_and_the_overrides_are_kept(finished):
    params = finished["run"].data.params
    resolved = yaml.safe_load(artifact(finished, "config/resolved.yaml"))
    for key, value in flatten(resolved).items():
        assert params[key] == ("null" if value is None else str(value)), key
    assert params["data.validation_size"] == "0.2" and params["model.hidden_units"] == "16"
    assert yaml.safe_load(artifact(finished, "config/overrides.yaml")) == finished["overrides"]


def test_metrics_per_epoch_with_validation_and_the_kept_epoch(finished):
    client, run = finished["client"], finished["run"]
    metrics = run.data.metrics
    assert (metrics["best_epoch"], metrics["stopped_epoch"]) == (0, 1)  # as the data is built
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        # epochs 0 and 1, then epoch 0's figures once more at step stopped_epoch + 1 = 2
        assert [point.step for point in history] == [0, 1, 2], name
        assert history[2].value == history[0].value, name
        assert metrics[name] == history[0].value, name  # the latest value is the kept epoch's
    assert finished["result"].objective == metrics["val_accuracy"]  # the selection metric of the kept model


def test_the_confusion_matrix_agrees_with_the_metrics(finished):
    metrics = finished["run"].data.metrics
    rows = list(csv.reader(io.StringIO(artifact(finished, "evaluation/confusion_matrix.csv"))))
    matrix = np.array([[int(cell) for cell in row[1:]] for row in rows[1:]])
    assert matrix.sum() == 300 and np.trace(matrix) / 300 == pytest.approx(metrics["test_accuracy"])
    for digit in range(10):  # computed here from the CSV, not by the code under test
        predicted, actual = matrix[:, digit].sum(), matrix[digit, :].sum()
        if predicted:
            assert metrics[f"test_precision_class_{digit}"] == pytest.approx(matrix[digit, digit] / predicted)
        assert metrics[f"test_recall_class_{digit}"] == pytest.approx(matrix[digit, digit] / actual)


def test_the_splits_are_logged_as_datasets_and_summarised(finished):
    run = finished["run"]
    contexts = {
        tag.value for dataset in run.inputs.dataset_inputs for tag in dataset.tags if tag.key == "mlflow.data.context"
    }
    assert contexts == {"training", "validation", "testing"}
    summary = json.loads(artifact(finished, "data/summary.json"))
    assert summary["shapes"]["x_val"] == [180, 28, 28] and summary["shapes"]["x_train"] == [720, 28, 28]
    assert sum(summary["validation_class_counts"]) == 180
    assert run.data.tags["mnistexp.data_sha256"] == summary["sha256"]


def test_the_logged_model_predicts_raw_images_at_the_logged_accuracy(finished):
    mlflow.set_tracking_uri(finished["store"])
    [logged] = mlflow.search_logged_models(experiment_ids=[finished["run"].info.experiment_id], output_format="list")
    assert logged.source_run_id == finished["run"].info.run_id
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    with np.load(finished["config"].data.path) as data:
        scores = model.predict(data["x_test"])
        accuracy = (scores.argmax(axis=1) == data["y_test"]).mean()
    assert accuracy == pytest.approx(finished["run"].data.metrics["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("engine", ["compiled", pytest.param("keras_fit", marks=pytest.mark.slow)])
def test_a_diverging_loss_fails_the_run_with_the_learning_rate_hint(tmp_path, engine):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [
        f"data.path={learnable_npz(tmp_path / 'toy.npz')}",
        f"tracking.uri={store}",
        "optimizer=sgd",
        "model.hidden_units=16",
        f"trainer.engine={engine}",
        "trainer.epochs=3",
        "trainer.verbose=0",
        "tracking.log_model=false",
    ]
    from mnistexp.config.schema import compose

    config = validate(compose(overrides))
    config.optimizer.learning_rate = 1e30  # past validate's bound (10): no valid config diverges on this data
    with pytest.raises(TrainingDivergedError, match=r"NaN/inf .* optimizer\.learning_rate"):
        job.train_and_record(config, overrides)
    [run] = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("mnistexp").experiment_id])
    assert run.info.status == "FAILED" and "optimizer.learning_rate" in run.data.tags["mnistexp.error"]
