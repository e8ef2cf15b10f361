"""The composed config: defaults, groups, overrides, validation, and a CLI that answers without TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf, open_dict

from mnistexp.config.schema import compose
from mnistexp.config.validation import ConfigError, hidden_layer_sizes, validate
from mnistexp.errors import UserError
from mnistexp.multirun.search import check_sweeper

from .helpers import MNISTEXP, REPO_ROOT, commands


def test_defaults_are_the_notebooks_model_a(cfg):
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


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--cfg", "job"],
        ["model.hidden_units=100", "--cfg", "job"],
        ["experiment=seed_hidden_100", "--cfg", "job"],
    ],
)
def test_help_and_cfg_never_import_tensorflow_or_mlflow(args, without_tensorflow_or_mlflow):
    done = commands.run(MNISTEXP, *args, env=without_tensorflow_or_mlflow)
    assert done.returncode == 0, done.stderr
    assert "was imported" not in done.stderr
    assert "hidden_units" in done.stdout


def test_a_bad_value_is_one_line_without_tensorflow(without_tensorflow_or_mlflow):
    done = commands.run(MNISTEXP, "model.hidden_units=-1", env=without_tensorflow_or_mlflow)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["mnistexp: error: model.hidden_units must be an integer >= 0 (got -1)"]


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO_ROOT / "experiments").glob("*.yaml")))
def test_every_experiment_composes_and_validates(name):
    cfg = compose([f"experiment={name}"], return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    validate(cfg)


@pytest.mark.parametrize("option", sorted(path.stem for path in (REPO_ROOT / "conf" / "hparams_search").glob("*.yaml")))
def test_every_search_composes_with_mnistexps_sweeper(option):
    cfg = compose([f"hparams_search={option}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_ == "mnistexp.multirun.search.StudySweeper"
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.storage.startswith("sqlite:///") and cfg.hydra.sweeper.storage.endswith("/optuna.db")
    with open_dict(cfg):
        del cfg["hydra"]
    assert validate(cfg).data.validation_size == 10000


@pytest.mark.parametrize(("name", "hidden_units"), [("seed_no_hidden", 0), ("seed_hidden_100", 100)])
def test_pinned_seed_experiments(compose_cfg, name, hidden_units):
    cfg = compose_cfg(f"experiment={name}")
    validate(cfg)
    assert cfg.model.hidden_units == hidden_units and cfg.tracking.run_name == name
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.optimizer.name) == (5, 32, "adam")


@pytest.mark.parametrize(
    ("launcher", "jobs", "expected"),
    [
        (["hydra/launcher=basic"], 4, "cores"),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], 4, "cores/2"),
        (["hydra/launcher=joblib"], 1, "cores"),  # n_jobs=-1, one job: it gets every core
        (["hydra/launcher=submitit_local"], 4, "cores/4"),
        (["experiment=slurm_sweep"], 4, 2),  # cpus_per_task
        (["hydra/launcher=ray"], 4, 1),  # the CPUs a job asks Ray for: 1 with threads=auto
        (["hydra/launcher=ray", "trainer.threads=3"], 4, 3),
    ],
)
def test_auto_threads_share_the_cores_among_the_jobs_that_run_at_once(launcher, jobs, expected):
    from mnistexp.environment import available_cores
    from mnistexp.multirun.callback import threads_per_job

    cfg = compose(launcher, return_hydra_config=True)
    cores = available_cores()
    wanted = {"cores": cores, "cores/2": max(1, cores // 2), "cores/4": max(1, cores // 4)}.get(expected, expected)
    assert threads_per_job(cfg.hydra.launcher, jobs) == wanted


def test_the_slurm_example_composes_with_the_submitit_launcher():
    cfg = compose(["experiment=slurm_sweep"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.cpus_per_task == 2 and cfg.trainer.threads == "auto"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["trainer.epochs=1.5"], "trainer.epochs must be an integer (got 1.5)"),
        (["trainer.batch_size=abc"], "trainer.batch_size must be an integer (got 'abc')"),
        (["model=nosuch"], "model=nosuch: no such option (choose from: dense)"),
        (["model.hidden_units=0,32"], "model.hidden_units=0,32 gives several values: add -m"),
        (["nosuchkey=1"], "nosuchkey is not a known key"),
        (["seed=null"], "seed must not be null"),
        (["-m", "--cfg", "job"], "Only one of --run, --multirun, --cfg"),
    ],
)
def test_hydras_errors_are_one_line_and_exit_2(args, line, without_tensorflow_or_mlflow):
    done = commands.run(MNISTEXP, *args, env=without_tensorflow_or_mlflow)
    assert done.returncode == 2
    [said] = done.stderr.strip().splitlines()
    assert said.startswith("mnistexp: error: ") and line in said


def test_a_missing_or_broken_experiment_names_what_it_found(tmp_path, without_tensorflow_or_mlflow):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.yaml").write_text("# @package _global_\nmodel:\n  hidden_units: [1, 2\n")
    missing = commands.run(MNISTEXP, "experiment=nosuch", cwd=tmp_path, env=without_tensorflow_or_mlflow)
    assert missing.returncode == 2
    [said] = missing.stderr.strip().splitlines()
    assert f"experiment=nosuch: no such experiment in {tmp_path / 'experiments'}" in said
    assert "found: hidden_sweep, mine, seed_hidden_100, seed_no_hidden, slurm_sweep" in said
    broken = commands.run(MNISTEXP, "experiment=mine", cwd=tmp_path, env=without_tensorflow_or_mlflow)
    assert broken.returncode == 2
    [said] = broken.stderr.strip().splitlines()
    assert said.startswith(f"mnistexp: error: {tmp_path / 'experiments' / 'mine.yaml'}, line ")
    assert "not valid YAML" in said


def test_hydra_full_error_still_shows_the_traceback(without_tensorflow_or_mlflow):
    done = commands.run(MNISTEXP, "trainer.epochs=1.5", env={**without_tensorflow_or_mlflow, "HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "ConfigCompositionException" in done.stderr


def test_the_working_directorys_experiment_wins_over_the_packaged_one(tmp_path, monkeypatch):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "seed_hidden_100.yaml").write_text("# @package _global_\nmodel:\n  hidden_units: 7\n")
    assert compose(["experiment=seed_hidden_100"]).model.hidden_units == 100
    monkeypatch.chdir(tmp_path)
    assert compose(["experiment=seed_hidden_100"]).model.hidden_units == 7


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size"),
        ("trainer.threads=-2", "trainer.threads"),
        ("trainer.threads=many", "trainer.threads"),
        ("trainer.verbose=3", "trainer.verbose"),
        ("trainer.engine=turbo", "trainer.engine"),
        ("model.output_activation=nosuch", "model.output_activation"),
        ("tracking.sample_images=-1", "tracking.sample_images"),
        ("tracking.http_timeout=0", "tracking.http_timeout"),
        ("data.image_shape=[28]", "data.image_shape"),
        ("data.image_shape=[28,0]", "data.image_shape"),
        ("data.class_names=[digits]", "data.class_names"),
        ("data.class_names=[a,a,b,c,d,e,f,g,h,i]", "data.class_names"),
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
        ("seed=-1", "seed"),
        ("tracking.experiment=' '", "tracking.experiment"),
        ("+nosuchkey=1", "nosuchkey"),
        ("+model.nosuch=1", "model.nosuch"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(compose_cfg, override, key):
    with pytest.raises(ConfigError) as refused:
        validate(compose_cfg(override))
    assert refused.value.key == key and str(refused.value).startswith(f"{key} ")
    assert "(got " in str(refused.value)


SKIPPING_TESTS = """
import pytest

def test_skipped_without_a_reason_of_environment():
    pytest.skip("set SOME_DATABASE_URI to run this")

def test_skipped_because_the_environment_cannot_have_it():
    pytest.skip("environment: this machine has no GPU")
"""


@pytest.mark.parametrize(("ci", "failed"), [("1", 1), ("", 0)])
def test_under_ci_a_skip_fails_unless_it_names_its_environment(pytester, monkeypatch, ci, failed):
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(SKIPPING_TESTS)
    result = pytester.runpytest("-p", "tests.ci_policy")
    result.assert_outcomes(failed=failed, skipped=2 - failed)


def test_a_launcher_mnistexp_does_not_know_shares_the_cores_among_all_the_jobs():
    """An unknown parallel launcher may run every job at once: each gets its share, not every core."""
    from omegaconf import OmegaConf

    from mnistexp.environment import available_cores
    from mnistexp.multirun.callback import threads_per_job

    unknown = OmegaConf.create({"_target_": "somewhere.else.ParallelLauncher", "workers": 8})
    assert threads_per_job(unknown, 4) == max(1, available_cores() // 4)
    assert threads_per_job(unknown, 1) == available_cores()


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("heartbeat_interval=0", "hydra.sweeper.heartbeat_interval=0: a whole number, at least 1"),
        ("grace_period=2.5", "hydra.sweeper.grace_period=2.5: a whole number, at least 1"),
        ("grace_period=ten", "hydra.sweeper.grace_period=ten: a whole number, at least 1"),
        ("pruner_startup_trials=-1", "hydra.sweeper.pruner_startup_trials=-1: a whole number, at least 0"),
        ("pruner_warmup_epochs=true", "hydra.sweeper.pruner_warmup_epochs=True: a whole number, at least 0"),
    ],
)
def test_the_studys_whole_number_keys_refuse_anything_else_in_one_line(override, line):
    cfg = compose(["hparams_search=optuna", f"hydra.sweeper.{override}"], return_hydra_config=True)
    with pytest.raises(UserError) as refused:
        check_sweeper(cfg.hydra.sweeper)
    assert str(refused.value) == line


def test_the_studys_whole_number_keys_take_their_least_values():
    least = ["heartbeat_interval=1", "grace_period=1", "pruner_startup_trials=0", "pruner_warmup_epochs=0"]
    cfg = compose(["hparams_search=optuna", *(f"hydra.sweeper.{key}" for key in least)], return_hydra_config=True)
    check_sweeper(cfg.hydra.sweeper)  # raises on a value it refuses
