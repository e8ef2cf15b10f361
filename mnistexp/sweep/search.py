"""Optuna search: Hydra's Optuna sweeper, `n_trials` counted over the whole study, the study on its parent run."""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

from mnistexp.errors import UserError, first_line
from mnistexp.tracking import names
from mnistexp.tracking.masking import mask, unmask

log = logging.getLogger("mnistexp")

PARENT_ATTR = names.STUDY_PARENT_ATTR  # the study's user attribute naming its MLflow parent run
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


class StudySweeper(OptunaSweeper):
    """Hydra's OptunaSweeper, where `n_trials` is the size of the whole study rather than the number
    of trials this command adds: running the same command again finishes an interrupted study and
    runs nothing for a finished one (raise `n_trials` to extend it). Trials that a dead command left
    RUNNING are marked FAIL first, and `enqueue_trials` are the first trials of a new study."""

    def __init__(self, *, enqueue_trials: Sequence[dict] | None = None, **optuna_sweeper: Any) -> None:
        super().__init__(**optuna_sweeper)
        self.sampler_cfg = optuna_sweeper["sampler"]
        self.study_size = optuna_sweeper["n_trials"]
        self.enqueue_trials = [
            OmegaConf.to_container(trial) if OmegaConf.is_config(trial) else dict(trial)
            for trial in enqueue_trials or []
        ]

    def sweep(self, arguments: list[str]) -> None:
        impl = self.sweeper
        study = open_study(str(impl.storage), str(impl.study_name), impl._get_directions())
        if not study.trials:
            for params in self.enqueue_trials:
                study.enqueue_trial(params)
        elif OmegaConf.select(self.sampler_cfg, "seed") is not None:
            # A seeded sampler made anew would draw the first command's trials again: continue
            # from a seed of its own, derived from the seed and the trials already in the study.
            impl.sampler = instantiate(
                self.sampler_cfg,
                seed=self.sampler_cfg.seed + len(study.trials),
                _execution_whitelist_=("optuna.samplers.*", "hydra_plugins.*"),
            )
        impl.n_trials = trials_to_run(study, self.study_size)
        impl.storage = unmask(str(impl.storage))
        log.info(
            "study %s: %d of %d trials done, %d to run",
            study.study_name,
            self.study_size - impl.n_trials,
            self.study_size,
            impl.n_trials,
        )
        return super().sweep(arguments)


def open_study(storage: str, study_name: str, directions: Sequence[str]) -> Any:
    """The study, created if new; trials left RUNNING by a command that died are marked FAIL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    named: list[Any] = list(directions)  # "maximize" / "minimize"
    storage = unmask(storage)  # a password from the command line
    study = optuna.create_study(storage=storage, study_name=study_name, directions=named, load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info("study %s: trial %d was left running by an earlier command; marked FAIL", study_name, trial.number)
    return study


def trials_to_run(study, study_size: int) -> int:
    finished = sum(1 for trial in study.get_trials(deepcopy=False) if trial.state.name in FINISHED_STATES)
    return max(0, study_size - finished)


def is_search(config: DictConfig) -> bool:
    """Whether this multirun is an Optuna study run by StudySweeper."""
    return OmegaConf.select(config, "hydra.sweeper._target_") == f"{__name__}.{StudySweeper.__name__}"


def study_of(config: DictConfig) -> Any:
    """The study that `config`'s sweeper will run (opened, so it exists before its first trial)."""
    sweeper = config.hydra.sweeper
    try:
        return open_study(sweeper.storage, sweeper.study_name, [sweeper.direction])
    except Exception as error:  # a storage that cannot be reached or read: one line, naming it
        raise UserError(
            f"hydra.sweeper.storage: cannot open the Optuna study {sweeper.study_name!r} in "
            f"{mask(str(sweeper.storage))} ({error.__class__.__name__}: {first_line(error)})"
        ) from error


def log_study(client, parent_run_id: str, study) -> str:
    """The study on its parent run: every trial in search/trials.csv (with its MLflow run), Optuna's
    optimization history, parameter importances and parallel coordinates as PNG, the best trial's
    values as `best.*` tags and search/best_trial.yaml. Returns a line for the sweep's report."""
    parent = client.get_run(parent_run_id)
    from mnistexp.tracking import lifecycle

    children = lifecycle.children_of(client, parent)
    runs = match_trials_to_runs(study.trials, children)
    client.log_text(parent_run_id, _trials_csv(study.trials, runs), "search/trials.csv")
    for name, figure in _study_figures(study):
        client.log_figure(parent_run_id, figure, f"search/{name}.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
    complete = [trial for trial in study.trials if trial.state.name == "COMPLETE" and not math.isnan(trial.value)]
    if not complete:
        return f"study {study.study_name}: no trial completed"
    best = study.best_trial
    for key, value in best.params.items():
        client.set_tag(parent_run_id, f"best.{key}", str(value))
    client.log_text(
        parent_run_id,
        OmegaConf.to_yaml(
            {"trial": best.number, "value": best.value, "run_id": runs.get(best.number), "params": best.params}
        ),
        "search/best_trial.yaml",
    )
    return (
        f"study {study.study_name}: {len(study.trials)} trials, best is trial {best.number} "
        f"(run {runs.get(best.number, '?')}) with {best.value:.4f}: "
        + " ".join(f"{key}={value}" for key, value in best.params.items())
    )


def match_trials_to_runs(trials: Sequence[Any], children: Sequence[Any]) -> dict[int, str]:
    """Trial number -> MLflow run id. A trial's parameters are its job's overrides, which its run
    logs as params; equal parameters are paired in the order they ran."""
    by_params: dict[tuple, list[str]] = defaultdict(list)
    for run in sorted(children, key=lambda run: run.info.start_time):
        names = sorted(key for key in run.data.params)
        by_params[tuple((name, run.data.params[name]) for name in names)].append(run.info.run_id)
    matched: dict[int, str] = {}
    for trial in sorted(trials, key=lambda trial: trial.number):
        wanted = {name: str(value) for name, value in trial.params.items()}
        for signature, run_ids in by_params.items():
            params = dict(signature)
            if run_ids and all(params.get(name) == value for name, value in wanted.items()):
                matched[trial.number] = run_ids.pop(0)
                break
    return matched


def _trials_csv(trials: Sequence[Any], runs: dict[int, str]) -> str:
    names = sorted({name for trial in trials for name in trial.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "state", "value", *names, "run_id", "started", "seconds"])
    for trial in trials:
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else ""
        )
        writer.writerow(
            [
                trial.number,
                trial.state.name,
                "" if trial.value is None else trial.value,
                *(trial.params.get(name, "") for name in names),
                runs.get(trial.number, ""),
                trial.datetime_start.isoformat() if trial.datetime_start else "",
                seconds,
            ]
        )
    return buffer.getvalue()


def _study_figures(study) -> list[tuple[str, Any]]:
    """Optuna's own matplotlib plots; one that the study cannot draw yet (too few trials) is left out."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    figures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental" warnings of optuna.visualization.matplotlib
        for name, plot in (
            ("optimization_history", optuna_plots.plot_optimization_history),
            ("param_importances", optuna_plots.plot_param_importances),
            ("parallel_coordinate", optuna_plots.plot_parallel_coordinate),
        ):
            try:
                plot(study)  # draws on a new matplotlib figure
            except (ValueError, RuntimeError) as error:
                log.info("search/%s.png left out: %s", name, error)
                continue
            figure = plt.gcf()
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figures.append((name, figure))
    return figures
