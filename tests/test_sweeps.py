"""Multiruns as MLflow parent + children, resume, and `mnistexp-runs` compare / reproduce / pin."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf, open_dict

from mnistexp.config.schema import compose, config_digest
from mnistexp.config.validation import validate
from mnistexp.multirun.callback import sweep_plan

from .helpers import MNISTEXP, MNISTEXP_RUNS, TINY, clean_env, commands, signals_as_usual

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("grid"),
]  # runs on the MNIST file (the full suite)


def runs_in(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mnistexp")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def split(runs):
    parents = [run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent"]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    return parents, children


@pytest.fixture(scope="module")
def grid(tmp_path_factory, mnist_path):
    """A 2 x 2 grid over hidden units and learning rate, run once for the tests below."""
    workdir = tmp_path_factory.mktemp("grid")
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    done = commands.run(
        MNISTEXP,
        "-m",
        "model.hidden_units=0,16",
        "optimizer.learning_rate=0.001,0.01",
        "data.validation_size=200",
        *TINY,
        cwd=workdir,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {
        "workdir": workdir,
        "uri": f"sqlite:///{workdir / 'mlflow.db'}",
        "env": env,
        "output": done.stdout + done.stderr,
    }


def test_a_multirun_is_one_parent_with_a_nested_child_per_job(grid):
    parents, children = split(runs_in(grid["uri"]))
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert all(child.info.status == "FINISHED" for child in children)
    names = {child.info.run_name for child in children}
    assert "model.hidden_units=16,optimizer.learning_rate=0.01" in names and len(names) == 4
    for number in range(1, 5):
        assert f"job {number}/4: " in grid["output"]


def test_the_parent_summarises_its_children_chosen_on_validation(grid):
    parents, children = split(runs_in(grid["uri"]))
    parent = parents[0]
    best = max(children, key=lambda run: run.data.metrics["val_accuracy"])
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    assert parent.data.metrics["best_run_test_accuracy"] == best.data.metrics["test_accuracy"]
    assert parent.data.tags["mnistexp.best_run_id"] == best.info.run_id
    assert parent.data.tags["mnistexp.selection"] == "val_accuracy (max)"
    assert parent.data.metrics["jobs_finished"] == 4 and parent.data.metrics["jobs_failed"] == 0
    client = MlflowClient(grid["uri"])
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {
        "sweep/summary.csv",
        "sweep/val_accuracy_by_model.hidden_units.png",
        "sweep/val_accuracy_by_optimizer.learning_rate.png",
    }
    table = Path(client.download_artifacts(parent.info.run_id, "sweep/summary.csv", str(grid["workdir"])))
    lines = table.read_text().splitlines()
    assert lines[0].split(",")[3:6] == ["model.hidden_units", "optimizer.learning_rate", "val_accuracy"]
    assert len(lines) == 5 and lines[1].startswith(best.info.run_id)
    values = [float(line.split(",")[5]) for line in lines[1:]]
    assert values == sorted(values, reverse=True)


def test_compare_prints_the_children_best_first(grid, tmp_path):
    parents, children = split(runs_in(grid["uri"]))
    plot = tmp_path / "accuracy.png"
    done = commands.run_here(
        MNISTEXP_RUNS,
        "--tracking-uri",
        grid["uri"],
        "compare",
        "--parent",
        parents[0].info.run_id,
        "--plot",
        str(plot),
        cwd=tmp_path,
        env=grid["env"],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ranked by val_accuracy (max)"
    assert lines[1].split()[:6] == [
        "run_id",
        "run",
        "status",
        "model.hidden_units",
        "optimizer.learning_rate",
        "val_accuracy",
    ]
    scores = [float(line.split()[5]) for line in lines[2:6]]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(max(c.data.metrics["val_accuracy"] for c in children), abs=1e-4)
    assert plot.stat().st_size > 1000


def test_reproduce_gives_identical_metrics_in_a_new_tagged_run(grid):
    _, children = split(runs_in(grid["uri"]))
    original = next(c for c in children if c.data.params["model.hidden_units"] == "16")
    done = commands.run(
        MNISTEXP_RUNS,
        "--tracking-uri",
        grid["uri"],
        "reproduce",
        original.info.run_id,
        cwd=grid["workdir"],
        env=grid["env"],
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "test_accuracy" in done.stdout and "NO" not in done.stdout
    assert "bit-identical results were to be expected: yes" in done.stdout and "differs:" not in done.stdout
    [again] = [run for run in runs_in(grid["uri"]) if run.data.tags.get("mnistexp.reproduces") == original.info.run_id]
    assert again.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
    assert again.data.metrics["test_loss"] == original.data.metrics["test_loss"]
    assert "mlflow.parentRunId" not in again.data.tags


def test_reproduce_on_other_data_exits_1_and_says_the_data_differs(tmp_path, mnist_path):
    with np.load(mnist_path) as mnist:
        arrays = {key: mnist[key] for key in mnist.files}
    data = tmp_path / "mnist.npz"  # the run records this path: reproduce reads whatever is there later
    np.savez(data, **arrays)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # in this process: what is examined is the commands' answer, not a process (helpers/commands.py)
    commands.run_here(MNISTEXP, *TINY, f"data.path={data}", f"tracking.uri={store}", cwd=tmp_path, check=True)
    [original] = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("mnistexp").experiment_id])
    arrays["x_test"] = np.roll(arrays["x_test"], 3, axis=2)  # the same labels, images moved 3 pixels right
    np.savez(data, **arrays)
    done = commands.run_here(MNISTEXP_RUNS, "--tracking-uri", store, "reproduce", original.info.run_id, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    table = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines() if line.startswith("test_")}
    assert table["test_accuracy"] == "NO"
    assert "differs: the data (mnistexp.data_sha256)" in done.stdout
    assert "bit-identical results were to be expected: no" in done.stdout


def test_the_pinned_hidden_sweep_runs_as_a_multirun(tmp_path, mnist_path):
    done = commands.run_here(
        MNISTEXP, "-m", "experiment=hidden_sweep", *TINY, cwd=tmp_path, env=clean_env(MNISTEXP_DATA=str(mnist_path))
    )
    assert done.returncode == 0, done.stderr[-3000:]
    parents, children = split(runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    pinned = OmegaConf.load(Path(__file__).parent.parent / "experiments" / "hidden_sweep.yaml")
    swept = str(pinned.hydra.sweeper.params["model.hidden_units"]).split(",")
    assert [parent.info.status for parent in parents] == ["FINISHED"]
    assert sorted(int(child.data.params["model.hidden_units"]) for child in children) == sorted(map(int, swept))
    assert all(child.info.status == "FINISHED" for child in children)


def test_pin_writes_an_experiment_that_the_working_directory_finds_first(grid, tmp_path, monkeypatch):
    _, children = split(runs_in(grid["uri"]))
    original = children[0]
    pin = [MNISTEXP_RUNS, "--tracking-uri", grid["uri"], "pin", original.info.run_id, "seed_hidden_100"]
    done = commands.run_here(*pin, env=grid["env"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "experiments" / "seed_hidden_100.yaml").is_file()
    monkeypatch.chdir(tmp_path)  # ./experiments/seed_hidden_100.yaml shadows the packaged one of that name
    cfg = compose(["experiment=seed_hidden_100"])
    logged = Path(
        MlflowClient(grid["uri"]).download_artifacts(original.info.run_id, "config/resolved.yaml", str(tmp_path))
    )
    assert config_digest(validate(cfg)) == config_digest(validate(OmegaConf.merge(cfg, OmegaConf.load(logged))))
    assert cfg.tracking.run_name == "seed_hidden_100"
    assert cfg.model.hidden_units == int(original.data.params["model.hidden_units"])
    again = commands.run_here(*pin, env=grid["env"], cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr


def test_an_interrupted_sweep_resumes_without_redoing_finished_jobs(tmp_path, mnist_path):
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = [MNISTEXP, "-m", "model.hidden_units=0,16,32", *TINY]
    process = subprocess.Popen(
        sweep, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **signals_as_usual()
    )
    for line in process.stdout:  # the first job's closing line: its run is FINISHED, then Ctrl-C
        if "test_accuracy=" in line:
            break
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    first = runs_in(uri)
    assert not [run for run in first if run.info.status == "RUNNING"]
    assert [parent.info.status for parent in split(first)[0]] == ["KILLED"]
    finished_before = {
        run.data.params["model.hidden_units"] for run in split(first)[1] if run.info.status == "FINISHED"
    }
    assert 1 <= len(finished_before) < 3

    done = commands.run_here(
        *sweep, "tracking.skip_finished=true", cwd=tmp_path, env=env
    )  # the resume, in this process
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout + done.stderr).count("skipped: run") == len(finished_before)
    parents, children = split(runs_in(uri))
    assert sorted(parent.info.status for parent in parents) == ["FINISHED", "KILLED"]
    trained = [run.data.params["model.hidden_units"] for run in children]
    assert set(trained) == {"0", "16", "32"}
    for units in finished_before:  # a finished job was trained once, never again
        assert (
            sum(
                1
                for run in children
                if run.data.params["model.hidden_units"] == units and run.info.status == "FINISHED"
            )
            == 1
        )
    latest = max(parents, key=lambda run: run.info.start_time)
    assert latest.info.status == "FINISHED" and latest.data.metrics["jobs_finished"] == 3


def test_sweep_plan_counts_jobs_from_the_command_line_and_the_experiment():
    cfg = compose(return_hydra_config=True)
    with open_dict(cfg):  # what `mnistexp -m ...` puts there; compose() itself refuses sweeps
        cfg.hydra.overrides.task = ["model.hidden_units=0,32", "optimizer.learning_rate=0.1,0.2,0.3", "seed=1"]
    assert sweep_plan(cfg) == (["model.hidden_units", "optimizer.learning_rate"], 6)
    cfg = compose(["experiment=hidden_sweep"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sweep_plan(cfg) == (["model.hidden_units"], 5)
