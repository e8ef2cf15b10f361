"""`mnistexp` as a user runs it, on a slice of real MNIST, and everything it must leave in MLflow."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from mnistexp.tracking.records import flatten

from .helpers import JOB_ARTIFACTS, MNISTEXP, clean_env, commands

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("default-run"),
]  # a subprocess per run on the MNIST file (the full suite)

SLICE = ["trainer.limit_train_samples=3000", "trainer.limit_test_samples=1000", "trainer.epochs=2"]


def only_run(uri: str, experiment: str = "mnistexp"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, exp, runs[0]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def read_artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, mnist_path):
    """One small run into MLflow's default store (./mlflow.db), shared by the assertions below."""
    workdir = tmp_path_factory.mktemp("default_store")
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    done = commands.run(MNISTEXP, *SLICE, cwd=workdir, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client, experiment, run = only_run(uri)
    return {
        "workdir": workdir,
        "output": done.stdout + done.stderr,
        "uri": uri,
        "client": client,
        "experiment": experiment,
        "run": run,
        "mnist": mnist_path,
    }


def test_the_default_store_is_mlflow_db_in_the_working_directory(default_run):
    assert (default_run["workdir"] / "mlflow.db").is_file()
    assert default_run["run"].info.status == "FINISHED"
    assert default_run["experiment"].tags["mlflow.experimentKind"] == "custom_model_development"
    assert default_run["run"].info.run_name == "linear"  # model A; B is dense_100


def test_console_reports_data_accuracy_run_id_and_how_to_open_the_ui(default_run):
    output, run = default_run["output"], default_run["run"]
    assert "first labels: train [5, 0, 4, 1, 9]  test [7, 2, 1, 0, 4]" in output
    assert "x_train (3000, 28, 28)" in output
    assert "Epoch 2/2" in output  # Keras's own progress
    assert f"test_accuracy={run.data.metrics['test_accuracy']:.4f}" in output
    assert f"run_id={run.info.run_id}" in output
    assert f"mlflow ui --backend-store-uri {default_run['uri']}" in output
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning" in output


def test_params_are_the_resolved_config_flattened(default_run, tmp_path):
    client, run = default_run["client"], default_run["run"]
    resolved = yaml.safe_load(read_artifact(client, run.info.run_id, "config/resolved.yaml", tmp_path))
    params = run.data.params
    for key, value in flatten(resolved).items():
        assert params[key] == ("null" if value is None else str(value)), key
    assert params["model.hidden_units"] == "0"
    assert params["trainer.epochs"] == "2" and params["trainer.batch_size"] == "32"
    assert params["data.path"] == str(default_run["mnist"])  # the env var, resolved
    overrides = yaml.safe_load(read_artifact(client, run.info.run_id, "config/overrides.yaml", tmp_path))
    assert overrides == SLICE


def test_metrics_per_epoch_and_on_the_test_set(default_run):
    client, run = default_run["client"], default_run["run"]
    for name in ("loss", "accuracy"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [point.step for point in history] == [0, 1]
    metrics = run.data.metrics
    assert 0.8 < metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    for digit in range(10):
        assert 0 <= metrics[f"test_precision_class_{digit}"] <= 1
        assert 0 <= metrics[f"test_recall_class_{digit}"] <= 1
    assert metrics["fit_seconds"] > 0 and metrics["samples_per_second"] > 0


def test_artifacts_confusion_matrix_and_data_summary(default_run, tmp_path):
    client, run = default_run["client"], default_run["run"]
    run_id = run.info.run_id
    assert artifact_paths(client, run_id) >= JOB_ARTIFACTS
    rows = list(csv.reader(io.StringIO(read_artifact(client, run_id, "evaluation/confusion_matrix.csv", tmp_path))))
    assert rows[0][1:] == [str(d) for d in range(10)]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows[1:]])
    assert matrix.shape == (10, 10) and matrix.sum() == 1000
    assert np.trace(matrix) / 1000 == pytest.approx(run.data.metrics["test_accuracy"])
    summary = json.loads(read_artifact(client, run_id, "data/summary.json", tmp_path))
    assert summary["shapes"]["x_train"] == [3000, 28, 28] and summary["first_test_labels"] == [7, 2, 1, 0, 4]
    assert run.data.tags["mnistexp.data_sha256"] == summary["sha256"]


def test_tags_record_library_versions_and_the_selection_rule(default_run):
    tags = default_run["run"].data.tags
    import keras
    import tensorflow as tf

    assert tags["versions.tensorflow"] == tf.__version__ and tags["versions.keras"] == keras.__version__
    assert tags["versions.mlflow"] == mlflow.__version__
    assert "mlflow.source.git.commit" not in tags  # it ran in a folder that is no git checkout
    assert (tags["mnistexp.selection_metric"], tags["mnistexp.selection_mode"]) == ("test_accuracy", "max")


def test_logged_model_reloads_and_predicts_raw_images_at_the_logged_accuracy(default_run):
    run = default_run["run"]
    mlflow.set_tracking_uri(default_run["uri"])
    [logged] = mlflow.search_logged_models(
        experiment_ids=[default_run["experiment"].experiment_id], output_format="list"
    )
    assert logged.source_run_id == run.info.run_id
    assert {m.key for m in logged.metrics} >= {"test_accuracy", "test_loss"}
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    with np.load(default_run["mnist"]) as mnist:
        images, labels = mnist["x_test"][:1000], mnist["y_test"][:1000]
    scores = model.predict(images)  # raw uint8 28x28: no project code needed to serve
    assert scores.shape == (1000, 10)
    assert (scores.argmax(axis=1) == labels).mean() == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)


@pytest.mark.new_store  # asserts that ./mlflow.db is never made
def test_mlflow_tracking_uri_is_honoured(run_cli, tmp_path):
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    run_cli(
        *SLICE,
        "trainer.epochs=1",
        "model.hidden_units=16",
        "tracking.log_model=false",
        env={"MLFLOW_TRACKING_URI": store},
        in_process=True,
    )
    assert not (tmp_path / "mlflow.db").exists()
    client, _, run = only_run(store)
    assert run.info.status == "FINISHED" and run.data.params["model.hidden_units"] == "16"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 1


def test_tracking_uri_and_experiment_from_config(run_cli, tmp_path):
    store = f"sqlite:///{tmp_path / 'cfg.db'}"
    run_cli(
        *SLICE,
        "trainer.epochs=1",
        "tracking.log_model=false",
        f"tracking.uri={store}",
        "tracking.experiment=my-exp",
        "tracking.run_name=first-try",
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ignored.db'}"},
        in_process=True,
    )
    _, _, run = only_run(store, "my-exp")
    assert run.info.run_name == "first-try"


def test_the_keras_fit_engine_end_to_end(run_cli, tmp_path):
    run_cli(*SLICE, "trainer.engine=keras_fit", "data.validation_size=300", "model.hidden_units=16", in_process=True)
    client, _, run = only_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.params["trainer.engine"] == "keras_fit"
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [point.step for point in client.get_metric_history(run.info.run_id, metric)] == [0, 1]
    assert run.data.metrics["test_accuracy"] > 0.7  # it learns: 16 hidden units, 2 epochs on 2,700 images (0.80 seen)
    assert artifact_paths(client, run.info.run_id) >= JOB_ARTIFACTS
