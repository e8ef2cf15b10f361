"""Optuna search: Hydra's Optuna sweeper, `n_trials` counted over the whole study, the study on its parent run."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import math
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import DictConfig, OmegaConf

from mnistexp.errors import UserError, first_line
from mnistexp.multirun.handoff import TRIAL_ENV
from mnistexp.tracking import names
from mnistexp.tracking.masking import mask, unmask

log = logging.getLogger("mnistexp")

PARENT_ATTR = names.STUDY_PARENT_ATTR  # the study's user attribute naming its MLflow parent run
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
PRUNERS = ("none", "median", "hyperband")
SURPLUS_ATTR = "mnistexp.surplus"  # a trial asked for in a race for the study's last slot: told FAIL, not counted
PARENT_WAIT_SECONDS = 60  # how long a process that did not create the study waits for its creator's parent run


class StudySweeper(OptunaSweeper):
    """Hydra's OptunaSweeper, run for a study that outlives commands and is shared by processes.

    - `n_trials` is the size of the whole study: the same command again finishes an interrupted
      study and runs nothing for a finished one (raise `n_trials` to extend it).
    - Trials ask and tell through the storage: any number of processes (terminals, a Slurm array,
      Ray workers, machines on one PostgreSQL) take trials until the study holds `n_trials`.
    - This process beats for its running trials (Optuna's heartbeats on the RDB storage); a trial
      whose process died goes stale after `grace_period` and Optuna's retry callback puts it back
      in the queue with its parameters. A trial this process was running when a signal stopped it
      is put back at once.
    - `pruner` (median, hyperband) stops hopeless trials: their jobs report the selection metric
      after every epoch and ask the pruner (mnistexp.multirun.pruning); the sweeper tells them PRUNED.
    - `max_failure_rate`: the study stops once more than this share of this command's trials failed
      (a NaN objective is a failure).
    """

    def __init__(
        self,
        *,
        enqueue_trials: Sequence[dict] | None = None,
        pruner: str = "none",
        pruner_startup_trials: int = 5,
        pruner_warmup_epochs: int = 1,
        heartbeat_interval: int = 10,
        grace_period: int = 30,
        max_retry: int = 2,
        **optuna_sweeper: Any,
    ) -> None:
        super().__init__(**optuna_sweeper)
        self.sampler_cfg = optuna_sweeper["sampler"]
        self.study_size = optuna_sweeper["n_trials"]
        self.max_failure_rate = float(optuna_sweeper.get("max_failure_rate", 1.0))
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.enqueue_trials: list[Any] = [
            OmegaConf.to_container(trial) if OmegaConf.is_config(trial) else dict(trial)
            for trial in enqueue_trials or []
        ]

    def sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        impl = self.sweeper
        assert impl.launcher is not None and impl.job_idx is not None and impl.config is not None
        impl._process_searchspace_config()
        space, fixed, fixed_overrides = create_params_from_overrides(impl._parse_sweeper_params_config() + arguments)
        for name in fixed:
            space.pop(name, None)
        if isinstance(impl.sampler, functools.partial) and impl.sampler.func == optuna.samplers.GridSampler:
            impl.sampler = impl.sampler({name: impl._to_grid_sampler_choices(d) for name, d in space.items()})
        storage = make_storage(unmask(str(impl.storage)), self.heartbeat_interval, self.grace_period, self.max_retry)
        study, _ = open_study(storage, str(impl.study_name), impl._get_directions(), self.enqueue_trials)
        begun = any(trial.state.name != "WAITING" for trial in study.get_trials(deepcopy=False))
        if begun and OmegaConf.select(self.sampler_cfg, "seed") is not None:
            # A seeded sampler made anew would draw the first command's trials again: continue
            # from a seed of its own, derived from the seed and the trials already in the study.
            impl.sampler = instantiate(
                self.sampler_cfg,
                seed=self.sampler_cfg.seed + len(study.get_trials(deepcopy=False)),
                _execution_whitelist_=("optuna.samplers.*", "hydra_plugins.*"),
            )
        study = optuna.load_study(
            study_name=study.study_name, storage=storage, sampler=impl.sampler, pruner=optuna.pruners.NopPruner()
        )  # the jobs prune (with the pruner they build from the same config); the sweeper only tells
        to_run = trials_to_run(study, self.study_size)
        log.info(
            "study %s: %d of %d trials done, %d to run",
            study.study_name,
            self.study_size - to_run,
            self.study_size,
            to_run,
        )
        launched, failures = 0, 0
        with Heartbeats(storage, self.heartbeat_interval) as beating:
            try:
                while batch := ask(study, beating, impl.n_jobs, self.study_size):
                    overrides = [
                        (*override, f"+hydra.job.env_set.{TRIAL_ENV}='{trial._trial_id}'")
                        for override, trial in zip(
                            impl._configure_trials(batch, space, fixed, fixed_overrides), batch, strict=True
                        )
                    ]
                    returns = impl.launcher.launch(overrides, initial_job_idx=impl.job_idx)
                    impl.job_idx += len(returns)
                    for trial, returned in zip(batch, returns, strict=True):
                        failures += tell(study, trial, returned) == "FAIL"
                        beating.discard(trial._trial_id)
                    launched += len(batch)
                    if failures / launched > self.max_failure_rate:
                        raise StudyStoppedError(
                            f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: {failures} of the {launched} "
                            f"trials this command ran failed; the study stops"
                        )
            except BaseException:
                for trial_id in beating.ids():  # cut short here (a signal): back in the queue now
                    requeue(study, trial_id, self.max_retry)
                raise


class StudyStoppedError(UserError):
    """The study was stopped by its own rule (max_failure_rate)."""


class Heartbeats:
    """A thread that records a heartbeat for each of this process's running trials every
    `interval` seconds (Optuna beats only inside `study.optimize`; this sweeper asks and tells)."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="mnistexp-heartbeats", daemon=True)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, trial_id: int) -> None:
        with self._lock:
            self._ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)  # at once: a running trial without a beat never goes stale

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._ids.discard(trial_id)

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._ids)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.ids():
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as error:  # a storage blink: the next beat may get through
                    log.debug("heartbeat of trial %d: %s", trial_id, error)


def ask(study: Any, beating: Heartbeats, n_jobs: int, study_size: int) -> list[Any]:
    """The next trials for this process (at most `n_jobs`), none once the study holds `n_trials`:
    stale trials of dead processes are failed (and requeued) first; a trial that lost the race
    for the study's last slot to another process is told FAIL as surplus."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    batch = []
    for _ in range(min(n_jobs, runnable(study.get_trials(deepcopy=False), study_size))):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        beating.add(trial._trial_id)
        if rank(study.get_trials(deepcopy=False), trial.number) >= study_size:
            trial.set_user_attr(SURPLUS_ATTR, True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            beating.discard(trial._trial_id)
            continue
        batch.append(trial)
    return batch


def tell(study: Any, trial: Any, returned: Any) -> str:
    """Tell Optuna how the trial's job ended; returns the state told (COMPLETE, PRUNED or FAIL)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    from mnistexp.multirun.pruning import Pruned

    try:
        value = returned.return_value  # re-raises the job's exception
    except Exception as error:
        state, values = TrialState.FAIL, None
        log.info("trial %d failed: %s", trial.number, first_line(error))
    else:
        if isinstance(value, Pruned):
            state, values = TrialState.PRUNED, None
        elif value is None or math.isnan(float(value)):
            state, values = TrialState.FAIL, None  # the job failed and said so (its child is FAILED)
        else:
            state, values = TrialState.COMPLETE, [float(value)]
    with contextlib.suppress(UpdateFinishedTrialError):  # another process failed it as stale meanwhile
        study.tell(trial, values, state=state, skip_if_finished=True)
    return state.name


def requeue(study: Any, trial_id: int, max_retry: int) -> None:
    """A trial this process will not finish: FAIL, and a waiting copy with its parameters (Optuna's
    retry callback, as for a stale trial), so the study still ends with `n_trials` trials."""
    import optuna

    storage = study._storage
    try:
        trial = storage.get_trial(trial_id)
        if trial.state != optuna.trial.TrialState.RUNNING:
            return
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry)(study, storage.get_trial(trial_id))
        log.info("study %s: trial %d was cut short; it goes back in the queue", study.study_name, trial.number)
    except Exception as error:  # never hide the signal behind a storage error
        log.warning("study %s: could not requeue trial %d: %s", study.study_name, trial_id, first_line(error))


def make_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int = 0
) -> Any:
    """Optuna's RDB storage; with `heartbeat_interval`, heartbeats and the retry of stale trials. On
    SQLite every transaction takes the write lock at its start (BEGIN IMMEDIATE, SQLAlchemy's own
    recipe), so two processes cannot both fail one stale trial or pop one waiting trial."""
    import optuna
    import sqlalchemy

    sqlite = url.startswith("sqlite:")
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats and their retry are "experimental" in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                heartbeat: dict[str, Any] = {}
                if heartbeat_interval:
                    heartbeat = {
                        "heartbeat_interval": heartbeat_interval,
                        "grace_period": grace_period,
                        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry),
                    }
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None, **heartbeat
                )
            break
        except sqlalchemy.exc.DBAPIError as error:  # processes creating a new database's tables at once: one wins
            if attempt == 4 or not lost_creation_race(error):
                raise
            time.sleep(0.5 + attempt)
    if sqlite:

        @sqlalchemy.event.listens_for(storage.engine, "connect")
        def _no_implicit_transactions(connection: Any, record: Any) -> None:
            connection.isolation_level = None

        @sqlalchemy.event.listens_for(storage.engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        storage.engine.dispose()  # the connections made before the hooks
    return storage


def lost_creation_race(error: Any) -> bool:
    """Whether creating the storage's tables failed because another process created one first: a key
    it had just taken (a unique violation), or a table or type already there by the time ours was
    made (PostgreSQL's DuplicateTable and DuplicateObject; SQLite's "already exists")."""
    import sqlalchemy

    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    state = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return state in ("42P07", "42710") or "already exists" in str(error.orig)


def open_study(
    storage: Any, study_name: str, directions: Sequence[str], enqueue: Sequence[dict] = ()
) -> tuple[Any, bool]:
    """The study and whether this call created it (atomically: of processes starting together, one
    creates it and enqueues `enqueue`, its first trials; the others load it)."""
    import optuna
    from optuna.study import StudyDirection

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if isinstance(storage, str):
        storage = make_storage(unmask(storage))  # a password from the command line
    try:
        storage.create_new_study([StudyDirection[direction.upper()] for direction in directions], study_name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=optuna.pruners.NopPruner())
    if created:
        for params in enqueue:
            study.enqueue_trial(params)
    return study, created


def logical_trials(trials: Sequence[Any]) -> list[Any]:
    """The study's trials, one per slot: a trial that was retried counts once (as its retry), and a
    surplus trial not at all."""
    superseded = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    return [trial for trial in trials if trial.number not in superseded and not trial.user_attrs.get(SURPLUS_ATTR)]


def runnable(trials: Sequence[Any], study_size: int) -> int:
    """How many trials a process may ask for now: the study's free slots, plus those waiting."""
    counted = logical_trials(trials)
    waiting = sum(1 for trial in counted if trial.state.name == "WAITING")
    return max(0, study_size - len(counted)) + waiting


def rank(trials: Sequence[Any], number: int) -> int:
    """The slot a trial holds: how many counted trials came before it."""
    return sum(1 for trial in logical_trials(trials) if trial.number < number)


def trials_to_run(study: Any, study_size: int) -> int:
    trials = logical_trials(study.get_trials(deepcopy=False))
    return max(0, study_size - sum(1 for trial in trials if trial.state.name in FINISHED_STATES))


def running_elsewhere(study: Any) -> int:
    """Trials still RUNNING in the study once this process's own are told: another process's."""
    return sum(1 for trial in logical_trials(study.get_trials(deepcopy=False)) if trial.state.name == "RUNNING")


def check_sweeper(sweeper: DictConfig) -> None:
    """The keys mnistexp adds to the sweeper, checked before any run starts."""
    pruner = OmegaConf.select(sweeper, "pruner", default="none")
    if pruner not in PRUNERS:
        raise UserError(f"hydra.sweeper.pruner={pruner}: choose one of {', '.join(PRUNERS)}")
    for key in ("heartbeat_interval", "grace_period", "pruner_startup_trials", "pruner_warmup_epochs"):
        value = OmegaConf.select(sweeper, key)
        least = 1 if key in ("heartbeat_interval", "grace_period") else 0
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            raise UserError(f"hydra.sweeper.{key}={value}: a whole number, at least {least}")


def is_search(config: DictConfig) -> bool:
    """Whether this multirun is an Optuna study run by StudySweeper."""
    return OmegaConf.select(config, "hydra.sweeper._target_") == f"{__name__}.{StudySweeper.__name__}"


def study_of(config: DictConfig) -> tuple[Any, bool]:
    """The study that `config`'s sweeper will run (opened, so it exists before its first trial), and
    whether this process created it."""
    sweeper = config.hydra.sweeper
    check_sweeper(sweeper)
    enqueue = [OmegaConf.to_container(trial) for trial in sweeper.get("enqueue_trials") or []]
    try:
        return open_study(str(sweeper.storage), sweeper.study_name, [sweeper.direction], enqueue)  # type: ignore[arg-type]
    except Exception as error:  # a storage that cannot be reached or read: one line, naming it
        raise UserError(
            f"hydra.sweeper.storage: cannot open the Optuna study {sweeper.study_name!r} in "
            f"{mask(str(sweeper.storage))} ({error.__class__.__name__}: {first_line(error)})"
        ) from error


def log_study(client, parent_run_id: str, study) -> str:
    """The study on its parent run: every trial in search/trials.csv (with its MLflow run; a surplus
    trial, which never ran, is left out), Optuna's optimization history, parameter importances and
    parallel coordinates as PNG, the best trial's values as `best.*` tags and search/best_trial.yaml.
    Returns a line for the sweep's report."""
    parent = client.get_run(parent_run_id)
    from mnistexp.tracking import lifecycle

    children = lifecycle.children_of(client, parent)
    trials = [trial for trial in study.trials if not trial.user_attrs.get(SURPLUS_ATTR)]
    runs = match_trials_to_runs(trials, children)
    client.log_text(parent_run_id, _trials_csv(trials, runs), "search/trials.csv")
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
    counts = Counter(trial.state.name.lower() for trial in logical_trials(study.trials))
    return (
        f"study {study.study_name}: {len(trials)} trials "
        f"({', '.join(f'{n} {state}' for state, n in sorted(counts.items()))}), best is trial {best.number} "
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
