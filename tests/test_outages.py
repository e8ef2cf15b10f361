"""A tracking store that stops answering: waited for, then the spool, then `sync`; and no password in
anything mnistexp writes. In-process: a SQLite store stands in for the server, behind a switch."""

from __future__ import annotations

import contextlib
import http.server
import logging
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException, RestException

from mnistexp.config.schema import compose
from mnistexp.config.validation import validate
from mnistexp.errors import TrackingError
from mnistexp.tracking import masking, outages, spool, store, sync
from mnistexp.tracking.outages import Rider, TrackingOutageError, unreachable
from mnistexp.tracking.recording import Recording, Sink, start_run

REFUSED = requests.exceptions.ConnectionError("[Errno 111] Connection refused")


class Clock:
    """A clock the rider's waits move forward, so nothing sleeps for real."""

    def __init__(self) -> None:
        self.now, self.waits = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def flaky(failures: int, result: str = "ok"):
    calls = []

    def action() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise MlflowException(
                f"API request to http://127.0.0.1:5/x failed with exception {REFUSED} Max retries exceeded"
            )
        return result

    return action, calls


def test_a_short_outage_is_waited_out_with_one_line_when_it_starts_and_one_when_it_ends(caplog):
    clock = Clock()
    rider = Rider("http://user:pw@127.0.0.1:5", grace=60, clock=lambda: clock.now, sleep=clock.sleep)
    action, calls = flaky(4)
    with caplog.at_level(logging.WARNING, logger="mnistexp"):
        assert rider.call(action) == "ok"
    assert len(calls) == 5
    assert clock.waits == [0.5, 1.0, 2.0, 4.0]  # doubling between attempts
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "does not answer: waiting up to 60 s" in lines[0] and "answers again" in lines[1]
    assert "pw" not in " ".join(lines) and "user:***@" in lines[0]


def test_past_the_grace_the_rider_gives_up_and_later_calls_do_not_wait_again():
    clock = Clock()
    rider = Rider("http://127.0.0.1:5", grace=10, clock=lambda: clock.now, sleep=clock.sleep)
    action, _ = flaky(1000)
    with pytest.raises(TrackingOutageError):
        rider.call(action)
    assert sum(clock.waits) == pytest.approx(10)  # waited the whole grace, no longer
    waited = len(clock.waits)
    with pytest.raises(TrackingOutageError):
        rider.call(action)  # a sweep's next job: one try, no waiting
    assert len(clock.waits) == waited
    back, _ = flaky(0)
    assert rider.call(back) == "ok" and not rider.given_up  # the server answers again


def test_an_answer_that_refuses_is_not_an_outage():
    rider = Rider("http://127.0.0.1:5", grace=10, sleep=lambda seconds: pytest.fail("must not wait"))

    def refused() -> None:
        raise RestException(
            {"error_code": "INVALID_PARAMETER_VALUE", "message": "Changing param values is not allowed"}
        )

    with pytest.raises(RestException):
        rider.call(refused)


@pytest.mark.parametrize(
    ("error", "down"),
    [
        (MlflowException(f"API request to http://h/api failed with exception {REFUSED} Max retries exceeded"), True),
        (MlflowException("API request to http://h/api failed with timeout exception 10. To increase..."), True),
        (requests.exceptions.ReadTimeout("Read timed out"), True),
        (requests.exceptions.RetryError("too many 503 error responses"), True),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}), False),
        (
            MlflowException(
                "API request to endpoint /api failed with error code 401 != 200", error_code="UNAUTHENTICATED"
            ),
            False,
        ),
        (  # CI's words when a restarted server cut a log-batch answer off after its headers
            MlflowException(
                "API request to http://127.0.0.1:39767/api/2.0/mlflow/runs/log-batch failed with exception "
                "('Connection broken: IncompleteRead(0 bytes read, 2 more expected)', "
                "IncompleteRead(0 bytes read, 2 more expected))"
            ),
            True,
        ),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_a_server_that_does_not_answer(error, down):
    assert unreachable(error) is down


@contextlib.contextmanager
def cutting_off(first: int):
    """An HTTP server on 127.0.0.1 whose first `first` answers stop after the headers and a chunk, as a
    server killed mid-reply does; later ones answer `{}`. Yields its URL and the paths it was sent."""
    posted: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            posted.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if len(posted) <= first:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"2\r\n{}")  # no CRLF after the chunk, no last chunk: cut off
                self.close_connection = True
                return
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", posted
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_cut_off_mid_reply_is_waited_out_like_an_outage(caplog):
    with cutting_off(first=2) as (url, posted):
        clock = Clock()
        rider = Rider(url, grace=60, clock=lambda: clock.now, sleep=clock.sleep)
        client = MlflowClient(url)
        with caplog.at_level(logging.WARNING, logger="mnistexp"):
            rider.call(lambda: client.log_batch("a" * 32, metrics=[Metric("loss", 0.5, 1, 0)]))
    assert posted == ["/api/2.0/mlflow/runs/log-batch"] * 3 and clock.waits == [0.5, 1.0]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and "does not answer" in lines[0] and "answers again" in lines[1]


def http_error(status: int) -> requests.exceptions.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(f"{status} error", response=response)


def test_artifact_upload_errors_count_by_their_status():
    assert unreachable(http_error(503)) and not unreachable(http_error(401))


class Switch:
    """An MlflowClient on a real store that raises what MLflow raises for a dead server while `down`."""

    def __init__(self, uri: str) -> None:
        self.client, self.down, self.tracking_uri = MlflowClient(uri), False, uri

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down:
                raise MlflowException(
                    f"API request to {self.tracking_uri} failed with exception {REFUSED} Max retries exceeded"
                )
            return attribute(*args, **kwargs)

        return call if callable(attribute) else attribute


CUT_OFF = MlflowException(
    "API request to http://127.0.0.1:5/api/2.0/mlflow/runs/create failed with exception "
    "('Connection broken: IncompleteRead(0 bytes read, 2 more expected)', "
    "IncompleteRead(0 bytes read, 2 more expected))"
)


class LostAnswer:
    """An MlflowClient on a real store whose first create_run is done there but its answer never arrives."""

    def __init__(self, uri: str) -> None:
        self.client, self.lost = MlflowClient(uri), 0

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if name != "create_run" or self.lost:
            return attribute

        def create_run(*args, **kwargs):
            attribute(*args, **kwargs)
            self.lost += 1
            raise CUT_OFF

        return create_run


def test_a_parent_run_whose_answer_is_lost_is_made_once(stores):
    client = LostAnswer(stores["server"])
    clock = Clock()
    rider = Rider(stores["server"], grace=60, clock=lambda: clock.now, sleep=clock.sleep)
    run_id = start_run(Sink(stores["server"], client), rider, "mnistexp", "the sweep", {"mnistexp.sweep": "parent"})
    assert client.lost == 1 and clock.waits == [0.5]  # the answer was lost once, and the call tried again
    [run] = MlflowClient(stores["server"]).search_runs([client.get_experiment_by_name("mnistexp").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "RUNNING" and run.info.run_name == "the sweep"


@pytest.fixture
def stores(tmp_path):
    server = f"sqlite:///{tmp_path / 'server.db'}"
    MlflowClient(server).search_experiments()  # the tables
    return {"server": server, "spool": tmp_path / "spool", "path": tmp_path}


def recording(stores, switch: Switch, grace: float = 0, sleep=None) -> Recording:
    clock = Clock()
    rider = Rider(stores["server"], grace=grace, clock=lambda: clock.now, sleep=sleep or clock.sleep)
    return Recording(
        Sink(stores["server"], switch),
        rider,
        spool.opener(stores["spool"], stores["server"]),
        "mnistexp",
        "a run",
        {"mnistexp.config_group": "g"},
    )


def write_a_run(run: Recording, switch: Switch, down_from: int) -> None:
    """Params, three epochs, an artifact, the end; the server stops answering before write `down_from`."""
    writes = [
        lambda: run.params({"model.hidden_units": 16, "tracking.uri": "postgresql://me:hunter2@db/x"}),
        *[
            lambda epoch=epoch: run.metrics({"loss": 1.0 / (epoch + 1), "accuracy": 0.5 + epoch / 10}, step=epoch)
            for epoch in range(3)
        ],
        lambda: run.text("hello", "notes/hello.txt"),
        lambda: run.metrics({"test_accuracy": 0.9}),
    ]
    for index, write in enumerate(writes):
        switch.down = index >= down_from
        write()
    run.end("FINISHED")


def assert_the_whole_run(client: MlflowClient, run_id: str, tmp: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "a run"
    assert run.data.params["model.hidden_units"] == "16"
    assert run.data.params["tracking.uri"] == "postgresql://me:***@db/x"  # masked on the way in
    assert run.data.tags["mnistexp.config_group"] == "g"
    for name in ("loss", "accuracy"):
        assert [point.step for point in client.get_metric_history(run_id, name)] == [0, 1, 2], name
    assert [point.value for point in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1 / 3]
    assert run.data.metrics["test_accuracy"] == 0.9
    assert Path(client.download_artifacts(run_id, "notes/hello.txt", str(tmp))).read_text() == "hello"


def test_past_the_grace_the_whole_run_goes_to_the_spool_and_sync_delivers_it_once(stores):
    switch = Switch(stores["server"])
    run = recording(stores, switch)
    server_run = run.run_id  # made on the server before it went away
    write_a_run(run, switch, down_from=2)
    assert run.spooled and run.run_id != server_run
    spooled = MlflowClient(spool.spool_uri(stores["spool"]))
    assert_the_whole_run(spooled, run.run_id, stores["path"] / "a")  # everything, from the first write
    assert MlflowClient(stores["server"]).get_run(server_run).info.status == "RUNNING"  # as the server last saw it

    done = sync.deliver_spool(stores["spool"], stores["server"], summarise=lambda *args: pytest.fail("no sweep here"))
    assert done.runs == [server_run]  # the run the job began on the server, completed, not a copy beside it
    server = MlflowClient(stores["server"])
    assert_the_whole_run(server, server_run, stores["path"] / "b")
    assert len(server.search_runs([server.get_experiment_by_name("mnistexp").experiment_id])) == 1
    assert not stores["spool"].exists()  # delivered: the spool is gone


def test_sync_twice_adds_nothing_the_second_time(stores):
    switch = Switch(stores["server"])
    switch.down = True  # away from the start: the run is made in the spool only
    run = recording(stores, switch)
    write_a_run(run, switch, down_from=0)
    copy = stores["path"] / "copy"  # the spool kept, as if the first sync died before it could clear it
    import shutil

    shutil.copytree(stores["spool"], copy)
    first = sync.deliver_spool(stores["spool"], stores["server"], summarise=lambda *args: None)
    again = sync.deliver_spool(copy, stores["server"], summarise=lambda *args: None)
    assert first.runs == again.runs and len(first.runs) == 1
    server = MlflowClient(stores["server"])
    [only] = server.search_runs([server.get_experiment_by_name("mnistexp").experiment_id])
    assert_the_whole_run(server, only.info.run_id, stores["path"] / "c")  # each point once, not twice


def test_a_short_outage_loses_nothing_and_leaves_no_spool(stores):
    switch = Switch(stores["server"])

    def sleep(seconds: float) -> None:  # the server comes back while the job waits
        switch.down = False

    run = recording(stores, switch, grace=60, sleep=sleep)
    write_a_run(run, switch, down_from=2)
    assert not run.spooled and not stores["spool"].exists()
    assert_the_whole_run(MlflowClient(stores["server"]), run.run_id, stores["path"])


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://mlflow:s3cr%40t@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        (
            "see http://u:p@h:5000/x and mysql+pymysql://root:pw@host/db",
            "see http://u:***@h:5000/x and mysql+pymysql://root:***@host/db",
        ),
        (
            "postgresql://host/db?user=me&password=hunter2&sslmode=require",
            "postgresql://host/db?user=me&password=***&sslmode=require",
        ),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("model.hidden_units=100", "model.hidden_units=100"),
    ],
)
def test_the_mask_hides_passwords_and_nothing_else(text, shown):
    assert masking.mask(text) == shown


def test_a_password_on_the_command_line_never_reaches_hydras_config():
    arguments = ["-m", "tracking.uri=postgresql://me:hunter2@db/x", "model.hidden_units=0,16"]
    hidden, secrets = masking.hide_in_overrides(arguments)
    assert hidden == ["-m", "tracking.uri=postgresql://me:***@db/x", "model.hidden_units=0,16"]
    assert secrets == {"postgresql://me:***@db/x": "postgresql://me:hunter2@db/x"}
    masking.remember(secrets)
    assert masking.unmask("postgresql://me:***@db/x") == "postgresql://me:hunter2@db/x"
    assert masking.unmask("postgresql://you:***@db/x") == "postgresql://you:***@db/x"  # not ours to know
    config = validate(compose([hidden[1]]))
    assert config.tracking.uri == "postgresql://me:***@db/x"  # what Hydra composes, saves and mnistexp logs
    import mlflow

    before = mlflow.get_tracking_uri()
    try:
        assert store.use_store(config.tracking) == "postgresql://me:hunter2@db/x"  # where it connects
    finally:
        mlflow.set_tracking_uri(before)


def test_an_unreachable_tracking_server_is_one_line_naming_it_without_its_password(compose_cfg):
    config = validate(compose_cfg("tracking.uri=http://me:hunter2@127.0.0.1:9"))
    with pytest.raises(TrackingError) as raised:
        store.check_store(config.tracking)
    assert "http://me:***@127.0.0.1:9" in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_same_rider_serves_a_process(monkeypatch):
    first = outages.shared_rider("http://127.0.0.1:5", 30)
    assert outages.shared_rider("http://127.0.0.1:5", 30) is first
    assert not math.isnan(first.grace)
    assert np.isclose(first.grace, 30)
