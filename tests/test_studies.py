"""Optuna studies that survive real use: an interrupted trial runs again, processes share one study,
hopeless trials are pruned. Real `mnistexp` processes on real storages (SQLite files; PostgreSQL too
where CI provides one)."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from mnistexp.multirun.search import SURPLUS_ATTR

from .helpers import MNISTEXP, clean_env, commands, only_children, signal_at_phase
from .helpers.data import learnable_npz

pytestmark = [pytest.mark.slow]

# Small trials on the test's own arrays: a validation split (studies choose on it), two epochs.
TRIAL = [
    "data.validation_size=100",
    "trainer.epochs=2",
    "trainer.verbose=0",
    "tracking.log_model=false",
    "model.hidden_units=choice(0,16,32)",
    "hydra.sweeper.enqueue_trials=[]",
]


def study_command(workdir: Path, trials: int, *extra: str) -> list[str]:
    data = learnable_npz(workdir / "toy.npz") if not (workdir / "toy.npz").exists() else workdir / "toy.npz"
    return [
        MNISTEXP,
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        f"data.path={data}",
        *TRIAL,
        *extra,
    ]


def states(storage: str, name: str = "mnistexp-search") -> list[str]:
    return [trial.state.name for trial in optuna.load_study(study_name=name, storage=storage).trials]


@pytest.mark.xdist_group("study-resume")
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_a_study_killed_during_a_trial_and_resumed_ends_with_n_trials_complete(tmp_path, signum):
    storage, client = f"sqlite:///{tmp_path / 'optuna.db'}", MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = study_command(tmp_path, 4)
    returncode, output = signal_at_phase(command, tmp_path, clean_env(), "training@5", signum)  # trial 3's 1st epoch
    assert returncode == 128 + signum, output[-3000:]
    assert states(storage) == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]  # the cut trial, back in the queue

    again = commands.run_here(*command, cwd=tmp_path)  # the resume: in this process, the study is what is checked
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    trials = optuna.load_study(study_name="mnistexp-search", storage=storage).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[3].params == trials[2].params  # the retry ran the interrupted trial's parameters
    parent, children = only_children(client)
    assert parent.info.status == "FINISHED"
    assert sorted(child.info.status for child in children) == ["FINISHED"] * 4 + ["KILLED"]  # the killed one as history


def test_two_processes_started_together_share_one_study(tmp_path, postgres_optuna_or_sqlite):
    storage = postgres_optuna_or_sqlite(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    name = f"par-{uuid.uuid4().hex[:8]}"  # a study of its own in a shared database
    command = study_command(tmp_path, 6, f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={name}")
    processes = [
        subprocess.Popen(
            command, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    counted = [trial for trial in trials if not trial.user_attrs.get(SURPLUS_ATTR)]
    assert [trial.state.name for trial in counted] == ["COMPLETE"] * 6
    # Both may ask for the last slot at once (README: the loser's trial is dropped as surplus): told
    # FAIL before it runs, so it has no child. Only the last slot is raced, so one at most.
    surplus = [trial.state.name for trial in trials if trial.user_attrs.get(SURPLUS_ATTR)]
    assert surplus in ([], ["FAIL"])
    parent, children = only_children(client)  # one parent for both
    assert len(children) == 6 and all(child.info.status == "FINISHED" for child in children)
    commands_seen = {child.data.tags["mnistexp.sweep_command"] for child in children}
    assert len(commands_seen) == 2  # both processes ran trials
    assert parent.info.status == "FINISHED" and "mnistexp.partial_summary" not in parent.data.tags
    table = client.download_artifacts(parent.info.run_id, "search/trials.csv", str(tmp_path / "dl"))
    assert len(list(csv.DictReader(io.StringIO(Path(table).read_text())))) == 6  # the whole study


@pytest.fixture
def postgres_optuna_or_sqlite():
    """A study storage: PostgreSQL where CI provides one (MNISTEXP_TEST_POSTGRES_OPTUNA_URI), else SQLite."""
    uri = os.environ.get("MNISTEXP_TEST_POSTGRES_OPTUNA_URI")
    return lambda tmp_path: uri or f"sqlite:///{tmp_path / 'optuna.db'}"


# Two good trials first, then two hopeless ones (a learning rate that cannot move in two epochs).
PRUNED_STUDY = [
    "hydra.sweeper.pruner=median",
    "hydra.sweeper.pruner_startup_trials=2",
    "hydra.sweeper.pruner_warmup_epochs=0",
    "trainer.epochs=3",
    "hydra.sweeper.enqueue_trials=["
    + ",".join(
        f"{{model.hidden_units: 16, optimizer.learning_rate: {rate}, optimizer.name: adam, trainer.batch_size: 32}}"
        for rate in (0.01, 0.005, 1e-7, 2e-7)
    )
    + "]",
]


@pytest.mark.parametrize(
    "launcher",
    [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]],
    ids=["in-process", "joblib"],
)
def test_hopeless_trials_are_pruned_keep_their_epochs_and_are_never_chosen(tmp_path, launcher):
    storage, client = f"sqlite:///{tmp_path / 'optuna.db'}", MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # In this process, but for joblib's: its pool of worker processes is part of what is tested.
    run = commands.run if launcher else commands.run_here
    done = run(*study_command(tmp_path, 4, *PRUNED_STUDY, *launcher), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="mnistexp-search", storage=storage).trials
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    parent, children = only_children(client)
    by_rate = {float(child.data.params["optimizer.learning_rate"]): child for child in children}
    for rate in (1e-7, 2e-7):
        pruned = by_rate[rate]
        assert pruned.info.status == "FINISHED" and pruned.data.tags["mnistexp.pruned"] == "true"
        assert pruned.data.tags["mnistexp.pruned_epoch"] == "0"
        assert [m.step for m in client.get_metric_history(pruned.info.run_id, "val_accuracy")] == [0]  # its epoch kept
    for rate in (0.01, 0.005):
        assert "mnistexp.pruned" not in by_rate[rate].data.tags
        assert len(client.get_metric_history(by_rate[rate].info.run_id, "val_accuracy")) == 3
    unpruned = {by_rate[0.01].info.run_id: by_rate[0.01], by_rate[0.005].info.run_id: by_rate[0.005]}
    chosen = parent.data.tags["mnistexp.best_run_id"]
    assert chosen in unpruned  # equal val_accuracy may tie: either good trial, never a pruned one
    assert unpruned[chosen].data.metrics["val_accuracy"] == max(
        r.data.metrics["val_accuracy"] for r in unpruned.values()
    )
    assert parent.data.metrics["jobs_pruned"] == 2
    assert "2 pruned" in done.stderr + done.stdout
    table = client.download_artifacts(parent.info.run_id, "search/trials.csv", str(tmp_path / "dl"))
    assert sorted(row["state"] for row in csv.DictReader(io.StringIO(Path(table).read_text()))) == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "PRUNED",
    ]


def test_max_failure_rate_stops_the_study_with_one_line(tmp_path):
    storage, client = f"sqlite:///{tmp_path / 'optuna.db'}", MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    failing_first = [
        "hydra.sweeper.max_failure_rate=0.0",
        "model.hidden_units=choice(-1,16)",
        "hydra.sweeper.enqueue_trials=[{model.hidden_units: -1}]",
    ]
    done = commands.run_here(*study_command(tmp_path, 3, *failing_first), cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "hydra.sweeper.max_failure_rate=0.0: 1 of the 1 trials this command ran failed" in done.stderr
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr  # Optuna's "experimental" ones too
    assert states(storage) == ["FAIL"]
    parent, children = only_children(client)
    assert parent.info.status == "FAILED" and [child.info.status for child in children] == ["FAILED"]
