"""Running `mnistexp` and `mnistexp-runs` as a user does: a new process, its output captured; or,
where the test does not examine the process itself, the command's entry point in this process."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

from . import MNISTEXP, MNISTEXP_RUNS, absl_to_the_real_stderr, clean_env


def run(
    program: str,
    *args: str,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """`program ARGS` in `cwd` with `env` (default: this environment without a tracking URI); text
    output captured. `check`: a non-zero exit fails the test, showing the end of what it printed."""
    done = subprocess.run(
        [program, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _checked(done, check)


def run_here(
    program: str,
    *args: str,
    cwd: Path | str,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess:
    """`run`'s result for `mnistexp ARGS` or `mnistexp-runs ARGS`, from the command's entry point
    called in this process: this call's directory, environment and root logger for the command's
    own, everything written to stdout and stderr captured (Python's and the C libraries', at the
    file descriptors), the exit status it returns or exits with, and an escaping exception printed
    and exiting 1 as Python would. It runs the command's code without the seconds a new process
    spends importing TensorFlow and MLflow; what a process is (its signals, its imports, TensorFlow's
    thread pools, fixed once per process) stays for the tests that use `run`."""
    commands = {MNISTEXP: _mnistexp, MNISTEXP_RUNS: _mnistexp_runs}
    if program not in commands:
        raise ValueError(f"run_here runs mnistexp and mnistexp-runs only, not {program}")
    with _as_a_process(Path(cwd), clean_env() if env is None else env), _captured() as (out, err):
        try:
            status = commands[program](list(args))
        except SystemExit as leaving:  # argparse's usage errors
            status = leaving.code if isinstance(leaving.code, int) else 1
        except Exception:
            traceback.print_exc()
            status = 1
    done = subprocess.CompletedProcess([program, *args], status, out.getvalue(), err.getvalue())
    return _checked(done, check)


def _mnistexp_runs(args: list[str]) -> int:
    from mnistexp.cli.runs import mnistexp_runs

    return mnistexp_runs(args)


def _mnistexp(args: list[str]) -> int:
    """The `mnistexp` console script without its exit: its signal handlers, the signals it saw and
    Hydra's global state are put back as they were once it returns."""
    from hydra.core.global_hydra import GlobalHydra

    from mnistexp import interrupts
    from mnistexp.cli.main import command

    handlers = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    argv, unraisable = sys.argv[:], sys.unraisablehook
    sys.argv = [MNISTEXP, *args]
    try:
        return command(args)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        sys.argv, sys.unraisablehook = argv, unraisable
        interrupts.reset()
        interrupts.pause_at(None)
        GlobalHydra.instance().clear()


def _checked(done: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    if check and done.returncode != 0:
        command = " ".join([Path(done.args[0]).name, *done.args[1:]])
        raise AssertionError(f"{command} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


@contextlib.contextmanager
def _as_a_process(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """This process with `cwd`, exactly `env`, a root logger without handlers (the command's
    logging setup then sets its own, as in a new process), and MLflow's tracking and registry URIs
    and active experiment unset; all put back afterwards, the command's log handlers closed."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_uris
    import mlflow.tracking._tracking_service.utils as tracking_uris
    import mlflow.tracking.fluent as fluent

    from mnistexp import errors

    absl_to_the_real_stderr()  # a module fixture runs before the autouse fixture that does it for each test
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_uris = tracking_uris._tracking_uri, registry_uris._registry_uri
    saved_experiment, saved_tracebacks = fluent._active_experiment_id, errors.show_tracebacks()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    root.handlers = []
    tracking_uris._tracking_uri, registry_uris._registry_uri = None, None
    try:
        yield
    finally:
        assert mlflow.active_run() is None, "the command left an MLflow run active"
        for handler in root.handlers:  # the command's own (Hydra's job log file among them)
            if handler not in saved_handlers:
                handler.close()
        root.handlers = saved_handlers
        root.setLevel(saved_level)
        tracking_uris._tracking_uri, registry_uris._registry_uri = saved_uris
        fluent._active_experiment_id = saved_experiment
        absl_to_the_real_stderr()  # not the capture of this call, closed by now
        errors.show_tracebacks(saved_tracebacks)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything written to file descriptors 1 and 2 (and so to sys.stdout and sys.stderr) inside the
    block, as text once it ends."""
    out, err = io.StringIO(), io.StringIO()
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        saved = os.dup(1), os.dup(2)
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        try:
            yield out, err
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.stdout, sys.stderr = streams
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for file, text in ((out_file, out), (err_file, err)):
                file.seek(0)
                text.write(file.read().decode(errors="replace"))
