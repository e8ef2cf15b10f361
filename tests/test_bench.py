"""The benchmark's quick mode, as CI runs it: every available trainer timed, a report written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow  # a subprocess per run on the MNIST file (the full suite)


def test_quick_benchmark_writes_a_table_and_an_mlflow_run(tmp_path, mnist_path):
    report = tmp_path / "BENCHMARKS.md"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MNISTEXP_DATA": str(mnist_path), "MLFLOW_TRACKING_URI": store}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mnistexp-bench"), "--quick", "--output", str(report)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    for name in ("notebook: Keras model.fit", "mnistexp: compiled epochs"):
        rows = [line for line in text.splitlines() if f"| {name} |" in line]
        assert len(rows) == 2  # models A and B
        for row in rows:
            seconds, samples, accuracy = (cell.strip() for cell in row.split("|")[3:6])
            assert float(seconds) > 0 and float(samples.replace(",", "")) > 0 and 0.5 < float(accuracy) <= 1
    assert "cores" in text  # the machine it ran on
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("mnistexp-bench").experiment_id])
    assert run.data.metrics["mnistexp.hidden_100.fit_seconds"] > 0


def test_a_new_report_keeps_the_hand_written_notes(tmp_path):
    from mnistexp.bench import _kept_notes

    report = tmp_path / "BENCHMARKS.md"
    assert _kept_notes(report) == ""
    report.write_text("# Benchmarks\n\n| table |\n\n## Reading it\n\n- why the numbers are what they are\n")
    assert _kept_notes(report) == "\n## Reading it\n\n- why the numbers are what they are\n"
