"""The composed config: defaults, groups, overrides, validation, and a CLI that answers without TensorFlow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from mnistexp.config import ConfigError, hidden_layer_sizes, validate

from .conftest import MNISTEXP


def test_defaults_are_the_notebooks_model_a(compose_cfg):
    cfg = compose_cfg()
    validate(cfg)
    assert cfg.model.hidden_units == 0
    assert cfg.model.output_activation == "sigmoid"
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("adam", 0.001)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (5, 32)
    assert cfg.trainer.loss == "sparse_categorical_crossentropy"
    assert list(cfg.data.image_shape) == [28, 28] and len(cfg.data.class_names) == 10
    assert cfg.tracking.uri is None


def test_data_path_comes_from_the_environment(compose_cfg, monkeypatch):
    monkeypatch.setenv("MNISTEXP_DATA", "/some/where/mnist.npz")
    assert compose_cfg().data.path == "/some/where/mnist.npz"
    monkeypatch.delenv("MNISTEXP_DATA")
    assert compose_cfg().data.path is None  # None = download through keras.datasets
    assert compose_cfg("data.path=/x.npz").data.path == "/x.npz"


@pytest.mark.parametrize(
    ("overrides", "key", "expected"),
    [
        (["model.hidden_units=100"], "model.hidden_units", 100),
        (["model.hidden_units=[256,128]"], "model.hidden_units", [256, 128]),
        (["optimizer=sgd"], "optimizer.name", "sgd"),
        (["optimizer=rmsprop", "optimizer.learning_rate=0.01"], "optimizer.learning_rate", 0.01),
        (["trainer.epochs=2", "trainer.batch_size=64"], "trainer.batch_size", 64),
        (["data=fashion_mnist"], "data.name", "fashion_mnist"),
        (["tracking.uri=sqlite:///x.db", "tracking.experiment=other"], "tracking.experiment", "other"),
        (["seed=7"], "seed", 7),
    ],
)
def test_overrides_compose_and_validate(compose_cfg, overrides, key, expected):
    cfg = compose_cfg(*overrides)
    validate(cfg)
    value = OmegaConf.select(cfg, key)
    assert (OmegaConf.to_container(value) if OmegaConf.is_config(value) else value) == expected


def test_fashion_mnist_ignores_the_mnist_path(compose_cfg, monkeypatch):
    monkeypatch.setenv("MNISTEXP_DATA", "/data/mnist.npz")
    cfg = compose_cfg("data=fashion_mnist")
    assert cfg.data.path is None and cfg.data.class_names[9] == "Ankle boot"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.hidden_units=-1", "model.hidden_units"),
        ("model.hidden_units=[64,0]", "model.hidden_units"),
        ("model.hidden_units=1000000", "model.hidden_units"),
        ("model.hidden_activation=nosuch", "model.hidden_activation"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.limit_train_samples=0", "trainer.limit_train_samples"),
        ("optimizer.name=nosuch", "optimizer.name"),
        ("optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
        ("optimizer.learning_rate=nan", "optimizer.learning_rate"),
        ("preprocess.flatten=false", "preprocess.flatten"),
        ("seed=-1", "seed"),
        ("tracking.experiment=' '", "tracking.experiment"),
        ("+nosuchkey=1", "nosuchkey"),
        ("+model.nosuch=1", "model.nosuch"),
    ],
)
def test_bad_values_name_their_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as raised:
        validate(compose_cfg(override))
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{key} ")
    assert "(got " in str(raised.value)


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "nosuchkey=1", "nosuchgroup.key=1", "data=nosuch"])
def test_hydra_rejects_wrong_types_and_unknown_keys(compose_cfg, override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg(override)


def test_hidden_layer_sizes():
    assert hidden_layer_sizes(0) == []
    assert hidden_layer_sizes(100) == [100]
    assert hidden_layer_sizes([256, 128]) == [256, 128]
    for bad in (True, 1.5, "3", [], [3, -1]):
        with pytest.raises(ConfigError):
            hidden_layer_sizes(bad)


@pytest.fixture
def without_tensorflow_or_mlflow(tmp_path: Path) -> dict[str, str]:
    """An environment where importing tensorflow, keras or mlflow fails loudly."""
    for name in ("tensorflow", "keras", "mlflow"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('{name} was imported')\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["model.hidden_units=100", "--cfg", "job"],
                                  ["experiment=seed_hidden_100", "--cfg", "job"]])
def test_help_and_cfg_never_import_tensorflow_or_mlflow(args, without_tensorflow_or_mlflow):
    done = subprocess.run([MNISTEXP, *args], env=without_tensorflow_or_mlflow, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "was imported" not in done.stderr
    assert "hidden_units" in done.stdout


def test_a_bad_value_is_one_line_without_tensorflow(without_tensorflow_or_mlflow):
    done = subprocess.run([MNISTEXP, "model.hidden_units=-1"], env=without_tensorflow_or_mlflow,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mnistexp: error: model.hidden_units must be an integer >= 0 (got -1)"
    ]


@pytest.mark.parametrize(("name", "hidden_units"), [("seed_no_hidden", 0), ("seed_hidden_100", 100)])
def test_pinned_seed_experiments(compose_cfg, name, hidden_units):
    cfg = compose_cfg(f"experiment={name}")
    validate(cfg)
    assert cfg.model.hidden_units == hidden_units and cfg.tracking.run_name == name
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer.name) == (5, 32, "adam")


def test_the_slurm_example_composes_with_the_submitit_launcher(compose_cfg):
    from mnistexp.config import compose

    cfg = compose(["experiment=slurm_sweep"], return_hydra_config=True)
    validate(compose_cfg("experiment=slurm_sweep"))
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == cfg.trainer.threads == 2
