"""The MLflow store: which one, whether it answers and takes our credentials, and links to its UI."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mnistexp import environment, imports
from mnistexp.errors import TrackingError
from mnistexp.tracking import names, outages
from mnistexp.tracking.masking import mask, unmask
from mnistexp.tracking.outages import Rider, TrackingOutageError
from mnistexp.tracking.recording import Sink

if TYPE_CHECKING:
    from mnistexp.config.schema import TrackingConfig


def ui_command(uri: str) -> str:
    """How to look at the runs in `uri`: a server is opened in a browser, a local store needs `mlflow ui`."""
    if uri.startswith(("http://", "https://")):
        return f"open {mask(uri)}"
    return f"mlflow ui --backend-store-uri {mask(uri)}"


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the UI (`mlflow ui` serves on 127.0.0.1:5000 by default)."""
    base = mask(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    # MLflow 3's UI starts in its GenAI views unless the link says this is model training.
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def use_store(tracking_cfg: TrackingConfig) -> str:
    """Point MLflow at `tracking.uri` when set (else MLFLOW_TRACKING_URI or MLflow's default); returns it."""
    # The config wins over the environment, as tracking.uri does over MLFLOW_TRACKING_URI.
    environment.mlflow_http_limits(tracking_cfg.http_timeout, tracking_cfg.http_retries)
    imports.mlflow()
    import mlflow

    if tracking_cfg.uri:
        mlflow.set_tracking_uri(unmask(tracking_cfg.uri))  # a password from the command line
    return mlflow.get_tracking_uri()


def check_store(tracking_cfg: TrackingConfig) -> str:
    """Fail in seconds, naming the URI, if the store cannot be reached, refuses our credentials, or
    cannot be written; returns the URI."""
    uri = use_store(tracking_cfg)
    if uri.startswith(("http://", "https://")):
        _check_server(uri, tracking_cfg.http_timeout)
        return uri
    local = _local_store_path(uri)
    if local is not None:
        folder = local.parent if uri.startswith("sqlite:") else local
        while not folder.exists() and folder != folder.parent:  # MLflow creates missing folders below one
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"cannot write the MLflow store {mask(uri)}: {folder} is not a writable folder")
    return uri


def _check_server(uri: str, timeout: int) -> None:
    """One short request to /health, then one that needs our credentials (MLflow's basic-auth app
    answers /health to anyone)."""
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as error:
        raise TrackingError(
            f"cannot reach the MLflow tracking server {mask(uri)} ({error.__class__.__name__}); start it, or fix "
            "tracking.uri / MLFLOW_TRACKING_URI"
        ) from error
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except MlflowException as error:
        refusal = {
            "UNAUTHENTICATED": "refused our credentials (HTTP 401)",
            "PERMISSION_DENIED": "refused access (HTTP 403)",
        }
        if error.error_code not in refusal:
            raise TrackingError(f"the MLflow tracking server {mask(uri)} answered: {one_line(error)}") from error
        raise TrackingError(
            f"the MLflow tracking server {mask(uri)} {refusal[error.error_code]}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account of that server"
        ) from error


def absolute_uri() -> str:
    """The store MLflow now uses, with a local path made absolute, so a job elsewhere finds the same one."""
    uri = current_uri()
    local = _local_store_path(uri)
    if local is None:
        return uri
    return f"sqlite:///{local}" if uri.startswith("sqlite:") else local.as_uri()


def _local_store_path(uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) behind a local URI; None for anything remote."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :]).expanduser().resolve()
    if uri.startswith("file:"):
        return Path(urlparse(uri).path).resolve()
    if "://" not in uri:
        return Path(uri).expanduser().resolve()
    return None


def sqlite_lock(uri: str):
    """Processes writing one SQLite store's shared rows at once race: its tables and experiments when
    new (mlflow#4123), the dataset row a sweep's jobs share. They take turns; other stores are left
    to their server."""
    local = _local_store_path(uri)
    if local is None or not uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{local}.lock", timeout=300)


def experiment_of(tracking_cfg: TrackingConfig) -> str:
    """The configured experiment's id, created (and tagged as model training) if new."""
    return open_sink(tracking_cfg).experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND)


def open_sink(tracking_cfg: TrackingConfig, experiment: str | None = None) -> Sink:
    """A Sink on the store `tracking.uri` names, its experiment looked up or made (riding out an outage)."""
    from mlflow import MlflowClient

    uri = use_store(tracking_cfg)
    name = experiment or tracking_cfg.experiment
    with sqlite_lock(uri):  # a client on a new SQLite store creates its tables at once
        sink = Sink(uri, MlflowClient(uri))
    try:
        with sqlite_lock(uri):
            rider_for(tracking_cfg).call(lambda: sink.experiment(name, names.EXPERIMENT_KIND))
    except TrackingOutageError:
        pass  # the run's first write goes to the spool, which makes the experiment there
    except Exception as error:
        raise TrackingError(f"cannot use MLflow store {mask(uri)}: {one_line(error)}") from error
    return sink


def rider_for(tracking_cfg: TrackingConfig) -> Rider:
    """What waits out this process's tracking server when it stops answering."""
    return outages.shared_rider(use_store(tracking_cfg), tracking_cfg.outage_grace_seconds)


def current_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def one_line(error: BaseException) -> str:
    text = mask(str(error)).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0] if text else ''}"
