"""The selection rule, and everything that ranks by it: summary tables and `mnistexp-runs compare`."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from mnistexp.cli import runs as runs_cli
from mnistexp.config.selection import Selection, direction
from mnistexp.config.validation import ConfigError, validate
from mnistexp.multirun import tables as summary

pytestmark = pytest.mark.xdist_group("selection-store")  # tests that share this module's fixtures run on one worker

RUNS = [  # name: (val_accuracy, val_loss, test_accuracy); the best by validation is not the best on test
    ("a", 0.91, 0.30, 0.95),
    ("b", 0.97, 0.10, 0.90),
    ("c", 0.93, 0.20, 0.97),
    ("d", math.nan, math.nan, math.nan),  # failed before any metric
]


def test_the_default_is_val_accuracy_with_a_split_and_test_accuracy_without():
    assert Selection.of(None, "auto", 10000) == Selection("val_accuracy", "max")
    assert Selection.of(None, "auto", 0.1) == Selection("val_accuracy", "max")
    without = Selection.of(None, "auto", 0)
    assert without == Selection("test_accuracy", "max") and without.on_test_data
    assert "selected on test data" in without.describe()
    assert "test data" not in Selection("val_accuracy", "max").describe()


@pytest.mark.parametrize(
    ("metric", "mode", "expected"),
    [
        ("val_loss", "auto", "min"),
        ("val_accuracy", "auto", "max"),
        ("fit_seconds", "auto", "min"),
        ("test_loss", "max", "max"),
        ("accuracy", "min", "min"),
    ],
)
def test_direction(metric, mode, expected):
    assert direction(metric, mode) == expected


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A store holding the runs of RUNS, made with MLflow's client (no training)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('selection') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mnistexp")
    for name, val_accuracy, val_loss, test_accuracy in RUNS:
        run = client.create_run(
            experiment,
            run_name=name,
            tags={"mnistexp.selection_metric": "val_accuracy", "mnistexp.selection_mode": "max"},
        )
        client.log_param(run.info.run_id, "model.hidden_units", str(len(name) * ord(name)))
        client.log_param(run.info.run_id, "tracking.skip_finished", name == "a")  # result-neutral
        for key, value in (("val_accuracy", val_accuracy), ("val_loss", val_loss), ("test_accuracy", test_accuracy)):
            if not math.isnan(value):
                client.log_metric(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id, "FINISHED" if name != "d" else "FAILED")
    return uri


def names(table) -> list[str]:
    return [row.name for row in table]


def test_tables_rank_by_the_selection_metric_in_either_direction(store):
    client = MlflowClient(store)
    found = client.search_runs([client.get_experiment_by_name("mnistexp").experiment_id])
    assert names(summary.rows(found, Selection("val_accuracy", "max"))) == ["b", "c", "a", "d"]
    assert names(summary.rows(found, Selection("val_loss", "min"))) == ["b", "c", "a", "d"]
    assert names(summary.rows(found, Selection("val_loss", "max"))) == ["a", "c", "b", "d"]
    assert names(summary.rows(found, Selection("test_accuracy", "max"))) == ["c", "a", "b", "d"]


def test_compare_ranks_by_the_runs_selection_metric_and_hides_result_neutral_keys(store, capsys):
    assert runs_cli.mnistexp_runs(["--tracking-uri", store, "compare"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ranked by val_accuracy (max)"
    header = lines[1].split()
    assert header[:5] == ["run_id", "run", "status", "model.hidden_units", "val_accuracy"]
    assert "tracking.skip_finished" not in header
    assert [line.split()[1] for line in lines[2:-1]] == ["b", "c", "a", "d"]
    assert lines[-1] == "one run per configuration, no interval"


def test_compare_by_another_metric_and_direction(store, capsys):
    assert runs_cli.mnistexp_runs(["--tracking-uri", store, "compare", "--metric", "val_loss", "--mode", "max"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ranked by val_loss (max)"
    assert [line.split()[1] for line in lines[2:-1]] == ["a", "c", "b", "d"]
    assert runs_cli.mnistexp_runs(["--tracking-uri", store, "compare", "--metric", "test_accuracy"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "ranked by test_accuracy (max), selected on test data"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["selection.metric=val_accuracy"], "selection.metric"),
        (["trainer.early_stopping.enabled=true"], "trainer.early_stopping.monitor"),
        (["selection.metric=nosuch", "data.validation_size=100"], "selection.metric"),
        (["selection.mode=up"], "selection.mode"),
        (["data.validation_size=1.5"], "data.validation_size"),
        (["data.validation_size=-3"], "data.validation_size"),
        (["trainer.early_stopping.patience=-1"], "trainer.early_stopping.patience"),
    ],
)
def test_a_validation_metric_needs_a_split_and_bad_values_are_named(compose_cfg, overrides, key):
    with pytest.raises(ConfigError) as raised:
        validate(compose_cfg(*overrides))
    assert raised.value.key == key


def test_validation_metrics_are_allowed_with_a_split(compose_cfg):
    validate(
        compose_cfg("data.validation_size=0.1", "selection.metric=val_loss", "trainer.early_stopping.enabled=true")
    )


def test_reproduce_says_what_differs_and_whether_the_same_bits_were_to_be_expected():
    from mnistexp.tracking.lifecycle import reproducibility

    then = {
        "versions.tensorflow": "2.21.0",
        "runtime.intra_op_threads": "2",
        "runtime.onednn": "default (on)",
        "runtime.deterministic_ops": "True",
        "runtime.machine": "x86_64 AMD EPYC",
        "mnistexp.data_sha256": "abc",
    }
    assert reproducibility(then, dict(then)) == [
        "bit-identical results were to be expected: yes (the same libraries, machine, threads and data, "
        "with deterministic ops)"
    ]
    now = {**then, "versions.tensorflow": "2.22.0", "runtime.intra_op_threads": "4", "mnistexp.data_sha256": "def"}
    lines = reproducibility(then, now)
    assert lines[:3] == [
        "differs: runtime.intra_op_threads: 2 then, 4 now",
        "differs: versions.tensorflow: 2.21.0 then, 2.22.0 now",
        "differs: the data (mnistexp.data_sha256)",
    ]
    assert lines[-1].startswith("bit-identical results were to be expected: no")
    undetermined = {**then, "runtime.deterministic_ops": "False"}
    assert reproducibility(undetermined, dict(undetermined))[-1] == (
        "bit-identical results were to be expected: no (not with op determinism off)"
    )
