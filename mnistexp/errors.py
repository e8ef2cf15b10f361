"""Errors that mean "bad input": the CLI prints them as one line and exits non-zero."""

import os
import sys

# Read when mnistexp is imported, before the CLI sets the variable for Hydra's own use.
SHOW_TRACEBACKS = os.environ.get("HYDRA_FULL_ERROR") == "1"


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def report(message: str) -> None:
    """One line on stderr in mnistexp's voice, a password in any URL of it masked."""
    from mnistexp.tracking.masking import mask

    print(f"mnistexp: error: {mask(message)}", file=sys.stderr)


class UserError(Exception):
    """Something the user can fix; the message names the key, file or URI at fault."""


class DataError(UserError, ValueError):
    """The data source is missing, unreadable or not MNIST-shaped; the message names the file."""


class TrackingError(UserError):
    """The MLflow store cannot be reached or written; the message names the URI."""


class TrainingDivergedError(UserError):
    """The loss became NaN or infinite; usually the learning rate is too high."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python is so the run ends KILLED like on Ctrl-C."""
