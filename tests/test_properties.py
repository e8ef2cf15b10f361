"""Random values for every config key: accepted exactly when the key's rule allows them, else refused by name."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnistexp.config.schema import ACTIVATIONS, ENGINES, LOSSES, OPTIMIZERS, compose
from mnistexp.config.selection import EPOCH_METRICS, MODES, RUN_METRICS
from mnistexp.config.validation import ConfigError, validate
from mnistexp.tracking.records import flatten

from .helpers import MNISTEXP, clean_env, commands, stores


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def int_in(low: int, high: float) -> Callable[[Any], bool]:
    return lambda value: is_int(value) and low <= value <= high


def optional_positive(value: Any) -> bool:
    return value is None or int_in(1, math.inf)(value)


def hidden_units(value: Any) -> bool:
    sizes = [value] if is_int(value) else value if isinstance(value, list) else None
    if sizes is None or not all(is_int(size) for size in sizes):
        return False
    if isinstance(value, list) and not (1 <= len(sizes) <= 16 and all(size >= 1 for size in sizes)):
        return False
    widths = [784, *(size for size in sizes if size), 10]
    return (
        all(0 <= size <= 65_536 for size in sizes)
        and sum((fan_in + 1) * fan_out for fan_in, fan_out in itertools.pairwise(widths)) <= 100_000_000
    )


# Every key's rule, written here from the README and conf/ comments, not from mnistexp.config's code,
# for a config that is otherwise the default (no validation split, early stopping off).
RULES: dict[str, Callable[[Any], bool]] = {
    "data.name": lambda value: isinstance(value, str),
    "data.path": lambda value: value is None or isinstance(value, str),
    "data.image_shape": lambda value: (
        isinstance(value, list) and len(value) == 2 and all(int_in(1, math.inf)(side) for side in value)
    ),
    "data.class_names": lambda value: isinstance(value, list) and len(value) >= 2 and len(set(value)) == len(value),
    "data.validation_size": lambda value: int_in(0, math.inf)(value) or (isinstance(value, float) and 0 < value < 1),
    "preprocess.scale": lambda value: isinstance(value, bool),
    "model.hidden_units": hidden_units,
    "model.hidden_activation": lambda value: value in ACTIVATIONS,
    "model.output_activation": lambda value: value in ACTIVATIONS,
    "optimizer.name": lambda value: value in OPTIMIZERS,
    "optimizer.learning_rate": lambda value: is_number(value) and 0 < value <= 10,
    "trainer.epochs": int_in(1, math.inf),
    "trainer.batch_size": int_in(1, math.inf),
    "trainer.eval_batch_size": int_in(1, math.inf),
    "trainer.loss": lambda value: value in LOSSES,
    "trainer.shuffle": lambda value: isinstance(value, bool),
    "trainer.engine": lambda value: value in ENGINES,
    "trainer.jit_compile": lambda value: isinstance(value, bool),
    "trainer.threads": lambda value: value == "auto" or int_in(1, 1024)(value),
    "trainer.deterministic": lambda value: isinstance(value, bool),
    "trainer.verbose": int_in(0, 2),
    "trainer.limit_train_samples": optional_positive,
    "trainer.limit_test_samples": optional_positive,
    "trainer.early_stopping.enabled": lambda value: value is False,  # true would monitor val_loss with no split
    "trainer.early_stopping.monitor": lambda value: value in EPOCH_METRICS,
    "trainer.early_stopping.mode": lambda value: value in MODES,
    "trainer.early_stopping.patience": int_in(0, math.inf),
    "trainer.early_stopping.min_delta": lambda value: is_number(value) and value >= 0,
    "trainer.early_stopping.restore_best_weights": lambda value: isinstance(value, bool),
    "tracking.uri": lambda value: value is None or isinstance(value, str),
    "tracking.experiment": lambda value: isinstance(value, str) and bool(value.strip()),
    "tracking.evaluation_experiment": lambda value: isinstance(value, str) and bool(value.strip()),
    "tracking.run_name": lambda value: value is None or isinstance(value, str),
    "tracking.log_model": lambda value: isinstance(value, bool),
    "tracking.sample_images": int_in(0, math.inf),
    "tracking.mistake_images": int_in(0, math.inf),
    "tracking.system_metrics": lambda value: isinstance(value, bool),
    "tracking.system_metrics_interval": lambda value: is_number(value) and 0 < value <= 3600,
    "tracking.skip_finished": lambda value: isinstance(value, bool),
    "tracking.http_timeout": int_in(1, 3600),
    "tracking.http_retries": int_in(0, 10),
    "tracking.outage_grace_seconds": int_in(0, 7 * 24 * 3600),
    "tracking.spool_dir": lambda value: isinstance(value, str) and bool(value.strip()),
    "selection.metric": lambda value: value is None or (value in RUN_METRICS and not value.startswith("val_")),
    "selection.mode": lambda value: value in MODES,
    "seed": int_in(0, 2**32 - 1),
}


def allows(key: str, value: Any) -> bool:
    """The key's rule on a value as given (a list where a name goes is refused, not an error)."""
    try:
        return bool(RULES[key](value))
    except TypeError:
        return False


# A refusal that depends on two keys names the one that states the need.
BLAMED = {"trainer.early_stopping.enabled": "trainer.early_stopping.monitor"}
NAMES = sorted({*ACTIVATIONS, *OPTIMIZERS, *LOSSES, *ENGINES, *EPOCH_METRICS, *RUN_METRICS, *MODES})
TEXT = st.one_of(
    st.sampled_from(NAMES), st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=10)
)
SCALARS = st.one_of(
    st.integers(-(2**40), 2**40), st.integers(-3, 40), st.floats(width=32), st.booleans(), st.none(), TEXT
)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-5, 300), TEXT), max_size=4))
DEFAULTS = compose()


def test_every_key_has_a_rule(cfg_defaults):
    assert set(RULES) == set(flatten(OmegaConf.to_container(cfg_defaults)))


@settings(max_examples=400, deadline=None)
@given(key=st.sampled_from(sorted(RULES)), value=VALUES)
def test_a_value_is_accepted_exactly_when_its_keys_rule_allows_it(key, value):
    cfg = OmegaConf.create(DEFAULTS)  # a copy, with the schema's types
    try:
        OmegaConf.update(cfg, key, value, merge=False)  # what an override does: the schema converts or refuses
    except OmegaConfBaseException as error:
        assert error.full_key == key or error.full_key.startswith(f"{key}["), (key, value, error)
        assert not allows(key, value), f"the schema refused {key}={value!r}, which the key's rule allows"
        return
    given_value = OmegaConf.to_container(cfg, resolve=True)
    for part in key.split("."):
        given_value = given_value[part]
    try:
        validate(cfg)
    except ConfigError as error:
        assert error.key == BLAMED.get(key, key) and not RULES[key](given_value), (key, given_value, error)
        return
    assert RULES[key](given_value), f"{key}={given_value!r} was accepted"


# Keys whose values start a download (data.name, data.path=null) or reach for another store.
CLI_KEYS = sorted(key for key in RULES if key not in ("data.name", "data.path", "tracking.uri"))


def as_override(key: str, value: Any) -> str:
    """The value in Hydra's override grammar."""

    def render(item: Any) -> str:
        if item is None:
            return "null"
        if isinstance(item, bool):
            return str(item).lower()
        if isinstance(item, float):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(item), repr(item))
        if isinstance(item, int):
            return str(item)
        if isinstance(item, list):
            return "[" + ",".join(render(element) for element in item) + "]"
        return "'" + item.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"{key}={render(value)}"


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(CLI_KEYS), value=VALUES)
def test_the_cli_never_shows_a_traceback_or_leaves_a_run_running(
    tmp_path_factory, store_template, mnist_path, key, value
):
    override = as_override(key, value)
    workdir = tmp_path_factory.mktemp("property")
    stores.seed(store_template, workdir)
    tiny = [
        "trainer.limit_train_samples=300",
        "trainer.limit_test_samples=100",
        "trainer.epochs=1",
        "tracking.log_model=false",
        "trainer.verbose=0",
    ]
    done = commands.run(
        MNISTEXP, override, *tiny, cwd=workdir, env=clean_env(MNISTEXP_DATA=str(mnist_path)), timeout=300
    )
    assert "Traceback" not in done.stderr, (override, done.stderr[-3000:])
    if done.returncode != 0:
        assert done.returncode == 2 and done.stderr.count("mnistexp: error: ") == 1, (override, done.stderr[-2000:])
    for store in workdir.rglob("mlflow.db"):
        client = MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not [run for run in runs if run.info.status == "RUNNING"], override
