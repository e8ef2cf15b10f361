"""The config schema: types only (every value lives in conf/*.yaml), registered with Hydra's ConfigStore,
and the digests that identify a configuration."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write

from mnistexp.config.selection import Selection

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
# trainer.loss: Keras's losses by name; the categorical_* ones get the labels one-hot (evaluation.loss_targets)
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "categorical_focal_crossentropy")
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
    mistake_images: int = MISSING
    system_metrics: bool = MISSING
    system_metrics_interval: float = MISSING
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

    register_schema()
    with initialize_config_module(config_module=CONFIG_MODULE):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


@contextlib.contextmanager
def hydra_config_set(config: DictConfig) -> Iterator[None]:
    """Hydra's HydraConfig set to this composed config's `hydra` node (what `${hydra:...}` and the app
    read) for the block, and what it was before put back: a job composed outside `@hydra.main`
    (the fused launcher's members, the Python API) runs as a job of the command would."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    hydra_config.set_config(config)
    try:
        yield
    finally:
        hydra_config.cfg = before


def task_part(config: DictConfig) -> DictConfig:
    """A composed config without its `hydra` node: what Hydra hands the task function."""
    task_cfg = copy.deepcopy(config)  # as run_job makes it: the schema's types kept
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def register_schema() -> None:
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
    return f"{Selection.of(metric, mode, validation_size).mode}imize"


def study_storage(tracking_uri: str | None, environment_uri: str | None = None) -> str:
    """Where an Optuna study lives by default: `optuna.db` beside a local MLflow store (not in it: both
    keep an `alembic_version` table), else `optuna.db` in the working directory. The store is
    tracking.uri, else MLFLOW_TRACKING_URI (`environment_uri`, which the YAML reads), else MLflow's
    default. A team with a tracking server gives the study a database of its own:
    hydra.sweeper.storage=postgresql://..."""
    uri = tracking_uri or environment_uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        store = uri[len("sqlite:///") :]
    elif uri.startswith("file:") or "://" not in uri:
        store = urlparse(uri).path if uri.startswith("file:") else uri
    else:
        store = "mlflow"  # a server or database: no folder of its own here, so the working directory
    return f"sqlite:///{os.path.join(os.path.dirname(os.path.abspath(store)), 'optuna.db')}"


# Keys that change where or how a run is reported or ranked, never what it computes: left out of the
# config digest (tracking.skip_finished) and of the keys `mnistexp-runs compare` tells runs apart by.
RESULT_NEUTRAL_KEYS = ("tracking", "selection", "trainer.verbose", "data.path")


def selection_of(config: MnistexpConfig) -> Selection:
    """The selection rule this config sets (see conf/selection/default.yaml)."""
    return Selection.of(config.selection.metric, config.selection.mode, config.data.validation_size)


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
