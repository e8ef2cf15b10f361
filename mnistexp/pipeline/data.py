"""Load MNIST-style images and labels (Keras download, .npz, or IDX folder) into a checked Dataset."""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mnistexp.config.schema import DataConfig
from mnistexp.config.validation import ConfigError
from mnistexp.errors import DataError

SPLITS = ("x_train", "y_train", "x_test", "y_test")  # what a source provides
IMAGE_KEYS = ("images", "x_test", "x")  # what `read_images` takes from an .npz of images alone
ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")  # what a Dataset holds
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class Dataset:
    """Raw uint8 images (N, H, W) and integer labels; preprocessing happens inside the model.

    The validation split is empty until `split_validation` carves one out of the training split.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    train_positions: np.ndarray | None = None  # x_train's rows in the training split it was drawn from

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The validation images and labels, None without a validation split."""
        if self.x_val is None or self.y_val is None or len(self.y_val) == 0:
            return None
        return self.x_val, self.y_val

    @property
    def has_validation(self) -> bool:
        return self.validation is not None

    def limit(self, train: int | None, test: int | None) -> Dataset:
        """The first `train` / `test` examples (None keeps a split whole), for quick runs."""
        return replace(
            self,
            x_train=self.x_train[:train],
            y_train=self.y_train[:train],
            x_test=self.x_test[:test],
            y_test=self.y_test[:test],
            train_positions=None if self.train_positions is None else self.train_positions[:train],
        )

    def without_training(self) -> Dataset:
        """The test split alone: empty training and validation splits."""
        empty_x, empty_y = self.x_train[:0], self.y_train[:0]
        return replace(self, x_train=empty_x, y_train=empty_y, x_val=None, y_val=None, train_positions=None)

    def split_validation(self, size: int | float, seed: int) -> Dataset:
        """Move `size` training examples (a count, or a fraction in (0, 1)) to the validation split.

        A class-stratified draw seeded by `seed`: the same data and seed give the same examples,
        and every class keeps its share of the training split.
        """
        if size == 0:
            return self
        count = round(size * len(self.y_train)) if isinstance(size, float) else size
        if not 1 <= count < len(self.y_train):
            raise ConfigError(
                "data.validation_size",
                f"must leave 1 to {len(self.y_train) - 1} of the {len(self.y_train)} training examples for validation",
                size,
            )
        chosen = stratified_sample(self.y_train, count, seed)
        keep = np.ones(len(self.y_train), dtype=bool)
        keep[chosen] = False
        return replace(
            self,
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
            x_val=self.x_train[chosen],
            y_val=self.y_train[chosen],
            train_positions=np.flatnonzero(keep) if self.train_positions is None else self.train_positions[keep],
        )

    @cached_property
    def digest(self) -> str:
        """SHA-256 over every array's bytes, validation split included: equal data, equal digests."""
        sha = hashlib.sha256()
        for name in ARRAYS:
            array = getattr(self, name)
            if array is not None:
                sha.update(np.ascontiguousarray(array).tobytes())
        return sha.hexdigest()

    def overview(self) -> dict:
        """Shapes, dtypes, first labels, class counts, the validation split's size and the digest."""
        arrays = {name: getattr(self, name) for name in ARRAYS if getattr(self, name) is not None}
        val_labels = self.validation[1] if self.validation else np.zeros(0, np.int64)
        return {
            "source": self.source,
            "shapes": {name: list(array.shape) for name, array in arrays.items()},
            "dtypes": {name: str(array.dtype) for name, array in arrays.items()},
            "first_train_labels": self.y_train[:5].tolist(),
            "first_test_labels": self.y_test[:5].tolist(),
            "train_class_counts": np.bincount(self.y_train).tolist(),
            "validation_size": len(val_labels),
            "validation_class_counts": np.bincount(val_labels).tolist() if len(val_labels) else [],
            "sha256": self.digest,
        }


def stratified_sample(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` examples, each class's share as in `labels`, drawn with `seed`.

    Quotas round by largest remainder so they add up to `count`. (scikit-learn's
    train_test_split(stratify=...) does the same, but importing it costs seconds per run.)
    """
    classes, class_counts = np.unique(labels, return_counts=True)
    exact = class_counts * count / len(labels)
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(quotas - exact, kind="stable")[: count - quotas.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == label))[:quota] for label, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def load(data_cfg: DataConfig, verbose: bool = False) -> Dataset:
    """Read the dataset from `data.path` (.npz or IDX folder), or download `data.name` through keras.datasets
    (TensorFlow's start-up lines silenced unless `verbose`).

    The jobs of a sweep share one process with Hydra's basic launcher: the last two datasets are
    kept, keyed by the file's size and modification time, so a sweep reads its data once.
    """
    path, stamp = data_cfg.path, None
    if path is not None:
        file = _existing(path)
        stamp = (file.stat().st_size, file.stat().st_mtime_ns)
    return _load(data_cfg.name, path, tuple(data_cfg.image_shape), len(data_cfg.class_names), stamp, verbose)


def load_test_split(data_cfg: DataConfig) -> Dataset:
    """Only the test split (x_test, y_test) of `data.path`, checked as `load` checks it: what
    evaluating a trained model needs. A file or folder may hold only those; a training split
    there is not read. Without `data.path`, the test split of the download."""
    if data_cfg.path is None:
        return load(data_cfg).without_training()
    file = _existing(data_cfg.path)
    test_keys = ("x_test", "y_test")
    arrays = _read_idx_folder(file, test_keys) if file.is_dir() else _read_npz(file, required=test_keys)
    return _checked(arrays, str(file), tuple(data_cfg.image_shape), len(data_cfg.class_names), ("test",))


def _existing(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"data file not found: {file}")
    return file


@lru_cache(maxsize=2)
def _load(
    name: str, path: str | None, image_shape: tuple[int, ...], num_classes: int, stamp: object, verbose: bool
) -> Dataset:
    if path is None:
        arrays, source = _download(name, verbose), f"keras.datasets.{name}"
    else:
        file = Path(path).expanduser()
        arrays = _read_idx_folder(file) if file.is_dir() else _read_npz(file)
        source = str(file)
    return _checked(arrays, source, image_shape, num_classes)


def _download(name: str, verbose: bool) -> dict[str, np.ndarray]:
    from mnistexp import imports

    imports.tensorflow(verbose)  # only this source needs Keras (and so TensorFlow), its C++ lines kept off
    import keras

    loader = getattr(keras.datasets, name, None)
    if loader is None:
        raise DataError(f"data.name: keras.datasets has no dataset {name!r}")
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # network, proxy, cache: all mean "no data"
        raise DataError(
            f"could not download keras.datasets.{name} ({error.__class__.__name__}: {error}); "
            "set data.path or MNISTEXP_DATA to a local copy"
        ) from error
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def read_images(path: str, image_shape: Sequence[int]) -> np.ndarray:
    """Images to predict on, checked as `data.path` is: an .npz holding one array (or an array named
    `images`, `x_test` or `x`), or an IDX image file (.gz or not). Raw pixels, 0-255."""
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"image file not found: {file}")
    if file.suffix == ".npz":

        def pick(files: list[str]) -> list[str]:
            named = [key for key in IMAGE_KEYS if key in files]
            return named[:1] or (files if len(files) == 1 else [])

        [images] = _read_npz(file, pick).values()
    else:
        images = _read_idx(file)
    return _checked_images(images, str(file), tuple(image_shape))


def _read_npz(
    file: Path, wanted: Callable[[list[str]], list[str]] | None = None, required: Sequence[str] = SPLITS
) -> dict[str, np.ndarray]:
    """The arrays of an .npz: the `required` ones (the four splits), or those `wanted` picks from the names found."""
    try:
        # Our own handle: np.load leaves the file it opened open when the archive is cut short.
        with open(file, "rb") as stream, np.load(stream, allow_pickle=False) as npz:
            keys = wanted(list(npz.files)) if wanted else list(required)
            missing = [key for key in required if key not in npz.files] if wanted is None else []
            if missing or not keys:
                needed = ", ".join(missing) if missing else f"one array, or one named {', '.join(IMAGE_KEYS)}"
                raise DataError(f"{file}: missing arrays {needed} (found: {', '.join(npz.files) or 'none'})")
            return {key: _array(npz, key, file) for key in keys}
    except DataError:
        raise
    except PermissionError as error:
        raise DataError(f"{file}: cannot read ({error.strerror})") from error
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        raise DataError(f"{file}: not a readable .npz archive ({error})") from error


def _array(npz: Any, key: str, file: Path) -> np.ndarray:
    try:
        return np.asarray(npz[key])
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise DataError(
            f"{file}: {key}: an array of Python objects (a pickle); refused unread, as it could run code"
        ) from error


def _read_idx_folder(folder: Path, keys: Sequence[str] = SPLITS) -> dict[str, np.ndarray]:
    arrays = {}
    for key in keys:
        stem = IDX_FILES[key]
        candidates = [folder / stem, folder / f"{stem}.gz"]
        file = next((c for c in candidates if c.exists()), None)
        if file is None:
            raise DataError(f"{folder}: no {stem}[.gz] in this IDX folder")
        arrays[key] = _read_idx(file)
    return arrays


def _read_idx(file: Path) -> np.ndarray:
    """One IDX file (http://yann.lecun.com/exdb/mnist/): magic, dims, then raw unsigned bytes."""
    try:
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{file}: cannot read ({error})") from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{file}: not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != _IDX_UBYTE:
        raise DataError(f"{file}: IDX data type 0x{dtype_code:02x} is not unsigned bytes")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{file}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{file}: truncated or padded: {len(raw) - header} data bytes, header says {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _checked(
    arrays: dict[str, np.ndarray],
    source: str,
    image_shape: tuple[int, ...],
    num_classes: int,
    splits: Sequence[str] = ("train", "test"),
) -> Dataset:
    """The splits checked; a split not among `splits` is left empty."""
    checked: dict[str, np.ndarray] = {
        "x_train": np.zeros((0, *image_shape), np.uint8),
        "y_train": np.zeros(0, np.int64),
    }
    for split in splits:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        checked[f"x_{split}"] = _checked_images(x, f"{source}: x_{split}", image_shape)
        checked[f"y_{split}"] = _checked_labels(y, f"{source}: y_{split}", num_classes)
        if len(x) != len(y):
            raise DataError(f"{source}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
    return Dataset(**checked, source=source)


def _checked_images(x: np.ndarray, name: str, image_shape: tuple[int, ...]) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{name}: pixels must be numbers, got dtype {x.dtype}")
    if x.ndim != 1 + len(image_shape) or tuple(x.shape[1:]) != image_shape:
        raise DataError(f"{name}: expected shape (N, {', '.join(map(str, image_shape))}), got {x.shape}")
    if len(x) == 0:
        raise DataError(f"{name}: no images")
    if x.dtype == np.uint8:
        return x
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 255 or np.any(x != np.round(x)):
        raise DataError(f"{name}: pixels must be whole numbers 0-255 (raw, unscaled images)")
    return x.astype(np.uint8)


def _checked_labels(y: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name}: labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DataError(f"{name}: expected shape (N,), got {y.shape}")
    if len(y) == 0:
        raise DataError(f"{name}: no labels")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{name}: labels must be 0-{num_classes - 1}, found {y.min()}..{y.max()}")
    return y if y.dtype == np.uint8 else y.astype(np.int64)
