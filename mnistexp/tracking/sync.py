"""`mnistexp-runs sync`: the spool's runs delivered to their tracking server, whole and once.

A spooled run is found on the server by its `mnistexp.run_key` (the run its job began there before
the server went away, or one made now), and everything is written again: params (the same values),
tags, every metric point with its own step and timestamp (the store keeps one of equal points),
artifacts (overwritten by path), dataset inputs (kept once), LoggedModels (found by their key) and
the run's end. Running it twice therefore creates nothing twice. What was delivered leaves the spool;
the sweep parents whose summary was owed, or whose children arrived, are summarised again.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistexp.errors import UserError
from mnistexp.tracking import names, spool
from mnistexp.tracking.masking import MASK, mask


@dataclass
class Delivered:
    runs: list[str] = field(default_factory=list)  # server run ids written
    summaries: list[str] = field(default_factory=list)  # sweep parents summarised again
    left: list[str] = field(default_factory=list)  # spooled runs still RUNNING: not delivered


def deliver_spool(folder: Path, server: str | None, summarise: Callable[[str, str, bool], None]) -> Delivered:
    """Deliver every ended run of the spool in `folder` to `server` (default: the one each run was
    meant for); `summarise(server, parent_run_id, interrupted)` writes a sweep parent's summary."""
    from mlflow import MlflowClient

    if not (folder / "mlflow.db").is_file():
        return Delivered()  # nothing was spooled, or everything was delivered already
    source = MlflowClient(spool.spool_uri(folder))
    done = Delivered()
    notes, parents = [], set()
    for run in _spooled_runs(source):
        if names.SPOOL_SUMMARY_TAG in run.data.tags:
            notes.append(run)
            continue
        if run.info.status == "RUNNING":
            done.left.append(run.info.run_id)
            continue
        target = MlflowClient(_server_of(run, server))
        run_id = copy_run(source, target, run)
        done.runs.append(run_id)
        if "mlflow.parentRunId" in run.data.tags:
            parents.add((target.tracking_uri, run.data.tags["mlflow.parentRunId"]))
        _forget(source, run)
    for note in notes:
        uri = _server_of(note, server)
        parent = note.data.tags[names.SPOOL_SUMMARY_TAG]
        summarise(uri, parent, note.data.tags.get(names.INTERRUPTED_TAG) == "True")
        done.summaries.append(parent)
        parents.discard((MlflowClient(uri).tracking_uri, parent))
        _forget(source, note)
    for uri, parent in sorted(parents):  # their children changed since the sweep summarised them
        status = MlflowClient(uri).get_run(parent).info.status
        summarise(uri, parent, status == "KILLED")
        done.summaries.append(parent)
    if not done.left and not _spooled_runs(source):
        shutil.rmtree(folder, ignore_errors=True)  # nothing left: the spool goes too
    return done


def _spooled_runs(source: Any) -> list:
    runs = []
    for experiment in source.search_experiments():
        runs += source.search_runs([experiment.experiment_id], max_results=50_000, order_by=["attributes.start_time"])
    return sorted(runs, key=lambda run: run.info.start_time)


def _server_of(run: Any, server: str | None) -> str:
    if server:
        return server
    meant = run.data.tags.get(names.SPOOL_SERVER_TAG, "")
    if not meant or MASK in meant:
        raise UserError(
            f"spooled run {run.info.run_id} was meant for {meant or 'an unknown server'}: "
            "name the server with --tracking-uri (or MLFLOW_TRACKING_URI)"
        )
    return meant


def copy_run(source: Any, target: Any, run: Any) -> str:
    """The spooled run on the target store (found by its run key, or made), written whole; its id there."""
    from mlflow.entities import Param, RunTag

    experiment = source.get_experiment(run.info.experiment_id)
    experiment_id = _experiment(target, experiment.name)
    run_id = _target_run(target, experiment_id, run)
    tags = [RunTag(key, value) for key, value in run.data.tags.items()]
    params = [Param(key, value) for key, value in run.data.params.items()]
    for start in range(0, max(len(tags), len(params)), 100):
        target.log_batch(run_id, params=params[start : start + 100], tags=tags[start : start + 100])
    models = _copy_models(source, target, run, run_id, experiment_id)
    linked = {(point.key, point.step, point.timestamp): model for model, points in models for point in points}
    _copy_metrics(source, target, run, run_id, linked)
    if run.inputs and run.inputs.dataset_inputs:
        target.log_inputs(run_id, datasets=list(run.inputs.dataset_inputs))
    with tempfile.TemporaryDirectory(prefix="mnistexp-sync-") as scratch:
        if source.list_artifacts(run.info.run_id):
            local = source.download_artifacts(run.info.run_id, "", scratch)
            target.log_artifacts(run_id, local)
    target.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
    return run_id


def _experiment(target: Any, name: str) -> str:
    found = target.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(target.create_experiment(name, tags=names.EXPERIMENT_KIND))


def _target_run(target: Any, experiment_id: str, run: Any) -> str:
    key = run.data.tags.get(names.RUN_KEY_TAG)
    if key:
        found = target.search_runs(
            [experiment_id], filter_string=f"tags.`{names.RUN_KEY_TAG}` = '{key}'", max_results=1
        )
        if found:
            return str(found[0].info.run_id)
    made = target.create_run(
        experiment_id, start_time=run.info.start_time, tags=dict(run.data.tags), run_name=run.info.run_name
    )
    return str(made.info.run_id)


def _copy_metrics(source: Any, target: Any, run: Any, run_id: str, linked: dict) -> None:
    from mlflow.entities import Metric

    points = [
        Metric(
            point.key, point.value, point.timestamp, point.step, model_id=linked.get((key, point.step, point.timestamp))
        )
        for key in run.data.metrics
        for point in source.get_metric_history(run.info.run_id, key)
    ]
    for start in range(0, len(points), 1000):
        target.log_batch(run_id, metrics=points[start : start + 1000])


def _copy_models(source: Any, target: Any, run: Any, run_id: str, experiment_id: str) -> list:
    """Every LoggedModel of the spooled run, on the target (found by its key, or made and filled);
    returns (target model id, the metric points linked to it) pairs."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.entities.logged_model_status import LoggedModelStatus

    pairs = []
    spooled = source.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    for model in spooled:
        key = model.tags.get(names.MODEL_KEY_TAG, model.model_id)
        found = target.search_logged_models([experiment_id], filter_string=f"tags.`{names.MODEL_KEY_TAG}` = '{key}'")
        copy = (
            found[0]
            if found
            else target.create_logged_model(
                experiment_id,
                name=model.name,
                source_run_id=run_id,
                tags={**model.tags, names.MODEL_KEY_TAG: key},
                params=model.params,
                model_type=model.model_type,
            )
        )
        if copy.status != LoggedModelStatus.READY:
            _fill_model(source, target, model, copy, run_id)
        outputs = target.get_run(run_id).outputs
        if copy.model_id not in {output.model_id for output in (outputs.model_outputs if outputs else [])}:
            target.log_outputs(run_id, [LoggedModelOutput(copy.model_id, 0)])
        pairs.append((copy.model_id, source.get_logged_model(model.model_id).metrics or []))
    return pairs


def _fill_model(source: Any, target: Any, model: Any, copy: Any, run_id: str) -> None:
    """The model's files on the target, its MLmodel naming the target's run and model."""
    import mlflow.artifacts
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="mnistexp-sync-model-") as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model.artifact_location, dst_path=scratch, tracking_uri=source.tracking_uri
        )
        described = Model.load(Path(local, "MLmodel"))
        described.run_id, described.model_id, described.model_uuid = run_id, copy.model_id, copy.model_id
        described.artifact_path = copy.artifact_location
        described.save(str(Path(local, "MLmodel")))
        target.log_model_artifacts(copy.model_id, local)
    target.finalize_logged_model(copy.model_id, "READY")


def _forget(source: Any, run: Any) -> None:
    """The delivered run out of the spool: its row and its files."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    source.delete_run(run.info.run_id)
    artifacts = Path(local_file_uri_to_path(run.info.artifact_uri))
    shutil.rmtree(artifacts.parent if artifacts.name == "artifacts" else artifacts, ignore_errors=True)


def describe(done: Delivered, folder: Path, server: str | None) -> str:
    where = f" to {mask(server)}" if server else ""
    if not (done.runs or done.summaries or done.left):
        return f"nothing to sync: no runs wait in the spool {folder}"
    lines = [f"synced {len(done.runs)} runs from the spool {folder}{where}"]
    if done.summaries:
        lines.append(f"summarised again: {', '.join(done.summaries)}")
    if done.left:
        lines.append(
            f"left in the spool, still RUNNING (a job writing there, or one that died): {', '.join(done.left)}"
        )
    return "\n".join(lines)
