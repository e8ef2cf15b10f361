"""The variables the libraries read, set in this one place with the reason for each, and the quiet console.

mnistexp itself reads its inputs at the edge (cli/) and passes them down; TensorFlow, MLflow and Ray
insist on environment variables, so what they must see is written here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

# What a run's console carried before: TensorFlow's C++ notices and errors that are not errors
# ("Could not find cuda drivers", "failed call to cuInit", oneDNN, "NodeDef mentions attribute"),
# MLflow's INFO lines about creating its tables and its "View run" links, urllib3's retry warnings,
# and tf.function retracing warnings, which every job of a sweep triggers by design (each builds a
# new model). `hydra.verbose=true` shows them all.


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


def mlflow_http_limits(timeout: int, retries: int) -> None:
    """tracking.http_timeout and tracking.http_retries for MLflow's REST client, which reads them from
    MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES at every request: the config's keys always win."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)


def for_every_process(variables: Mapping[str, str], unset: tuple[str, ...] = ()) -> None:
    """Variables this process and every process it starts must see (Ray's daemons read theirs at import)."""
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(variables)


@contextlib.contextmanager
def only_while(variables: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Variables set for the block and put back after it; yields what they were ("" for unset)."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield {name: value or "" for name, value in saved.items()}
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
