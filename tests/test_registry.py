"""From a finished sweep to a served model: register the best, evaluate it on new data, predict, serve over HTTP."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from .helpers import BIN, MNISTEXP, MNISTEXP_RUNS, clean_env, commands, only_children
from .helpers.data import write_idx
from .helpers.servers import free_port, serving

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registry")]

TEST_IMAGES = 1000  # the runs evaluate the first 1,000 test images, the images served below
SWEEP = [
    "-m",
    "model.hidden_units=0,16",
    "data.validation_size=500",
    "trainer.limit_train_samples=4000",
    f"trainer.limit_test_samples={TEST_IMAGES}",
    "trainer.epochs=2",
    "trainer.verbose=0",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mnist_path):
    workdir = tmp_path_factory.mktemp("registry")
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    done = commands.run_here(MNISTEXP, *SWEEP, cwd=workdir, env=env)  # the sweep, not its process, is used here
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    parent, children = only_children(MlflowClient(uri))
    return {"workdir": workdir, "uri": uri, "env": env, "parent": parent, "children": children, "mnist": mnist_path}


def runs_command(sweep, *args: str) -> subprocess.CompletedProcess:
    """`mnistexp-runs --tracking-uri STORE ARGS`, in this process: what is tested here is what the
    command does to the registry and the data, not its process (TensorFlow then loads once a module)."""
    return commands.run_here(
        MNISTEXP_RUNS, "--tracking-uri", sweep["uri"], *args, cwd=sweep["workdir"], env=sweep["env"]
    )


@pytest.fixture(scope="module")
def registered(sweep):
    done = runs_command(sweep, "register", "--best", sweep["parent"].info.run_id, "digits")
    assert done.returncode == 0, done.stderr[-3000:]
    return MlflowClient(sweep["uri"])


def test_register_best_makes_the_chosen_run_the_champion(sweep, registered):
    best = registered.get_run(sweep["parent"].data.tags["mnistexp.best_run_id"])
    version = registered.get_model_version_by_alias("digits", "champion")
    assert str(version.version) == "1" and version.run_id == best.info.run_id
    tags = version.tags
    assert tags["mnistexp.config_sha256"] == best.data.tags["mnistexp.config_sha256"]
    assert tags["mnistexp.data_sha256"] == best.data.tags["mnistexp.data_sha256"]
    assert tags["mnistexp.selection_metric"] == "val_accuracy"
    assert float(tags["val_accuracy"]) == best.data.metrics["val_accuracy"]
    assert float(tags["test_accuracy"]) == best.data.metrics["test_accuracy"]


def test_registering_another_run_moves_the_champion(sweep, registered):
    other = next(
        child for child in sweep["children"] if child.info.run_id != sweep["parent"].data.tags["mnistexp.best_run_id"]
    )
    done = runs_command(sweep, "register", other.info.run_id, "digits-moving")
    assert done.returncode == 0, done.stderr
    best = runs_command(sweep, "register", "--best", sweep["parent"].info.run_id, "digits-moving")
    assert best.returncode == 0, best.stderr
    version = registered.get_model_version_by_alias("digits-moving", "champion")
    assert str(version.version) == "2" and version.run_id == sweep["parent"].data.tags["mnistexp.best_run_id"]


def test_registering_a_run_without_a_model_is_one_line(sweep, registered, tmp_path):
    done = runs_command(sweep, "register", sweep["parent"].info.run_id, "nothing")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("mnistexp-runs: error: run ")


def new_data(sweep, folder: Path) -> Path:
    """New images with the same classes: the test images shifted one pixel right, kept as a new
    file of x_test and y_test alone (evaluating needs no training split)."""
    with np.load(sweep["mnist"]) as mnist:
        x_test, y_test = np.roll(mnist["x_test"][:2000], 1, axis=2), mnist["y_test"][:2000]
    path = folder / "shifted.npz"
    np.savez(path, x_test=x_test, y_test=y_test)
    return path


def test_evaluate_the_champion_on_new_data_as_a_run_linked_to_the_model(sweep, registered, tmp_path):
    data = new_data(sweep, tmp_path)
    done = runs_command(sweep, "evaluate", "models:/digits@champion", f"data.path={data}")
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = registered.get_experiment_by_name("mnistexp-evaluation")
    [run] = registered.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["mnistexp.evaluated_model"] == "models:/digits@champion"
    artifacts = {
        item.path for folder in ("plots", "evaluation") for item in registered.list_artifacts(run.info.run_id, folder)
    }
    assert artifacts == {"plots/confusion_matrix.png", "evaluation/confusion_matrix.csv"}
    table = Path(registered.download_artifacts(run.info.run_id, "evaluation/confusion_matrix.csv", str(tmp_path)))
    rows = list(csv.reader(io.StringIO(table.read_text())))[1:]
    matrix = np.array([[int(cell) for cell in row[1:]] for row in rows])
    assert matrix.sum() == 2000 and np.trace(matrix) / 2000 == pytest.approx(run.data.metrics["test_accuracy"])
    for digit in range(10):
        recall = matrix[digit, digit] / matrix[digit].sum()
        assert run.data.metrics[f"test_recall_class_{digit}"] == pytest.approx(recall)
    assert {inp.dataset.name for inp in run.inputs.dataset_inputs} == {"mnist-evaluation"}
    version = registered.get_model_version_by_alias("digits", "champion")
    logged = registered.get_logged_model(version.source.removeprefix("models:/"))
    assert run.data.tags["mnistexp.model_id"] == logged.model_id
    assert any(metric.run_id == run.info.run_id and metric.key == "test_accuracy" for metric in logged.metrics)


def test_evaluating_on_the_runs_own_test_images_gives_its_logged_accuracy(sweep, registered):
    best = registered.get_run(sweep["parent"].data.tags["mnistexp.best_run_id"])
    done = runs_command(
        sweep,
        "evaluate",
        f"runs:/{best.info.run_id}/model",
        f"trainer.limit_test_samples={TEST_IMAGES}",
        "tracking.evaluation_experiment=again",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = registered.search_runs([registered.get_experiment_by_name("again").experiment_id])
    assert run.data.metrics["test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-9)


def test_evaluate_refuses_data_with_other_classes_in_one_line(sweep, registered):
    twelve = "[" + ",".join(str(label) for label in range(12)) + "]"  # labels 0-9 fit, the model's 10 outputs do not
    done = runs_command(sweep, "evaluate", "models:/digits@champion", f"data.class_names={twelve}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data.class_names" in done.stderr.strip().splitlines()[-1]


def test_predict_writes_one_row_per_image_at_the_logged_accuracy(sweep, registered, tmp_path):
    with np.load(sweep["mnist"]) as mnist:
        images, labels = mnist["x_test"][:TEST_IMAGES], mnist["y_test"][:TEST_IMAGES]
    np.savez(tmp_path / "images.npz", images=images)
    out = tmp_path / "predictions.csv"
    done = runs_command(sweep, "predict", "models:/digits@champion", str(tmp_path / "images.npz"), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == TEST_IMAGES and set(rows[0]) == {
        "index",
        "predicted",
        "class_name",
        *(f"score_{digit}" for digit in range(10)),
    }
    predicted = np.array([int(row["predicted"]) for row in rows])
    scores = np.array([[float(row[f"score_{digit}"]) for digit in range(10)] for row in rows])
    assert (scores.argmax(axis=1) == predicted).all()
    best = registered.get_run(sweep["parent"].data.tags["mnistexp.best_run_id"])
    assert (predicted == labels).mean() == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-9)
    piped = runs_command(sweep, "predict", "models:/digits@champion", str(tmp_path / "images.npz"))
    assert piped.returncode == 0 and piped.stdout == out.read_text()  # the CSV alone on stdout, nothing else


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "image file not found"),
        (b"not an archive", "not a readable .npz archive"),
        ("floats", "whole numbers 0-255"),
        ("two arrays", "missing arrays"),
    ],
)
def test_predict_checks_its_input_as_data_path_is(sweep, registered, tmp_path, content, said):
    path = tmp_path / "input.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "floats":
        np.savez(path, images=np.full((3, 28, 28), 0.5))
    elif content == "two arrays":
        np.savez(path, a=np.zeros((3, 28, 28), np.uint8), b=np.zeros((3, 28, 28), np.uint8))
    done = runs_command(sweep, "predict", "models:/digits@champion", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("mnistexp-runs: error: ") and said in line and str(path) in line


@pytest.fixture(scope="module")
def server(sweep, registered, tmp_path_factory):
    """`mlflow models serve` of the champion on 127.0.0.1, as the README shows it."""
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/digits@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    folder = tmp_path_factory.mktemp("serving")
    log = folder / "server.log"
    # A `mnistexp` that cannot be imported, ahead of the real one: the served model needs none of it.
    (folder / "no_mnistexp" / "mnistexp").mkdir(parents=True)
    (folder / "no_mnistexp" / "mnistexp" / "__init__.py").write_text("raise ImportError('mnistexp is not here')\n")
    env = {**sweep["env"], "MLFLOW_TRACKING_URI": sweep["uri"], "PYTHONPATH": str(folder / "no_mnistexp")}
    with serving(command, port, "/ping", log, env=env) as url:
        yield url


def score(url: str, payload) -> requests.Response:
    data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return requests.post(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"}, timeout=60)


def test_the_served_champion_answers_raw_images_at_the_logged_accuracy(sweep, registered, server):
    with np.load(sweep["mnist"]) as mnist:
        images, labels = mnist["x_test"][:TEST_IMAGES], mnist["y_test"][:TEST_IMAGES]
    answer = score(server, {"inputs": images.tolist()})
    assert answer.status_code == 200, answer.text[:500]
    predicted = np.asarray(answer.json()["predictions"]).argmax(axis=1)
    best = registered.get_run(sweep["parent"].data.tags["mnistexp.best_run_id"])
    assert (predicted == labels).mean() == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-9)


@pytest.mark.parametrize(
    "payload",
    [
        {"inputs": np.zeros((2, 27, 28), np.uint8).tolist()},  # wrong shape
        {"inputs": np.zeros((28, 28), np.uint8).tolist()},  # one image without its batch axis
        {"inputs": np.full((2, 28, 28), 300).tolist()},  # above 255
        {"inputs": np.full((2, 28, 28), -1).tolist()},  # below 0
        {"inputs": [[["a"] * 28] * 28] * 2},  # strings for pixels
        {"inputs": [[[None] * 28] * 28] * 2},  # nulls for pixels
        {"images": np.zeros((2, 28, 28), np.uint8).tolist()},  # not MLflow's request format
        b"this is not json",
    ],
    ids=["shape", "no-batch-axis", "above-255", "below-0", "strings", "nulls", "wrong-key", "not-json"],
)
def test_bad_payloads_get_a_4xx_with_a_message_and_the_server_goes_on(sweep, server, payload):
    answer = score(server, payload)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])
    assert answer.json()["message"]
    with np.load(sweep["mnist"]) as mnist:
        still = score(server, {"inputs": mnist["x_test"][:2].tolist()})
    assert still.status_code == 200


def test_the_served_model_needs_no_mnistexp(server, sweep):
    """The server above runs with an unimportable mnistexp first on its path, and answers anyway."""
    with np.load(sweep["mnist"]) as mnist:
        answer = score(server, {"inputs": mnist["x_test"][:5].tolist()})
    assert answer.status_code == 200 and np.asarray(answer.json()["predictions"]).shape == (5, 10)


def test_evaluate_a_numbered_version_and_a_model_id(sweep, registered):
    best = registered.get_run(sweep["parent"].data.tags["mnistexp.best_run_id"])
    for _ in range(3):  # versions 1, 2 and 3 of the same run's model
        done = runs_command(sweep, "register", best.info.run_id, "digits-three")
        assert done.returncode == 0, done.stderr[-3000:]
    [logged] = registered.search_logged_models(
        [best.info.experiment_id], filter_string=f"source_run_id = '{best.info.run_id}'"
    )
    for uri in ("models:/digits-three/3", f"models:/{logged.model_id}"):
        done = runs_command(
            sweep,
            "evaluate",
            uri,
            f"trainer.limit_test_samples={TEST_IMAGES}",
            "tracking.evaluation_experiment=versions",
        )
        assert done.returncode == 0, done.stderr[-3000:]
    runs = registered.search_runs([registered.get_experiment_by_name("versions").experiment_id])
    assert sorted(run.data.tags["mnistexp.evaluated_model"] for run in runs) == sorted(
        ["models:/digits-three/3", f"models:/{logged.model_id}"]
    )
    for run in runs:  # the same model on the same images as the run that trained it
        assert run.data.tags["mnistexp.model_id"] == logged.model_id
        assert run.data.metrics["test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"], abs=1e-9)


def test_evaluate_refuses_a_model_of_other_image_shapes_in_one_line(sweep, tmp_path):
    rng = np.random.default_rng(0)
    small = tmp_path / "small.npz"  # 14x14 images: a model that takes those cannot read MNIST's 28x28
    np.savez(
        small,
        x_train=rng.integers(0, 256, (300, 14, 14), dtype=np.uint8),
        y_train=rng.integers(0, 10, 300, dtype=np.uint8),
        x_test=rng.integers(0, 256, (50, 14, 14), dtype=np.uint8),
        y_test=rng.integers(0, 10, 50, dtype=np.uint8),
    )
    trained = commands.run_here(
        MNISTEXP,
        f"data.path={small}",
        "data.image_shape=[14,14]",
        "trainer.epochs=1",
        "trainer.verbose=0",
        "tracking.experiment=small-images",
        f"tracking.uri={sweep['uri']}",
        cwd=sweep["workdir"],
        env=sweep["env"],
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(sweep["uri"])
    [run] = client.search_runs([client.get_experiment_by_name("small-images").experiment_id])
    done = runs_command(sweep, "evaluate", f"runs:/{run.info.run_id}/model")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("mnistexp-runs: error: ") and "(14, 14)" in line and "(28, 28)" in line


def test_predict_reads_an_idx_image_file(sweep, registered, tmp_path):
    with np.load(sweep["mnist"]) as mnist:
        images = mnist["x_test"][:100]
    idx = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(idx, images)
    npz = tmp_path / "images.npz"
    np.savez(npz, images=images)
    from_idx = runs_command(sweep, "predict", "models:/digits@champion", str(idx))
    from_npz = runs_command(sweep, "predict", "models:/digits@champion", str(npz))
    assert from_idx.returncode == 0, from_idx.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(from_idx.stdout)))
    assert len(rows) == 100 and from_idx.stdout == from_npz.stdout  # the same images, the same scores
