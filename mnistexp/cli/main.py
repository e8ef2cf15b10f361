"""The `mnistexp` command: signals first, then the Hydra app; the exit status says how it ended."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NoReturn, TextIO

from mnistexp import errors, imports, interrupts
from mnistexp.errors import report
from mnistexp.tracking import masking

if TYPE_CHECKING:
    from mnistexp.config.schema import MnistexpConfig
    from mnistexp.multirun.handoff import SweepContext

TRACEBACKS_ENV = "MNISTEXP_FULL_ERROR"  # the user's HYDRA_FULL_ERROR, for the jobs of worker processes


def mnistexp() -> None:
    _leave(command(sys.argv[1:]))


def command(args: Sequence[str]) -> int:
    """`mnistexp ARGS` from start to end in this process, its exit status returned: every run ended,
    MLflow's queued metrics written. The console script leaves at once with it; the tests call this
    in their own process where what they check is not the process itself."""
    interrupts.install()  # before Hydra, TensorFlow and MLflow load: a signal then is answered like any other
    read_environment(os.environ)
    sys.argv[1:] = hide_secrets(args)  # passwords stay out of Hydra's files
    try:
        interrupts.phase("importing the libraries")
        with imports.loaded_for_good("mnistexp.cli.app"):  # Hydra and OmegaConf
            from mnistexp.cli.app import run_command

        status = run_command()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`Terminated`), or one a library raised for its own reasons
        status = 128 + signal.SIGINT
    signum = interrupts.settle()  # from here on a signal changes nothing
    if signum is not None:
        report(f"stopped by {signal.Signals(signum).name}; the runs it cut short ended KILLED, none is left RUNNING")
        status = 128 + signum
    if "mnistexp.tracking.spool" in sys.modules:
        spooled = sys.modules["mnistexp.tracking.spool"].closing_line()
        if spooled:
            print(f"mnistexp: {spooled}", file=sys.stderr)
    return _flushed(status)


def hide_secrets(overrides: Sequence[str]) -> list[str]:
    """The overrides with every password in a URL masked; the real ones remembered for where they
    connect, in this process and (through the environment) in a sweep's worker processes."""
    hidden, secrets = masking.hide_in_overrides(list(overrides))
    masking.remember(secrets)
    os.environ[masking.SECRETS_ENV] = json.dumps({**json.loads(os.environ.get(masking.SECRETS_ENV, "{}")), **secrets})
    return hidden


def console_redraws(stream: TextIO) -> bool:
    """Whether this console redraws a line in place (a terminal). A notebook's cell, a pipe or a log
    file keeps every redraw of Keras's progress bar instead: a flood of carriage returns."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def progress_for(cfg: MnistexpConfig, redraws: bool) -> MnistexpConfig:
    """trainer.verbose=1 (a progress bar) on a console that cannot redraw becomes Keras's 2, one line
    per epoch, which is what the bar would leave behind; the run's params say what was used."""
    if cfg.trainer.verbose != 1 or redraws:
        return cfg
    return replace(cfg, trainer=replace(cfg.trainer, verbose=2))


def read_job_environment() -> SweepContext | None:
    """What this process's environment gives a job (a worker's own, a fused member's, the API's):
    mnistexp's inputs read, and the sweep the callback handed to it (None outside a sweep)."""
    from mnistexp.multirun.handoff import SweepContext

    read_environment(os.environ)
    return SweepContext.from_env(os.environ)


@contextlib.contextmanager
def command_environment_kept() -> Iterator[None]:
    """The command sets HYDRA_FULL_ERROR and TRACEBACKS_ENV for Hydra and its workers; a caller that
    runs the command in its own process (the Python API) gets its own values back."""
    keys = ("HYDRA_FULL_ERROR", TRACEBACKS_ENV)
    before = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_environment(environ: Mapping[str, str]) -> None:
    """mnistexp's own inputs from the environment, read here and in each job's process (app.py): the
    user's HYDRA_FULL_ERROR (the app then sets it for Hydra's own use), the secrets of the command
    line, and the signal tests' hook (MNISTEXP_TEST_PAUSE_AT, interrupts.phase)."""
    wanted = environ.get(TRACEBACKS_ENV, environ.get("HYDRA_FULL_ERROR", "0"))
    errors.show_tracebacks(wanted == "1")
    masking.remember(json.loads(environ.get(masking.SECRETS_ENV, "{}")))
    interrupts.pause_at(environ.get("MNISTEXP_TEST_PAUSE_AT"))


def _flushed(status: int) -> int:
    """The exit status once MLflow's queued metrics are written: 1 where they could not be."""
    if "mlflow" not in sys.modules:
        return status
    import mlflow

    try:
        mlflow.flush_async_logging()
    except Exception as error:  # a store the job could not open was reported already; others are news
        if status == 0:
            report(f"could not flush MLflow's queued metrics: {str(error).splitlines()[0]}")
            return 1
    return status


def _leave(status: int) -> NoReturn:
    """End the process once everything is written. Every run is ended and every file closed by now,
    so the interpreter's own teardown is skipped: TensorFlow's alone takes seconds. Not when Ray or
    joblib's worker pool is loaded (their shutdown at exit stops the processes they started, which
    would otherwise hold this command's output open until they time out, 5 minutes for joblib), nor
    under a profiler or debugger (they write their results at exit)."""
    started_workers = any(name in sys.modules for name in ("ray", "joblib.externals.loky.process_executor"))
    if started_workers or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
