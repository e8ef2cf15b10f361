"""Shared fixtures: Hydra composition, the real MNIST file, a temporary MLflow store, a CLI runner."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import settings

from mnistexp.config.schema import compose

from .helpers import MNISTEXP, REPO_ROOT, clean_env

SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
pytest_plugins = ["pytester", "tests.ci_policy"]  # ci_policy: under CI, a skip that names no environment fails

# Under CI the property tests draw the same examples every run: a red CI is then reproducible.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture(autouse=True)
def _forget_signals():
    """A signal one test sends to this process must not make a later test's sweep look interrupted."""
    yield
    from mnistexp import interrupts

    interrupts.reset()


@pytest.fixture
def compose_cfg():
    """compose_cfg("model.hidden_units=100", ...) -> the DictConfig that `mnistexp ...` would run."""

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
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def run_cli(tmp_path: Path, mnist_path: Path):
    """Run `mnistexp ARGS` in tmp_path as a user would (a new process), on the real MNIST file."""

    def _run(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        environment = clean_env(MNISTEXP_DATA=str(mnist_path), **(env or {}))
        done = subprocess.run(
            [MNISTEXP, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
        )
        if check and done.returncode != 0:
            raise AssertionError(f"mnistexp {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return done

    return _run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, workdir: Path, artifacts: Path | None = None):
    """`mlflow server` on a free loopback port for the duration of the block; yields its URL."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    if artifacts is not None:
        command += ["--artifacts-destination", str(artifacts), "--serve-artifacts"]
    with serving(command, port, "/health", workdir / f"mlflow-server-{port}.log", cwd=workdir) as url:
        yield url


@contextlib.contextmanager
def serving(command: list[str], port: int, ready_path: str, log: Path, seconds: float = 180, **popen):
    """Run a server command in its own process group until the block ends; yields its URL once
    GET `ready_path` answers 200 (the process dying or `seconds` passing fails the test)."""
    popen.setdefault("env", dict(os.environ))
    popen["env"].setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # its 7 huey workers: seconds of CPU
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(f"{url}{ready_path}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{command[0]} did not answer within {seconds} s"
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(timeout=60)
