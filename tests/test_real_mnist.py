"""The notebook's two models on the full MNIST file, 5 epochs each, as `mnistexp` runs them."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("hidden_units", "minimum"), [(0, 0.92), (100, 0.97)])
def test_seed_models_reach_the_notebooks_accuracy(run_cli, tmp_path, mnist_path, hidden_units, minimum):
    run_cli(f"model.hidden_units={hidden_units}", "trainer.verbose=2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnistexp")
    [run] = client.search_runs([experiment.experiment_id])
    accuracy = run.data.metrics["test_accuracy"]
    assert accuracy >= minimum
    assert [p.step for p in client.get_metric_history(run.info.run_id, "accuracy")] == [0, 1, 2, 3, 4]

    # The logged model, reloaded through MLflow alone, predicts the full test set at that accuracy.
    mlflow.set_tracking_uri(uri)
    [logged] = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    with np.load(mnist_path) as mnist:
        predicted = model.predict(mnist["x_test"]).argmax(axis=1)
        assert (predicted == mnist["y_test"]).mean() == pytest.approx(accuracy, abs=1e-6)
