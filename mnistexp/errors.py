"""Errors that mean "bad input": the CLI prints them as one line and exits non-zero."""

import sys

_tracebacks = {"show": False}  # HYDRA_FULL_ERROR=1 as the user set it (the CLI reads it, app.py in each job)


def show_tracebacks(on: bool | None = None) -> bool:
    """Whether errors are raised with their traceback instead of said in one line; `on` sets it."""
    if on is not None:
        _tracebacks["show"] = on
    return _tracebacks["show"]


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def report(message: str) -> None:
    """One line on stderr in mnistexp's voice, a password in any URL of it masked."""
    from mnistexp.tracking.masking import mask

    print(f"mnistexp: error: {mask(message)}", file=sys.stderr)


class UserError(Exception):
    """Something the user can fix; the message names the key, file or URI at fault."""


class MnistexpError(UserError):
    """What the Python API raises for bad input: its message is the one line `mnistexp` prints."""


class DataError(UserError, ValueError):
    """The data source is missing, unreadable or not MNIST-shaped; the message names the file."""


class TrackingError(UserError):
    """The MLflow store cannot be reached or written; the message names the URI."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; usually the learning rate is too high."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python is so the run ends KILLED like on Ctrl-C."""


class SweepStopped(SystemExit):
    """A sweep ends before its other jobs: what failed its first job would fail them all (said already)."""
