"""MLflow's store and runs: where runs go, one run always ended, sweep parents, failed and finished runs."""

from __future__ import annotations

import contextlib
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

if TYPE_CHECKING:
    from mlflow import ActiveRun

    from mnistexp.config import TrackingConfig
    from mnistexp.selection import Selection
    from mnistexp.sweep_context import SweepContext

RECORDED_IN_RUN = "mnistexp_run_id"  # set on an exception whose run was ended FAILED with it
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # UI opens on the runs table


def ui_command(uri: str) -> str:
    """How to look at the runs in `uri`: a server is opened in a browser, a local store needs `mlflow ui`."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def run_page(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the UI (`mlflow ui` serves on 127.0.0.1:5000 by default)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
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
        mlflow.set_tracking_uri(tracking_cfg.uri)
    return mlflow.get_tracking_uri()


def check_store(tracking_cfg: TrackingConfig) -> str:
    """Fail in seconds, naming the URI, if the store cannot be reached or written; returns the URI."""
    uri = use_store(tracking_cfg)
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=tracking_cfg.http_timeout)
        except requests.RequestException as error:
            reason = error.__class__.__name__
            raise TrackingError(
                f"cannot reach the MLflow tracking server {uri} ({reason}); start it, or fix "
                "tracking.uri / MLFLOW_TRACKING_URI"
            ) from error
        return uri
    local = _local_store_path(uri)
    if local is not None:
        folder = local.parent if uri.startswith("sqlite:") else local
        while not folder.exists() and folder != folder.parent:  # MLflow creates missing folders below one
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise TrackingError(f"cannot write the MLflow store {uri}: {folder} is not a writable folder")
    return uri


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
    import mlflow

    uri = use_store(tracking_cfg)
    try:
        with _first_use_lock(uri):
            experiment = mlflow.set_experiment(tracking_cfg.experiment)
            if "mlflow.experimentKind" not in experiment.tags:
                mlflow.set_experiment_tags(EXPERIMENT_KIND)
    except Exception as error:
        raise TrackingError(f"cannot use MLflow store {uri}: {_first_line(error)}") from error
    return experiment.experiment_id


@contextlib.contextmanager
def mlflow_run(
    tracking_cfg: TrackingConfig, run_name: str | None, tags: Mapping[str, str], parent_run_id: str | None = None
) -> Iterator[ActiveRun]:
    """One MLflow run that always ends: FINISHED, FAILED (error tagged, traceback logged) or KILLED.

    A signal never cuts the opening or the ending of the run; in its body it waits for a safe
    point (a batch end, the body's end), and the run then ends KILLED."""
    import mlflow

    experiment = experiment_id(tracking_cfg)
    run = None
    try:
        with interrupts.held():
            try:
                run = mlflow.start_run(
                    experiment_id=experiment, run_name=run_name, tags=dict(tags), parent_run_id=parent_run_id
                )
            except Exception as error:
                raise TrackingError(f"cannot start a run in {_store_uri()}: {_first_line(error)}") from error
        with interrupts.deferred():
            yield run
    except BaseException as error:
        if run is not None:
            with interrupts.held():
                _end_run_after(error, run.info.run_id)
        raise
    else:
        with interrupts.held():
            mlflow.end_run("FINISHED")


def _end_run_after(error: BaseException, run_id: str) -> None:
    import mlflow

    if isinstance(error, KeyboardInterrupt):
        mlflow.end_run("KILLED")
        return
    setattr(error, RECORDED_IN_RUN, run_id)  # tells a sweep the failure is already on record
    mlflow.set_tag("mnistexp.error", _first_line(error)[:5000])
    mlflow.log_text(traceback.format_exc(), "error/traceback.txt")
    mlflow.end_run("FAILED")


def start_parent_run(tracking_cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> str:
    """A sweep's parent run, left RUNNING for its children; returns its id."""
    check_store(tracking_cfg)  # first: it loads MLflow (imports.mlflow)
    from mlflow import MlflowClient

    experiment = experiment_id(tracking_cfg)
    try:
        run = MlflowClient().create_run(experiment, run_name=name, tags={**tags, **environment_tags()})
    except Exception as error:
        raise TrackingError(f"cannot start a run in {_store_uri()}: {_first_line(error)}") from error
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
    from mlflow import MlflowClient

    use_store(tracking_cfg)
    client = MlflowClient()
    with interrupts.held():  # created and ended whole
        try:
            parent = client.get_run(sweep.parent_run_id)
            run = client.create_run(
                parent.info.experiment_id,
                run_name=sweep.run_name(list(overrides)),
                tags={
                    "mlflow.parentRunId": sweep.parent_run_id,
                    "mnistexp.error": f"{error.__class__.__name__}: {error}"[:5000],
                    "mnistexp.overrides": " ".join(overrides),
                },
            )
            for item in overrides:  # what was asked for, so the summary table shows the failed values
                key, _, value = item.lstrip("+~").partition("=")
                client.log_param(run.info.run_id, key, value)
            client.log_text(run.info.run_id, "".join(traceback.format_exception(error)), "error/traceback.txt")
            client.set_terminated(run.info.run_id, "FAILED")
        except Exception as tracking_error:
            raise TrackingError(
                f"could not record the failed job in {_store_uri()}: {_first_line(tracking_error)}"
            ) from tracking_error


def _store_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def find_finished_run(tracking_cfg: TrackingConfig, config_digest: str) -> str | None:
    """The newest FINISHED run in the experiment whose config digest matches, if any."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[experiment_id(tracking_cfg)],
        filter_string=f"tags.`mnistexp.config_sha256` = '{config_digest}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
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
