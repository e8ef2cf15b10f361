"""The spool: a plain MLflow store on disk (SQLite and artifacts) that keeps the runs a tracking server
did not take within the grace period, until `mnistexp-runs sync` delivers them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mnistexp.tracking.masking import mask
from mnistexp.tracking.recording import Sink
from mnistexp.tracking.store import sqlite_lock

_written: dict[Path, str] = {}  # spools this process wrote to -> the server they were meant for


def spool_uri(folder: Path) -> str:
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


def opener(folder: Path, server: str) -> Callable[[], Sink]:
    """What a Recording calls when the server stays away: a Sink on the spool in `folder`, made
    (once, under a lock, since a sweep's workers may all fall back at once) on first use."""

    def open_sink() -> Sink:
        from mlflow import MlflowClient

        folder.mkdir(parents=True, exist_ok=True)
        sink = Sink(spool_uri(folder), MlflowClient(spool_uri(folder)), artifact_root=folder.resolve() / "artifacts")
        with sqlite_lock(spool_uri(folder)):
            sink.client.search_experiments(max_results=1)  # creates the tables
        _written[folder.resolve()] = mask(server)
        return sink

    return open_sink


def closing_line() -> str | None:
    """The line a command ends with when it left runs in a spool."""
    if not _written:
        return None
    folders = " ".join(str(folder) for folder in _written)
    servers = ", ".join(sorted(set(_written.values())))
    return (
        f"the tracking server {servers} was away: runs are kept in the spool {folders}; "
        f"deliver them with `mnistexp-runs sync --spool {folders}` once it answers"
    )
