"""The Hydra app behind `mnistexp`: compose the config, validate it, run the job; bad input is one line."""

from __future__ import annotations

import logging
import math
import os
import sys

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mnistexp.cli.main import TRACEBACKS_ENV, console_redraws, progress_for, read_environment
from mnistexp.config.hydra_errors import explain
from mnistexp.config.schema import CONFIG_MODULE, TrackingConfig, register_schema, typed
from mnistexp.config.validation import validate
from mnistexp.errors import DataError, SweepStopped, UserError, report, show_tracebacks
from mnistexp.multirun.callback import end_open_sweeps
from mnistexp.multirun.handoff import SweepContext
from mnistexp.tracking.masking import MaskingFilter

register_schema()
logging.getLogger("mnistexp").addFilter(MaskingFilter())  # no console or job-log line carries a password


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", execution_whitelist=["mnistexp.*"])
def _job(cfg: DictConfig) -> float:
    """One job. Outside a sweep a bad input ends the process (exit 2); in a sweep it becomes a FAILED
    child and the job returns NaN, so the sweep (and an Optuna study) goes on."""
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    read_environment(os.environ)  # this may be a worker process (joblib, Ray, Slurm): its own inputs
    sweep = SweepContext.from_env(os.environ)  # set by the sweep's callback through hydra.job.env_set
    try:
        config = progress_for(validate(cfg), console_redraws(sys.stdout))  # one line per epoch in a notebook or log
        from mnistexp.config.schema import selection_of
        from mnistexp.job import train_and_record  # TensorFlow and MLflow load only for a job that will run
        from mnistexp.multirun.pruning import trial_link

        trial = trial_link(hydra_cfg, selection_of(config).metric, config.trainer.epochs)
        result = train_and_record(config, overrides, sweep, verbose=bool(hydra_cfg.verbose), trial=trial)
        return result.objective if trial is None else trial.returned(result.objective)  # type: ignore[return-value]
    except Exception as error:
        return job_failed(cfg, overrides, sweep, in_sweep, error)


def job_failed(
    cfg: DictConfig, overrides: list[str], sweep: SweepContext | None, in_sweep: bool, error: Exception
) -> float:
    """What a job's error becomes (the fused launcher's members too): a bug outside a sweep goes up
    with its traceback; a bad input outside a sweep is one line and exit 2; in a sweep, NaN."""
    if show_tracebacks() or not (in_sweep or isinstance(error, UserError)):
        raise error  # a bug outside a sweep: the traceback is what helps
    if not in_sweep:
        report(str(error))
        sys.exit(2)
    return _failed_job(cfg, overrides, sweep, error)


def _failed_job(cfg: DictConfig, overrides: list[str], sweep: SweepContext | None, error: Exception) -> float:
    """A sweep's job that failed: a FAILED child (if its run did not end so already), and NaN, so the
    sweep (and an Optuna study) goes on. Data that every job of the sweep shares and that cannot be
    read stops the sweep here instead: one line, exit 2, one FAILED child."""
    from mnistexp.tracking import lifecycle

    shared_data = isinstance(error, DataError) and sweep is not None and not sweep.sweeps_data()
    report(str(error) if shared_data else f"job {' '.join(overrides)}: {error}")
    if sweep is not None and not getattr(error, lifecycle.RECORDED_IN_RUN, None):  # else its run ended FAILED
        lifecycle.record_failed_run(typed(cfg.tracking, TrackingConfig), sweep, overrides, error)
    if shared_data:
        raise SweepStopped(2)
    return math.nan


def run_command() -> int:
    """Run the command line through Hydra; returns the exit status (KeyboardInterrupt goes up)."""
    os.environ.setdefault(TRACEBACKS_ENV, "1" if show_tracebacks() else "0")  # the user's choice, for workers
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them; we say them in one line
    try:
        _job()
        return 0
    except SystemExit as leaving:  # a bad input said in one line (2), or failed jobs in a sweep (1)
        return leaving.code if isinstance(leaving.code, int) else 1
    except (HydraException, OmegaConfBaseException, yaml.YAMLError, ValueError) as error:
        message = None if show_tracebacks() else explain(error)
        if message is None:
            raise
        report(message)
        return 2
    finally:
        end_open_sweeps()  # a parent whose summary a signal kept Hydra from writing ends now, KILLED
