"""The whole job on one screen: config -> data -> model -> train -> evaluate -> log."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mnistexp import environment as console
from mnistexp import imports, interrupts
from mnistexp.config.schema import MnistexpConfig, config_digest, group_digest, selection_of
from mnistexp.config.selection import Selection
from mnistexp.config.validation import parameter_count
from mnistexp.pipeline import data as data_lib
from mnistexp.sweep.handoff import REUSED_TAG_PREFIX, SweepContext
from mnistexp.tracking.names import CONFIG_GROUP_TAG

log = logging.getLogger("mnistexp")


@dataclass(frozen=True)
class JobResult:
    run_id: str
    metrics: dict[str, float]  # the kept model's figures: val_*, test_*, fit_seconds, ...
    objective: float  # the selection metric's value: what a sweep ranks and a search optimises
    tracking_uri: str
    skipped: bool = False


def run(
    cfg: MnistexpConfig,
    overrides: Sequence[str] = (),
    sweep: SweepContext | None = None,
    *,
    verbose: bool = False,
    extra_tags: Mapping[str, str] | None = None,
) -> JobResult:
    """Train, evaluate and log one job. `sweep` makes its run a child of the sweep's parent run;
    `verbose` (hydra.verbose) lets the libraries' own console lines through."""
    class_names = list(cfg.data.class_names)
    console.quiet_libraries(verbose)
    # Data first: a missing or corrupt file fails before TensorFlow loads or a run is opened.
    interrupts.phase("loading the data")
    loaded = data_lib.load(cfg.data, verbose)
    data = loaded.limit(cfg.trainer.limit_train_samples, cfg.trainer.limit_test_samples)
    data = data.split_validation(cfg.data.validation_size, cfg.seed)
    _report(data)
    selection = selection_of(cfg)
    digest = hashlib.sha256(f"{config_digest(cfg)} {data.digest}".encode()).hexdigest()
    group = group_digest(cfg, loaded.digest)  # the validation split depends on the seed; the file does not

    from mnistexp.tracking import lifecycle, store

    # An unreachable server fails a command at its start, in seconds; a sweep's parent did that check.
    store.use_store(cfg.tracking) if sweep else store.check_store(cfg.tracking)
    if cfg.tracking.skip_finished:
        earlier = _finished_run(cfg, digest, sweep, selection)
        if earlier is not None:
            return earlier

    interrupts.phase("importing TensorFlow")
    imports.tensorflow(verbose)
    from mnistexp.pipeline import evaluation as evaluate
    from mnistexp.pipeline import model as model_lib
    from mnistexp.pipeline import plots, train
    from mnistexp.tracking import records

    threads = train.threads_for(cfg.trainer, parameter_count(cfg.model, cfg.data), sweep.threads if sweep else None)
    runtime = train.configure_runtime(cfg.seed, cfg.trainer, threads)
    model = model_lib.build(cfg.model, cfg.preprocess, cfg.data)
    train.compile_model(model, cfg.optimizer, cfg.trainer)

    run_name = cfg.tracking.run_name or (sweep.run_name(list(overrides)) if sweep else model.name)
    tags = {
        **lifecycle.environment_tags(),
        **runtime,
        **lifecycle.selection_tags(selection),
        "mnistexp.config_sha256": digest,
        CONFIG_GROUP_TAG: group,
        **(extra_tags or {}),
    }
    with lifecycle.mlflow_run(cfg.tracking, run_name, tags, sweep.parent_run_id if sweep else None) as run:
        records.log_config(run, cfg, overrides)
        records.log_data(run, data, cfg.data.name)
        records.log_model_setup(run, model)
        fitted = train.fit(model, data, cfg.trainer, [records.epoch_metrics_callback(run)], cfg.seed)
        records.log_fit(run, fitted)
        interrupts.phase("evaluating")
        results = evaluate.evaluate(model, data, cfg.trainer, cfg.data)
        interrupts.phase("logging the model")
        logged_model = records.log_model(run, model, cfg.data.image_shape) if cfg.tracking.log_model else None
        records.log_evaluation(run, results, class_names, logged_model)
        interrupts.phase("logging the plots")
        for name, figure in (
            ("confusion_matrix", plots.confusion_heatmap(results.confusion, class_names, results.accuracy)),
            (
                "sample_predictions",
                plots.sample_grid(
                    data.x_test[: cfg.tracking.sample_images], data.y_test, results.predictions, class_names
                ),
            ),
            ("learning_curves", plots.learning_curves(fitted.history, fitted.best_epoch)),
        ):
            run.figure(figure, f"plots/{name}.png")
            plots.close(figure)

    metrics = {
        **fitted.kept_metrics(),
        "test_loss": results.loss,
        "test_accuracy": results.accuracy,
        "fit_seconds": fitted.fit_seconds,
        "samples_per_second": fitted.samples_per_second,
    }
    kept = "".join(f" {name}={metrics[name]:.4f}" for name in ("val_accuracy", "val_loss") if name in metrics)
    log.info("test_accuracy=%.4f test_loss=%.4f%s run_id=%s", results.accuracy, results.loss, kept, run.run_id)
    log.info(
        "see it: %s, then %s",
        store.ui_command(run.uri),
        store.run_page(run.uri, run.experiment_id, run.run_id),
    )
    return JobResult(run.run_id, metrics, selection.objective(metrics), run.uri)


def _finished_run(
    cfg: MnistexpConfig, digest: str, sweep: SweepContext | None, selection: Selection
) -> JobResult | None:
    """With tracking.skip_finished: the earlier FINISHED run of this exact config, reported and reused."""
    import mlflow

    from mnistexp.tracking import lifecycle

    run_id = lifecycle.find_finished_run(cfg.tracking, digest)
    if run_id is None:
        return None
    metrics = dict(mlflow.get_run(run_id).data.metrics)
    if sweep:
        mlflow.MlflowClient().set_tag(sweep.parent_run_id, f"{REUSED_TAG_PREFIX}{digest[:16]}", run_id)
    log.info(
        "skipped: run %s already FINISHED with this config (%s=%.4f)",
        run_id,
        selection.metric,
        metrics.get(selection.metric, float("nan")),
    )
    return JobResult(run_id, metrics, selection.objective(metrics), mlflow.get_tracking_uri(), skipped=True)


def _report(data: data_lib.Dataset) -> None:
    summary = data.summary()
    shapes = "  ".join(f"{name} {tuple(shape)}" for name, shape in summary["shapes"].items())
    log.info("data: %s", summary["source"])
    log.info("shapes: %s", shapes)
    log.info("first labels: train %s  test %s", summary["first_train_labels"], summary["first_test_labels"])
