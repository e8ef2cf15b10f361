"""The end of a sweep: its children summarised on the parent run (table, best run, plots), which is then ended."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnistexp.config.schema import TrackingConfig
from mnistexp.config.selection import Selection
from mnistexp.multirun import replicates
from mnistexp.tracking import names
from mnistexp.tracking.masking import mask


@dataclass(frozen=True)
class SweepOutcome:
    report: str  # the lines to log: counts, the best run, the table
    failures: list[str]  # one line per child that did not finish


def finish_parent_run(
    tracking_cfg: TrackingConfig,
    parent_run_id: str,
    selection: Selection,
    interrupted: bool,
    own: str | None = None,
    elsewhere: int = 0,
) -> SweepOutcome:
    """Summarise the children on the parent (tables, the best run or configuration by the selection
    rule, plots) and end it.

    The parent ends KILLED if the sweep was interrupted (here, or by a signal this process got) or a
    child was killed, FAILED if a child failed or none finished, else FINISHED. The launcher has
    returned, so a child still RUNNING belongs to a job that is gone: it ends KILLED (interrupted)
    or FAILED, never left RUNNING.

    A study's parent holds the children of every command that ran it: `own` (this command's id)
    limits the status and the failures reported to this command's children, earlier ones staying
    as history. With `elsewhere` trials still running in other processes, the summary is partial:
    it is tagged so, their RUNNING children are left alone and the parent stays RUNNING for the
    last process, whose summary replaces this one.
    """
    from mlflow import MlflowClient

    from mnistexp import interrupts
    from mnistexp.tracking import store
    from mnistexp.tracking.outages import RidingClient

    interrupts.phase("writing the summary")
    store.use_store(tracking_cfg)
    client: Any = RidingClient(MlflowClient(), store.rider_for(tracking_cfg))  # an outage now is waited out
    interrupted = interrupted or interrupts.received() is not None
    partial = elsewhere > 0 and not interrupted
    ended, table, keys = _children_table(client, parent_run_id, selection, interrupted, own if partial else None)
    finished = [row for row in table if row.status == "FINISHED" and not math.isnan(row.metric(selection.metric))]
    report = [
        _log_counts(client, parent_run_id, table, len(finished)),
        *_log_choice(client, parent_run_id, table, keys, selection),
    ]
    interrupted = interrupts.settle() is not None or interrupted  # a later signal changes nothing
    by_id = {run.info.run_id: run for run in ended}
    mine = [row for row in table if own is None or _command_of(by_id.get(row.run_id)) == own]
    if _mark_partial(client, parent_run_id, elsewhere if partial else 0, report):
        return SweepOutcome("\n".join(report), _failures(mine, by_id))  # the parent stays RUNNING for the last
    statuses = [row.status for row in mine]
    status = (
        "KILLED"
        if interrupted or "KILLED" in statuses
        else "FAILED"
        if "FAILED" in statuses or not finished
        else "FINISHED"
    )
    client.set_terminated(parent_run_id, status)
    return SweepOutcome("\n".join(report), _failures(mine, by_id))


def _mark_partial(client: Any, parent_run_id: str, elsewhere: int, report: list[str]) -> bool:
    """Tag the summary partial while `elsewhere` trials still run in other processes (True), or take
    an earlier partial tag away (False): the summary is then the whole study's."""
    if elsewhere:
        note = f"partial: {elsewhere} trial(s) still running in other processes; the last one to end replaces it"
        client.set_tag(parent_run_id, names.PARTIAL_SUMMARY_TAG, note)
        report.append(f"summary {note}")
        return True
    if names.PARTIAL_SUMMARY_TAG in client.get_run(parent_run_id).data.tags:
        client.delete_tag(parent_run_id, names.PARTIAL_SUMMARY_TAG)
    return False


def _failures(rows: list, by_id: dict[str, Any]) -> list[str]:
    return [
        f"job {row.name} {row.status}: {by_id[row.run_id].data.tags.get(names.ERROR_TAG, 'no error recorded')}"
        for row in rows
        if row.status in ("FAILED", "KILLED") and row.run_id in by_id
    ]


def _command_of(run: Any) -> str | None:
    return None if run is None else run.data.tags.get(names.SWEEP_COMMAND_TAG)


def _children_table(
    client: Any, parent_run_id: str, selection: Selection, interrupted: bool, only_own: str | None = None
) -> tuple:
    """The children, every one ended (with `only_own`, only that command's: another process's are
    still training), plus the runs reused for skipped jobs, as a table best first, and the swept
    keys; sweep/summary.csv and the rule in words go on the parent."""
    from mnistexp.multirun import tables
    from mnistexp.tracking import lifecycle

    parent = client.get_run(parent_run_id)
    ended = [
        child if only_own is not None and _command_of(child) != only_own else _ended(client, child, interrupted)
        for child in lifecycle.children_of(client, parent)
    ]
    reused = [client.get_run(run) for tag, run in parent.data.tags.items() if tag.startswith(names.REUSED_TAG_PREFIX)]
    table = tables.rows([*ended, *reused], selection)
    keys = [key for key in parent.data.tags.get(names.SWEPT_KEYS_TAG, "").split(",") if key]
    keys = keys or tables.varying_keys(table)
    client.log_text(parent_run_id, tables.runs_csv(table, keys, selection), names.SUMMARY_ARTIFACT)
    client.set_tag(parent_run_id, names.SELECTION_TAG, selection.describe())
    return ended, table, keys


def _log_counts(client: Any, parent_run_id: str, table: list, finished: int) -> str:
    statuses = [row.status for row in table]
    failed, killed, pruned = statuses.count("FAILED"), statuses.count("KILLED"), statuses.count("PRUNED")
    client.log_metric(parent_run_id, names.JOBS_FINISHED, finished)
    client.log_metric(parent_run_id, names.JOBS_FAILED, failed)
    client.log_metric(parent_run_id, names.JOBS_KILLED, killed)
    if pruned:
        client.log_metric(parent_run_id, names.JOBS_PRUNED, pruned)
    counts = f"sweep {parent_run_id}: {finished} finished, {failed} failed, {killed} killed"
    return counts + (f", {pruned} pruned" if pruned else "")


def _log_choice(client: Any, parent_run_id: str, table: list, keys: list[str], selection: Selection) -> list[str]:
    """The best configuration (with replicates: groups.csv, means and intervals) or the best run, the
    plots, and the table for the console; returns the report's lines."""
    from mnistexp.multirun import tables

    metric = selection.metric
    finished = [row for row in table if row.status == "FINISHED" and not math.isnan(row.metric(metric))]
    configurations = replicates.groups(table, keys, selection)
    replicated = replicates.has_replicates(table)
    lines = []
    if replicated:
        client.log_text(parent_run_id, replicates.groups_csv(configurations, keys), names.GROUPS_ARTIFACT)
    if finished:
        lines.append(
            _log_best_group(client, parent_run_id, configurations, selection)
            if replicated
            else _log_best_run(client, parent_run_id, finished[0], selection)
        )
        _log_plots(client, parent_run_id, configurations, keys, metric)
    lines.append(
        replicates.groups_text(configurations, keys, selection)
        if replicated
        else tables.runs_text(table, keys, selection)
    )
    return lines


def owe_summary(tracking_cfg: TrackingConfig, parent_run_id: str, selection: Selection, interrupted: bool) -> str:
    """The server stayed away while the sweep ended: a note in the spool that `mnistexp-runs sync`
    turns into the parent's summary (and its end) once the server answers; returns the line to report."""
    from pathlib import Path

    from mnistexp.tracking import spool, store

    uri = store.use_store(tracking_cfg)
    sink = spool.opener(Path(tracking_cfg.spool_dir), uri)()
    experiment = sink.experiment(tracking_cfg.experiment, names.EXPERIMENT_KIND)
    tags = {
        names.SPOOL_SUMMARY_TAG: parent_run_id,
        names.SPOOL_SERVER_TAG: mask(uri),
        names.INTERRUPTED_TAG: str(interrupted),
        names.SELECTION_METRIC_TAG: selection.metric,
        names.SELECTION_MODE_TAG: selection.mode,
    }
    note = sink.client.create_run(experiment, run_name=f"summary of sweep {parent_run_id}", tags=tags)
    sink.client.set_terminated(note.info.run_id, "FINISHED")
    return f"sweep {parent_run_id}: its summary waits in the spool {sink.uri} (the tracking server did not answer)"


def summarise_again(uri: str, parent_run_id: str, interrupted: bool) -> None:
    """A sweep parent summarised (and ended) anew from its children on `uri`: what `mnistexp-runs sync`
    does once it has delivered children, or owed summaries."""
    from mlflow import MlflowClient

    from mnistexp.config.schema import compose, typed

    parent = MlflowClient(uri).get_run(parent_run_id)
    tracking_cfg = typed(compose([f"tracking.uri={uri}"]).tracking, TrackingConfig)
    tags = parent.data.tags
    metric, mode = tags.get(names.SELECTION_METRIC_TAG), tags.get(names.SELECTION_MODE_TAG)
    if not metric or not mode:  # a parent made before it recorded its rule: the children's
        metric, mode = _children_rule(MlflowClient(uri), parent)
    finish_parent_run(tracking_cfg, parent_run_id, Selection.of(metric, mode), interrupted)


def _children_rule(client: Any, parent: Any) -> tuple[str, str]:
    from mnistexp.tracking import lifecycle

    children = lifecycle.children_of(client, parent)[:1]
    tags = children[0].data.tags if children else {}
    return tags.get(names.SELECTION_METRIC_TAG, "test_accuracy"), tags.get(names.SELECTION_MODE_TAG, "max")


def _log_best_run(client: Any, parent_run_id: str, best: Any, selection: Selection) -> str:
    """One run per configuration: the best run's figures on the parent; returns the report line."""
    from mnistexp.multirun import tables

    metric = selection.metric
    client.log_metric(parent_run_id, f"best_{metric}", best.metric(metric))
    for name in tables.REPORTED:  # the chosen run's test figures, reported beside the choice
        if name != metric and not math.isnan(best.metric(name)):
            client.log_metric(parent_run_id, f"best_run_{name}", best.metric(name))
    client.set_tag(parent_run_id, names.BEST_RUN_ID_TAG, best.run_id)
    client.set_tag(parent_run_id, names.BEST_RUN_TAG, best.name)
    tested = "".join(f" {name}={best.metric(name):.4f}" for name in tables.REPORTED if name != metric)
    return f"best by {selection.describe()}: {best.name} {metric}={best.metric(metric):.4f}{tested} (run {best.run_id})"


def _log_best_group(client: Any, parent_run_id: str, configurations: list, selection: Selection) -> str:
    """Replicates: the best configuration's means on the parent (every best_* figure is a mean over its
    finished replicates), its best replicate as mnistexp.best_run_id; returns the report line."""
    best = configurations[0]
    metric = selection.metric
    figure = best.figures[metric]
    client.log_metric(parent_run_id, f"best_{metric}", figure.mean)
    client.log_metric(parent_run_id, f"best_{metric}_mean", figure.mean)
    if not math.isnan(figure.ci95):
        client.log_metric(parent_run_id, f"best_{metric}_ci95", figure.ci95)
    for name, interval in best.figures.items():
        if name != metric and not math.isnan(interval.mean):
            client.log_metric(parent_run_id, f"best_run_{name}", interval.mean)
    client.set_tag(parent_run_id, names.BEST_RUN_ID_TAG, best.best_run.run_id)
    client.set_tag(parent_run_id, names.BEST_RUN_TAG, best.best_run.name)
    client.set_tag(parent_run_id, names.BEST_CONFIG_GROUP_TAG, best.key)
    client.set_tag(parent_run_id, names.BEST_CONFIG_TAG, best.name)
    return replicates.report_line(best, replicates.tied_with_best(configurations), selection)


def _log_plots(client: Any, parent_run_id: str, configurations: list, keys: list[str], metric: str) -> None:
    """The selection metric against each swept key (never against seed)."""
    from mnistexp.pipeline import plots

    for key in keys:
        if key == "seed":
            continue
        figure = plots.metric_by_key(configurations, key, [other for other in keys if other not in (key, "seed")])
        client.log_figure(parent_run_id, figure, f"sweep/{metric}_by_{key}.png")
        plots.close(figure)


def _ended(client: Any, child: Any, interrupted: bool) -> Any:
    """The child as it is, or, if it is still RUNNING, ended KILLED or FAILED with the reason."""
    if child.info.status != "RUNNING":
        return child
    status = "KILLED" if interrupted else "FAILED"
    why = "the sweep was interrupted" if interrupted else "its job ended without ending its run"
    from mnistexp.tracking import lifecycle

    client.set_tag(
        child.info.run_id, names.ERROR_TAG, lifecycle.error_line(f"{why}; the run was ended {status} by the sweep")
    )
    client.set_terminated(child.info.run_id, status)
    return client.get_run(child.info.run_id)
