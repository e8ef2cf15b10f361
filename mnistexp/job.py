"""The whole job on one screen: config -> data -> model -> train -> evaluate -> log."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

from omegaconf import DictConfig

from mnistexp import data as data_lib

log = logging.getLogger("mnistexp")


@dataclass(frozen=True)
class JobResult:
    run_id: str
    test_accuracy: float
    test_loss: float
    tracking_uri: str


def run(cfg: DictConfig, overrides: Sequence[str] = ()) -> JobResult:
    class_names = list(cfg.data.class_names)
    # Data first: a missing or corrupt file fails before TensorFlow loads or a run is opened.
    data = data_lib.load(cfg.data.name, cfg.data.path, cfg.data.image_shape, len(class_names))
    data = data.limit(cfg.trainer.limit_train_samples, cfg.trainer.limit_test_samples)
    _report(data)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the console
    import keras
    import mlflow

    from mnistexp import evaluate, model as model_lib, plots, tracking, train

    keras.utils.set_random_seed(cfg.seed)
    model = model_lib.build(cfg.model, cfg.preprocess, cfg.data.image_shape, len(class_names))
    train.compile_model(model, cfg.optimizer, cfg.trainer)

    with tracking.mlflow_run(cfg.tracking, tags=tracking.environment_tags()) as active:
        tracking.log_config(cfg, overrides)
        tracking.log_data(data, cfg.data.name)
        fitted = train.fit(model, data, cfg.trainer, callbacks=[tracking.epoch_metrics_callback()])
        tracking.log_fit(fitted.fit_seconds, fitted.samples_per_second)
        results = evaluate.evaluate(model, data, cfg.trainer.batch_size, len(class_names))
        model_id = tracking.log_model(model, cfg.data.image_shape) if cfg.tracking.log_model else None
        tracking.log_evaluation(results, class_names, model_id)
        for name, figure in (
            ("confusion_matrix", plots.confusion_heatmap(results.confusion, class_names, results.accuracy)),
            ("sample_predictions", plots.sample_grid(data.x_test[: cfg.tracking.sample_images],
                                                     data.y_test, results.predictions, class_names)),
        ):
            tracking.log_figure(figure, f"plots/{name}.png")
            plots.close(figure)

    uri = mlflow.get_tracking_uri()
    log.info("test_accuracy=%.4f test_loss=%.4f run_id=%s", results.accuracy, results.loss, active.info.run_id)
    log.info("see it: %s", tracking.ui_command(uri))
    return JobResult(active.info.run_id, results.accuracy, results.loss, uri)


def _report(data: data_lib.Dataset) -> None:
    summary = data.summary()
    shapes = "  ".join(f"{name} {tuple(shape)}" for name, shape in summary["shapes"].items())
    log.info("data: %s", summary["source"])
    log.info("shapes: %s", shapes)
    log.info("first labels: train %s  test %s", summary["first_train_labels"], summary["first_test_labels"])
