"""A quiet console: mnistexp's lines, Keras's progress and warnings that matter; `hydra.verbose=true` shows the rest."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

# What a run's console carried before: TensorFlow's C++ notices and errors that are not errors
# ("Could not find cuda drivers", "failed call to cuInit", oneDNN, "NodeDef mentions attribute"),
# MLflow's INFO lines about creating its tables and its "View run" links, urllib3's retry warnings,
# and tf.function retracing warnings, which every job of a sweep triggers by design (each builds a
# new model).


def quiet_libraries(verbose: bool) -> None:
    """Turn the libraries' own chatter down before they are imported; nothing changes with `verbose`."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ logging, once it is set up
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per model file loaded
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "🏃 View run ... at:" per run
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # for an mlflow imported already
    # urllib3's "Retrying (Retry(total=...))" while a server is away: mnistexp says it once (outages.py)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


@contextlib.contextmanager
def stderr_silenced(enabled: bool) -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the block: C++ code that logs before TensorFlow sets
    up its logging (absl's "All log messages before absl::InitializeLog()" and the CUDA probe on a
    machine without a GPU) writes there directly, past Python and TF_CPP_MIN_LOG_LEVEL."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def onednn_setting() -> str:
    """TF_ENABLE_ONEDNN_OPTS as TensorFlow reads it: results are bit-identical only under the same setting."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")


def available_cores() -> int:
    """The cores this process may run on (a Slurm or container limit included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
