"""`mnistexp -m hparams_search=optuna`: an Optuna study on validation data, one MLflow parent per study."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, clean_env, commands, only_children

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("study")]

# A small slice, and a first trial built to fail (its hidden size is refused), so a failed trial
# is seen to be FAIL in Optuna, FAILED in MLflow, and not to stop the study.
SLICE = [
    "data.validation_size=500",
    "trainer.limit_train_samples=3000",
    "trainer.limit_test_samples=500",
    "trainer.epochs=1",
    "trainer.verbose=0",
    "tracking.log_model=false",
]
FAILING_FIRST = [
    "model.hidden_units=choice(-1,0,16,32)",
    "hydra.sweeper.enqueue_trials=[{model.hidden_units: -1, optimizer.learning_rate: 0.001, "
    "optimizer.name: adam, trainer.batch_size: 32}]",
]
ALL_RUN = ["model.hidden_units=choice(0,16,32)", "hydra.sweeper.enqueue_trials=[]"]  # no trial fails


def search(workdir: Path, mnist_path: Path, trials: int, *extra: str) -> subprocess.CompletedProcess:
    """The study command, run in this process: what is checked is the study, not the process."""
    return commands.run_here(
        MNISTEXP,
        "-m",
        "hparams_search=optuna",
        f"hydra.sweeper.n_trials={trials}",
        *SLICE,
        *extra,
        cwd=workdir,
        env=clean_env(MNISTEXP_DATA=str(mnist_path)),
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory, mnist_path):
    workdir = tmp_path_factory.mktemp("search")
    first = search(workdir, mnist_path, 6, *FAILING_FIRST)
    return {
        "workdir": workdir,
        "first": first,
        "client": MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}"),
        "storage": f"sqlite:///{workdir / 'optuna.db'}",
    }


def test_the_search_picks_the_trial_with_the_highest_validation_accuracy(study):
    assert study["first"].returncode == 1, study["first"].stderr[-3000:]  # one trial failed, the study went on
    client = study["client"]
    parent, children = only_children(client)
    assert len(children) == 6
    finished = [child for child in children if child.info.status == "FINISHED"]
    failed = [child for child in children if child.info.status == "FAILED"]
    assert failed and len(failed) + len(finished) == 6
    assert {child.data.params["model.hidden_units"] for child in failed} == {"-1"}
    best = max(finished, key=lambda run: run.data.metrics["val_accuracy"])
    assert parent.data.tags["mnistexp.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_accuracy"] == best.data.metrics["val_accuracy"]
    assert parent.data.metrics["best_run_test_accuracy"] == best.data.metrics["test_accuracy"]

    loaded = optuna.load_study(study_name="mnistexp-search", storage=study["storage"])
    assert loaded.direction.name == "MAXIMIZE"
    assert loaded.best_value == best.data.metrics["val_accuracy"]
    assert {key: str(value) for key, value in loaded.best_params.items()} == {
        key: best.data.params[key] for key in loaded.best_params
    }
    assert loaded.trials[0].state.name == "FAIL"  # the enqueued trial that cannot run
    assert [trial.params["model.hidden_units"] == -1 for trial in loaded.trials] == [
        trial.state.name == "FAIL" for trial in loaded.trials
    ]


def test_the_study_is_on_its_parent_run(study, tmp_path):
    client = study["client"]
    parent, children = only_children(client)
    assert parent.data.tags["mnistexp.study_name"] == "mnistexp-search"
    assert parent.data.tags["mnistexp.study_storage"] == study["storage"]
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "search")}
    assert {
        "search/trials.csv",
        "search/optimization_history.png",
        "search/param_importances.png",
        "search/parallel_coordinate.png",
        "search/best_trial.yaml",
    } <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "search/trials.csv", str(tmp_path))).read_text()
    trials = list(csv.DictReader(io.StringIO(table)))
    assert len(trials) == 6
    assert {trial["run_id"] for trial in trials} == {child.info.run_id for child in children}
    for trial in trials:  # each trial's row names the run that trained it
        run = client.get_run(trial["run_id"])
        assert run.data.params["model.hidden_units"] == trial["model.hidden_units"]
        if trial["state"] == "COMPLETE":
            assert float(trial["value"]) == run.data.metrics["val_accuracy"]


@pytest.mark.xdist_group("study-continued")  # a study of its own: free to run beside the module's
def test_the_same_command_again_continues_the_study_under_its_parent(tmp_path, mnist_path):
    """A study of its own (the module's study stays as the tests above read it): 2 trials, then 3."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = search(tmp_path, mnist_path, 2, *ALL_RUN)
    assert first.returncode == 0, first.stderr[-3000:]
    parent_before, _ = only_children(client)
    again = search(tmp_path, mnist_path, 3, *ALL_RUN)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study mnistexp-search continues under its parent run" in again.stderr + again.stdout
    assert "2 of 3 trials done, 1 to run" in again.stderr + again.stdout
    parent, children = only_children(client)  # still one parent
    assert parent.info.run_id == parent_before.info.run_id and len(children) == 3
    loaded = optuna.load_study(study_name="mnistexp-search", storage=storage)
    assert len(loaded.trials) == 3
    old = {tuple(sorted(trial.params.items())) for trial in loaded.trials[:2]}
    assert tuple(sorted(loaded.trials[2].params.items())) not in old  # nothing repeated
    finished_again = search(tmp_path, mnist_path, 3, *ALL_RUN)
    assert "3 of 3 trials done, 0 to run" in finished_again.stderr + finished_again.stdout
    assert len(only_children(client)[1]) == 3


@pytest.mark.xdist_group("study-min")
def test_a_study_minimising_val_loss_picks_the_trial_with_the_lowest(tmp_path, mnist_path):
    done = search(tmp_path, mnist_path, 3, *ALL_RUN, "selection.metric=val_loss", "selection.mode=min")
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = optuna.load_study(study_name="mnistexp-search", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert loaded.direction.name == "MINIMIZE"
    parent, children = only_children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    best = min(children, key=lambda run: run.data.metrics["val_loss"])
    assert loaded.best_value == best.data.metrics["val_loss"]
    assert parent.data.tags["mnistexp.best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_loss"] == best.data.metrics["val_loss"]
