"""hydra/launcher=fused: a sweep's compatible jobs trained together as one program, each still a job
of its own to Hydra (its folder, .hydra files, callbacks, JobReturn) and to MLflow (its child run).

Hydra imports this module on every start (the `hydra.plugins` entry point): no TensorFlow or
MLflow at its top.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from mnistexp.config.schema import MnistexpConfig, as_dict, hydra_config_set, task_part
from mnistexp.tracking.names import FUSED_GROUP_TAG

log = logging.getLogger("mnistexp")

# What jobs trained as one program must share (besides the data): the loop's shape, and the
# process-wide TensorFlow settings. Everything else is each job's own: width, depth, activations,
# seed, optimizer and its settings, loss, early stopping, eval_batch_size, tracking.
SHARED_TRAINER_KEYS = (
    "engine",
    "epochs",
    "batch_size",
    "shuffle",
    "limit_train_samples",
    "limit_test_samples",
    "jit_compile",
    "deterministic",
    "threads",
)


def fusion_key(cfg: MnistexpConfig) -> str | None:
    """Jobs with equal keys can train as one program; None for a job that trains alone (keras_fit)."""
    if cfg.trainer.engine != "compiled":
        return None
    trainer = as_dict(cfg.trainer)
    shared = {"data": as_dict(cfg.data), "trainer": {key: trainer[key] for key in SHARED_TRAINER_KEYS}}
    return json.dumps(shared, sort_keys=True, default=str)


@dataclass
class _Member:
    position: int  # in the batch the sweeper launched
    config: DictConfig  # composed for this job, hydra node included
    cfg: MnistexpConfig | None  # validated; None when it does not validate (it fails alone, as usual)
    returned: JobReturn | None = field(default=None)
    trial: Any = None  # in an Optuna study: its sweep.pruning.TrialLink, which knows whether it was pruned

    @property
    def overrides(self) -> list[str]:
        return list(self.config.hydra.overrides.task)


class FusedLauncher(Launcher):
    """Runs a batch's jobs in this process: jobs with the same data, batch size, epochs, shuffle and
    engine (fusion_key) train together in groups of at most `max_group`; any other job runs alone,
    as Hydra's basic launcher runs it. Results are in the batch's order."""

    def __init__(self, max_group: int = 16) -> None:
        self.max_group = max_group
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        self._configure_log()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        members = [
            self._member(position, initial_job_idx, overrides) for position, overrides in enumerate(job_overrides)
        ]
        groups = fused_groups(members, self.max_group)
        log.info("fused launcher: %d jobs in %d programs", len(members), len(groups))
        for group in groups:
            self._run_group(group)
            self._configure_log()
        returned = [member.returned for member in members]
        assert all(ret is not None for ret in returned)
        return returned  # type: ignore[return-value]

    def _configure_log(self) -> None:
        assert self.config is not None and self.hydra_context is not None
        hydra_cfg = self.config.hydra
        configure_log(hydra_cfg.hydra_logging, hydra_cfg.verbose, self.hydra_context.execution_whitelist)

    def _member(self, position: int, first_index: int, overrides: Sequence[str]) -> _Member:
        assert self.config is not None and self.hydra_context is not None
        index = first_index + position
        log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id, config.hydra.job.num = str(index), index
        return _Member(position, config, _validated(config))

    def _run_group(self, group: list[_Member]) -> None:
        """One job as Hydra runs it; several as nested jobs: each member's task starts the next
        member's job, and the innermost trains them all, so every member's run_job records its own
        outcome (COMPLETED, or FAILED with its own error) and its callbacks see it."""
        assert self.task_function is not None
        if len(group) == 1:
            group[0].returned = self._run_job(group[0], self.task_function)
            return
        outcomes: list[Any] = []

        def level(k: int) -> TaskFunction:
            def task(task_cfg: DictConfig) -> float:
                if k + 1 < len(group):
                    group[k + 1].returned = self._run_job(group[k + 1], level(k + 1))
                else:
                    outcomes.extend(_train_group(group))
                return _member_result(group[k], outcomes[k])

            return task

        group[0].returned = self._run_job(group[0], level(0))

    def _run_job(self, member: _Member, task: Callable[[DictConfig], Any]) -> JobReturn:
        assert self.hydra_context is not None
        return run_job(
            hydra_context=self.hydra_context,
            task_function=task,
            config=member.config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )


def fused_groups(members: Sequence[_Member], max_group: int) -> list[list[_Member]]:
    """Members with one fusion key together, in the batch's order, split every `max_group`; a member
    without a key (invalid, or keras_fit) alone."""
    by_key: dict[str, list[_Member]] = {}
    groups: list[list[_Member]] = []
    for member in members:
        key = fusion_key(member.cfg) if member.cfg is not None else None
        if key is None:
            groups.append([member])
            continue
        if key not in by_key or len(by_key[key]) >= max(1, max_group):
            by_key[key] = []
            groups.append(by_key[key])
        by_key[key].append(member)
    return groups


def _validated(config: DictConfig) -> MnistexpConfig | None:
    """The job's config validated as its job will validate it, with its HydraConfig in place."""
    from mnistexp.config.validation import validate

    try:
        with hydra_config_set(config):
            return validate(task_part(config))
    except Exception:  # its own job says what is wrong, in its own words
        return None


def _train_group(group: Sequence[_Member]) -> list[Any]:
    """Every member trained and recorded as one program (in the innermost member's job): each
    member's JobResult, or the exception that ended it."""
    from mnistexp.cli.main import console_redraws, progress_for, read_job_environment
    from mnistexp.job import JobSpec, train_and_record_together

    sweep = read_job_environment()
    for member in group:
        member.trial = _trial_of(member)
    label = "jobs " + ",".join(str(member.config.hydra.job.num) for member in group)  # unique in its sweep
    redraws = console_redraws(sys.stdout)  # one line per epoch in a notebook or a log, as a basic launcher's job
    specs = [
        JobSpec(progress_for(member.cfg, redraws), member.overrides, sweep, {FUSED_GROUP_TAG: label}, member.trial)  # type: ignore[arg-type]
        for member in group
    ]
    try:
        return train_and_record_together(specs, verbose=bool(HydraConfig.get().verbose))
    except Exception as error:  # what every member shares failed (the tracking store): each fails with it
        return [error] * len(group)


def _trial_of(member: _Member) -> Any:
    """The member's Optuna trial, from its own Hydra config (each member its own, in one process)."""
    from mnistexp.config.schema import selection_of
    from mnistexp.multirun.pruning import trial_link

    assert member.cfg is not None
    return trial_link(member.config.hydra, selection_of(member.cfg).metric, member.cfg.trainer.epochs)


def _member_result(member: _Member, outcome: Any) -> float:
    """What the member's job returns to Hydra, as a job of the basic launcher would: its objective,
    or, for its error, what `mnistexp` does with a sweep job's error (NaN and a FAILED child)."""
    from mnistexp.cli.app import job_failed
    from mnistexp.cli.main import read_job_environment

    if isinstance(outcome, Exception):
        task_cfg = task_part(member.config)
        return job_failed(task_cfg, member.overrides, read_job_environment(), True, outcome)
    trial = member.trial
    return float(outcome.objective) if trial is None else trial.returned(outcome.objective)
