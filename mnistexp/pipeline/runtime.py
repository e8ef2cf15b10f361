"""The TensorFlow a job trains on: threads, seeds, op determinism, and the facts a result depends on."""

from __future__ import annotations

import os
import platform

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from mnistexp.config.schema import TrainerConfig
from mnistexp.environment import available_cores


def configure_runtime(seed: int, trainer_cfg: TrainerConfig, threads: int, onednn: str) -> dict[str, str]:
    """A clean, seeded TensorFlow on `threads` threads for this job; returns the facts that identical
    results depend on (`onednn`: TF_ENABLE_ONEDNN_OPTS as the environment module read it)."""
    _set_threads(threads)
    # Sweeps run many jobs in one process: each starts from a clean Keras state. Without the full
    # garbage collection Keras adds by default (BENCHMARKS.md); Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow, including fit's shuffling
    # Process-wide in TensorFlow: set it either way, so a sweep's later jobs do as their config says.
    if trainer_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()  # not exported as tf.config.experimental; TF 2.21's own switch
    tf_threads = tf.config.threading
    return {
        "runtime.deterministic_ops": str(tf_config.is_op_determinism_enabled()),
        "runtime.xla": str(uses_xla(trainer_cfg)),
        "runtime.onednn": onednn,
        "runtime.intra_op_threads": str(tf_threads.get_intra_op_parallelism_threads() or "auto"),
        "runtime.inter_op_threads": str(tf_threads.get_inter_op_parallelism_threads() or "auto"),
        "runtime.cpu_count": str(os.cpu_count()),
        "runtime.machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "runtime.devices": ",".join(device.device_type for device in tf.config.list_physical_devices()),
    }


# Below this much arithmetic per thread, a training step spends more on handing work between
# threads than it saves: the benchmark's GEMM table has batch-32 GEMMs of 784-10 slower on two
# cores than on one, and those of 784-100-10 faster.
STEP_FLOPS_PER_THREAD = 6_000_000


def threads_for(trainer_cfg: TrainerConfig, parameters: int, sweep_share: int | None) -> int:
    """trainer.threads as a count: a number as it is; auto is the sweep's share of the cores for
    each of its jobs, and for a single run the cores one training step can keep busy: a thread per
    STEP_FLOPS_PER_THREAD of its arithmetic (6 x batch x parameters), at least one."""
    if isinstance(trainer_cfg.threads, int):
        return trainer_cfg.threads
    if sweep_share:
        return sweep_share
    step_flops = 6 * trainer_cfg.batch_size * parameters
    return max(1, min(available_cores(), step_flops // STEP_FLOPS_PER_THREAD))


def _set_threads(threads: int) -> None:
    """TensorFlow's thread pools (0 = its default, one thread per core). They are fixed once
    TensorFlow has run anything, so later jobs of a sweep in the same process keep the first setting."""
    tf_threads = tf.config.threading
    if (tf_threads.get_intra_op_parallelism_threads(), tf_threads.get_inter_op_parallelism_threads()) == (threads,) * 2:
        return
    try:
        tf_threads.set_intra_op_parallelism_threads(threads)
        tf_threads.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already running: the runtime.* tags record what this job actually used


def uses_xla(trainer_cfg: TrainerConfig) -> bool:
    """Whether training runs under XLA: the compiled engine's loops follow trainer.jit_compile;
    Keras's model.fit also needs trainer.deterministic off (Keras turns XLA off under op determinism)."""
    return trainer_cfg.jit_compile and (trainer_cfg.engine == "compiled" or not trainer_cfg.deterministic)
