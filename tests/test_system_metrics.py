"""tracking.system_metrics: MLflow's own monitor samples CPU and memory into the run, or nothing system/* at all."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient

from mnistexp import job
from mnistexp.config.schema import compose
from mnistexp.config.validation import validate

from .helpers.data import learnable_npz

pytestmark = pytest.mark.xdist_group("job")

SERIES = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")


def _run(tmp_path, *overrides: str):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    given = [
        f"data.path={learnable_npz(tmp_path / 'toy.npz')}",
        f"tracking.uri={store}",
        "trainer.epochs=2",
        "trainer.verbose=0",
        "tracking.log_model=false",
        *overrides,
    ]
    result = job.train_and_record(validate(compose(given)), given)
    client = MlflowClient(store)
    return client, client.get_run(result.run_id)


def test_system_metrics_on_records_cpu_and_memory_series_before_the_run_ends(tmp_path):
    # a short interval: the toy run lasts a few seconds, and MLflow logs a sample once an interval has passed
    client, run = _run(tmp_path, "tracking.system_metrics=true", "tracking.system_metrics_interval=0.2")
    assert run.info.status == "FINISHED"
    # the monitor was stopped (and its queue written) before the run ended, not left to notice later
    assert not [thread for thread in threading.enumerate() if thread.name == "SystemMetricsMonitor"]
    for name in SERIES:
        history = client.get_metric_history(run.info.run_id, name)
        assert history, f"no {name} in the run"
        assert all(point.value >= 0 for point in history)
        assert [point.step for point in history] == list(range(len(history)))  # one step per sample, in order
    memory = client.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
    assert all(point.value > 10 for point in memory)  # a Python process with TensorFlow loaded, at the least


def test_system_metrics_off_logs_nothing_system(tmp_path):
    client, run = _run(tmp_path, "tracking.system_metrics=false", "tracking.system_metrics_interval=0.2")
    assert run.info.status == "FINISHED"
    assert "test_accuracy" in run.data.metrics
    assert not [name for name in run.data.metrics if name.startswith("system/")]
    assert all(client.get_metric_history(run.info.run_id, name) == [] for name in SERIES)
