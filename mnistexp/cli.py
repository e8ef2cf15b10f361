"""The `mnistexp` command: compose the Hydra config, validate it, run the job; bad input is one line."""

from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnistexp.config import register_schema, validate
from mnistexp.errors import Terminated, UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_schema()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _job(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        validate(cfg)
        from mnistexp.job import run  # TensorFlow and MLflow load only for a job that will run

        return run(cfg, overrides=overrides).test_accuracy
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (in_sweep or isinstance(error, UserError)):
            raise  # a bug outside a sweep: Hydra prints the traceback
        _say(f"job {' '.join(overrides)}: {error}" if in_sweep else str(error))
        if not in_sweep:
            sys.exit(2)
        # In a sweep the job is recorded FAILED and the other jobs go on; the sweep's end reports it.
        from mnistexp.sweep import record_failed_job

        record_failed_job(cfg, overrides, error)
        return math.nan


def _say(message: str) -> None:
    print(f"mnistexp: error: {message}", file=sys.stderr)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def main() -> None:
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _job()
    except Terminated:
        _say("terminated (SIGTERM); the MLflow run was ended as KILLED")
        sys.exit(143)
    except KeyboardInterrupt:
        _say("interrupted; the MLflow run was ended as KILLED")
        sys.exit(130)
    from mnistexp.sweep import failed_jobs

    if failed_jobs():
        sys.exit(1)
