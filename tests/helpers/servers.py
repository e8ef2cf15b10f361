"""Servers the tests start, every one on 127.0.0.1 and stopped by its own process group: `mlflow server`
(in a block, or one a test stops and starts again) and any command that answers HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import clean_env


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


def wait_until_it_answers(process: subprocess.Popen, url: str, log: Path, seconds: float = 180) -> None:
    """Until GET `url` answers 200; the process dying or `seconds` passing fails the test with its log."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"{url} did not answer within {seconds} s"
        time.sleep(0.3)


@contextlib.contextmanager
def serving(command: list[str], port: int, ready_path: str, log: Path, seconds: float = 180, **popen):
    """Run a server command in its own process group until the block ends; yields its URL once
    GET `ready_path` answers 200 (the process dying or `seconds` passing fails the test)."""
    popen.setdefault("env", dict(os.environ))
    popen["env"].setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # its 7 huey workers: seconds of CPU
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **popen)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_it_answers(process, f"{url}{ready_path}", log, seconds)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(timeout=60)


class Server:
    """`mlflow server` on one loopback port that a test can stop and start again."""

    def __init__(self, workdir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.workdir, self.port, self.extra, self.env = workdir, free_port(), extra, env or {}
        self.db = workdir / "server.db"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.workdir / "server-artifacts"),
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            *self.extra,
        ]
        log = (self.workdir / "server.log").open("a")
        env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.env)  # no huey workers: seconds of CPU
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_until_it_answers(self.process, f"{self.url}/health", self.workdir / "server.log")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 9)  # as a crash would: no clean shutdown
            self.process.wait(timeout=60)
        self.process = None

    def log_tail(self) -> str:
        """The end of the server's own log, for a failed test's message."""
        log = self.workdir / "server.log"
        return "\n--- server.log ---\n" + log.read_text()[-3000:] if log.exists() else ""

    def child_training(self, index: int) -> bool:
        """Whether the index-th child run is RUNNING with an epoch logged (read from the server's own file)."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=0.2) as db:
                runs = db.execute(
                    "SELECT runs.run_uuid, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                    "WHERE tags.key = 'mlflow.parentRunId' ORDER BY runs.start_time"
                ).fetchall()
                if len(runs) <= index or runs[index][1] != "RUNNING":
                    return False
                return bool(db.execute(f"SELECT 1 FROM metrics WHERE run_uuid = '{runs[index][0]}'").fetchall())
        except sqlite3.Error:
            return False
