"""The checks a config's values must pass before anything heavy loads; the first bad key is named."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mnistexp.config.schema import (
    ACTIVATIONS,
    ENGINES,
    LOSSES,
    MAX_HIDDEN_LAYERS,
    MAX_HIDDEN_UNITS,
    MAX_PARAMETERS,
    OPTIMIZERS,
    DataConfig,
    MnistexpConfig,
    ModelConfig,
    typed,
)
from mnistexp.config.selection import EPOCH_METRICS, MODES, RUN_METRICS
from mnistexp.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value that is well-typed but not allowed; the message names the key."""

    def __init__(self, key: str, requirement: str, value: Any):
        super().__init__(f"{key} {requirement} (got {show(value)})")
        self.key = key


def show(value: Any) -> str:
    """A config value as the error messages quote it."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)


def parameter_count(model: ModelConfig, data: DataConfig) -> int:
    """The trainable parameters of the model `model.build` makes from these configs: every Dense
    layer's kernel and bias. Known before TensorFlow loads."""
    widths = [math.prod(data.image_shape), *hidden_layer_sizes(model.hidden_units), len(data.class_names)]
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths))


def hidden_layer_sizes(hidden_units: Any) -> list[int]:
    """0 -> [], N -> [N], [a, b] -> [a, b]; raises ConfigError for anything else."""
    key = "model.hidden_units"
    if _is_int(hidden_units):
        _require(hidden_units >= 0, key, "must be an integer >= 0", hidden_units)
        _require(hidden_units <= MAX_HIDDEN_UNITS, key, f"must be at most {MAX_HIDDEN_UNITS}", hidden_units)
        return [hidden_units] if hidden_units else []
    if isinstance(hidden_units, (list, tuple, ListConfig)):
        sizes = list(hidden_units)
        if 1 <= len(sizes) <= MAX_HIDDEN_LAYERS and all(
            _is_int(units) and 1 <= units <= MAX_HIDDEN_UNITS for units in sizes
        ):
            return sizes
        raise ConfigError(
            key,
            f"must be a list of 1 to {MAX_HIDDEN_LAYERS} integers between 1 and {MAX_HIDDEN_UNITS}",
            hidden_units,
        )
    raise ConfigError(key, "must be an integer >= 0 or a list of positive integers", hidden_units)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, requirement, value)


def _one_of(value: Any, key: str, allowed: Iterable[str]) -> None:
    _require(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


def _optional_positive(value: Any, key: str) -> None:
    _require(value is None or value >= 1, key, "must be null or an integer >= 1", value)


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra's `+key=value` can add keys the schema does not know; a typo must not pass silently."""
    known = {item.name: item for item in fields(schema)}
    for key in node:
        if key not in known:
            raise ConfigError(f"{prefix}{key!s}", "is not a known key (`mnistexp --cfg job` lists them)", node[key])
        nested = known[key].default_factory
        if is_dataclass(nested) and isinstance(node[key], DictConfig):
            _reject_unknown_keys(node[key], nested, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> MnistexpConfig:
    """The config as the typed schema object every module takes, once its values pass the checks the
    schema's types cannot express. Raises ConfigError naming the first bad key."""
    _reject_unknown_keys(cfg, MnistexpConfig)
    config = typed(cfg, MnistexpConfig)
    _check_data_and_model(config)
    _check_trainer(config)
    _check_tracking(config)
    _require(0 <= config.seed < 2**32, "seed", "must be an integer between 0 and 2**32 - 1", config.seed)
    _check_validation_and_selection(config)
    return config


def _check_data_and_model(config: MnistexpConfig) -> None:
    data, model = config.data, config.model
    _require(
        len(data.image_shape) == 2 and all(side >= 1 for side in data.image_shape),
        "data.image_shape",
        "must be two positive integers (height, width)",
        data.image_shape,
    )
    _require(
        len(data.class_names) >= 2 and len(set(data.class_names)) == len(data.class_names),
        "data.class_names",
        "must name at least two classes, each once",
        data.class_names,
    )
    parameters = parameter_count(model, data)
    _require(
        parameters <= MAX_PARAMETERS,
        "model.hidden_units",
        f"gives {parameters:,} parameters; at most {MAX_PARAMETERS:,} are allowed",
        model.hidden_units,
    )
    _one_of(model.hidden_activation, "model.hidden_activation", ACTIVATIONS)
    _one_of(model.output_activation, "model.output_activation", ACTIVATIONS)
    _one_of(config.optimizer.name, "optimizer.name", OPTIMIZERS)
    rate = config.optimizer.learning_rate
    _require(
        math.isfinite(rate) and 0 < rate <= 10, "optimizer.learning_rate", "must be a finite number > 0 and <= 10", rate
    )


def _check_trainer(config: MnistexpConfig) -> None:
    trainer = config.trainer
    for key in ("epochs", "batch_size", "eval_batch_size"):
        _require(getattr(trainer, key) >= 1, f"trainer.{key}", "must be an integer >= 1", getattr(trainer, key))
    _one_of(trainer.loss, "trainer.loss", LOSSES)
    _one_of(trainer.engine, "trainer.engine", ENGINES)
    _require(
        trainer.threads == "auto" or (_is_int(trainer.threads) and 1 <= int(trainer.threads) <= 1024),
        "trainer.threads",
        "must be auto or an integer 1-1024",
        trainer.threads,
    )
    _require(trainer.verbose in (0, 1, 2), "trainer.verbose", "must be 0, 1 or 2", trainer.verbose)
    _optional_positive(trainer.limit_train_samples, "trainer.limit_train_samples")
    _optional_positive(trainer.limit_test_samples, "trainer.limit_test_samples")


def _check_tracking(config: MnistexpConfig) -> None:
    tracking = config.tracking
    for key in ("experiment", "evaluation_experiment", "spool_dir"):
        name = getattr(tracking, key)
        _require(bool(name.strip()), f"tracking.{key}", "must not be empty", name)
    _require(tracking.sample_images >= 0, "tracking.sample_images", "must be an integer >= 0", tracking.sample_images)
    _require(
        tracking.mistake_images >= 0, "tracking.mistake_images", "must be an integer >= 0", tracking.mistake_images
    )
    _require(
        0 < tracking.system_metrics_interval <= 3600,
        "tracking.system_metrics_interval",
        "must be seconds, more than 0 and at most 3600",
        tracking.system_metrics_interval,
    )
    _require(
        0 < tracking.http_timeout <= 3600,
        "tracking.http_timeout",
        "must be whole seconds, 1-3600",
        tracking.http_timeout,
    )
    _require(  # MLflow refuses more than 10 (MLFLOW_HTTP_REQUEST_MAX_RETRIES)
        0 <= tracking.http_retries <= 10, "tracking.http_retries", "must be an integer 0-10", tracking.http_retries
    )
    _require(
        0 <= tracking.outage_grace_seconds <= 7 * 24 * 3600,
        "tracking.outage_grace_seconds",
        "must be whole seconds, 0 to a week",
        tracking.outage_grace_seconds,
    )


def _check_validation_and_selection(config: MnistexpConfig) -> None:
    """The validation split, early stopping and the selection rule: a val_* metric needs a split."""
    size = config.data.validation_size
    _require(
        size >= 0 and (isinstance(size, int) or 0 < size < 1),
        "data.validation_size",
        "must be 0 (none), a count of training examples, or a fraction between 0 and 1",
        size,
    )
    stopping = config.trainer.early_stopping
    _one_of(stopping.monitor, "trainer.early_stopping.monitor", EPOCH_METRICS)
    _one_of(stopping.mode, "trainer.early_stopping.mode", MODES)
    _require(stopping.patience >= 0, "trainer.early_stopping.patience", "must be an integer >= 0", stopping.patience)
    _require(
        math.isfinite(stopping.min_delta) and stopping.min_delta >= 0,
        "trainer.early_stopping.min_delta",
        "must be a number >= 0",
        stopping.min_delta,
    )
    if stopping.enabled:
        _require(
            not stopping.monitor.startswith("val_") or size > 0,
            "trainer.early_stopping.monitor",
            "needs a validation split: set data.validation_size",
            stopping.monitor,
        )
    metric = config.selection.metric
    if metric is not None:
        _one_of(metric, "selection.metric", RUN_METRICS)
        _require(
            not metric.startswith("val_") or size > 0,
            "selection.metric",
            "needs a validation split: set data.validation_size",
            metric,
        )
    _one_of(config.selection.mode, "selection.mode", MODES)
