"""The built wheel, installed as a user installs it (no -e), run from a directory that is not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from mlflow import MlflowClient

from .helpers import REPO_ROOT, TINY, clean_env, commands, only_children

pytestmark = pytest.mark.xdist_group("wheel")  # tests that share this module's fixtures run on one worker


def test_every_config_group_is_packaged():
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packaged = set(pyproject["tool"]["setuptools"]["packages"])
    conf = REPO_ROOT / "conf"
    groups = {
        "mnistexp.conf." + ".".join(folder.relative_to(conf).parts)
        for folder in conf.rglob("*")
        if folder.is_dir() and folder.name != "__pycache__"
    }
    assert groups <= packaged, groups - packaged


_BUILT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "mlflow.db*", ".pytest_cache", ".hypothesis"
)
_RUN_OUTPUTS = {"mlruns", "outputs", "multirun"}  # what runs leave in the checkout's root (mnistexp/multirun is code)


def _not_sources(folder: str, names: list[str]) -> set[str]:
    ignored = set(_BUILT(folder, names))
    return ignored | (_RUN_OUTPUTS & set(names)) if Path(folder) == REPO_ROOT else ignored


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A scratch venv holding only the wheel; the dependencies come from this venv, never downloaded."""
    scratch = tmp_path_factory.mktemp("wheel")
    source = scratch / "source"
    shutil.copytree(
        REPO_ROOT,
        source,
        symlinks=True,
        ignore=_not_sources,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(scratch / "dist"),
            str(source),
        ],
        check=True,
    )
    [wheel] = (scratch / "dist").glob("mnistexp-*.whl")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # this pip installs there
    # This venv's packages are visible behind the wheel (a .pth line adds no editable finder).
    [site] = venv.glob("lib/python*/site-packages")
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in sys.path if path.endswith("site-packages")))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
    )
    return venv / "bin"


def run(bin_dir: Path, workdir: Path, mnist_path: Path, *args: str, check: bool = True):
    env = {**clean_env(), "MNISTEXP_DATA": str(mnist_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = commands.run(str(bin_dir / args[0]), *args[1:], cwd=workdir, env=env, timeout=900)
    if check:
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_installed_wheel_runs_from_any_directory(installed, tmp_path, mnist_path):
    where = run(installed, tmp_path, mnist_path, "python", "-c", "import mnistexp; print(mnistexp.__file__)")
    assert "site-packages" in where.stdout and str(REPO_ROOT) not in where.stdout  # the wheel, not the checkout

    shown = run(installed, tmp_path, mnist_path, "mnistexp", "experiment=seed_hidden_100", "--cfg", "job")
    assert "hidden_units: 100" in shown.stdout

    run(installed, tmp_path, mnist_path, "mnistexp", "experiment=seed_hidden_100", *TINY)
    run(installed, tmp_path, mnist_path, "mnistexp", "-m", "experiment=hidden_sweep", "model.hidden_units=0,16", *TINY)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent, children = only_children(client)
    assert parent.info.status == "FINISHED" and len(children) == 2
    runs = client.search_runs([parent.info.experiment_id])
    assert not any("mlflow.source.git.commit" in run.data.tags for run in runs)  # tmp_path is no checkout

    compared = run(installed, tmp_path, mnist_path, "mnistexp-runs", "compare")
    assert all(child.info.run_id in compared.stdout for child in children)
    child = children[0]
    run(installed, tmp_path, mnist_path, "mnistexp-runs", "reproduce", child.info.run_id)

    run(installed, tmp_path, mnist_path, "mnistexp-runs", "pin", child.info.run_id, "mine")
    assert (tmp_path / "experiments" / "mine.yaml").is_file()
    pinned = run(installed, tmp_path, mnist_path, "mnistexp", "experiment=mine", "--cfg", "job")
    assert f"hidden_units: {child.data.params['model.hidden_units']}" in pinned.stdout
    assert "run_name: mine" in pinned.stdout


@pytest.mark.slow
def test_git_tags_come_from_the_working_directory(installed, tmp_path, mnist_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "notes.txt").write_text("my experiments\n")
    subprocess.run([*git, "add", "notes.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "start"], cwd=tmp_path, check=True)
    commit = commands.run("git", "rev-parse", "HEAD", cwd=tmp_path).stdout.strip()
    run(installed, tmp_path, mnist_path, "mnistexp", *TINY)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [only] = client.search_runs([client.get_experiment_by_name("mnistexp").experiment_id])
    assert only.data.tags["mlflow.source.git.commit"] == commit
    assert only.data.tags["mnistexp.git_dirty"] == "False"
