"""The end of a sweep: its children summarised on the parent run (table, best run, plots), which is then ended."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnistexp.config import TrackingConfig
from mnistexp.selection import Selection
from mnistexp.sweep_context import REUSED_TAG_PREFIX


@dataclass(frozen=True)
class SweepOutcome:
    report: str  # the lines to log: counts, the best run, the table
    failures: list[str]  # one line per child that did not finish


def finish_parent_run(
    tracking_cfg: TrackingConfig, parent_run_id: str, selection: Selection, interrupted: bool
) -> SweepOutcome:
    """Summarise the children on the parent (table, best run by the selection rule, plots) and end it.

    The parent ends KILLED if the sweep was interrupted (here, or by a signal this process got) or a
    child was killed, FAILED if a child failed or none finished, else FINISHED. The launcher has
    returned, so a child still RUNNING belongs to a job that is gone: it ends KILLED (interrupted)
    or FAILED, never left RUNNING.
    """
    from mlflow import MlflowClient

    from mnistexp import interrupts, plots, summary, tracking

    tracking.use_store(tracking_cfg)
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000
    )
    interrupted = interrupted or interrupts.received() is not None
    ended = [_ended(client, child, interrupted) for child in children]
    reused = [client.get_run(run_id) for tag, run_id in parent.data.tags.items() if tag.startswith(REUSED_TAG_PREFIX)]
    table = summary.rows([*ended, *reused], selection)
    keys = [key for key in parent.data.tags.get("mnistexp.swept_keys", "").split(",") if key]
    keys = keys or summary.varying_keys(table)
    client.log_text(parent_run_id, summary.to_csv(table, keys, selection), "sweep/summary.csv")
    client.set_tag(parent_run_id, "mnistexp.selection", selection.describe())

    metric = selection.metric
    finished = [row for row in table if row.status == "FINISHED" and not math.isnan(row.metric(metric))]
    statuses = [row.status for row in table]
    client.log_metric(parent_run_id, "jobs_finished", len(finished))
    client.log_metric(parent_run_id, "jobs_failed", statuses.count("FAILED"))
    client.log_metric(parent_run_id, "jobs_killed", statuses.count("KILLED"))
    report = [
        f"sweep {parent_run_id}: {len(finished)} finished, {statuses.count('FAILED')} failed, "
        f"{statuses.count('KILLED')} killed"
    ]
    if finished:
        best = finished[0]
        client.log_metric(parent_run_id, f"best_{metric}", best.metric(metric))
        for name in summary.REPORTED:  # the chosen run's test figures, reported beside the choice
            if name != metric and not math.isnan(best.metric(name)):
                client.log_metric(parent_run_id, f"best_run_{name}", best.metric(name))
        client.set_tag(parent_run_id, "mnistexp.best_run_id", best.run_id)
        client.set_tag(parent_run_id, "mnistexp.best_run", best.name)
        tested = "".join(f" {name}={best.metric(name):.4f}" for name in summary.REPORTED if name != metric)
        report.append(
            f"best by {selection.describe()}: {best.name} {metric}={best.metric(metric):.4f}{tested} "
            f"(run {best.run_id})"
        )
        for key in keys:
            figure = plots.metric_by_param(
                [row.params.get(key, "?") for row in finished], [row.metric(metric) for row in finished], key, metric
            )
            client.log_figure(parent_run_id, figure, f"sweep/{metric}_by_{key}.png")
            plots.close(figure)
    report.append(summary.to_text(table, keys, selection))
    interrupted = interrupts.settle() is not None or interrupted  # a later signal changes nothing
    status = (
        "KILLED"
        if interrupted or "KILLED" in statuses
        else "FAILED"
        if "FAILED" in statuses or not finished
        else "FINISHED"
    )
    client.set_terminated(parent_run_id, status)
    by_id = {run.info.run_id: run for run in ended}
    failures = [
        f"job {row.name} {row.status}: {by_id[row.run_id].data.tags.get('mnistexp.error', 'no error recorded')}"
        for row in table
        if row.status in ("FAILED", "KILLED") and row.run_id in by_id
    ]
    return SweepOutcome("\n".join(report), failures)


def _ended(client: Any, child: Any, interrupted: bool) -> Any:
    """The child as it is, or, if it is still RUNNING, ended KILLED or FAILED with the reason."""
    if child.info.status != "RUNNING":
        return child
    status = "KILLED" if interrupted else "FAILED"
    why = "the sweep was interrupted" if interrupted else "its job ended without ending its run"
    client.set_tag(child.info.run_id, "mnistexp.error", f"{why}; the run was ended {status} by the sweep")
    client.set_terminated(child.info.run_id, status)
    return client.get_run(child.info.run_id)
