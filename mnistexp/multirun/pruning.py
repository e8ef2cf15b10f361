"""A study's trial seen from its job: the selection metric reported to Optuna after every epoch, and
the study's pruner asked whether to stop (Optuna's own report / should_prune, through the storage,
so it works in whichever process or machine runs the job)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mnistexp.multirun.handoff import TRIAL_ENV
from mnistexp.tracking import names
from mnistexp.tracking.masking import unmask


@dataclass(frozen=True)
class Pruned:
    """What a pruned trial's job returns to the sweeper, which tells Optuna PRUNED (picklable, for
    the launchers that run jobs in other processes)."""

    epoch: int  # the epoch it was stopped after (0-based)
    value: float  # its selection metric then


def make_pruner(sweeper: DictConfig | Any, epochs: int) -> Any:
    """The pruner `hydra.sweeper.pruner` names, built the same way in every job (Optuna does not
    store it): none, median (MedianPruner) or hyperband (HyperbandPruner over the job's epochs)."""
    import optuna

    name = OmegaConf.select(sweeper, "pruner", default="none")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(OmegaConf.select(sweeper, "pruner_startup_trials", default=5)),
            n_warmup_steps=int(OmegaConf.select(sweeper, "pruner_warmup_epochs", default=1)),
        )
    if name == "hyperband":  # max_resource fixed, not "auto": every process then agrees on the brackets
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


class TrialLink:
    """The job's Optuna trial: a Keras callback that reports the selection metric at each epoch's end
    and stops training when the pruner says so; then the run's tags and what the job returns."""

    def __init__(self, storage: str, study_name: str, trial_id: int, sweeper: Any, metric: str, epochs: int) -> None:
        self.storage, self.study_name, self.trial_id = storage, study_name, trial_id
        self.sweeper, self.metric, self.epochs = sweeper, metric, epochs
        self.pruned: Pruned | None = None

    def callback(self) -> Any:
        import keras
        import optuna

        from mnistexp.multirun.search import make_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=make_storage(unmask(self.storage)),
            pruner=make_pruner(self.sweeper, self.epochs),
        )
        trial = optuna.trial.Trial(study, self.trial_id)
        link = self

        class ReportToOptuna(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                value = (logs or {}).get(link.metric)
                if value is None or not math.isfinite(float(value)):
                    return  # no figure to report (the NaN callback stops such a job on its own)
                try:
                    trial.report(float(value), epoch)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # failed as stale by another process (this one's sweeper went quiet): its retry
                    # runs elsewhere, so this copy stops
                    self.model.stop_training = True
                    return
                if epoch + 1 < link.epochs and trial.should_prune():
                    link.pruned = Pruned(epoch, float(value))
                    self.model.stop_training = True

        return ReportToOptuna()

    def tags(self) -> dict[str, str]:
        if self.pruned is None:
            return {}
        return {names.PRUNED_TAG: "true", names.PRUNED_EPOCH_TAG: str(self.pruned.epoch)}

    def returned(self, objective: float) -> float | Pruned:
        return self.pruned if self.pruned is not None else objective


def trial_link(hydra_cfg: Any, metric: str, epochs: int) -> TrialLink | None:
    """The link to the trial this job runs for, from its Hydra config (the sweeper set its trial's id
    in `hydra.job.env_set`, per job); None outside an Optuna study."""
    trial_id = OmegaConf.select(hydra_cfg, f"job.env_set.{TRIAL_ENV}")
    sweeper = hydra_cfg.sweeper
    if not trial_id or OmegaConf.select(sweeper, "study_name") is None:
        return None
    return TrialLink(str(sweeper.storage), str(sweeper.study_name), int(trial_id), sweeper, metric, epochs)
