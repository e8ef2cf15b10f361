"""Errors that mean "bad input": the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Something the user can fix; the message names the key, file or URI at fault."""


class DataError(UserError, ValueError):
    """The data source is missing, unreadable or not MNIST-shaped; the message names the file."""


class TrackingError(UserError):
    """The MLflow store cannot be reached or written; the message names the URI."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; usually the learning rate is too high."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python is so the run ends KILLED like on Ctrl-C."""
