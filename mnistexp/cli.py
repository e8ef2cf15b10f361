"""The `mnistexp` command: compose the Hydra config, validate it, run the job; bad input is one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mnistexp.config import register_schema, validate
from mnistexp.errors import UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_schema()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _job(cfg: DictConfig) -> float:
    try:
        validate(cfg)
        from mnistexp.job import run  # TensorFlow and MLflow load only for a job that will run

        return run(cfg, overrides=HydraConfig.get().overrides.task).test_accuracy
    except UserError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"mnistexp: error: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _job()
