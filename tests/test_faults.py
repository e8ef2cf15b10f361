"""Bad input and faults: one clear line, a non-zero exit, and no MLflow run left RUNNING."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from mnistexp.config.validation import validate

from .helpers import MNISTEXP, MNISTEXP_RUNS, TINY, clean_env, commands, signals_as_usual

pytestmark = pytest.mark.slow  # runs on the MNIST file (the full suite)


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_one_clear_line(done: subprocess.CompletedProcess, *names: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("mnistexp: error: ")]
    assert len(lines) == 1, done.stderr[-2000:]
    for name in names:
        assert name in lines[0]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, mnist_path) -> Path:
    folder = tmp_path_factory.mktemp("bad_files")
    with np.load(mnist_path) as mnist:
        small = {key: mnist[key][:100] for key in mnist.files}
    np.savez(folder / "wrong_keys.npz", images=small["x_train"], labels=small["y_train"])
    np.savez(folder / "bad_labels.npz", **{**small, "y_test": small["y_test"].astype(np.int64) + 10})
    (folder / "corrupt.npz").write_bytes(mnist_path.read_bytes()[:50_000])
    return folder


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.hidden_units=-1", "model.hidden_units"),
        ("model.hidden_units=abc", "model.hidden_units"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optimizer.name=nosuch", "optimizer.name"),
        ("optimizer.learning_rate=-0.1", "optimizer.learning_rate"),
        ("+nosuchkey=1", "nosuchkey"),
        ("data.path=/nonexistent/x.npz", "/nonexistent/x.npz"),
        ("data.path={files}/corrupt.npz", "corrupt.npz"),
        ("data.path={files}/wrong_keys.npz", "wrong_keys.npz"),
        ("data.path={files}/bad_labels.npz", "bad_labels.npz"),
        ("tracking.uri=http://127.0.0.1:9", "http://127.0.0.1:9"),
        ("tracking.uri=sqlite:////dev/null/store/mlflow.db", "sqlite:////dev/null/store/mlflow.db"),
    ],
)
@pytest.mark.xdist_group("bad-files")  # the module's bad files, made once
def test_bad_input_is_one_line_and_leaves_no_run(run_cli, tmp_path, bad_files, override, named):
    done = run_cli(*TINY, override.format(files=bad_files), check=False, in_process=True)
    assert_one_clear_line(done, named)
    assert done.returncode == 2
    store = tmp_path / "mlflow.db"
    assert not store.exists() or not all_runs(f"sqlite:///{store}")  # failed before a run was opened


def test_hydras_own_errors_stay_clear(run_cli):
    done = run_cli("nosuchkey=1", check=False, in_process=True)
    assert done.returncode != 0 and "nosuchkey" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("signal_number", "exit_status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_epoch_two_kills_the_run_and_keeps_epoch_one(tmp_path, mnist_path, signal_number, exit_status):
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    process = subprocess.Popen(
        [MNISTEXP, "trainer.verbose=2", "trainer.limit_train_samples=30000"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **signals_as_usual(),
    )
    for line in process.stdout:
        if line.startswith("Epoch 2/"):
            break
    process.send_signal(signal_number)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == exit_status, output[-2000:]
    assert f"stopped by {signal.Signals(signal_number).name}" in output and "Traceback" not in output
    [run] = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "KILLED"
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id, "loss")
    assert [point.step for point in history] == [0]


def test_an_error_inside_a_run_ends_it_failed_with_the_message_and_traceback(
    compose_cfg, store, monkeypatch, mnist_path
):
    from mnistexp import job
    from mnistexp.pipeline import train

    def broken_fit(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train, "fit_together", broken_fit)  # what every job trains through
    cfg = compose_cfg(f"data.path={mnist_path}", f"tracking.uri={store}", *TINY)
    with pytest.raises(RuntimeError, match="disk on fire"):
        job.train_and_record(validate(cfg))
    [run] = all_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["mnistexp.error"] == "RuntimeError: disk on fire"
    traceback_file = MlflowClient(store).download_artifacts(run.info.run_id, "error/traceback.txt")
    assert "broken_fit" in Path(traceback_file).read_text()


def test_a_failed_job_does_not_stop_a_sweep(run_cli, tmp_path):
    done = run_cli("-m", "model.hidden_units=-1,16", *TINY, check=False, in_process=True)
    assert done.returncode == 1
    failures = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("mnistexp: error: job model.hidden_units=-1 FAILED")
    ]
    assert len(failures) == 1 and "must be an integer >= 0" in failures[0]
    runs = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = next(run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent")
    statuses = {run.data.params.get("model.hidden_units"): run.info.status for run in runs if run is not parent}
    assert statuses == {"-1": "FAILED", "16": "FINISHED"}
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 1
    assert not [run for run in runs if run.info.status == "RUNNING"]


def first_use(uris: list[str], barrier, results) -> None:
    """One process's first use of each store in turn, released with the others at the same instant:
    the experiment looked up or made, then a run logging the dataset every job of a sweep shares."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput

    from mnistexp.config.schema import compose
    from mnistexp.tracking import lifecycle, store

    configs = [validate(compose([f"tracking.uri={uri}"])).tracking for uri in uris]
    shared = DatasetInput(from_numpy(np.zeros((4, 2)), name="train", digest="0123abcd")._to_mlflow_entity())
    import mlflow  # loaded before the barrier, so the processes meet at the store, not in imports

    try:
        for uri, tracking_cfg in zip(uris, configs, strict=True):
            mlflow.set_tracking_uri(uri)
            barrier.wait(timeout=120)
            results.put((uri, store.experiment_of(tracking_cfg)))
            run = lifecycle.open_run(tracking_cfg, None, {})
            barrier.wait(timeout=120)
            run.inputs([shared])
            run.end("FINISHED")
            results.put((uri, "logged"))
    except Exception as error:
        results.put((uri, f"{error.__class__.__name__}: {error}"))
        barrier.abort()  # the others stop at their next meeting instead of waiting it out
    finally:
        results.put((None, "done"))


def test_processes_using_a_new_store_at_the_same_instant_all_succeed(tmp_path):
    """Six processes meet at each of three new stores, as the jobs of a sweep do. Without the lock
    they race on creating the tables (alembic's "Online migration expected to match one row") or the
    experiment, and then on inserting the dataset row their runs share (UNIQUE constraint failed:
    datasets.experiment_id, datasets.name, datasets.digest)."""
    context = multiprocessing.get_context("spawn")
    uris = [f"sqlite:///{tmp_path / f'mlflow-{round_}.db'}" for round_ in range(3)]
    processes = 6
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=first_use, args=(uris, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    answers, done = [], 0
    while done < processes:
        answer = results.get(timeout=300)
        done += answer[1] == "done"
        answers.append(answer)
    for worker in workers:
        worker.join(timeout=60)
    for uri in uris:
        ids = {answer for store, answer in answers if store == uri and answer != "logged"}
        assert len(ids) == 1 and next(iter(ids)).isdigit(), ids  # one experiment, the same id for all
        assert [answer for store, answer in answers if store == uri].count("logged") == processes, answers
        client = MlflowClient(uri)
        assert sorted(experiment.name for experiment in client.search_experiments()) == ["Default", "mnistexp"]
        runs = client.search_runs([next(iter(ids))])
        assert len(runs) == processes and {run.info.status for run in runs} == {"FINISHED"}
        assert {tuple((d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs) for run in runs} == {
            (("train", "0123abcd"),)
        }


def test_the_runs_command_names_an_unreachable_store(tmp_path):
    done = commands.run_here(MNISTEXP_RUNS, "--tracking-uri", "http://127.0.0.1:9", "compare", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("mnistexp-runs: error: cannot reach the MLflow tracking server http://127.0.0.1:9")
    )


def test_the_runs_command_names_a_missing_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = commands.run_here(MNISTEXP_RUNS, "--tracking-uri", store, "reproduce", "0" * 32, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"no run {'0' * 32} in {store}" in done.stderr


def test_evaluate_says_a_bad_data_file_in_one_line_before_loading_anything(tmp_path):
    images_only = tmp_path / "images_only.npz"
    np.savez(images_only, x_test=np.zeros((3, 28, 28), np.uint8))
    store = tmp_path / "mlflow.db"
    model = f"runs:/{'0' * 32}/model"
    done = commands.run_here(
        MNISTEXP_RUNS,
        "--tracking-uri",
        f"sqlite:///{store}",
        "evaluate",
        model,
        f"data.path={images_only}",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    # Only the line: no TensorFlow start-up notice before it, no model looked for.
    assert done.stderr.splitlines() == [f"mnistexp-runs: error: {images_only}: missing arrays y_test (found: x_test)"]


def test_a_server_that_accepts_but_never_answers_is_cut_off_within_the_http_timeout(run_cli, tmp_path):
    """A listener that takes the connection and then says nothing: the first request gives up after
    tracking.http_timeout, not after MLflow's minutes of retries."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        done = run_cli(
            *TINY, f"tracking.uri=http://127.0.0.1:{port}", "tracking.http_timeout=2", check=False, in_process=True
        )
        seconds = time.monotonic() - started
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()
    assert_one_clear_line(done, f"http://127.0.0.1:{port}")
    assert done.returncode == 2 and "ReadTimeout" in done.stderr
    assert held, "the client never connected"
    assert seconds < 30  # about the 2 s timeout, not minutes


def test_data_that_every_job_shares_and_cannot_be_read_stops_the_sweep_at_its_first_job(run_cli, tmp_path):
    done = run_cli(
        "-m", "model.hidden_units=0,16,32", "data.path=/nonexistent/x.npz", *TINY, check=False, in_process=True
    )
    assert_one_clear_line(done, "/nonexistent/x.npz")
    assert done.returncode == 2
    runs = all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = next(run for run in runs if run.data.tags.get("mnistexp.sweep") == "parent")
    children = [run for run in runs if run is not parent]
    assert [child.info.status for child in children] == ["FAILED"]  # the first job only
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 1


def test_a_sweep_over_data_goes_on_past_a_file_that_cannot_be_read(run_cli, tmp_path, mnist_path):
    done = run_cli("-m", f"data.path=/nonexistent/x.npz,{mnist_path}", *TINY, check=False, in_process=True)
    assert done.returncode == 1  # one job failed, the other ran
    statuses = sorted(
        run.info.status
        for run in all_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
        if "mlflow.parentRunId" in run.data.tags
    )
    assert statuses == ["FAILED", "FINISHED"]
