"""Sweeps on real clusters bound to 127.0.0.1: a Ray head (.ci/ray), Ray in the process, a Slurm node (.ci/slurm)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, REPO_ROOT, TINY, all_runs, clean_env, commands, only_children
from .helpers.sockets import SocketWatch

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time: their default ports clash

# What keeps Ray on loopback (see .ci/ray): no "node IP" found by dialling out, no usage report,
# and the cloud-metadata probe sent to a closed loopback port.
RAY_LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "no_proxy": "127.0.0.1,localhost,::1",
    "NO_PROXY": "127.0.0.1,localhost,::1",
}
# The process names (/proc/PID/comm) of the head's processes and of the driver.
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "DashboardA", "RuntimeEnv", "mnistexp")


def sourced(env_file: Path) -> dict[str, str]:
    """The `export NAME=VALUE` lines of a script's env.sh."""
    pairs = [
        line.removeprefix("export ").split("=", 1)
        for line in env_file.read_text().splitlines()
        if line.startswith("export ")
    ]
    return dict(pairs)


def sweep(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return commands.run(MNISTEXP, "-m", *args, cwd=workdir, env=env, timeout=900)


def test_a_sweep_on_ray_started_inside_the_process_stays_on_loopback(tmp_path, mnist_path):
    """The README's first Ray command, as a user types it (no Ray address or port settings in the
    environment, conftest's worker niceness only): every socket of the driver and of every process
    Ray starts, TCP and UDP, polled for the whole sweep.
    First in the module: the Ray head below is started by the next test and stays up to the module's
    end, and two Rays on one machine of two cores slow each other down several times."""
    home = tmp_path / "home"  # Ray writes ~/.ray/auth_token when it has to make its own token
    home.mkdir()
    process = subprocess.Popen(
        [MNISTEXP, "-m", "hydra/launcher=ray", "model.hidden_units=0,16,32", *TINY],
        cwd=tmp_path,
        env=clean_env(MNISTEXP_DATA=str(mnist_path), HOME=str(home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with SocketWatch(root=process.pid) as sockets:
        output = process.communicate(timeout=900)[0]
    assert process.returncode == 0, output[-4000:]
    assert len(sockets.seen) >= 5  # the watch saw Ray's servers at all
    assert sockets.off_loopback == []
    assert not (home / ".ray").exists()  # the token was the sweep's own, not ~/.ray/auth_token
    parent, children = only_children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert parent.info.status == "FINISHED" and len(children) == 3
    assert all(child.info.status == "FINISHED" for child in children)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with token auth; yields the environment a driver needs."""
    state = tmp_path_factory.mktemp("ray_head")
    subprocess.run(
        ["bash", str(REPO_ROOT / ".ci" / "ray"), "start", str(state), "--num-cpus=2"],
        check=True,
        env=clean_env(**RAY_LOOPBACK),
        timeout=300,
    )
    try:
        yield {**RAY_LOOPBACK, **sourced(state / "env.sh")}
    finally:
        subprocess.run(["bash", str(REPO_ROOT / ".ci" / "ray"), "stop", str(state)], check=True, timeout=120)


def test_a_sweep_on_a_ray_cluster_nests_every_job_under_one_parent(ray_head, tmp_path, mnist_path):
    env = clean_env(**ray_head)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The head's workers have the head's environment: the store and the data come with the sweep.
    with SocketWatch(names=RAY_PROCESSES) as sockets:
        done = sweep(
            tmp_path,
            env,
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address={ray_head['RAY_CI_ADDRESS']}",
            "model.hidden_units=0,16,32",
            f"data.path={mnist_path}",
            *TINY,
        )
    assert done.returncode == 0, done.stderr[-4000:]
    assert sockets.seen and sockets.off_loopback == []  # TCP and UDP, for the whole sweep
    parent, children = only_children(MlflowClient(uri))
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_finished"] == 3
    assert sorted(child.data.params["model.hidden_units"] for child in children) == ["0", "16", "32"]
    assert all(child.info.status == "FINISHED" for child in children)
    assert {child.data.tags["runtime.intra_op_threads"] for child in children} == {"1"}


def test_a_job_that_raises_on_ray_is_a_failed_child_and_the_sweep_exits_1(ray_head, tmp_path, mnist_path):
    env = clean_env(**ray_head, MNISTEXP_DATA=str(mnist_path))
    done = sweep(
        tmp_path,
        env,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={ray_head['RAY_CI_ADDRESS']}",
        "model.hidden_units=-1,16",
        *TINY,
    )
    assert done.returncode == 1, done.stderr[-4000:]
    assert "mnistexp: error: job model.hidden_units=-1 FAILED" in done.stderr
    parent, children = only_children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert {child.data.params["model.hidden_units"]: child.info.status for child in children} == {
        "-1": "FAILED",
        "16": "FINISHED",
    }
    assert parent.info.status == "FAILED"


@pytest.fixture(scope="module")
def slurm():
    """A single-node Slurm cluster with accounting, all daemons on 127.0.0.1; yields its environment."""
    state = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    state.chmod(0o755)  # munged refuses a socket under a folder that not everyone may enter (pytest's are 0700)
    try:
        started = commands.run("bash", str(REPO_ROOT / ".ci" / "slurm"), "start", str(state), timeout=600)
        assert started.returncode == 0, started.stderr[-3000:]
        yield sourced(state / "env.sh")
    finally:
        subprocess.run(["bash", str(REPO_ROOT / ".ci" / "slurm"), "stop", str(state)], check=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def settled_slurm_states(env: dict[str, str], timeout: float = 120) -> list[str]:
    """Every job's state in Slurm's accounting once none is pending or running.

    slurmctld hands job ends to slurmdbd asynchronously, so sacct may still say RUNNING for a job
    whose result submitit has already read.
    """
    deadline = time.monotonic() + timeout
    while True:
        states = commands.run("sacct", "-X", "-n", "-P", "-o", "State", env=env, check=True).stdout.split()
        if not {"PENDING", "RUNNING", "COMPLETING"} & set(states) or time.monotonic() > deadline:
            return states
        time.sleep(1)


SLURM_FITS_TWO_CORES = ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


@pytest.mark.xdist_group("slurm")  # its own worker: one Slurm node per machine (fixed ports)
def test_the_slurm_experiment_runs_on_slurm(slurm, tmp_path, mnist_path):
    env = clean_env(**slurm, MNISTEXP_DATA=str(mnist_path))
    done = sweep(tmp_path, env, "experiment=slurm_sweep", "model.hidden_units=0,16", *SLURM_FITS_TWO_CORES, *TINY)
    assert done.returncode == 0, done.stderr[-4000:]
    parent, children = only_children(MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert parent.info.status == "FINISHED"
    assert sorted(child.data.params["model.hidden_units"] for child in children) == ["0", "16"]
    assert {child.data.tags["runtime.intra_op_threads"] for child in children} == {"1"}  # auto: cpus_per_task
    assert all(child.info.status == "FINISHED" for child in children)
    assert settled_slurm_states(env).count("COMPLETED") >= 2  # the jobs really went through Slurm


@pytest.mark.xdist_group("slurm")
def test_a_failed_and_a_cancelled_slurm_job_are_never_left_running(slurm, tmp_path, mnist_path):
    env = clean_env(**slurm, MNISTEXP_DATA=str(mnist_path))
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    long_job = [
        "trainer.limit_train_samples=30000",
        "trainer.limit_test_samples=200",
        "trainer.epochs=20",
        "trainer.verbose=0",
        "tracking.log_model=false",
    ]
    process = subprocess.Popen(
        [MNISTEXP, "-m", "experiment=slurm_sweep", "model.hidden_units=-1,0", *SLURM_FITS_TWO_CORES, *long_job],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(
        run.info.status == "RUNNING" and store.get_metric_history(run.info.run_id, "loss")
        for run in all_runs(store)
        if "mlflow.parentRunId" in run.data.tags
    ):
        assert time.monotonic() < deadline and process.poll() is None, "the long job never started training"
        time.sleep(1)
    queue = commands.run("squeue", "-h", "-o", "%i", env=env).stdout.split()
    assert queue, "no Slurm job to cancel"
    subprocess.run(["scancel", *queue], env=env, check=True)
    output = process.communicate(timeout=300)[0]
    assert process.returncode != 0, output[-3000:]
    parent, children = only_children(store)
    statuses = {child.data.params["model.hidden_units"]: child.info.status for child in children}
    assert statuses == {"-1": "FAILED", "0": "KILLED"}  # the cancelled job ended its own run KILLED (README)
    assert parent.info.status == "KILLED"
    assert "Traceback" not in output
