"""Data the tests make themselves: learnable arrays, and MNIST's file formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def learnable_npz(path: Path, seed: int = 0) -> Path:
    """Digit-shaped arrays where class k lights up row 2k: any working pipeline learns them."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", 900), ("test", 300)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        images[np.arange(count), 2 * labels] = 255
        images[: count // 10, 2 * labels[: count // 10]] = 0  # some hard cases, so the confusion matrix is not diagonal
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, labels
    np.savez(path, **arrays)
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)
