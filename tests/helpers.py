"""Helpers shared by the tests: paths, the tiny-run overrides, a clean environment, store queries."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the console scripts pip installed beside this Python
MNISTEXP, MNISTEXP_RUNS = str(BIN / "mnistexp"), str(BIN / "mnistexp-runs")

# A run of a few seconds: a slice of the data, one epoch, no progress bar, no model logged.
TINY = (
    "trainer.limit_train_samples=1000",
    "trainer.limit_test_samples=200",
    "trainer.epochs=1",
    "trainer.verbose=0",
    "tracking.log_model=false",
)


# What every job logs beside its metrics and model (records.py, job.py).
JOB_ARTIFACTS = frozenset(
    {
        "config/resolved.yaml",
        "config/overrides.yaml",
        "data/summary.json",
        "evaluation/confusion_matrix.csv",
        "plots/confusion_matrix.png",
        "plots/sample_predictions.png",
        "plots/learning_curves.png",
        "model_summary.txt",
    }
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a tracking URI of its own, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def all_runs(client, experiment: str = "mnistexp") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=10_000) if found else []


def only_children(client, experiment: str = "mnistexp"):
    """The one sweep parent in the experiment and its children."""
    runs = all_runs(client, experiment)
    [parent] = [run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent"]
    return parent, [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def signals_as_usual() -> dict:
    """Popen arguments that give the child Ctrl-C's default meaning: a shell starts background jobs
    (as CI may start pytest) with SIGINT ignored, and children inherit that."""
    import signal

    return {"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)}


LOOPBACK = ("127.", "[::1]", "[::ffff:127.")
NO_PEER = ("*:*", "*", "0.0.0.0:*", "[::]:*")  # a listening or unconnected socket's peer


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


class SocketWatch:
    """Every TCP and UDP socket of the watched processes, polled with `ss` while the block runs (not one
    snapshot at its end): `off_loopback` lists those bound or connected anywhere but loopback.

    `watched(pids, line)` says whether an `ss -p` line belongs to the processes of interest."""

    def __init__(self, watched, interval: float = 0.05) -> None:
        import threading

        self.watched, self.interval = watched, interval
        self.seen: set[tuple[str, str, str]] = set()
        self.off_loopback: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        import re
        import subprocess

        while not self._stop.is_set():
            lines = subprocess.run(["ss", "-Htuanp"], capture_output=True, text=True).stdout.splitlines()
            for line in lines:
                pids = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
                if not self.watched(pids, line):
                    continue
                kind, _, _, _, local, peer = line.split()[:6]
                self.seen.add((kind, local, peer))
                if not local.startswith(LOOPBACK) or not (peer.startswith(LOOPBACK) or peer in NO_PEER):
                    self.off_loopback.append(line)
            self._stop.wait(self.interval)
