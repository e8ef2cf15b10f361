"""One job, top to bottom: config -> data -> pipeline (train, evaluate) -> record, in one MLflow run."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistexp import environment, imports, interrupts
from mnistexp.config.schema import MnistexpConfig, selection_of
from mnistexp.config.selection import Selection
from mnistexp.errors import DataError
from mnistexp.multirun.handoff import SweepContext
from mnistexp.pipeline import data as data_lib
from mnistexp.tracking import names

log = logging.getLogger("mnistexp")


@dataclass(frozen=True)
class JobResult:
    run_id: str
    metrics: dict[str, float]  # the kept model's figures: val_*, test_*, fit_seconds, ...
    objective: float  # the selection metric's value: what a sweep ranks and a search optimises
    tracking_uri: str
    skipped: bool = False
    trained: object | None = None  # the pipeline's Trained (model, history, evaluation); None when skipped


@dataclass(frozen=True)
class JobSpec:
    """A job as a launcher hands it over: its validated config, its command-line overrides, its sweep."""

    cfg: MnistexpConfig
    overrides: Sequence[str] = ()
    sweep: SweepContext | None = None
    extra_tags: Mapping[str, str] | None = None
    trial: Any = None  # an Optuna study's job: its sweep.pruning.TrialLink (reports each epoch, may prune)


def train_and_record(
    cfg: MnistexpConfig,
    overrides: Sequence[str] = (),
    sweep: SweepContext | None = None,
    *,
    verbose: bool = False,
    extra_tags: Mapping[str, str] | None = None,
    thread_share: int | None = None,
    trial: Any = None,
) -> JobResult:
    """Train, evaluate and record one job. `sweep` makes its run a child of the sweep's parent run;
    `verbose` (hydra.verbose) lets the libraries' own console lines through; `thread_share` is what
    trainer.threads=auto means outside a sweep (a reproduction takes the original's)."""
    [outcome] = train_and_record_together(
        [JobSpec(cfg, overrides, sweep, extra_tags, trial)], verbose=verbose, thread_share=thread_share
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def train_and_record_together(
    specs: Sequence[JobSpec], *, verbose: bool = False, thread_share: int | None = None
) -> list[JobResult | Exception]:
    """`train_and_record` for jobs trained as one program (pipeline.train_together): a run for each,
    ended on its own. Each job's outcome is its JobResult or the error that ended it alone (its data
    unreadable, its loss NaN, its run then FAILED); a signal ends every run KILLED and goes up."""
    environment.quiet_libraries(verbose)
    outcomes: dict[int, JobResult | Exception] = {}
    datasets: dict[int, tuple[data_lib.Dataset, dict[str, str]]] = {}
    for k, spec in enumerate(specs):
        try:  # a missing or corrupt file fails before TensorFlow or a run
            datasets[k] = read_data(spec.cfg, verbose)
        except DataError as error:
            outcomes[k] = error
    if not datasets:
        return [outcomes[k] for k in range(len(specs))]
    from mnistexp.tracking import store

    # An unreachable server fails a command at its start, in seconds; a sweep's parent did that check.
    store.use_store(specs[0].cfg.tracking) if specs[0].sweep else store.check_store(specs[0].cfg.tracking)
    for k in list(datasets):
        spec = specs[k]
        if spec.cfg.tracking.skip_finished:
            earlier = _finished_run(
                spec.cfg, datasets[k][1][names.CONFIG_DIGEST_TAG], spec.sweep, selection_of(spec.cfg)
            )
            if earlier is not None:
                outcomes[k] = earlier
                del datasets[k]
    if datasets:
        outcomes.update(_train_and_record(specs, datasets, verbose, thread_share))
    return [outcomes[k] for k in range(len(specs))]


def _train_and_record(
    specs: Sequence[JobSpec],
    datasets: Mapping[int, tuple[data_lib.Dataset, dict[str, str]]],
    verbose: bool,
    thread_share: int | None,
) -> dict[int, JobResult | Exception]:
    interrupts.phase("importing TensorFlow")
    imports.tensorflow(verbose)
    from mnistexp.pipeline import Job, model, train_together
    from mnistexp.tracking import lifecycle, records

    members = list(datasets)
    outcomes: dict[int, JobResult | Exception] = {}
    with lifecycle.mlflow_runs() as opened:
        runs = {}
        for k in members:
            spec, (data, identity) = specs[k], datasets[k]
            tags = {**lifecycle.run_tags(selection_of(spec.cfg)), **identity, **(spec.extra_tags or {})}
            if spec.sweep and spec.sweep.command:
                tags[names.SWEEP_COMMAND_TAG] = spec.sweep.command
            name = spec.cfg.tracking.run_name or (
                spec.sweep.run_name(list(spec.overrides)) if spec.sweep else model.name_of(spec.cfg.model)
            )
            runs[k] = opened.open(spec.cfg.tracking, name, tags, spec.sweep.parent_run_id if spec.sweep else None)
            records.log_config(runs[k], spec.cfg, spec.overrides)
            records.log_data(runs[k], data, spec.cfg.data.name)
        jobs = [
            Job(specs[k].cfg, datasets[k][0], [records.epoch_metrics_callback(runs[k]), *_trial_callbacks(specs[k])])
            for k in members
        ]
        sweep = specs[members[0]].sweep
        trained = train_together(
            jobs,
            pool=_pool(specs[members[0]].cfg) if len(jobs) > 1 else None,
            thread_share=sweep.threads if sweep else thread_share,
            onednn=environment.onednn_setting(),
        )
        for k, outcome in zip(members, trained, strict=True):
            outcomes[k] = _recorded(opened, runs[k], specs[k], datasets[k][0], outcome)
    return outcomes


def _recorded(runs, run, spec: JobSpec, data: data_lib.Dataset, outcome) -> JobResult | Exception:
    """A job's run, ended: FAILED with its error, or FINISHED with everything it computed."""
    from mnistexp.tracking import records

    if isinstance(outcome, Exception):
        runs.fail(run, outcome)
        return outcome
    records.log_trained(run, spec.cfg, data, outcome)
    if spec.trial is not None and spec.trial.tags():
        run.tags(spec.trial.tags())  # pruned: FINISHED with the epochs it trained, never ranked
    runs.finish(run)
    metrics = outcome.metrics()
    _announce(run, metrics)
    return JobResult(run.run_id, metrics, selection_of(spec.cfg).objective(metrics), run.uri, trained=outcome)


def _trial_callbacks(spec: JobSpec) -> list[Any]:
    return [] if spec.trial is None else [spec.trial.callback()]


def _pool(cfg: MnistexpConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training split a group's jobs drew theirs from (read_data's, before its validation split)."""
    loaded = data_lib.load(cfg.data).limit(cfg.trainer.limit_train_samples, cfg.trainer.limit_test_samples)
    return loaded.x_train, loaded.y_train


def read_data(cfg: MnistexpConfig, verbose: bool) -> tuple[data_lib.Dataset, dict[str, str]]:
    """The job's data (limited, its validation split drawn) and the tags that identify the job: the
    digest of config and data (tracking.skip_finished), and of its configuration (replicates)."""
    from mnistexp.config.schema import config_digest, group_digest

    interrupts.phase("loading the data")
    loaded = data_lib.load(cfg.data, verbose)
    data = loaded.limit(cfg.trainer.limit_train_samples, cfg.trainer.limit_test_samples)
    data = data.split_validation(cfg.data.validation_size, cfg.seed)
    _report(data)
    return data, {
        names.CONFIG_DIGEST_TAG: hashlib.sha256(f"{config_digest(cfg)} {data.digest}".encode()).hexdigest(),
        # the validation split depends on the seed, the file does not: replicates share this one
        names.CONFIG_GROUP_TAG: group_digest(cfg, loaded.digest),
    }


def _announce(run, metrics: Mapping[str, float]) -> None:
    from mnistexp.tracking import store

    kept = "".join(f" {name}={metrics[name]:.4f}" for name in ("val_accuracy", "val_loss") if name in metrics)
    log.info(
        "test_accuracy=%.4f test_loss=%.4f%s run_id=%s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        kept,
        run.run_id,
    )
    log.info("see it: %s, then %s", store.ui_command(run.uri), store.run_page(run.uri, run.experiment_id, run.run_id))


def _finished_run(
    cfg: MnistexpConfig, digest: str, sweep: SweepContext | None, selection: Selection
) -> JobResult | None:
    """With tracking.skip_finished: the earlier FINISHED run of this exact config, reported and reused."""
    import mlflow

    from mnistexp.tracking import lifecycle
    from mnistexp.tracking.outages import TrackingOutageError

    try:
        run_id = lifecycle.find_finished_run(cfg.tracking, digest)
    except TrackingOutageError:
        return None  # the server is away: train it again rather than wait
    if run_id is None:
        return None
    metrics = dict(mlflow.get_run(run_id).data.metrics)
    if sweep:
        mlflow.MlflowClient().set_tag(sweep.parent_run_id, f"{names.REUSED_TAG_PREFIX}{digest[:16]}", run_id)
    log.info(
        "skipped: run %s already FINISHED with this config (%s=%.4f)",
        run_id,
        selection.metric,
        metrics.get(selection.metric, float("nan")),
    )
    return JobResult(run_id, metrics, selection.objective(metrics), mlflow.get_tracking_uri(), skipped=True)


def _report(data: data_lib.Dataset) -> None:
    overview = data.overview()
    shapes = "  ".join(f"{name} {tuple(shape)}" for name, shape in overview["shapes"].items())
    log.info("data: %s", overview["source"])
    log.info("shapes: %s", shapes)
    log.info("first labels: train %s  test %s", overview["first_train_labels"], overview["first_test_labels"])
