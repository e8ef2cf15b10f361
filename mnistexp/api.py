"""The Python API (`import mnistexp`): the commands' own path, called from a notebook or a script.

`run` composes the config as `mnistexp OVERRIDES` does (Hydra's Compose API), validates it and calls
the job the command calls (`job.train_and_record`), with Hydra's HydraConfig set as in a job of the
command. `sweep` runs Hydra's real multirun in this process (the `mnistexp -m` app, its callback,
launcher and sweeper) and reads the parent's summary back from MLflow. `runs` is the table behind
`mnistexp-runs compare`; `load_model` loads a logged model. Bad input raises `MnistexpError` with the
one line the command prints. TensorFlow and MLflow load inside these functions only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mnistexp.errors import MnistexpError, UserError
from mnistexp.tracking import names

if TYPE_CHECKING:
    import keras
    import pandas as pd
    from omegaconf import DictConfig

    from mnistexp.pipeline.evaluation import Evaluation

Overrides = Sequence[str] | Mapping[str, Any] | None


@dataclass(frozen=True)
class RunResult:
    """One job's outcome: its MLflow run, the figures it logged, and what the pipeline computed."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, float]  # the run's latest value of every metric, as MLflow holds them
    history: dict[str, list[float]]  # per epoch: loss, accuracy (and val_* with a validation split)
    model: keras.Model | None  # the kept Keras model; None for a job skipped by tracking.skip_finished
    evaluation: Evaluation | None  # test loss, accuracy, predictions, confusion matrix, per-class figures
    skipped: bool = False  # tracking.skip_finished found an earlier FINISHED run of this config


@dataclass(frozen=True)
class SweepResult:
    """A multirun's parent run and its summary, as the parent holds them (sweep/summary.csv, groups.csv)."""

    parent_run_id: str
    tracking_uri: str
    status: str  # the parent's: FINISHED, FAILED (a job failed) or KILLED
    best_run_id: str | None  # mnistexp.best_run_id: the run the selection rule chose
    summary: pd.DataFrame  # every child, best first
    groups: pd.DataFrame | None  # one row per configuration when seeds were swept (replicates)
    failures: list[str]  # one line per job that did not finish, as the command prints them

    @property
    def table(self) -> pd.DataFrame:
        """The configurations when there are replicates, else the children."""
        return self.groups if self.groups is not None else self.summary


def as_overrides(overrides: Overrides = None, **keys: Any) -> list[str]:
    """Override strings as typed after `mnistexp`: a list of them as given, or a mapping (and keyword
    arguments, `model__hidden_units=100`) of dotted keys to values, written in Hydra's syntax."""
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of strings such as ['model.hidden_units=100'], not one string")
    given = list(overrides.items()) if isinstance(overrides, Mapping) else None
    listed = [] if given is not None else [str(item) for item in overrides or ()]
    pairs = [*(given or []), *((key.replace("__", "."), value) for key, value in keys.items())]
    return [*listed, *(f"{key}={_hydra_value(value)}" for key, value in pairs)]


def _hydra_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_hydra_value(item) for item in value) + "]"
    return str(value)


def run(overrides: Overrides = None, **keys: Any) -> RunResult:
    """Train, evaluate and record one job in this process, as `mnistexp OVERRIDES` does.

    >>> result = mnistexp.run(["model.hidden_units=100", "trainer.epochs=2"])
    >>> result.metrics["test_accuracy"], result.run_id
    """
    from mnistexp.cli.main import console_redraws, hide_secrets, progress_for, read_job_environment
    from mnistexp.config.schema import hydra_config_set, task_part
    from mnistexp.config.validation import validate

    read_job_environment()
    given = hide_secrets(as_overrides(overrides, **keys))
    composed = _composed(given)
    with _said_as_the_command_says(), hydra_config_set(composed), _console_log():
        cfg = progress_for(validate(task_part(composed)), console_redraws(sys.stdout))
        from mnistexp.job import train_and_record  # TensorFlow and MLflow load here

        outcome = train_and_record(cfg, given, None, verbose=bool(composed.hydra.verbose))
    return _result(outcome)


def _result(outcome: Any) -> RunResult:
    from mlflow import MlflowClient

    metrics = dict(MlflowClient(outcome.tracking_uri).get_run(outcome.run_id).data.metrics)
    trained = outcome.trained
    return RunResult(
        run_id=outcome.run_id,
        tracking_uri=outcome.tracking_uri,
        metrics=metrics,
        history=dict(trained.history) if trained else {},
        model=trained.model if trained else None,
        evaluation=trained.evaluation if trained else None,
        skipped=outcome.skipped,
    )


def sweep(overrides: Overrides = None, **keys: Any) -> SweepResult:
    """A multirun, as `mnistexp -m OVERRIDES`: one parent run, a child run per job, the summary on
    the parent. Jobs that fail become FAILED children and are listed in `failures`; a bad input
    that stops the sweep (a bad key, unreadable data every job shares) raises MnistexpError.

    >>> result = mnistexp.sweep(["model.hidden_units=0,100", "seed=range(3)"])
    >>> result.groups   # one row per hidden size: n, mean ± interval, vs_best
    """
    from mnistexp.cli.app import run_command
    from mnistexp.cli.main import command_environment_kept, hide_secrets, read_job_environment
    from mnistexp.multirun import callback

    read_job_environment()
    given = hide_secrets(as_overrides(overrides, **keys))
    ended = len(callback.ended_parents)
    said = io.StringIO()
    with command_environment_kept(), _argv(["mnistexp", "-m", *given]), _tee_stderr(said):
        status = run_command()  # the command's own Hydra app: parses -m and the overrides from sys.argv
    prefix = "mnistexp: error: "
    lines = [line.removeprefix(prefix) for line in said.getvalue().splitlines() if line.startswith(prefix)]
    lines = lines or [f"the sweep ended with exit status {status}"]
    parents = callback.ended_parents[ended:]
    if status == 2 or not parents:
        raise MnistexpError(lines[-1])
    return _sweep_result(parents[-1], [] if status == 0 else lines)


def _sweep_result(parent_run_id: str, failures: list[str]) -> SweepResult:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient()  # the store the sweep used: the app's callback set it
    parent = client.get_run(parent_run_id)
    listed = {item.path for item in client.list_artifacts(parent_run_id, "sweep")}
    tables: dict[str, pd.DataFrame | None] = {}
    with tempfile.TemporaryDirectory(prefix="mnistexp-sweep-") as folder:
        for artifact in (names.SUMMARY_ARTIFACT, names.GROUPS_ARTIFACT):
            if artifact in listed:
                path = mlflow.artifacts.download_artifacts(
                    run_id=parent_run_id, artifact_path=artifact, dst_path=folder, tracking_uri=client.tracking_uri
                )
                tables[artifact] = pd.read_csv(path, keep_default_na=False, na_values=["-"])
    return SweepResult(
        parent_run_id=parent_run_id,
        tracking_uri=client.tracking_uri,
        status=parent.info.status,
        best_run_id=parent.data.tags.get(names.BEST_RUN_ID_TAG),
        summary=tables.get(names.SUMMARY_ARTIFACT)
        if tables.get(names.SUMMARY_ARTIFACT) is not None
        else pd.DataFrame(),
        groups=tables.get(names.GROUPS_ARTIFACT),
        failures=failures,
    )


def runs(
    experiment: str | None = None,
    parent: str | None = None,
    *,
    metric: str | None = None,
    mode: str = "auto",
    tracking_uri: str | None = None,
) -> pd.DataFrame:
    """The runs `mnistexp-runs compare` ranks, one row each, best first: ids, name, status, the config
    keys they differ in, the selection metric and test figures, epochs, seconds, then every other
    metric. `parent` takes a sweep's children; else every run of `experiment` (tracking.experiment)."""
    import pandas as pd

    from mnistexp.multirun import tables

    client, cfg = _client(tracking_uri)
    with _said_as_the_command_says():
        table, keys, selection = tables.compared(client, experiment or cfg.tracking.experiment, parent, metric, mode)
    shown = [selection.metric, *(name for name in tables.REPORTED if name != selection.metric)]
    others = sorted({name for row in table for name in row.metrics} - set(shown))
    frame = pd.DataFrame(
        [
            {
                "run_id": row.run_id,
                "run": row.name,
                "status": row.status,
                **{key: _number_or_text(row.params.get(key)) for key in keys},
                **{name: row.metric(name) for name in shown},
                "epochs": _number_or_text(row.epochs),
                "seconds": row.seconds,
                **{name: row.metric(name) for name in others},
            }
            for row in table
        ]
    )
    frame.attrs["ranked_by"] = selection.describe()
    return frame


def _number_or_text(value: str | None) -> Any:
    """A param as MLflow keeps it (text) shown as the number it was, where it was one."""
    if value is None:
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def load_model(model: str, *, tracking_uri: str | None = None) -> keras.Model:
    """The Keras model a run logged: a run id, `runs:/<run id>/model`, `models:/<model id>`,
    `models:/NAME/3` or `models:/NAME@champion`."""
    from mnistexp.tracking.scoring import load_keras_model

    _client(tracking_uri)
    uri = model if ":/" in model else f"runs:/{model}/model"
    with _said_as_the_command_says():
        return load_keras_model(uri)


def _client(tracking_uri: str | None) -> tuple[Any, Any]:
    """A client on the store the commands would use (tracking.uri, else MLFLOW_TRACKING_URI, else
    MLflow's default), checked first, and the default config it came from."""
    from dataclasses import replace

    from mnistexp.config.schema import compose
    from mnistexp.config.validation import validate
    from mnistexp.tracking import store

    with _said_as_the_command_says():
        cfg = validate(compose())
        cfg = replace(cfg, tracking=replace(cfg.tracking, uri=tracking_uri or cfg.tracking.uri))
        store.check_store(cfg.tracking)  # loads MLflow
    from mlflow import MlflowClient

    return MlflowClient(store.use_store(cfg.tracking)), cfg


def _composed(overrides: list[str]) -> DictConfig:
    """The config `mnistexp OVERRIDES` runs, its `hydra` node included; Hydra's errors said as the command says them."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from mnistexp.config.hydra_errors import explain
    from mnistexp.config.schema import compose

    try:
        return compose(overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, yaml.YAMLError, ValueError) as error:
        message = explain(error)
        if message is None:
            raise
        raise MnistexpError(message) from error


@contextlib.contextmanager
def _said_as_the_command_says() -> Iterator[None]:
    """A bad input (UserError: a key, a file, a store) raised as MnistexpError with the command's one line."""
    from mnistexp.tracking.masking import mask

    try:
        yield
    except MnistexpError:
        raise
    except UserError as error:
        raise MnistexpError(mask(str(error))) from error


@contextlib.contextmanager
def _console_log() -> Iterator[None]:
    """mnistexp's own lines (data, shapes, the closing line) on standard output for the call, as the
    command's console shows them, and only once (not again through the root logger)."""
    from mnistexp.tracking.masking import MaskingFilter

    logger = logging.getLogger("mnistexp")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(MaskingFilter())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    before = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = before


class _Tee(io.TextIOBase):
    def __init__(self, shown: Any, kept: io.StringIO) -> None:
        self.shown, self.kept = shown, kept

    def write(self, text: str) -> int:
        self.kept.write(text)
        return self.shown.write(text)

    def flush(self) -> None:
        self.shown.flush()


@contextlib.contextmanager
def _tee_stderr(kept: io.StringIO) -> Iterator[None]:
    """Standard error shown as usual and kept: the one-line errors the command printed."""
    before = sys.stderr
    sys.stderr = _Tee(before, kept)
    try:
        yield
    finally:
        sys.stderr = before
