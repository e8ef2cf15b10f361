"""Random values for every config key: always a clear answer, never a traceback, never a run left RUNNING."""

from __future__ import annotations

import os
import subprocess

import pytest
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from omegaconf import OmegaConf

from mnistexp import data as data_lib
from mnistexp.config import ConfigError, validate
from mnistexp.errors import DataError
from mnistexp.tracking import flatten

from .conftest import MNISTEXP

def all_keys(compose_cfg) -> list[str]:
    return sorted(flatten(OmegaConf.to_container(compose_cfg(), resolve=True)))


SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="'\\\\"),
                    max_size=12)
SCALARS = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    SAFE_TEXT,
)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-5, 300), SAFE_TEXT), max_size=4))


def as_override(key: str, value) -> str:
    """The value in Hydra's override grammar."""

    def render(item) -> str:
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
        return "'" + item + "'"

    return f"{key}={render(value)}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_for_any_key_is_accepted_or_refused_by_name(compose_cfg, data):
    key = data.draw(st.sampled_from(all_keys(compose_cfg)))
    override = as_override(key, data.draw(VALUES))
    try:
        cfg = compose_cfg(override)
    except ConfigCompositionException as error:  # Hydra's own message: wrong type for the schema
        assert key.split(".")[-1] in str(error) or key in str(error.__cause__ or "")
        return
    try:
        validate(cfg)
    except ConfigError as error:
        assert error.key.startswith(key.split(".")[0]), (override, error)
        return
    if key.startswith("data."):
        try:
            data_lib.load(cfg.data.name, cfg.data.path, cfg.data.image_shape, len(cfg.data.class_names))
        except DataError:
            pass


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_cli_never_shows_a_traceback_or_leaves_a_run_running(compose_cfg, tmp_path_factory, mnist_path, data):
    key = data.draw(st.sampled_from([k for k in all_keys(compose_cfg) if not k.startswith("tracking.uri")]))
    override = as_override(key, data.draw(VALUES))
    workdir = tmp_path_factory.mktemp("property")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MNISTEXP_DATA"] = str(mnist_path)
    tiny = ["trainer.limit_train_samples=300", "trainer.limit_test_samples=100", "trainer.epochs=1",
            "tracking.log_model=false", "trainer.verbose=0"]
    done = subprocess.run([MNISTEXP, override, *tiny], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in done.stderr, (override, done.stderr[-3000:])
    if done.returncode != 0:
        assert "mnistexp: error: " in done.stderr or "Error" in done.stderr, (override, done.stderr[-2000:])
    for store in workdir.rglob("mlflow.db"):
        client = MlflowClient(f"sqlite:///{store}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not [run for run in runs if run.info.status == "RUNNING"], override
