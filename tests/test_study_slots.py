"""A shared study's slots: processes that ask at the same moment never run more than `n_trials`, and
processes that open a new storage at the same moment all get it. Optuna's own storage on a SQLite
file (and on PostgreSQL where CI provides one); each race is one interleaving made on purpose."""

from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.storages._rdb import models

from mnistexp.multirun.search import SURPLUS_ATTR, Heartbeats, ask, log_study, make_storage, trials_to_run


@pytest.fixture
def study_with_one_slot_left(tmp_path):
    """A study of two trials, one COMPLETE: one slot is free."""
    storage = make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=10, grace_period=30)
    study = optuna.create_study(study_name="slots", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    return storage, study


def test_a_process_alone_gets_the_last_slot(study_with_one_slot_left):
    storage, study = study_with_one_slot_left
    batch = ask(study, Heartbeats(storage, 10), n_jobs=4, study_size=2)
    assert [trial.number for trial in batch] == [1]  # one slot, so one trial, though four could run
    assert not storage.get_trial(batch[0]._trial_id).user_attrs


def lose_the_race(storage, study, monkeypatch) -> tuple[optuna.Study, Heartbeats, list]:
    """Both processes saw the last slot free; the other asks first. Returns the other's study, this
    process's heartbeats and what this process's ask gave."""
    other = optuna.load_study(study_name="slots", storage=storage)
    own_ask = study.ask

    def ask_just_after_the_other(*args, **kwargs):
        other.ask()  # between this process's count of free slots and its own ask
        return own_ask(*args, **kwargs)

    monkeypatch.setattr(study, "ask", ask_just_after_the_other)
    beating = Heartbeats(storage, 10)
    return other, beating, ask(study, beating, n_jobs=1, study_size=2)


def test_the_loser_of_a_race_for_the_last_slot_runs_nothing(study_with_one_slot_left, monkeypatch):
    """Both processes saw the slot free; the other asked first. This one's trial is told FAIL and
    marked surplus, so the study still counts two trials and one of them still to run."""
    storage, study = study_with_one_slot_left
    _, beating, asked = lose_the_race(storage, study, monkeypatch)
    assert asked == []
    trials = storage.get_all_trials(study._study_id)
    assert [(trial.number, trial.state.name, trial.user_attrs) for trial in trials] == [
        (0, "COMPLETE", {}),
        (1, "RUNNING", {}),  # the other process's
        (2, "FAIL", {SURPLUS_ATTR: True}),
    ]
    assert beating.ids() == []  # nothing of this process's left beating
    assert trials_to_run(study, 2) == 1  # the other's running trial holds the slot; surplus is not counted


def test_a_surplus_trial_is_left_out_of_the_studys_table_on_its_parent(study_with_one_slot_left, monkeypatch, tmp_path):
    """It never ran and is never counted: search/trials.csv and the report line show the two trials
    of a two-trial study (a CI run once found three rows there)."""
    storage, study = study_with_one_slot_left
    other, _, _ = lose_the_race(storage, study, monkeypatch)
    other.tell(1, 0.7)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.create_run(client.create_experiment("slots")).info.run_id
    line = log_study(client, parent, study)
    table = Path(client.download_artifacts(parent, "search/trials.csv", str(tmp_path / "dl"))).read_text()
    assert [(row["trial"], row["state"]) for row in csv.DictReader(io.StringIO(table))] == [
        ("0", "COMPLETE"),
        ("1", "COMPLETE"),
    ]
    assert "study slots: 2 trials (2 complete)" in line


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_without_tables(request, tmp_path):
    """The address of a storage with no tables yet: a new SQLite file, or a new schema in the
    PostgreSQL database CI provides (MNISTEXP_TEST_POSTGRES_OPTUNA_URI)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optuna.db'}"
        return
    database = os.environ.get("MNISTEXP_TEST_POSTGRES_OPTUNA_URI")
    if not database:
        pytest.skip("set MNISTEXP_TEST_POSTGRES_OPTUNA_URI to a PostgreSQL database (.ci/run starts one)")
    schema = f"race_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(database)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield f"{database}?options=-csearch_path%3D{schema}"
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


def test_a_process_that_loses_the_race_to_create_the_tables_opens_the_storage(storage_without_tables):
    """Another process creates a table between this one's look for it and its CREATE TABLE (seen in
    CI: two sweeps started together on an empty PostgreSQL database, one exited 2 with "relation
    "studies" already exists"). This one tries again, finds the tables and opens the storage."""
    other = sqlalchemy.create_engine(storage_without_tables)
    studies = models.BaseModel.metadata.tables["studies"]

    def created_by_the_other_first(table, connection, **kwargs):
        table.create(other)  # committed on its own connection, as another process would

    sqlalchemy.event.listen(studies, "before_create", created_by_the_other_first, once=True)
    try:
        storage = make_storage(storage_without_tables)
    finally:
        if sqlalchemy.event.contains(studies, "before_create", created_by_the_other_first):
            sqlalchemy.event.remove(studies, "before_create", created_by_the_other_first)
        other.dispose()
    study = optuna.create_study(study_name="after-the-race", storage=storage, direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    assert [trial.value for trial in optuna.load_study(study_name="after-the-race", storage=storage).trials] == [0.5]
    storage.engine.dispose()
