"""Heavy libraries imported lean, quiet and for good: no unused extras, no start-up chatter, no collector passes."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Iterator

from mnistexp.environment import quiet_libraries, stderr_silenced


@contextlib.contextmanager
def refused(*modules: str) -> Iterator[None]:
    """`import` of these modules raises ImportError inside the block (unless one is loaded already):
    libraries that treat them as optional then skip them. They import normally afterwards."""
    blocked = [name for name in modules if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # Python's marker for "cannot be imported"
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, "") is None:
                del sys.modules[name]


@contextlib.contextmanager
def loaded_for_good(*modules: str) -> Iterator[None]:
    """Imports of modules that live as long as the process: the garbage collector pauses while they
    load, and what they made is then left out of its later passes (`gc.freeze`). Its full passes over
    a heap that grows with every import cost seconds of each run while TensorFlow and MLflow
    loaded (BENCHMARKS.md); the reference cycles the imports leave behind (a few MB) are kept. Does nothing once the
    modules are loaded, so a sweep's later jobs freeze nothing of theirs."""
    if all(name in sys.modules for name in modules) or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def tensorflow(verbose: bool) -> None:
    """TensorFlow and Keras, their start-up lines silenced unless `verbose`. Keras imports
    scikit-learn, when it is installed (MLflow brings it), for wrappers mnistexp never uses:
    a second of every run (BENCHMARKS.md), refused here (Keras then behaves as if it were missing).
    TensorFlow Lite imports JAX, when it is installed (the bench extra), for a converter mnistexp
    never calls: refused too (TFLite then does without it)."""
    quiet_libraries(verbose)
    with refused("sklearn", "jax"), stderr_silenced(not verbose), loaded_for_good("keras", "tensorflow"):
        import keras  # noqa: F401  (Keras 3 registers its TensorFlow backend on import)
        import tensorflow as tf
    if not verbose:
        tf.get_logger().setLevel(logging.ERROR)  # retracing warnings: every job of a sweep builds a new model


def seaborn() -> None:
    """seaborn, without scipy.stats and scipy.cluster: seaborn imports them (0.7 s) for kernel density
    estimates and clustermaps, which mnistexp never draws, and falls back without them. The
    submodules by name, since TensorFlow has loaded scipy itself by the time a job plots."""
    with refused("scipy", "scipy.stats", "scipy.cluster"), loaded_for_good("seaborn"):
        import seaborn  # noqa: F401


def mlflow() -> None:
    """MLflow, loaded for good (the collector paused while it loads, see loaded_for_good)."""
    with loaded_for_good("mlflow"):
        import mlflow  # noqa: F401
