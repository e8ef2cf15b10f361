"""Fixtures only (helpers live in tests/helpers): configs in layers, the real MNIST file, a store, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings
from omegaconf import DictConfig, OmegaConf

from mnistexp.config.schema import compose

from .helpers import MNISTEXP, REPO_ROOT, absl_to_the_real_stderr, clean_env, commands, stores

SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
pytest_plugins = [
    "pytester",
    "tests.ci_policy",  # under CI, a skip that names no environment fails
    "tests.longest_first",  # xdist's work units longest first, by tests/durations.json
]

# Under CI the property tests draw the same examples every run: a red CI is then reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# Ray starts its workers at nice 15 (its worker_niceness), so beside this suite's other workers on
# two cores they all but stop: Ray's tests, not its networking, are what this changes (README).
os.environ.setdefault("RAY_worker_niceness", "0")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` (pyproject's addopts): one worker more than the cores this process may use. Many
    tests wait on a subprocess, a server or a grace period, and the extra worker uses the core they
    leave idle (README). xdist's own PYTEST_XDIST_AUTO_NUM_WORKERS still wins."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's implementation reads it
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


@pytest.fixture(scope="session", autouse=True)
def _working_directory_out_of_the_checkout(tmp_path_factory: pytest.TempPathFactory):
    """Each worker works in a folder of its own: what runs in this process (the API, a module's
    fixture) puts MLflow's ./mlruns and Hydra's outputs/ where it runs, which was the checkout (seen:
    46 runs' artifacts under ./mlruns/1 after one CI run). A test may still chdir for itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _absl_writes_to_the_real_stderr():
    """Hydra's logging setup, run in this process (the Python API), would close the capture absl holds."""
    absl_to_the_real_stderr()
    yield


@pytest.fixture(autouse=True)
def _forget_signals():
    """A signal one test sends to this process must not make a later test's sweep look interrupted."""
    yield
    from mnistexp import interrupts

    interrupts.reset()


@pytest.fixture(scope="session")
def cfg_defaults() -> DictConfig:
    """conf/ composed once for the whole session, as `mnistexp` with no overrides composes it
    (lightning-hydra-template's cfg_train_global). Tests take a copy: `cfg` or `compose_cfg`."""
    return compose()


@pytest.fixture
def cfg(cfg_defaults: DictConfig) -> DictConfig:
    """A test's own copy of the defaults, free to change (lightning-hydra-template's cfg_train)."""
    return OmegaConf.create(cfg_defaults)


@pytest.fixture
def compose_cfg():
    """compose_cfg("model.hidden_units=100", ...) -> the DictConfig that `mnistexp ...` would run: the
    overrides go through Hydra, which a copy of the defaults would skip (groups, experiments, errors)."""

    def _compose(*overrides: str):
        return compose(overrides)

    return _compose


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """The full MNIST file: MNISTEXP_DATA if set, else ../shared/data/mnist.npz."""
    path = Path(os.environ.get("MNISTEXP_DATA", SHARED_MNIST))
    if not path.is_file():
        pytest.fail(f"MNIST not found at {path}: set MNISTEXP_DATA or place ../shared beside the repo")
    return path


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store in the test's own directory."""
    return f"sqlite:///{tmp_path / stores.STORE_FILE}"


@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow store, its tables made once for this worker (helpers/stores.py)."""
    return stores.make_template(tmp_path_factory.mktemp("store-template"))


@pytest.fixture(autouse=True)
def _empty_store_in_tmp_path(request: pytest.FixtureRequest) -> None:
    """A test with a tmp_path finds an empty ./mlflow.db there, copied from the template, and skips
    MLflow's migrations; one marked `new_store` leaves the store to the code under test."""
    if "tmp_path" in request.fixturenames and not request.node.get_closest_marker("new_store"):
        stores.seed(request.getfixturevalue("store_template"), request.getfixturevalue("tmp_path"))


@pytest.fixture
def run_cli(tmp_path: Path, mnist_path: Path):
    """Run `mnistexp ARGS` in tmp_path as a user would (a new process), on the real MNIST file;
    `in_process=True` calls the command in this process (commands.run_here), for a test that checks
    what the command does and says, not the process it runs in."""

    def _run(*args: str, env: dict[str, str] | None = None, check: bool = True, in_process: bool = False):
        environment = clean_env(MNISTEXP_DATA=str(mnist_path), **(env or {}))
        if in_process:
            return commands.run_here(MNISTEXP, *args, cwd=tmp_path, env=environment, check=check)
        return commands.run(MNISTEXP, *args, cwd=tmp_path, env=environment, check=check)

    return _run
