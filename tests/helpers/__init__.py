"""Helpers shared by the tests: paths, the tiny-run overrides, a clean environment, store queries.

The package's modules: commands (running mnistexp and mnistexp-runs as a user does), servers
(mlflow server and other listeners on loopback), sockets (watching them), data (arrays and files),
stores (the empty MLflow store each test is given).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
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
        "plots/mistakes.png",
        "plots/learning_curves.png",
        "model_summary.txt",
    }
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a tracking URI of its own, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def absl_to_the_real_stderr() -> None:
    """TensorFlow's absl handler keeps the sys.stderr of its import (a test's capture, or collection's)
    and closes it when Hydra's logging setup, run in this process, replaces the handlers, unless it
    is the sys.stderr of that moment: pytest's own capture would then be closed for every later test
    (seen, when a module fixture ran `mnistexp` in this process). A command or a notebook has one
    sys.stderr; here absl is given the real one, which it never closes."""
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


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


def signal_at_phase(command: list[str], cwd: Path, env: dict[str, str], phase: str, signum: int) -> tuple[int, str]:
    """Run `command` until mnistexp says it waits at `phase` (MNISTEXP_TEST_PAUSE_AT, `name@count`),
    send it `signum`, and return its exit status and everything it printed."""
    import subprocess

    marker = f"mnistexp-phase: {phase if '@' in phase else phase + '@1'}"
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1", "MNISTEXP_TEST_PAUSE_AT": phase},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **signals_as_usual(),
    )
    seen: list[str] = []
    try:
        for line in process.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if line.strip() == marker:  # mnistexp is at that moment, waiting
                break
        assert process.poll() is None and marker in "".join(seen), "".join(seen)[-3000:]
        process.send_signal(signum)
        seen.extend(process.stdout)  # type: ignore[arg-type]
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, "".join(seen)
