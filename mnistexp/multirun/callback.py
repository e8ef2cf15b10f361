"""The Hydra callback that makes a multirun one MLflow parent run with a nested child run per job."""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnistexp import interrupts
from mnistexp.config.schema import TrackingConfig, typed
from mnistexp.config.selection import Selection
from mnistexp.environment import available_cores, quiet_libraries
from mnistexp.errors import SweepStopped, UserError, first_line, report, show_tracebacks
from mnistexp.multirun.handoff import SweepContext
from mnistexp.tracking import names
from mnistexp.tracking.masking import mask

log = logging.getLogger("mnistexp")


def sweep_plan(config: DictConfig) -> tuple[list[str], int | None]:
    """The swept keys and the number of jobs, from command-line sweeps and `hydra.sweeper.params`."""
    parser = OverridesParser.create()
    overrides = list(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    overrides += [f"{key}={value}" for key, value in params.items()]
    keys: list[str] = []
    sizes: list[int] = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            if key not in keys:
                keys.append(key)
                try:
                    sizes.append(len(list(override.sweep_iterator())))
                except Exception:  # range or interval sweeps of other sweepers: size unknown
                    sizes.append(0)
    return keys, (None if 0 in sizes else math.prod(sizes))


# Launchers that run a sweep's jobs one after another in this process: each job may use every core.
ONE_AT_A_TIME = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "mnistexp.multirun.fused.FusedLauncher",  # one program at a time, however many jobs it trains
)


def threads_per_job(launcher: DictConfig, jobs: int | None) -> int:
    """What trainer.threads=auto means for each job of a sweep, from the launcher's own settings: the
    CPUs it gives a job (Slurm's cpus_per_task, Ray's ray.remote.num_cpus); every core for a launcher
    that runs one job at a time; else the cores shared among the jobs that may run at once, joblib's
    n_jobs, or for any other launcher (submitit_local, one mnistexp does not know) all of them."""
    given = OmegaConf.select(launcher, "cpus_per_task") or OmegaConf.select(launcher, "ray.remote.num_cpus")
    if given:
        return int(given)
    cores = available_cores()
    if str(launcher._target_) in ONE_AT_A_TIME:
        return cores
    at_once = OmegaConf.select(launcher, "n_jobs", default=jobs)
    at_once = cores if at_once is None or at_once < 0 else at_once
    return max(1, cores // max(1, min(at_once, jobs or at_once)))


_open_sweeps: list[MlflowSweep] = []  # callbacks whose parent run is open
ended_parents: list[str] = []  # the parent runs this process's sweeps ended, in order (the Python API's sweep reads it)


@dataclass(frozen=True)
class _Sweep:
    """What the callback holds while a sweep runs."""

    parent_run_id: str
    tracking_cfg: TrackingConfig
    selection: Selection
    study: tuple[str, str] | None  # (storage, name) of an Optuna study
    command: str = ""  # this command's id: the children it ran carry it


def _begun(study: Any) -> bool:
    """Whether a trial of the study ever started (enqueued trials wait from its creation on)."""
    return any(trial.state.name != "WAITING" for trial in study.get_trials(deepcopy=False))


def end_open_sweeps() -> None:
    """Summarise and end the parent of any sweep whose `on_multirun_end` did not: a signal that lands
    after the last job, before that callback enters its held section, leaves it with Hydra (whose
    callbacks let a KeyboardInterrupt through). The app calls this once Hydra has returned."""
    for callback in list(_open_sweeps):
        callback.on_multirun_end(config=None)


class MlflowSweep(Callback):
    """Opens the parent run before the first job and closes it with a summary after the last.

    Hydra 1.4 calls `on_multirun_end` however the sweep ends (finished, a job raised, Ctrl-C), so
    no parent is left RUNNING; an exception a callback raises is only a warning to Hydra, so a
    failure here ends the process with SystemExit instead.
    """

    def __init__(self) -> None:
        self.sweep: _Sweep | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        quiet_libraries(bool(config.hydra.verbose))
        from mnistexp.multirun import search
        from mnistexp.tracking import lifecycle, store

        with interrupts.held():  # the parent exists and is known here, or neither
            interrupts.phase("composing the sweep")
            keys, size = sweep_plan(config)
            tracking_cfg = typed(config.tracking, TrackingConfig)
            selection = Selection.of(config.selection.metric, config.selection.mode, config.data.validation_size)
            tags = {
                names.SWEEP_TAG: names.SWEEP_PARENT,
                names.SWEPT_KEYS_TAG: ",".join(keys),
                names.SWEEP_OVERRIDES_TAG: mask(" ".join(config.hydra.overrides.task)),
                **lifecycle.selection_tags(selection),
            }
            study = None
            try:
                if search.is_search(config):
                    study, created = search.study_of(config)
                    size = search.trials_to_run(study, config.hydra.sweeper.n_trials)
                    parent = self._study_parent(tracking_cfg, config.hydra.sweeper.storage, study, created, tags)
                else:
                    name = f"sweep {' '.join(keys)}".strip()
                    parent = lifecycle.start_parent_run(
                        tracking_cfg, name, {**tags, names.SWEEP_SIZE_TAG: str(size or "?")}
                    )
            except UserError as error:
                report(str(error))
                raise SystemExit(2) from error
            lifecycle.start_system_metrics(tracking_cfg, parent, store.current_uri())
            storage_and_name = (config.hydra.sweeper.storage, config.hydra.sweeper.study_name) if study else None
            command = uuid.uuid4().hex
            self.sweep = _Sweep(parent, tracking_cfg, selection, storage_and_name, command)
            _open_sweeps.append(self)
            context = SweepContext(parent, tuple(keys), size, threads_per_job(config.hydra.launcher, size), command)
            context.hand_off(config, store.absolute_uri())
            log.info("sweep over %s: %s jobs, parent run %s", ", ".join(keys) or "nothing", size or "?", parent)

    @staticmethod
    def _study_parent(
        tracking_cfg: TrackingConfig, storage: str, study: Any, created: bool, tags: dict[str, str]
    ) -> str:
        """One parent run per study, made by the process that created the study and published as the
        study's user attribute; every other process (a later command, a peer started at the same
        time) finds it there and reopens it."""
        from mnistexp.multirun import search
        from mnistexp.tracking import lifecycle

        earlier = study.user_attrs.get(search.PARENT_ATTR)
        deadline = time.monotonic() + search.PARENT_WAIT_SECONDS
        while not (created or earlier or _begun(study)) and time.monotonic() < deadline:
            time.sleep(0.5)  # a peer created the study a moment ago: its parent run is on its way
            earlier = study.user_attrs.get(search.PARENT_ATTR)
        if earlier and lifecycle.reopen_parent_run(tracking_cfg, earlier):
            log.info("study %s continues under its parent run %s", study.study_name, earlier)
            return str(earlier)
        parent = lifecycle.start_parent_run(
            tracking_cfg,
            f"study {study.study_name}",
            {**tags, names.STUDY_NAME_TAG: study.study_name, names.STUDY_STORAGE_TAG: mask(storage)},
        )
        study.set_user_attr(search.PARENT_ATTR, parent)
        return parent

    @staticmethod
    def _log_study(sweep: _Sweep, study: tuple[str, str]) -> tuple[str, int]:
        """The study on its parent; returns the report line and how many trials other processes are
        still running (then the summary is partial, and the last process to end replaces it)."""
        from mlflow import MlflowClient

        from mnistexp.multirun import search
        from mnistexp.tracking import store
        from mnistexp.tracking.outages import RidingClient

        store.use_store(sweep.tracking_cfg)
        storage, name = study
        opened, _ = search.open_study(storage, name, [f"{sweep.selection.mode}imize"])
        client = RidingClient(MlflowClient(), store.rider_for(sweep.tracking_cfg))
        return search.log_study(client, sweep.parent_run_id, opened), search.running_elsewhere(opened)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        interrupts.check()  # no job starts after a signal
        context = SweepContext.from_env(config.hydra.job.env_set)  # what the hand-off gave this job
        if context is not None:
            of = f"/{context.size}" if context.size else ""
            log.info(
                "job %d%s: %s",
                config.hydra.job.num + 1,
                of,
                mask(" ".join(config.hydra.overrides.task)) or "(no overrides)",
            )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        interrupts.phase("between jobs")

    def on_multirun_end(self, config: DictConfig | None, **kwargs: Any) -> None:
        in_flight = sys.exc_info()[1]  # Hydra calls this from a `finally`: an interrupt may be on its way up
        with interrupts.held():  # a signal now still ends the parent KILLED, with its summary
            sweep, self.sweep = self.sweep, None
            if sweep is None:
                return
            _open_sweeps.remove(self)
            ended_parents.append(sweep.parent_run_id)
            from mnistexp.multirun.summary import SweepOutcome, finish_parent_run, owe_summary
            from mnistexp.tracking.lifecycle import stop_system_metrics
            from mnistexp.tracking.outages import TrackingOutageError

            interrupted = isinstance(in_flight, KeyboardInterrupt)
            stop_system_metrics(sweep.parent_run_id)  # its last samples in before the summary ends it
            try:
                own, elsewhere = None, 0
                if sweep.study is not None:
                    line, elsewhere = self._log_study(sweep, sweep.study)
                    log.info(line)
                    own = sweep.command  # a study's parent also holds other commands' children
                outcome = finish_parent_run(
                    sweep.tracking_cfg, sweep.parent_run_id, sweep.selection, interrupted, own, elsewhere
                )
            except TrackingOutageError:
                outcome = SweepOutcome(
                    owe_summary(sweep.tracking_cfg, sweep.parent_run_id, sweep.selection, interrupted), []
                )
        log.info(outcome.report)
        if not isinstance(in_flight, SweepStopped):  # that one was said already, once
            for line in outcome.failures:
                report(line)
        if isinstance(in_flight, Exception) and not show_tracebacks():
            # The sweeper or launcher gave up (a cancelled Slurm job, a dead Ray worker): the
            # summary above says which jobs; its own error is one more line, not a traceback.
            report(f"the sweep stopped: {in_flight.__class__.__name__}: {first_line(in_flight)}")
            raise SystemExit(1)
        if outcome.failures and in_flight is None:
            raise SystemExit(1)
