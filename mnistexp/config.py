"""The config schema (types, registered with Hydra's ConfigStore) and value checks that run before TensorFlow."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from mnistexp.errors import UserError
from mnistexp.selection import EPOCH_METRICS, MODES, RUN_METRICS, Selection

# Values live in conf/*.yaml; the schema only says what each key may hold.

Node = TypeVar("Node")

# optimizer.name -> its class in keras.optimizers: the one list of optimizers
OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "nadam": "Nadam",
    "adagrad": "Adagrad",
}
ACTIVATIONS = ("relu", "sigmoid", "softmax", "tanh", "gelu", "elu", "selu", "linear")
LOSSES = ("sparse_categorical_crossentropy",)
ENGINES = ("compiled", "keras_fit")
MAX_HIDDEN_UNITS = 65_536
MAX_HIDDEN_LAYERS = 16
MAX_PARAMETERS = 100_000_000  # ~1.2 GB of weights and Adam state in float32


@dataclass
class DataConfig:
    name: str = MISSING
    path: str | None = MISSING
    image_shape: list[int] = MISSING
    class_names: list[str] = MISSING
    validation_size: int | float = MISSING


@dataclass
class PreprocessConfig:
    scale: bool = MISSING


@dataclass
class ModelConfig:
    hidden_units: int | list[int] = MISSING  # 0 = no hidden layer, N = one layer, [a, b] = several
    hidden_activation: str = MISSING
    output_activation: str = MISSING


@dataclass
class OptimizerConfig:
    name: str = MISSING
    learning_rate: float = MISSING


@dataclass
class EarlyStoppingConfig:
    enabled: bool = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    patience: int = MISSING
    min_delta: float = MISSING
    restore_best_weights: bool = MISSING


@dataclass
class TrainerConfig:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    loss: str = MISSING
    shuffle: bool = MISSING
    engine: str = MISSING
    jit_compile: bool = MISSING
    threads: int | str = MISSING  # "auto" or a count
    deterministic: bool = MISSING
    verbose: int = MISSING
    limit_train_samples: int | None = MISSING
    limit_test_samples: int | None = MISSING
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class TrackingConfig:
    uri: str | None = MISSING
    experiment: str = MISSING
    evaluation_experiment: str = MISSING
    run_name: str | None = MISSING
    log_model: bool = MISSING
    sample_images: int = MISSING
    skip_finished: bool = MISSING
    http_timeout: int = MISSING
    http_retries: int = MISSING
    outage_grace_seconds: int = MISSING
    spool_dir: str = MISSING


@dataclass
class SelectionConfig:
    metric: str | None = MISSING
    mode: str = MISSING


@dataclass
class MnistexpConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    seed: int = MISSING


CONFIG_MODULE = "mnistexp.conf"  # conf/ in the repository, inside the package once installed


def compose(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `mnistexp OVERRIDES` would run (./experiments included), composed without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register()
    with initialize_config_module(config_module=CONFIG_MODULE):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def register() -> None:
    """What conf/config.yaml refers to: the schema (`base_config`) and mnistexp's resolvers."""
    ConfigStore.instance().store(name="base_config", node=MnistexpConfig, replace=True)
    OmegaConf.register_resolver("mnistexp.optuna_direction", optuna_direction, replace=True)
    OmegaConf.register_resolver("mnistexp.study_storage", study_storage, replace=True)
    OmegaConf.register_resolver("mnistexp.ray_cpus", ray_cpus, replace=True)


def ray_cpus(threads: int | str) -> int:
    """The CPUs a job asks Ray for: trainer.threads, or 1 for auto."""
    return threads if isinstance(threads, int) else 1


def optuna_direction(metric: str | None, mode: str, validation_size: int | float) -> str:
    """`maximize` or `minimize`: the Optuna study's direction follows the selection rule."""
    return f"{Selection.from_config(metric, mode, validation_size).mode}imize"


def study_storage(tracking_uri: str | None) -> str:
    """Where an Optuna study lives by default: `optuna.db` beside a local MLflow store (not in it: both
    keep an `alembic_version` table), else `optuna.db` in the working directory. A team with a
    tracking server gives the study a database of its own: hydra.sweeper.storage=postgresql://..."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        store = uri[len("sqlite:///") :]
    elif uri.startswith("file:") or "://" not in uri:
        store = urlparse(uri).path if uri.startswith("file:") else uri
    else:
        store = "mlflow"  # a server or database: no folder of its own here, so the working directory
    return f"sqlite:///{os.path.join(os.path.dirname(os.path.abspath(store)), 'optuna.db')}"


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
    data, model, trainer = config.data, config.model, config.trainer

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

    _require(trainer.epochs >= 1, "trainer.epochs", "must be an integer >= 1", trainer.epochs)
    _require(trainer.batch_size >= 1, "trainer.batch_size", "must be an integer >= 1", trainer.batch_size)
    _require(
        trainer.eval_batch_size >= 1, "trainer.eval_batch_size", "must be an integer >= 1", trainer.eval_batch_size
    )
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

    for key in ("experiment", "evaluation_experiment"):
        name = getattr(config.tracking, key)
        _require(bool(name.strip()), f"tracking.{key}", "must not be empty", name)
    _require(
        config.tracking.sample_images >= 0,
        "tracking.sample_images",
        "must be an integer >= 0",
        config.tracking.sample_images,
    )
    _require(
        0 < config.tracking.http_timeout <= 3600,
        "tracking.http_timeout",
        "must be whole seconds, 1-3600",
        config.tracking.http_timeout,
    )
    _require(
        0 <= config.tracking.http_retries <= 10,  # MLflow refuses more than 10 (MLFLOW_HTTP_REQUEST_MAX_RETRIES)
        "tracking.http_retries",
        "must be an integer 0-10",
        config.tracking.http_retries,
    )
    _require(
        0 <= config.tracking.outage_grace_seconds <= 7 * 24 * 3600,
        "tracking.outage_grace_seconds",
        "must be whole seconds, 0 to a week",
        config.tracking.outage_grace_seconds,
    )
    _require(
        bool(config.tracking.spool_dir.strip()), "tracking.spool_dir", "must not be empty", config.tracking.spool_dir
    )
    _require(0 <= config.seed < 2**32, "seed", "must be an integer between 0 and 2**32 - 1", config.seed)
    _check_validation_and_selection(config)
    return config


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


# Keys that change where or how a run is reported or ranked, never what it computes: left out of the
# config digest (tracking.skip_finished) and of the keys `mnistexp-runs compare` tells runs apart by.
RESULT_NEUTRAL_KEYS = ("tracking", "selection", "trainer.verbose", "data.path")


def selection_of(config: MnistexpConfig) -> Selection:
    """The selection rule this config sets (see conf/selection/default.yaml)."""
    return Selection.from_config(config.selection.metric, config.selection.mode, config.data.validation_size)


def typed(node: DictConfig, schema: type[Node]) -> Node:
    """A config node as its schema's dataclass (interpolations resolved)."""
    value = OmegaConf.to_object(node)
    assert isinstance(value, schema), f"{type(value).__name__} is not a {schema.__name__}"
    return value


def as_dict(config: Any) -> dict[str, Any]:
    """A schema object as plain nested dicts and lists."""
    return dataclasses.asdict(config)


def config_digest(config: MnistexpConfig, without: Sequence[str] = ()) -> str:
    """SHA-256 of what determines a result (the data is identified by its own digest, not its path),
    leaving out the keys `without` too."""
    resolved = as_dict(config)
    for dotted in (*RESULT_NEUTRAL_KEYS, *without):
        *parents, leaf = dotted.split(".")
        node = resolved
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(resolved)).encode()).hexdigest()


def group_digest(config: MnistexpConfig, source_digest: str) -> str:
    """What replicates share (`mnistexp.config_group`): the config without `seed` and the digest of
    the data as read, before `seed` draws the validation split from it."""
    return hashlib.sha256(f"{config_digest(config, without=('seed',))} {source_digest}".encode()).hexdigest()
