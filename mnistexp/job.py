"""One job, top to bottom: config -> data -> pipeline (train, evaluate) -> record, in one MLflow run."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mnistexp import environment, imports, interrupts
from mnistexp.config.schema import MnistexpConfig, selection_of
from mnistexp.config.selection import Selection
from mnistexp.pipeline import data as data_lib
from mnistexp.sweep.handoff import SweepContext
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


def train_and_record(
    cfg: MnistexpConfig,
    overrides: Sequence[str] = (),
    sweep: SweepContext | None = None,
    *,
    verbose: bool = False,
    extra_tags: Mapping[str, str] | None = None,
    thread_share: int | None = None,
) -> JobResult:
    """Train, evaluate and record one job. `sweep` makes its run a child of the sweep's parent run;
    `verbose` (hydra.verbose) lets the libraries' own console lines through; `thread_share` is what
    trainer.threads=auto means outside a sweep (a reproduction takes the original's)."""
    environment.quiet_libraries(verbose)
    data, identity = read_data(cfg, verbose)  # a missing or corrupt file fails before TensorFlow or a run
    from mnistexp.tracking import lifecycle, records, store

    # An unreachable server fails a command at its start, in seconds; a sweep's parent did that check.
    store.use_store(cfg.tracking) if sweep else store.check_store(cfg.tracking)
    selection = selection_of(cfg)
    if cfg.tracking.skip_finished:
        earlier = _finished_run(cfg, identity[names.CONFIG_DIGEST_TAG], sweep, selection)
        if earlier is not None:
            return earlier
    interrupts.phase("importing TensorFlow")
    imports.tensorflow(verbose)
    from mnistexp.pipeline import model, train_and_evaluate

    tags = {**lifecycle.run_tags(selection), **identity, **(extra_tags or {})}
    name = cfg.tracking.run_name or (sweep.run_name(list(overrides)) if sweep else model.name_of(cfg.model))
    with lifecycle.mlflow_run(cfg.tracking, name, tags, sweep.parent_run_id if sweep else None) as run:
        records.log_config(run, cfg, overrides)
        records.log_data(run, data, cfg.data.name)
        trained = train_and_evaluate(
            cfg,
            data,
            callbacks=[records.epoch_metrics_callback(run)],
            thread_share=sweep.threads if sweep else thread_share,
            onednn=environment.onednn_setting(),
        )
        records.log_trained(run, cfg, data, trained)
    metrics = trained.metrics()
    _announce(run, metrics)
    return JobResult(run.run_id, metrics, selection.objective(metrics), run.uri, trained=trained)


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
