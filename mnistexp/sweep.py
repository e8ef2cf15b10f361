"""Hydra callbacks that turn a multirun into one MLflow parent run with a nested child run per job."""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mnistexp")

# The sweep reaches its jobs through the environment, which also crosses into launcher workers.
PARENT_RUN_ENV = "MNISTEXP_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "MNISTEXP_SWEPT_KEYS"
SWEEP_SIZE_ENV = "MNISTEXP_SWEEP_SIZE"
REUSED_TAG_PREFIX = "mnistexp.reused_job."

_failed_jobs: list[str] = []  # jobs of this sweep that did not finish; the CLI exits 1 if any


def failed_jobs() -> list[str]:
    """One line per job of the last sweep that did not finish (empty after a clean sweep)."""
    return list(_failed_jobs)


@dataclass(frozen=True)
class SweepContext:
    """What a job inside a multirun knows about its sweep."""

    parent_run_id: str
    swept_keys: tuple[str, ...]
    size: int | None

    @classmethod
    def from_env(cls) -> SweepContext | None:
        parent = os.environ.get(PARENT_RUN_ENV)
        if not parent:
            return None
        keys = tuple(key for key in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if key)
        size = os.environ.get(SWEEP_SIZE_ENV)
        return cls(parent, keys, int(size) if size else None)

    def run_name(self, overrides: list[str]) -> str:
        """`model.hidden_units=32`: the job's own values of the swept keys."""
        swept = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") in self.swept_keys]
        return ",".join(swept) or ",".join(overrides) or "job"


def sweep_plan(config: DictConfig) -> tuple[list[str], int | None]:
    """The swept keys and the number of jobs, from command-line sweeps and `hydra.sweeper.params`."""
    parser = OverridesParser.create()
    overrides = list(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    keys: list[str] = []
    sizes: list[int] = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            if key not in keys:
                keys.append(key)
                try:
                    sizes.append(len(list(override.sweep_iterator())))
                except Exception:  # range or interval sweeps of other sweepers: size unknown
                    sizes.append(0)
    return keys, (None if 0 in sizes else math.prod(sizes))


class MlflowSweep(Callback):
    """Opens the parent run before the first job and closes it with a summary after the last.

    If the sweep dies part-way (a failed job makes Hydra's basic sweeper raise, or Ctrl-C), an
    exit hook still closes the parent, so no sweep is left RUNNING.
    """

    def __init__(self, summary_metric: str = "test_accuracy") -> None:
        self.summary_metric = summary_metric
        self.parent_run_id: str | None = None
        self.tracking_cfg: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        keys, size = sweep_plan(config)
        self.tracking_cfg = config.tracking
        self.parent_run_id = start_parent_run(config.tracking, f"sweep {' '.join(keys)}".strip(), {
            "mnistexp.sweep": "parent",
            "mnistexp.swept_keys": ",".join(keys),
            "mnistexp.sweep_overrides": " ".join(config.hydra.overrides.task),
            "mnistexp.sweep_size": str(size or "?"),
        })
        _failed_jobs.clear()
        os.environ.update({PARENT_RUN_ENV: self.parent_run_id, SWEPT_KEYS_ENV: ",".join(keys),
                           SWEEP_SIZE_ENV: str(size or "")})
        atexit.register(self._finish)
        log.info("sweep over %s: %s jobs, parent run %s", ", ".join(keys) or "nothing", size or "?",
                 self.parent_run_id)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        context = SweepContext.from_env()
        if context is not None:
            of = f"/{context.size}" if context.size else ""
            log.info("job %d%s: %s", config.hydra.job.num + 1, of,
                     " ".join(config.hydra.overrides.task) or "(no overrides)")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._finish)
        self._finish()

    def _finish(self) -> None:
        if self.parent_run_id is None:
            return
        parent, self.parent_run_id = self.parent_run_id, None
        for name in (PARENT_RUN_ENV, SWEPT_KEYS_ENV, SWEEP_SIZE_ENV):
            os.environ.pop(name, None)
        report, failures = finish_parent_run(self.tracking_cfg, parent, self.summary_metric)
        log.info(report)
        _failed_jobs.extend(failures)
        for line in failures:
            print(f"mnistexp: error: {line}", file=sys.stderr)


def record_failed_job(cfg: DictConfig, overrides: list[str], error: BaseException) -> None:
    """A job that failed before its MLflow run opened (bad value, bad data) still gets a FAILED child."""
    if getattr(error, "mlflow_run_id", None):
        return  # the run exists and was ended FAILED with the error attached
    context = SweepContext.from_env()
    if context is None:
        return
    import traceback

    from mlflow import MlflowClient

    from mnistexp import tracking

    try:
        tracking.use_store(cfg.tracking)
        client = MlflowClient()
        parent = client.get_run(context.parent_run_id)
        run = client.create_run(parent.info.experiment_id, run_name=context.run_name(overrides), tags={
            "mlflow.parentRunId": context.parent_run_id,
            "mnistexp.error": f"{error.__class__.__name__}: {error}"[:5000],
            "mnistexp.overrides": " ".join(overrides),
        })
        for item in overrides:  # what was asked for, so the summary table shows the failed values
            key, _, value = item.lstrip("+~").partition("=")
            client.log_param(run.info.run_id, key, value)
        client.log_text(run.info.run_id, "".join(traceback.format_exception(error)), "error/traceback.txt")
        client.set_terminated(run.info.run_id, "FAILED")
    except Exception as tracking_error:  # the store itself may be what failed: the one-line message stands
        log.warning("could not record the failed job in MLflow: %s", tracking_error)
        _failed_jobs.append(f"job {context.run_name(overrides)} FAILED (not recorded in MLflow): {error}")


def start_parent_run(tracking_cfg: DictConfig, name: str, tags: dict[str, str]) -> str:
    from mlflow import MlflowClient

    from mnistexp import tracking

    experiment = tracking.experiment_id(tracking_cfg)
    run = MlflowClient().create_run(experiment, run_name=name, tags={**tags, **tracking.environment_tags()})
    return run.info.run_id


def finish_parent_run(tracking_cfg: DictConfig, parent_run_id: str, metric: str) -> tuple[str, list[str]]:
    """Summarise the children on the parent (table, best run, plots) and end it.

    Returns the report and one line per child that did not finish.
    """
    from mlflow import MlflowClient

    from mnistexp import plots, summary, tracking

    tracking.use_store(tracking_cfg)
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000)
    reused = [client.get_run(run_id) for tag, run_id in parent.data.tags.items()
              if tag.startswith(REUSED_TAG_PREFIX)]
    table = summary.rows([*children, *reused], metric)
    keys = [key for key in parent.data.tags.get("mnistexp.swept_keys", "").split(",") if key]
    keys = keys or summary.varying_keys(table)
    client.log_text(parent_run_id, summary.to_csv(table, keys), "sweep/summary.csv")

    finished = [row for row in table if row.status == "FINISHED" and not math.isnan(getattr(row, metric))]
    statuses = [row.status for row in table]
    client.log_metric(parent_run_id, "jobs_finished", len(finished))
    client.log_metric(parent_run_id, "jobs_failed", statuses.count("FAILED"))
    client.log_metric(parent_run_id, "jobs_killed", statuses.count("KILLED"))
    report = [f"sweep {parent_run_id}: {len(finished)} finished, {statuses.count('FAILED')} failed, "
              f"{statuses.count('KILLED')} killed"]
    if finished:
        best = finished[0]
        client.log_metric(parent_run_id, f"best_{metric}", getattr(best, metric))
        client.set_tag(parent_run_id, "mnistexp.best_run_id", best.run_id)
        client.set_tag(parent_run_id, "mnistexp.best_run", best.name)
        report.append(f"best: {best.name} {metric}={getattr(best, metric):.4f} (run {best.run_id})")
        for key in keys:
            figure = plots.metric_by_param([row.params.get(key, "?") for row in finished],
                                           [getattr(row, metric) for row in finished], key, metric)
            client.log_figure(parent_run_id, figure, f"sweep/{metric}_by_{key}.png")
            plots.close(figure)
    report.append(summary.to_text(table, keys))
    status = "KILLED" if "KILLED" in statuses else "FAILED" if "FAILED" in statuses or not finished else "FINISHED"
    client.set_terminated(parent_run_id, status)
    by_id = {run.info.run_id: run for run in children}
    failures = [f"job {row.name} {row.status}: {by_id[row.run_id].data.tags.get('mnistexp.error', 'no error recorded')}"
                for row in table if row.status in ("FAILED", "KILLED") and row.run_id in by_id]
    return "\n".join(report), failures
