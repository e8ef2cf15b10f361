"""MLflow's store and runs: where runs go, one run always ended, sweep parents, failed and finished runs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
import traceback
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mnistexp import imports, interrupts
from mnistexp.errors import TrackingError
from mnistexp.tracking import names, outages, spool
from mnistexp.tracking.masking import mask, unmask
from mnistexp.tracking.names import CONFIG_GROUP_TAG
from mnistexp.tracking.outages import Rider, TrackingOutageError
from mnistexp.tracking.recording import Recording, Sink

if TYPE_CHECKING:
    from mnistexp.config.schema import TrackingConfig
    from mnistexp.config.selection import Selection
    from mnistexp.sweep.handoff import SweepContext

RECORDED_IN_RUN = "mnistexp_run_id"  # set on an exception whose run was ended FAILED with it


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
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(tracking_cfg.http_timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(tracking_cfg.http_retries)
    imports.mlflow()
    import mlflow

    if tracking_cfg.uri:
        mlflow.set_tracking_uri(unmask(tracking_cfg.uri, os.environ))  # a password from the command line
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
            raise TrackingError(f"the MLflow tracking server {mask(uri)} answered: {_first_line(error)}") from error
        raise TrackingError(
            f"the MLflow tracking server {mask(uri)} {refusal[error.error_code]}: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an account of that server"
        ) from error


def absolute_uri() -> str:
    """The store MLflow now uses, with a local path made absolute, so a job elsewhere finds the same one."""
    uri = _store_uri()
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


def _first_use_lock(uri: str):
    """Processes opening one new SQLite store at once race on creating its tables and experiments
    (mlflow#4123): take turns. Other stores are left to their server."""
    local = _local_store_path(uri)
    if local is None or not uri.startswith("sqlite:"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{local}.lock", timeout=300)


def experiment_id(tracking_cfg: TrackingConfig) -> str:
    """The configured experiment's id, created (and tagged as model training) if new."""
    return open_sink(tracking_cfg).experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND)


def open_sink(tracking_cfg: TrackingConfig, experiment: str | None = None) -> Sink:
    """A Sink on the store `tracking.uri` names, its experiment looked up or made (riding out an outage)."""
    from mlflow import MlflowClient

    uri = use_store(tracking_cfg)
    name = experiment or tracking_cfg.experiment
    with _first_use_lock(uri):  # a client on a new SQLite store creates its tables at once
        sink = Sink(uri, MlflowClient(uri))
    try:
        with _first_use_lock(uri):
            rider(tracking_cfg).call(lambda: sink.experiment(name, names.EXPERIMENT_KIND))
    except TrackingOutageError:
        pass  # the run's first write goes to the spool, which makes the experiment there
    except Exception as error:
        raise TrackingError(f"cannot use MLflow store {mask(uri)}: {_first_line(error)}") from error
    return sink


def rider(tracking_cfg: TrackingConfig) -> Rider:
    """What waits out this process's tracking server when it stops answering."""
    return outages.rider(use_store(tracking_cfg), tracking_cfg.outage_grace_seconds)


def open_run(
    tracking_cfg: TrackingConfig,
    run_name: str | None,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    experiment: str | None = None,
) -> Recording:
    """A new run in the configured store (its spool, if the store is away)."""
    sink = open_sink(tracking_cfg, experiment)
    parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    try:
        return Recording(
            sink,
            rider(tracking_cfg),
            spool.opener(Path(tracking_cfg.spool_dir), sink.uri),
            experiment or tracking_cfg.experiment,
            run_name,
            {**tags, **parent},
        )
    except Exception as error:
        raise TrackingError(f"cannot start a run in {mask(sink.uri)}: {_first_line(error)}") from error


@contextlib.contextmanager
def mlflow_run(
    tracking_cfg: TrackingConfig,
    run_name: str | None,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    experiment: str | None = None,
) -> Iterator[Recording]:
    """One MLflow run that always ends: FINISHED, FAILED (error tagged, traceback logged) or KILLED.

    A signal never cuts the opening or the ending of the run; in its body it waits for a safe
    point (a batch end, the body's end), and the run then ends KILLED."""
    run = None
    try:
        with interrupts.held():
            interrupts.phase("opening the run")
            run = open_run(tracking_cfg, run_name, tags, parent_run_id, experiment)
        with interrupts.deferred():
            yield run
    except BaseException as error:
        if run is not None:
            with interrupts.held():
                _end_run_after(error, run)
        raise
    else:
        with interrupts.held():
            run.end("FINISHED")


def _end_run_after(error: BaseException, run: Recording) -> None:
    if isinstance(error, KeyboardInterrupt):
        run.end("KILLED", patient=False)  # a server that does not answer now: to the spool, not a wait
        return
    setattr(error, RECORDED_IN_RUN, run.run_id)  # tells a sweep the failure is already on record
    run.tags({names.ERROR_TAG: _first_line(error)[:5000]})
    run.text(traceback.format_exc(), "error/traceback.txt")
    run.end("FAILED")


def start_parent_run(tracking_cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> str:
    """A sweep's parent run, left RUNNING for its children; returns its id."""
    check_store(tracking_cfg)  # first: it loads MLflow (imports.mlflow)
    sink = open_sink(tracking_cfg)
    tags = {key: mask(value) for key, value in {**tags, **environment_tags()}.items()}
    try:
        run = rider(tracking_cfg).call(
            lambda: sink.client.create_run(
                sink.experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND), run_name=name, tags=tags
            )
        )
    except Exception as error:
        raise TrackingError(f"cannot start a run in {mask(sink.uri)}: {_first_line(error)}") from error
    return run.info.run_id


def reopen_parent_run(tracking_cfg: TrackingConfig, run_id: str) -> bool:
    """Set an earlier parent run RUNNING again for more children; False if this store has no such parent."""
    use_store(tracking_cfg)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.data.tags.get("mnistexp.sweep") != "parent" or run.info.lifecycle_stage != "active":
        return False
    client.update_run(run_id, status="RUNNING")
    return True


def record_failed_run(
    tracking_cfg: TrackingConfig, sweep: SweepContext, overrides: Sequence[str], error: BaseException
) -> None:
    """A sweep's job that failed before its run opened (bad value, bad data) still gets a FAILED child."""
    tags = {
        names.ERROR_TAG: mask(f"{error.__class__.__name__}: {error}")[:5000],
        "mnistexp.overrides": mask(" ".join(overrides)),
        CONFIG_GROUP_TAG: _unvalidated_group(overrides),
    }
    with interrupts.held():  # created and ended whole
        try:
            run = open_run(tracking_cfg, sweep.run_name(list(overrides)), tags, sweep.parent_run_id)
            # what was asked for, so the summary table shows the failed values
            run.params({item.lstrip("+~").partition("=")[0]: item.partition("=")[2] for item in overrides})
            run.text("".join(traceback.format_exception(error)), "error/traceback.txt")
            run.end("FAILED")
        except Exception as tracking_error:
            raise TrackingError(
                f"could not record the failed job in {mask(_store_uri())}: {_first_line(tracking_error)}"
            ) from tracking_error


def _unvalidated_group(overrides: Sequence[str]) -> str:
    """A config group for a job refused before its config was known: its overrides without the seed."""
    kept = sorted(item for item in overrides if item.lstrip("+~").partition("=")[0] != "seed")
    return "overrides:" + hashlib.sha256(" ".join(kept).encode()).hexdigest()


def _store_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def find_finished_run(tracking_cfg: TrackingConfig, config_digest: str) -> str | None:
    """The newest FINISHED run in the experiment whose config digest matches, if any."""
    sink = open_sink(tracking_cfg)
    runs = rider(tracking_cfg).call(
        lambda: sink.client.search_runs(
            [sink.experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND)],
            filter_string=f"tags.`mnistexp.config_sha256` = '{config_digest}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    return runs[0].info.run_id if runs else None


def _first_line(error: BaseException) -> str:
    text = mask(str(error)).strip().splitlines()
    return f"{error.__class__.__name__}: {text[0] if text else ''}"


def environment_tags() -> dict[str, str]:
    """Facts a result depends on: library versions, and the commit of the working directory's git checkout."""
    tags = {
        f"versions.{package}": _version(package) for package in ("tensorflow", "keras", "mlflow", "hydra-core", "numpy")
    }
    tags["versions.python"] = platform.python_version()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["mnistexp.git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    return tags


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)  # the user's checkout, if any
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def selection_tags(selection: Selection) -> dict[str, str]:
    """What ranks this run among others (`mnistexp-runs compare` reads it)."""
    return {"mnistexp.selection_metric": selection.metric, "mnistexp.selection_mode": selection.mode}
