"""Ctrl-C or SIGTERM at any moment of a sweep's life: no run left RUNNING, the parent KILLED, exit 130 or 143."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, all_runs, clean_env, signals_as_usual

pytestmark = pytest.mark.slow

SWEEP = (
    "-m",
    "model.hidden_units=0,16,32",
    "data.validation_size=300",
    "trainer.limit_train_samples=6000",
    "trainer.limit_test_samples=500",
    "trainer.epochs=3",
    "trainer.verbose=2",  # a line per epoch
)


class Store:
    """What the sweep has written so far, read straight from its SQLite file (read-only)."""

    def __init__(self, path: Path):
        self.path = path

    def rows(self, query: str) -> list[tuple]:
        if not self.path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=0.1) as connection:
                return connection.execute(query).fetchall()
        except sqlite3.OperationalError:  # tables not made yet, or a write in progress
            return []

    def children(self) -> list[tuple[str, str]]:
        """(run_uuid, status) of each child run, oldest first."""
        return self.rows(
            "SELECT runs.run_uuid, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
            "WHERE tags.key = 'mlflow.parentRunId' ORDER BY runs.start_time"
        )

    def metrics_of(self, run_id: str) -> set[str]:
        return {key for (key,) in self.rows(f"SELECT DISTINCT key FROM metrics WHERE run_uuid = '{run_id}'")}

    def parent_status(self) -> str | None:
        found = self.rows(
            "SELECT runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
            "WHERE tags.key = 'mnistexp.sweep' AND tags.value = 'parent'"
        )
        return found[0][0] if found else None


@dataclass(frozen=True)
class Moment:
    name: str
    line: str | None = None  # wait for an output line containing this ...
    after: float = 0.0  # ... and then this many seconds
    store: Callable[[Store], bool] | None = None  # or for the store to show this


def child_running_with(needed: set[str], missing: set[str], index: int = 0) -> Callable[[Store], bool]:
    def shown(store: Store) -> bool:
        children = store.children()
        if len(children) <= index or children[index][1] != "RUNNING":
            return False
        logged = store.metrics_of(children[index][0])
        return needed <= logged and not (missing & logged)

    return shown


def summary_being_written(store: Store) -> bool:
    children = store.children()
    return len(children) == 3 and all(status == "FINISHED" for _, status in children)


MOMENTS = [
    Moment("importing the libraries", after=0.8),
    Moment("composing the sweep", line="sweep over"),
    Moment("loading the data", line="job 1/3"),
    Moment("importing TensorFlow", line="first labels"),
    Moment("opening the run", store=child_running_with(set(), {"loss"})),
    Moment("training", line="Epoch 2/3"),
    Moment("evaluating", store=child_running_with({"fit_seconds"}, {"test_accuracy"})),
    Moment("logging the model and plots", store=child_running_with({"test_accuracy"}, set())),
    Moment("between jobs", line="test_accuracy="),
    Moment("the second job's data", line="job 2/3"),
    Moment("the last job's training", line="Epoch 1/3", after=0.2),
    Moment("writing the summary", store=summary_being_written),
]


def wait_for(moment: Moment, process: subprocess.Popen, store: Store, seen: list[str]) -> None:
    started = time.monotonic()
    if moment.line is not None:
        # Later moments repeat earlier lines (every job says `Epoch 1/3`): count from the right one.
        wanted = {"Epoch 1/3": 3}.get(moment.line, 1)
        while sum(moment.line in line for line in seen) < wanted:
            assert process.poll() is None, "".join(seen)[-3000:]
            time.sleep(0.005)
    elif moment.store is not None:
        while not moment.store(store):
            assert process.poll() is None, "".join(seen)[-3000:]
            assert time.monotonic() - started < 300, "".join(seen)[-3000:]
            time.sleep(0.01)
    time.sleep(moment.after)


@pytest.mark.parametrize("moment", MOMENTS, ids=[moment.name for moment in MOMENTS])
def test_a_signal_at_any_moment_leaves_no_run_running_and_the_parent_killed(tmp_path, mnist_path, moment):
    signum = signal.SIGINT if MOMENTS.index(moment) % 2 == 0 else signal.SIGTERM
    store = Store(tmp_path / "mlflow.db")
    process = subprocess.Popen(
        [MNISTEXP, *SWEEP],
        cwd=tmp_path,
        env=clean_env(MNISTEXP_DATA=str(mnist_path), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **signals_as_usual(),
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(process.stdout), daemon=True)
    reader.start()
    try:
        wait_for(moment, process, store, seen)
        process.send_signal(signum)
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    output = "".join(seen)
    assert process.returncode == 128 + signum, output[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in output and "Traceback" not in output, output[-3000:]
    runs = all_runs(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")) if store.path.exists() else []
    assert [run.info.status for run in runs if run.info.status == "RUNNING"] == []
    parents = [run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent"]
    assert [parent.info.status for parent in parents] == (["KILLED"] if parents else [])
    if moment.store is not None or moment.line in ("job 2/3", "test_accuracy=", "Epoch 2/3"):
        assert parents, "the signal came after the parent run was made"
