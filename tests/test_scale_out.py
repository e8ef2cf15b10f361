"""Beyond one process: Hydra's joblib and submitit launchers, and a shared MLflow tracking server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, MNISTEXP_RUNS, TINY, clean_env, commands
from .helpers.servers import mlflow_server

pytestmark = pytest.mark.slow  # runs on the MNIST file (the full suite)


def sweep(workdir: Path, mnist_path: Path, *args: str, tracking_uri: str | None = None) -> str:
    """`mnistexp -m TINY ARGS`: a process of its own where the launcher starts workers (whose thread
    counts are checked), else in this process (what is checked is the server's store)."""
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    launched = any(arg.startswith("hydra/launcher=") for arg in args)
    command = ["-m", *TINY, *args]
    done = (
        commands.run(MNISTEXP, *command, cwd=workdir, env=env)
        if launched
        else commands.run_here(MNISTEXP, *command, cwd=workdir, env=env)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnistexp")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent"]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(children)
    return client, parent, children


@pytest.mark.parametrize(
    ("launcher", "at_once"),
    [(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 2), (["hydra/launcher=submitit_local"], 4)],
    ids=["joblib", "submitit_local"],
)
def test_launchers_keep_every_child_under_the_sweeps_parent(tmp_path, mnist_path, launcher, at_once):
    sweep(tmp_path, mnist_path, *launcher, "model.hidden_units=0,16,32,64", "tracking.log_model=false")
    _, parent, children = parent_and_children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 4
    assert sorted(run.data.params["model.hidden_units"] for run in children) == ["0", "16", "32", "64"]
    assert all(run.info.status == "FINISHED" for run in children)
    # the jobs the launcher runs at once share the machine's cores, so they do not fight over them
    share = max(1, len(os.sched_getaffinity(0)) // at_once)
    assert {run.data.tags["runtime.intra_op_threads"] for run in children} == {str(share)}


def check_server_store(url: str, artifacts: Path | None) -> None:
    client, parent, children = parent_and_children(url)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED" and child.data.metrics["test_accuracy"] > 0.3
        assert len(client.get_metric_history(child.info.run_id, "loss")) == 1
        paths = {item.path for item in client.list_artifacts(child.info.run_id, "plots")}
        assert paths == {
            "plots/confusion_matrix.png",
            "plots/sample_predictions.png",
            "plots/learning_curves.png",
            "plots/mistakes.png",
        }
    assert {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/summary.csv"}
    if artifacts is not None:  # the server stored them in its own artifact store, not the client's disk
        assert any(artifacts.rglob("confusion_matrix.png"))


def register_best(uri: str, workdir: Path, parent_run_id: str, version: int) -> None:
    """`mnistexp-runs register --best` against this store: version `version` of `digits`, the champion."""
    done = commands.run_here(
        MNISTEXP_RUNS, "--tracking-uri", uri, "register", "--best", parent_run_id, "digits", cwd=workdir
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("digits", "champion")
    best = client.get_run(client.get_run(parent_run_id).data.tags["mnistexp.best_run_id"])
    assert str(champion.version) == str(version) and champion.run_id == best.info.run_id
    assert float(champion.tags["test_accuracy"]) == best.data.metrics["test_accuracy"]
    assert champion.tags["mnistexp.config_sha256"] == best.data.tags["mnistexp.config_sha256"]


@pytest.mark.new_store  # asserts that ./mlflow.db is never made
def test_a_sweep_against_a_tracking_server_with_sqlite(tmp_path, mnist_path):
    artifacts = tmp_path / "server-artifacts"
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path, artifacts) as url:
        output = sweep(tmp_path, mnist_path, "model.hidden_units=0,16", "tracking.log_model=true", tracking_uri=url)
        assert f"see it: open {url}" in output
        check_server_store(url, artifacts)
        _, parent, _ = parent_and_children(url)
        register_best(url, tmp_path, parent.info.run_id, version=1)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.xdist_group("postgres")  # one database: its first users would race on making MLflow's tables
def test_a_sweep_against_a_tracking_server_with_postgresql(tmp_path, mnist_path):
    database = os.environ.get("MNISTEXP_TEST_POSTGRES_URI")
    if not database:
        pytest.skip("set MNISTEXP_TEST_POSTGRES_URI to an empty PostgreSQL database (.ci/run starts one)")
    artifacts = tmp_path / "server-artifacts"
    with mlflow_server(database, tmp_path, artifacts) as url:
        overrides = ("model.hidden_units=0,16", "tracking.experiment=mnistexp", "tracking.log_model=true")
        sweep(tmp_path, mnist_path, *overrides, tracking_uri=url)
        check_server_store(url, artifacts)
        _, parent, _ = parent_and_children(url)
        register_best(url, tmp_path, parent.info.run_id, version=1)  # the registry through the server
    register_best(database, tmp_path, parent.info.run_id, version=2)  # and in the PostgreSQL store itself
