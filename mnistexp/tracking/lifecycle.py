"""Runs that always end: a job's, a sweep's parent, that of a job refused before training; finished runs found."""

from __future__ import annotations

import contextlib
import hashlib
import platform
import subprocess
import traceback
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistexp import interrupts
from mnistexp.errors import TrackingError
from mnistexp.tracking import names, spool, store
from mnistexp.tracking.masking import mask
from mnistexp.tracking.names import CONFIG_GROUP_TAG
from mnistexp.tracking.recording import Recording, start_run

if TYPE_CHECKING:
    from mnistexp.config.schema import TrackingConfig
    from mnistexp.config.selection import Selection
    from mnistexp.multirun.handoff import SweepContext

RECORDED_IN_RUN = "mnistexp_run_id"  # set on an exception whose run was ended FAILED with it


def open_run(
    tracking_cfg: TrackingConfig,
    run_name: str | None,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    experiment: str | None = None,
) -> Recording:
    """A new run in the configured store (its spool, if the store is away)."""
    sink = store.open_sink(tracking_cfg, experiment)
    parent = {"mlflow.parentRunId": parent_run_id} if parent_run_id else {}
    try:
        return Recording(
            sink,
            store.rider_for(tracking_cfg),
            spool.opener(Path(tracking_cfg.spool_dir), sink.uri),
            experiment or tracking_cfg.experiment,
            run_name,
            {**tags, **parent},
        )
    except Exception as error:
        raise TrackingError(f"cannot start a run in {mask(sink.uri)}: {store.one_line(error)}") from error


_monitors: dict[str, Any] = {}  # run id -> MLflow's SystemMetricsMonitor sampling into it (tracking.system_metrics)


def start_system_metrics(tracking_cfg: TrackingConfig, run_id: str, uri: str) -> None:
    """With tracking.system_metrics: MLflow's own monitor (CPU, memory, disk, network; psutil) samples
    the machine into the run every system_metrics_interval seconds until stop_system_metrics."""
    if not tracking_cfg.system_metrics or run_id in _monitors:
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=tracking_cfg.system_metrics_interval, tracking_uri=uri)
    monitor.start()
    _monitors[run_id] = monitor


def stop_system_metrics(run_id: str) -> None:
    """The monitor stopped and its queued samples written, before the run ends (MLflow's monitor
    drops what it holds once the run is no longer RUNNING)."""
    monitor = _monitors.pop(run_id, None)
    if monitor is not None:
        monitor.finish()


class Runs:
    """Runs opened together (a fused group's jobs), each ended once and on its own."""

    def __init__(self) -> None:
        self.pending: list[Recording] = []  # opened, not yet ended

    def open(
        self,
        tracking_cfg: TrackingConfig,
        run_name: str | None,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
        experiment: str | None = None,
    ) -> Recording:
        with interrupts.held():
            interrupts.phase("opening the run")
            run = open_run(tracking_cfg, run_name, tags, parent_run_id, experiment)
            self.pending.append(run)
            if not run.spooled:  # the monitor writes to the store the run began in
                start_system_metrics(tracking_cfg, run.run_id, run.uri)
        return run

    def finish(self, run: Recording) -> None:
        with interrupts.held():
            self.pending.remove(run)
            stop_system_metrics(run.run_id)
            run.end("FINISHED")

    def fail(self, run: Recording, error: BaseException) -> None:
        """FAILED with this error (tagged, its traceback logged), or KILLED for a signal."""
        with interrupts.held():
            self.pending.remove(run)
            stop_system_metrics(run.run_id)
            _end_run_after(error, run)


@contextlib.contextmanager
def mlflow_runs() -> Iterator[Runs]:
    """Runs that always end: each as the block ends it (`finish`, `fail`); any still open when the
    block ends FINISHED, or, if it ends by an exception, FAILED with it (KILLED for a signal).
    A signal in the block waits for a safe point (a batch end, the block's end)."""
    runs = Runs()
    try:
        with interrupts.deferred():
            yield runs
    except BaseException as error:
        with interrupts.held():
            for run in list(runs.pending):
                runs.fail(run, error)
        raise
    else:
        for run in list(runs.pending):
            runs.finish(run)


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
    with mlflow_runs() as runs:
        yield runs.open(tracking_cfg, run_name, tags, parent_run_id, experiment)


def children_of(client: Any, parent: Any) -> list:
    """A sweep parent's child runs (the runs whose mlflow.parentRunId names it)."""
    return list(
        client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
            max_results=50_000,
        )
    )


def error_line(reason: BaseException | str) -> str:
    """The one form of a run's `mnistexp.error` tag: the exception's class and first line (or the
    reason given), password masked, at most 5,000 characters."""
    text = reason if isinstance(reason, str) else store.one_line(reason)
    return mask(text)[:5000]


def _end_run_after(error: BaseException, run: Recording) -> None:
    if isinstance(error, KeyboardInterrupt):
        run.end("KILLED", patient=False)  # a server that does not answer now: to the spool, not a wait
        return
    setattr(error, RECORDED_IN_RUN, run.run_id)  # tells a sweep the failure is already on record
    run.tags({names.ERROR_TAG: error_line(error)})
    run.text(traceback.format_exc(), names.TRACEBACK_ARTIFACT)
    run.end("FAILED")


def start_parent_run(tracking_cfg: TrackingConfig, name: str, tags: Mapping[str, str]) -> str:
    """A sweep's parent run, left RUNNING for its children; returns its id."""
    store.check_store(tracking_cfg)  # first: it loads MLflow (imports.mlflow)
    sink = store.open_sink(tracking_cfg)
    tags = {key: mask(value) for key, value in {**tags, **environment_tags()}.items()}
    try:
        return start_run(sink, store.rider_for(tracking_cfg), tracking_cfg.experiment, name, tags)
    except Exception as error:
        raise TrackingError(f"cannot start a run in {mask(sink.uri)}: {store.one_line(error)}") from error


def reopen_parent_run(tracking_cfg: TrackingConfig, run_id: str) -> bool:
    """Set an earlier parent run RUNNING again for more children; False if this store has no such parent."""
    store.use_store(tracking_cfg)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return False
    if run.data.tags.get(names.SWEEP_TAG) != names.SWEEP_PARENT or run.info.lifecycle_stage != "active":
        return False
    client.update_run(run_id, status="RUNNING")
    return True


def record_failed_run(
    tracking_cfg: TrackingConfig, sweep: SweepContext, overrides: Sequence[str], error: BaseException
) -> None:
    """A sweep's job that failed before its run opened (bad value, bad data) still gets a FAILED child."""
    tags = {
        names.ERROR_TAG: error_line(error),
        names.OVERRIDES_TAG: mask(" ".join(overrides)),
        CONFIG_GROUP_TAG: _unvalidated_group(overrides),
        **({names.SWEEP_COMMAND_TAG: sweep.command} if sweep.command else {}),
    }
    with interrupts.held():  # created and ended whole
        try:
            run = open_run(tracking_cfg, sweep.run_name(list(overrides)), tags, sweep.parent_run_id)
            # what was asked for, so the summary table shows the failed values
            run.params({item.lstrip("+~").partition("=")[0]: item.partition("=")[2] for item in overrides})
            run.text("".join(traceback.format_exception(error)), names.TRACEBACK_ARTIFACT)
            run.end("FAILED")
        except Exception as tracking_error:
            raise TrackingError(
                f"could not record the failed job in {mask(store.current_uri())}: {store.one_line(tracking_error)}"
            ) from tracking_error


def _unvalidated_group(overrides: Sequence[str]) -> str:
    """A config group for a job refused before its config was known: its overrides without the seed."""
    kept = sorted(item for item in overrides if item.lstrip("+~").partition("=")[0] != "seed")
    return "overrides:" + hashlib.sha256(" ".join(kept).encode()).hexdigest()


def find_finished_run(tracking_cfg: TrackingConfig, config_digest: str) -> str | None:
    """The newest FINISHED run in the experiment whose config digest matches, if any."""
    sink = store.open_sink(tracking_cfg)
    runs = store.rider_for(tracking_cfg).call(
        lambda: sink.client.search_runs(
            [sink.experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND)],
            filter_string=f"tags.`mnistexp.config_sha256` = '{config_digest}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    return runs[0].info.run_id if runs else None


def environment_tags() -> dict[str, str]:
    """Facts a result depends on: library versions, and the commit of the working directory's git checkout."""
    tags = {
        f"versions.{package}": _version(package) for package in ("tensorflow", "keras", "mlflow", "hydra-core", "numpy")
    }
    tags["versions.python"] = platform.python_version()
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags[names.GIT_DIRTY_TAG] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
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


def run_tags(selection: Selection) -> dict[str, str]:
    """What every job's run carries from the start: library versions, the git commit, the selection rule."""
    return {**environment_tags(), **selection_tags(selection)}


def selection_tags(selection: Selection) -> dict[str, str]:
    """What ranks this run among others (`mnistexp-runs compare` reads it)."""
    return {names.SELECTION_METRIC_TAG: selection.metric, names.SELECTION_MODE_TAG: selection.mode}


# Tags that tell whether two runs of one config could give the same bits, and what each is.
_SAME_BITS_IF_EQUAL = ("versions.", "runtime.")


def reproducibility(original: Mapping[str, str], again: Mapping[str, str]) -> list[str]:
    """What `mnistexp-runs reproduce` says beside the figures: each library version, CPU, thread count,
    op-determinism or oneDNN setting that differs between the two runs, the data if it does, and
    whether bit-identical results were to be expected."""
    keys = sorted({key for key in (*original, *again) if key.startswith(_SAME_BITS_IF_EQUAL)})
    differences = [
        f"differs: {key}: {original.get(key, '-')} then, {again.get(key, '-')} now"
        for key in keys
        if original.get(key) != again.get(key)
    ]
    data_before = original.get(names.DATA_DIGEST_TAG)
    if data_before and data_before != again.get(names.DATA_DIGEST_TAG):
        differences.append(f"differs: the data ({names.DATA_DIGEST_TAG})")
    deterministic = original.get("runtime.deterministic_ops") == again.get("runtime.deterministic_ops") == "True"
    expected = not differences and deterministic
    why = (
        "the same libraries, machine, threads and data, with deterministic ops"
        if expected
        else "not with op determinism off"
        if not differences
        else "not with these differences"
    )
    return [*differences, f"bit-identical results were to be expected: {'yes' if expected else 'no'} ({why})"]
