"""The benchmark's quick mode, as CI runs it: every trainer timed (the peers installed), a report, an MLflow run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import REPO_ROOT, clean_env, commands

pytestmark = pytest.mark.slow  # a process per measurement on the MNIST file

BENCH = [sys.executable, str(REPO_ROOT / "benchmarks" / "run.py"), "--quick"]
TIMED = (
    "notebook: Keras model.fit",
    "mnistexp: compiled engine",
    "PyTorch: whole-epoch gather, fused Adam",
    "JAX: jitted epoch, lax.scan, optax",
)


def test_quick_benchmark_times_every_trainer_and_writes_a_report_and_an_mlflow_run(tmp_path, mnist_path):
    report = tmp_path / "BENCHMARKS.md"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = commands.run(
        *BENCH,
        "--output",
        str(report),
        cwd=tmp_path,
        env=clean_env(MNISTEXP_DATA=str(mnist_path), MLFLOW_TRACKING_URI=store),
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    for name in TIMED:  # the PyTorch and JAX peers run too: CI installs the bench extra
        rows = [line for line in text.splitlines() if f"| {name} |" in line]
        assert len(rows) == 2, name  # models A and B
        for row in rows:
            seconds, _, samples, accuracy = (cell.strip() for cell in row.split("|")[3:7])
            assert float(seconds) > 0 and float(samples.replace(",", "")) > 0 and 0.5 < float(accuracy) <= 1
    assert "GFLOP/s" in text and "The arithmetic floor" in text and "cores" in text
    assert "The validation pass" in text and "% of training time" in text
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("mnistexp-bench").experiment_id])
    assert run.data.metrics["mnistexp.hidden_100.fit_seconds"] > 0
    assert run.data.metrics["jax_scan.hidden_100.fit_seconds"] > 0


def test_one_failing_trainer_fails_the_benchmark_and_the_others_are_still_reported(tmp_path, mnist_path):
    broken = tmp_path / "broken"  # a `jax` that cannot be imported, ahead of the real one
    (broken / "jax").mkdir(parents=True)
    (broken / "jax" / "__init__.py").write_text("raise ImportError('this jax is broken on purpose')\n")
    report = tmp_path / "BENCHMARKS.md"
    done = commands.run(
        *BENCH,
        "--trainers",
        "torch_epochs,jax_scan",  # PyTorch: the trainer that starts fastest
        "--output",
        str(report),
        cwd=tmp_path,
        env=clean_env(
            MNISTEXP_DATA=str(mnist_path),
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
            PYTHONPATH=str(broken),
        ),
        timeout=1200,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "benchmark: failed:" in done.stderr and "this jax is broken on purpose" in done.stderr
    rows = [line for line in report.read_text().splitlines() if "| PyTorch: whole-epoch gather, fused Adam |" in line]
    assert len(rows) == 2 and all(float(row.split("|")[3]) > 0 for row in rows)  # the others ran, and are reported


def test_a_bad_data_file_fails_every_trainer_and_the_benchmark(tmp_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not an npz archive")
    done = commands.run(
        *BENCH,
        "--trainers",
        "mnistexp,keras_fit",
        "--output",
        str(tmp_path / "BENCHMARKS.md"),
        cwd=tmp_path,
        env=clean_env(MNISTEXP_DATA=str(broken), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        timeout=1200,
    )
    assert done.returncode == 1
    assert done.stderr.count("benchmark: failed:") >= 2


def test_a_new_report_keeps_the_hand_written_notes(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from run import _kept_notes

    report = tmp_path / "BENCHMARKS.md"
    assert _kept_notes(report) == ""
    report.write_text("# Benchmarks\n\n| table |\n\n## Reading it\n\n- why the numbers are what they are\n")
    assert _kept_notes(report) == "\n## Reading it\n\n- why the numbers are what they are\n"


def test_the_benchmark_needs_the_data_file(tmp_path):
    done = commands.run(
        *BENCH, cwd=tmp_path, env={key: value for key, value in clean_env().items() if key != "MNISTEXP_DATA"}
    )
    assert done.returncode == 2 and "MNISTEXP_DATA" in done.stderr
    assert not Path(tmp_path / "BENCHMARKS.md").exists()
