"""Ctrl-C or SIGTERM at any moment of a sweep's life: no run left RUNNING, the parent KILLED, exit 130 or 143."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, all_runs, clean_env, signal_at_phase

pytestmark = pytest.mark.slow

SWEEP = (
    "-m",
    "model.hidden_units=0,16,32",
    "data.validation_size=300",
    "trainer.limit_train_samples=3000",
    "trainer.limit_test_samples=500",
    "trainer.epochs=2",
    "trainer.verbose=2",  # a line per epoch
)


@dataclass(frozen=True)
class Moment:
    name: str
    phase: str  # where mnistexp waits for the signal (interrupts.phase): NAME or NAME@N, its Nth time
    parent_exists: bool  # the sweep's parent run was made before this moment
    children: tuple[str, ...] = ()  # the statuses its child runs end with, in the order they began


# Each moment is a place in mnistexp's own code (interrupts.phase): with MNISTEXP_TEST_PAUSE_AT set,
# the process says it is there and waits for the signal, so the signal lands in that phase and no
# other, however loaded the machine is.
MOMENTS = [
    Moment("importing the libraries", "importing the libraries", parent_exists=False),
    Moment("composing the sweep", "composing the sweep", parent_exists=True),  # held: the parent is made first
    Moment("loading the data", "loading the data", parent_exists=True),
    Moment("importing TensorFlow", "importing TensorFlow", parent_exists=True),
    Moment("opening the run", "opening the run", parent_exists=True, children=("KILLED",)),
    Moment("training", "training@2", parent_exists=True, children=("KILLED",)),  # the first job's second epoch
    Moment("evaluating", "evaluating", parent_exists=True, children=("KILLED",)),
    Moment("logging the model", "logging the model", parent_exists=True, children=("KILLED",)),
    Moment("logging the plots", "logging the plots", parent_exists=True, children=("KILLED",)),
    Moment("between jobs", "between jobs", parent_exists=True, children=("FINISHED",)),  # no job starts after it
    Moment("the second job's data", "loading the data@2", parent_exists=True, children=("FINISHED",)),
    Moment("the last job's training", "training@5", parent_exists=True, children=("FINISHED", "FINISHED", "KILLED")),
    Moment("writing the summary", "writing the summary", parent_exists=True, children=("FINISHED",) * 3),
]


# A signal during the job's last steps: (its test figures logged, its plots logged) when its run ends.
KEPT = {"evaluating": (False, False), "logging the model": (True, False), "logging the plots": (True, True)}


@pytest.mark.parametrize("moment", MOMENTS, ids=[moment.name for moment in MOMENTS])
def test_a_signal_at_any_moment_leaves_no_run_running_and_the_parent_killed(tmp_path, mnist_path, moment):
    signum = signal.SIGINT if MOMENTS.index(moment) % 2 == 0 else signal.SIGTERM
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    returncode, output = signal_at_phase([MNISTEXP, *SWEEP], tmp_path, env, moment.phase, signum)
    assert returncode == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output and "Traceback" not in output, output[-3000:]
    store = tmp_path / "mlflow.db"
    runs = all_runs(MlflowClient(f"sqlite:///{store}")) if store.exists() else []
    assert [run.info.status for run in runs if run.info.status == "RUNNING"] == []
    parents = [run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent"]
    assert [parent.info.status for parent in parents] == (["KILLED"] if moment.parent_exists else [])
    if moment.parent_exists:  # the parent keeps the summary of what ran
        client = MlflowClient(f"sqlite:///{store}")
        [parent] = parents
        assert "jobs_killed" in parent.data.metrics
        assert {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")} >= {"sweep/summary.csv"}
    children = sorted(
        (run for run in runs if "mlflow.parentRunId" in run.data.tags), key=lambda run: run.info.start_time
    )
    # The job in flight ends KILLED, however far it got, and no job starts after the signal.
    assert tuple(child.info.status for child in children) == moment.children
    if moment.name in KEPT:  # acted on as that work ends: what it finished is kept, nothing after it is done
        [child] = children  # `client` is the parent's above: these moments all come after it
        plots = [item.path for item in client.list_artifacts(child.info.run_id, "plots")]
        assert ("test_accuracy" in child.data.metrics, "plots/confusion_matrix.png" in plots) == KEPT[moment.name]
    if moment.name == "training":  # the first epoch is kept, the one cut short is not
        [child] = children
        history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(child.info.run_id, "loss")
        assert child.info.status == "KILLED" and [point.step for point in history] == [0]
