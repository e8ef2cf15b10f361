"""The Python API in this process, on data the tests make: what `import mnistexp` gives a notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from mlflow import MlflowClient

import mnistexp
import mnistexp.api
from mnistexp.cli import runs as runs_cli
from mnistexp.cli.main import console_redraws, progress_for
from mnistexp.config.schema import compose
from mnistexp.config.validation import validate

from .helpers import all_runs
from .helpers.data import learnable_npz

pytestmark = pytest.mark.xdist_group("api")  # the module's store and runs stay on one worker


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    data = learnable_npz(folder / "toy.npz")
    store = f"sqlite:///{folder / 'mlflow.db'}"
    common = [f"data.path={data}", f"tracking.uri={store}", "trainer.epochs=2", "optimizer.learning_rate=0.01"]
    return {"folder": folder, "data": data, "store": store, "common": common}


@pytest.fixture(autouse=True)
def _in_the_toy_folder(toy, monkeypatch):
    """Hydra writes a sweep's multirun/ folder where it runs: here, not in the repository."""
    monkeypatch.chdir(toy["folder"])


@pytest.fixture(scope="module")
def model_b(toy):
    return mnistexp.run([*toy["common"], "model.hidden_units=16"])


def test_run_returns_the_runs_id_its_logged_metrics_history_and_the_kept_model(toy, model_b):
    run = MlflowClient(toy["store"]).get_run(model_b.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.hidden_units"] == "16"
    assert model_b.metrics == run.data.metrics  # every figure the run holds, per-class ones included
    assert "test_precision_class_3" in model_b.metrics
    assert len(model_b.history["loss"]) == 2 and model_b.history["accuracy"][-1] == run.data.metrics["accuracy"]
    arrays = np.load(toy["data"])
    predicted = model_b.model.predict(arrays["x_test"], verbose=0).argmax(axis=1)  # the raw uint8 images
    assert np.mean(predicted == arrays["y_test"]) == pytest.approx(model_b.metrics["test_accuracy"])
    assert np.array_equal(model_b.evaluation.predictions, predicted)


def test_run_takes_a_mapping_and_keywords_as_overrides():
    assert mnistexp.api.as_overrides({"model.hidden_units": [256, 128], "tracking.uri": None}, trainer__epochs=3) == [
        "model.hidden_units=[256,128]",
        "tracking.uri=null",
        "trainer.epochs=3",
    ]
    assert mnistexp.api.as_overrides(["seed=1"], tracking__log_model=False) == ["seed=1", "tracking.log_model=false"]


@pytest.mark.parametrize(
    "bad", ["model.hidden_units=-1", "nosuchkey=1", "data.path=/nonexistent/x.npz", "model=nosuch"]
)
def test_bad_input_raises_mnistexp_error_with_the_commands_line_and_leaves_no_run(toy, bad, capsys, monkeypatch):
    from mnistexp.cli.app import run_command

    given = [*toy["common"], bad]
    monkeypatch.setattr(sys, "argv", ["mnistexp", *given])
    for variable in ("HYDRA_FULL_ERROR", "MNISTEXP_FULL_ERROR"):  # the command sets them: as before after the test
        monkeypatch.setenv(variable, os.environ.get(variable, ""))  # recorded, so the teardown restores it
        monkeypatch.delenv(variable)
    assert run_command() == 2  # the command itself, in this process
    said = capsys.readouterr().err.strip().splitlines()[-1]
    before = {run.info.run_id for run in all_runs(MlflowClient(toy["store"]))}
    with pytest.raises(mnistexp.MnistexpError) as raised:
        mnistexp.run(given)
    assert f"mnistexp: error: {raised.value}" == said
    after = all_runs(MlflowClient(toy["store"]))
    assert {run.info.run_id for run in after} == before and "RUNNING" not in {run.info.status for run in after}


def test_run_again_in_the_same_process_after_an_error(toy, model_b):
    with pytest.raises(mnistexp.MnistexpError):
        mnistexp.run([*toy["common"], "optimizer.name=nosuch"])
    again = mnistexp.run([*toy["common"], "model.hidden_units=16"])
    assert again.run_id != model_b.run_id
    assert again.metrics["test_accuracy"] == model_b.metrics["test_accuracy"]  # the same seed, the same bits


def test_runs_is_the_table_compare_prints(toy, model_b, capsys):
    mnistexp.run([*toy["common"], "model.hidden_units=0", "trainer.epochs=1", "tracking.log_model=false"])
    capsys.readouterr()
    frame = mnistexp.runs(tracking_uri=toy["store"])
    assert len(frame) >= 2  # an order to compare
    assert runs_cli.mnistexp_runs(["--tracking-uri", toy["store"], "compare", "--no-group"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, body = lines[1].split(), [line.split() for line in lines[2:] if line.strip()]
    body = [cells for cells in body if len(cells) == len(header)]
    assert list(frame["run_id"]) == [cells[0] for cells in body]  # the same runs, in the same order
    for name in ("test_accuracy", "test_loss"):
        column = header.index(name)
        assert [f"{value:.4f}" for value in frame[name]] == [cells[column] for cells in body]
    assert frame.attrs["ranked_by"] == lines[0].removeprefix("ranked by ")
    assert model_b.run_id in set(frame["run_id"]) and set(frame["status"]) == {"FINISHED"}


def test_load_model_by_run_id_and_by_model_uri(toy, model_b):
    arrays = np.load(toy["data"])
    expected = model_b.model.predict(arrays["x_test"][:20], verbose=0)
    by_run = mnistexp.load_model(model_b.run_id, tracking_uri=toy["store"])
    np.testing.assert_allclose(by_run.predict(arrays["x_test"][:20], verbose=0), expected, rtol=1e-6)
    [logged] = MlflowClient(toy["store"]).search_logged_models(
        [MlflowClient(toy["store"]).get_run(model_b.run_id).info.experiment_id],
        filter_string=f"source_run_id = '{model_b.run_id}'",
    )
    by_uri = mnistexp.load_model(f"models:/{logged.model_id}", tracking_uri=toy["store"])
    np.testing.assert_allclose(by_uri.predict(arrays["x_test"][:20], verbose=0), expected, rtol=1e-6)
    with pytest.raises(mnistexp.MnistexpError, match="cannot load the model runs:/nosuch/model"):
        mnistexp.load_model("nosuch", tracking_uri=toy["store"])


def test_sweep_runs_a_multirun_and_returns_its_summary_grouped_by_configuration(toy):
    result = mnistexp.sweep(
        [*toy["common"], "trainer.epochs=1", "tracking.log_model=false", "model.hidden_units=0,8", "seed=0,1"]
    )
    client = MlflowClient(toy["store"])
    parent = client.get_run(result.parent_run_id)
    children = [run for run in all_runs(client) if run.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert parent.info.status == result.status == "FINISHED" and len(children) == 4
    assert sorted(result.summary["run_id"]) == sorted(run.info.run_id for run in children)
    assert result.groups is not None and result.table is result.groups
    assert sorted(result.groups["model.hidden_units"]) == [0, 8] and list(result.groups["n"]) == [2, 2]
    assert result.best_run_id in set(result.summary["run_id"]) and result.failures == []
    assert "RUNNING" not in {run.info.status for run in all_runs(client)}


def test_a_sweep_that_cannot_parse_raises_and_opens_no_parent(toy):
    before = len(all_runs(MlflowClient(toy["store"])))
    with pytest.raises(mnistexp.MnistexpError, match=r"model.hidden_units=\[0"):
        mnistexp.sweep([*toy["common"], "model.hidden_units=[0"])
    assert len(all_runs(MlflowClient(toy["store"]))) == before


def test_a_sweep_whose_jobs_fail_returns_them_as_the_command_says_them(toy, capsys):
    result = mnistexp.sweep([*toy["common"], "trainer.epochs=1", "tracking.log_model=false", "model.hidden_units=0,-1"])
    said = [line.removeprefix("mnistexp: error: ") for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert result.status == "FAILED" and result.failures == said  # the job's error, then the summary's line
    assert said and all("model.hidden_units must be an integer >= 0 (got -1)" in line for line in said)
    statuses = sorted(result.summary["status"])
    assert statuses == ["FAILED", "FINISHED"]
    assert "RUNNING" not in {run.info.status for run in all_runs(MlflowClient(toy["store"]))}


def test_a_progress_bar_becomes_one_line_per_epoch_where_the_console_cannot_redraw():
    cfg = validate(compose())
    assert cfg.trainer.verbose == 1
    assert progress_for(cfg, redraws=False).trainer.verbose == 2
    assert progress_for(cfg, redraws=True).trainer.verbose == 1
    silent = replace(cfg, trainer=replace(cfg.trainer, verbose=0))
    assert progress_for(silent, redraws=False).trainer.verbose == 0
    with open(__file__) as not_a_terminal:
        assert console_redraws(not_a_terminal) is False


def test_import_mnistexp_loads_neither_tensorflow_nor_mlflow_nor_hydra():
    code = "import sys, mnistexp; print(sorted({'tensorflow', 'mlflow', 'hydra'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
