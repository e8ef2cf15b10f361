"""Reading .npz and IDX sources written by the tests themselves, and every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mnistexp.config.schema import DataConfig
from mnistexp.errors import DataError
from mnistexp.pipeline.data import IDX_FILES, load, load_test_split

from .helpers.data import write_idx

SHAPE = (28, 28)


def make_arrays(n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, *SHAPE), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, *SHAPE), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def data_config(path: Path | str | None) -> DataConfig:
    return DataConfig(
        name="mnist",
        path=None if path is None else str(path),
        image_shape=list(SHAPE),
        class_names=[str(digit) for digit in range(10)],
        validation_size=0,
    )


def load_path(path: Path | str):
    return load(data_config(path))


def test_npz_round_trip(tmp_path):
    arrays = make_arrays()
    data = load_path(write_npz(tmp_path / "d.npz", **arrays))
    for key, array in arrays.items():
        np.testing.assert_array_equal(getattr(data, key), array)
    assert data.source == str(tmp_path / "d.npz")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_round_trip(tmp_path, suffix):
    arrays = make_arrays()
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / f"{stem}{suffix}", arrays[key])
    data = load_path(tmp_path)
    for key, array in arrays.items():
        np.testing.assert_array_equal(getattr(data, key), array)


@pytest.mark.parametrize("source", ["npz", "idx"])
def test_the_test_split_alone_is_enough_to_evaluate_on(tmp_path, source):
    arrays = make_arrays()
    test_only = {key: arrays[key] for key in ("x_test", "y_test")}
    if source == "npz":
        path = write_npz(tmp_path / "test_only.npz", **test_only)
    else:
        path = tmp_path
        for key, array in test_only.items():
            write_idx(tmp_path / IDX_FILES[key], array)
    data = load_test_split(data_config(path))
    np.testing.assert_array_equal(data.x_test, arrays["x_test"])
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    assert data.x_train.shape == (0, *SHAPE) and len(data.y_train) == 0 and not data.has_validation
    with pytest.raises(DataError, match=r"x_train|train-images"):
        load(data_config(path))  # training needs the training split


def test_a_training_split_beside_the_test_split_is_not_read(tmp_path):
    arrays = make_arrays()
    arrays["y_train"] = np.full(12, 99, np.uint8)  # labels out of range: loading it would be refused
    path = write_npz(tmp_path / "d.npz", **arrays)
    data = load_test_split(data_config(path))
    np.testing.assert_array_equal(data.y_test, arrays["y_test"])
    with pytest.raises(DataError, match="y_train"):
        load(data_config(path))


def test_the_test_split_gets_the_checks_data_path_gets(tmp_path):
    arrays = make_arrays()
    with pytest.raises(DataError, match=r"missing arrays y_test"):
        load_test_split(data_config(write_npz(tmp_path / "a.npz", x_test=arrays["x_test"])))
    bad = write_npz(tmp_path / "b.npz", x_test=arrays["x_test"], y_test=np.full(6, 10, np.uint8))
    with pytest.raises(DataError, match=r"b\.npz: y_test: labels must be 0-9"):
        load_test_split(data_config(bad))
    with pytest.raises(DataError, match=r"data file not found: .*nope\.npz"):
        load_test_split(data_config(tmp_path / "nope.npz"))


def test_summary_reports_shapes_first_labels_and_a_stable_digest(tmp_path):
    arrays = make_arrays()
    path = write_npz(tmp_path / "d.npz", **arrays)
    summary = load_path(path).overview()
    assert summary["shapes"]["x_train"] == [12, 28, 28] and summary["shapes"]["y_test"] == [6]
    assert summary["first_train_labels"] == arrays["y_train"][:5].tolist()
    assert summary["first_test_labels"] == arrays["y_test"][:5].tolist()
    assert summary["sha256"] == load_path(path).digest
    arrays["x_test"][0, 0, 0] ^= 1
    assert load_path(write_npz(tmp_path / "e.npz", **arrays)).digest != summary["sha256"]


def test_limit_takes_the_first_examples(tmp_path):
    arrays = make_arrays()
    data = load_path(write_npz(tmp_path / "d.npz", **arrays)).limit(5, None)
    assert len(data.x_train) == 5 and len(data.x_test) == 6
    np.testing.assert_array_equal(data.y_train, arrays["y_train"][:5])


def test_whole_number_float_pixels_become_uint8(tmp_path):
    arrays = make_arrays()
    arrays["x_train"] = arrays["x_train"].astype(np.float64)
    data = load_path(write_npz(tmp_path / "d.npz", **arrays))
    assert data.x_train.dtype == np.uint8


def _bad(tmp_path: Path, **changes) -> Path:
    arrays = {**make_arrays(), **changes}
    return write_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"y_test": None}, "missing arrays y_test"),
        ({"x_train": np.zeros((12, 27, 28), np.uint8)}, "expected shape (N, 28, 28)"),
        ({"y_train": np.full(12, 10, np.uint8)}, "labels must be 0-9"),
        ({"y_train": np.full(12, -1, np.int64)}, "labels must be 0-9"),
        ({"y_train": np.zeros(12, np.float32)}, "labels must be integers"),
        ({"x_test": np.full((6, 28, 28), "a")}, "pixels must be numbers"),
        ({"x_test": np.full((6, 28, 28), 0.5)}, "whole numbers 0-255"),
        ({"x_test": np.full((6, 28, 28), 300, np.int32)}, "whole numbers 0-255"),
        ({"x_train": np.zeros((0, 28, 28), np.uint8), "y_train": np.zeros(0, np.uint8)}, "no images"),
        ({"y_train": np.zeros(11, np.uint8)}, "12 images but y_train has 11 labels"),
    ],
)
def test_bad_npz_contents_name_the_file_and_array(tmp_path, changes, message):
    path = _bad(tmp_path, **changes)
    with pytest.raises(DataError) as raised:
        load_path(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.npz"):
        load_path(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", None])
def test_corrupt_or_truncated_npz(tmp_path, content):
    path = tmp_path / "corrupt.npz"
    if content is None:  # a real archive cut in half
        good = write_npz(tmp_path / "good.npz", **make_arrays(200, 100)).read_bytes()
        content = good[: len(good) // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: not a readable .npz"):
        load_path(path)


class LeavesAMarker:
    """Unpickling this touches a file: the proof that a loader ran pickled code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_object_arrays_are_refused_without_being_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    arrays = make_arrays()
    arrays["y_train"] = np.array([LeavesAMarker(marker)] * len(arrays["y_train"]), dtype=object)
    path = tmp_path / "pickle.npz"
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=True) as check:  # the payload works: loading with pickles allowed runs it
        check["y_train"]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match=rf"{path}: y_train: .*pickle"):
        load_path(path)
    assert not marker.exists()


def test_idx_folder_missing_a_file(tmp_path):
    arrays = make_arrays()
    for key, stem in list(IDX_FILES.items())[:3]:
        write_idx(tmp_path / stem, arrays[key])
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        load_path(tmp_path)


def test_truncated_idx_file(tmp_path):
    arrays = make_arrays()
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key])
    images = tmp_path / IDX_FILES["x_train"]
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DataError, match=f"{images}: truncated"):
        load_path(tmp_path)


def test_not_an_idx_file(tmp_path):
    arrays = make_arrays()
    for key, stem in IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key])
    (tmp_path / IDX_FILES["y_test"]).write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        load_path(tmp_path)


@pytest.mark.slow
def test_the_shared_mnist_file_is_the_canonical_one(mnist_path):
    data = load(data_config(mnist_path))
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    assert data.y_train[:5].tolist() == [5, 0, 4, 1, 9] and data.y_test[:5].tolist() == [7, 2, 1, 0, 4]
    assert abs(data.x_train.mean() / 255 - 0.1307) < 1e-3


def labelled(count: int = 1000, seed: int = 3):
    rng = np.random.default_rng(seed)
    labels = rng.choice(10, size=count, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum()).astype(np.uint8)
    images = rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8)
    images[:, 0, :4] = np.arange(count)[:, None].view(np.uint8).reshape(count, -1)[:, :4]  # each image unique
    from mnistexp.pipeline.data import Dataset

    return Dataset(images, labels, images[:10], labels[:10], source="toy")


@pytest.mark.parametrize("size", [200, 0.2])
def test_the_validation_split_is_disjoint_stratified_and_seeded(size):
    data = labelled()
    split = data.split_validation(size, seed=7)
    assert len(split.y_val) == 200 and len(split.y_train) == 800
    train_rows = {image.tobytes() for image in split.x_train}
    val_rows = {image.tobytes() for image in split.x_val}
    assert not train_rows & val_rows and len(train_rows | val_rows) == 1000  # disjoint, nothing lost
    share = np.bincount(data.y_train, minlength=10) / 1000
    assert np.all(np.abs(np.bincount(split.y_val, minlength=10) - 200 * share) <= 1)  # every class its share
    again = data.split_validation(size, seed=7)
    np.testing.assert_array_equal(again.x_val, split.x_val)  # same data and seed, same examples
    assert not np.array_equal(data.split_validation(size, seed=8).x_val, split.x_val)
    assert split.overview()["validation_size"] == 200
    assert split.overview()["validation_class_counts"] == np.bincount(split.y_val).tolist()


def test_no_validation_split_leaves_the_training_split_whole():
    data = labelled()
    assert data.split_validation(0, seed=7) is data and not data.has_validation


@pytest.mark.parametrize("size", [1000, 5000, 0.0001])
def test_a_split_that_leaves_nothing_is_refused_by_key(size):
    from mnistexp.config.validation import ConfigError

    with pytest.raises(ConfigError, match=r"data\.validation_size"):
        labelled().split_validation(size, seed=1)


def test_the_digest_is_the_sha256_of_every_array():
    import hashlib

    split = labelled().split_validation(100, seed=2)
    expected = hashlib.sha256()
    for array in (split.x_train, split.y_train, split.x_val, split.y_val, split.x_test, split.y_test):
        expected.update(np.ascontiguousarray(array).tobytes())
    assert split.digest == expected.hexdigest()


STANDIN = Path(__file__).parent / "helpers" / "download_standin"  # its sitecustomize answers keras.datasets' download
TF_START_UP = "absl::InitializeLog"  # the first of TensorFlow's C++ start-up lines, on every machine


def run_with_download_standin(tmp_path: Path, mnist_path: Path, *overrides: str, verbose: bool = False):
    """`mnistexp` with no data.path and MNISTEXP_DATA unset: the README's default path, Keras's download,
    here answered from the MNIST file by the stand-in."""
    import os

    from .helpers import MNISTEXP, TINY, clean_env, commands

    log = tmp_path / "downloads.txt"
    env = {key: value for key, value in clean_env().items() if key != "MNISTEXP_DATA"}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(STANDIN), env.get("PYTHONPATH")])),
        MNISTEXP_TEST_DOWNLOAD=str(mnist_path),
        MNISTEXP_TEST_DOWNLOAD_LOG=str(log),
    )
    done = commands.run(
        MNISTEXP, *TINY, *overrides, *(["hydra.verbose=true"] if verbose else []), cwd=tmp_path, env=env, timeout=600
    )
    return done, (log.read_text().split() if log.exists() else [])


@pytest.mark.slow
def test_the_keras_download_path_is_used_without_data_path_and_keeps_the_console_quiet(tmp_path, mnist_path):
    done, downloads = run_with_download_standin(tmp_path, mnist_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloads == ["keras.datasets.mnist"]
    assert "data: keras.datasets.mnist" in done.stdout + done.stderr
    assert TF_START_UP not in done.stderr and "cpu_feature_guard" not in done.stderr  # quiet, before our lines
    verbose, _ = run_with_download_standin(tmp_path, mnist_path, verbose=True)
    assert verbose.returncode == 0 and TF_START_UP in verbose.stderr  # hydra.verbose=true shows them again


@pytest.mark.slow
def test_data_fashion_mnist_loads_keras_fashion_mnist(tmp_path, mnist_path):
    done, downloads = run_with_download_standin(tmp_path, mnist_path, "data=fashion_mnist")
    assert done.returncode == 0, done.stderr[-3000:]
    assert downloads == ["keras.datasets.fashion_mnist"]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("mnistexp").experiment_id])
    assert run.data.params["data.name"] == "fashion_mnist"
    assert run.data.params["data.class_names"].startswith("['T-shirt/top', 'Trouser'")
