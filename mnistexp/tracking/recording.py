"""One MLflow run, written as a journal of operations: each goes to the tracking store as it comes
(an outage is waited for), and all are kept, so the whole run can be replayed into the spool when
the store stays away past `tracking.outage_grace_seconds`."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistexp.tracking import names
from mnistexp.tracking.masking import mask
from mnistexp.tracking.outages import Rider, TrackingOutageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("mnistexp")

_BATCH = 100  # MLflow's log_batch takes at most 100 params or tags and 1000 metrics a request


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Sink:
    """Where a run is being written: the tracking store, or the spool."""

    uri: str
    client: Any  # MlflowClient bound to `uri`
    artifact_root: Path | None = None  # the spool's: each experiment's artifacts under it
    run_id: str | None = None
    experiment_id: str | None = None
    models: dict[str, str] = field(default_factory=dict)  # the journal's model keys -> LoggedModel ids here
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id, once looked up or made

    @property
    def is_spool(self) -> bool:
        return self.artifact_root is not None

    def experiment(self, name: str, tags: Mapping[str, str]) -> str:
        """The experiment's id here, created (and tagged) if new."""
        if name in self.experiments:
            return self.experiments[name]
        self.experiments[name] = self._experiment(name, tags)
        return self.experiments[name]

    def _experiment(self, name: str, tags: Mapping[str, str]) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if any(key not in found.tags for key in tags):
                for key, value in tags.items():
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return str(found.experiment_id)
        location = None
        if self.artifact_root is not None:  # not ./mlruns of wherever the process happens to run
            location = (self.artifact_root / uuid.uuid4().hex[:12]).as_uri()
        return str(self.client.create_experiment(name, artifact_location=location, tags=dict(tags)))


class _Op:
    """One write of the journal; `attempts` counts deliveries begun, so a retry can avoid doubles."""

    attempts = 0

    def apply(self, sink: Sink) -> None:
        raise NotImplementedError


@dataclass
class _Start(_Op):
    experiment: str
    experiment_tags: dict[str, str]
    run_name: str | None
    tags: dict[str, str]
    start_time: int

    def apply(self, sink: Sink) -> None:
        sink.experiment_id = sink.experiment(self.experiment, self.experiment_tags)
        if self.attempts:  # an earlier try may have made the run before its answer was lost
            key = self.tags[names.RUN_KEY_TAG]
            found = sink.client.search_runs(
                [sink.experiment_id], filter_string=f"tags.`{names.RUN_KEY_TAG}` = '{key}'", max_results=1
            )
            if found:
                sink.run_id = found[0].info.run_id
                return
        self.attempts += 1
        run = sink.client.create_run(
            sink.experiment_id, start_time=self.start_time, tags=self.tags, run_name=self.run_name
        )
        sink.run_id = run.info.run_id


def start_run(sink: Sink, rider: Rider, experiment: str, run_name: str | None, tags: Mapping[str, str]) -> str:
    """A run left RUNNING in the store (a sweep's parent), made once even when an answer is lost and
    the rider tries again: the retry finds it by its key tag. Returns its id."""
    op = _Start(
        experiment, dict(names.EXPERIMENT_KIND), run_name, {**tags, names.RUN_KEY_TAG: uuid.uuid4().hex}, now_ms()
    )
    rider.call(lambda: op.apply(sink))
    assert sink.run_id is not None
    return sink.run_id


@dataclass
class _Batch(_Op):
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    step: int = 0
    timestamp: int = 0
    model: str | None = None  # the journal's key of the model these metrics describe

    def apply(self, sink: Sink) -> None:
        from mlflow.entities import Metric, Param, RunTag

        model_id = sink.models.get(self.model) if self.model else None
        params = [Param(key, value) for key, value in self.params.items()]
        tags = [RunTag(key, value) for key, value in self.tags.items()]
        metrics = [
            Metric(key, float(value), self.timestamp, self.step, model_id=model_id)
            for key, value in self.metrics.items()
        ]
        for start in range(0, max(len(params), len(tags), len(metrics)), _BATCH):
            sink.client.log_batch(
                sink.run_id,
                metrics=metrics[start : start + _BATCH],
                params=params[start : start + _BATCH],
                tags=tags[start : start + _BATCH],
            )


@dataclass
class _Artifact(_Op):
    local_path: Path
    folder: str | None

    def apply(self, sink: Sink) -> None:
        sink.client.log_artifact(sink.run_id, str(self.local_path), self.folder)


@dataclass
class _Inputs(_Op):
    datasets: list[Any]  # mlflow.entities.DatasetInput

    def apply(self, sink: Sink) -> None:
        from mnistexp.tracking.store import sqlite_lock  # store imports this module

        # Jobs of one sweep on one SQLite store both insert the shared dataset row: one at a time
        # (seen in CI: UNIQUE constraint failed: datasets.experiment_id, datasets.name, ...).
        with sqlite_lock(sink.uri):
            sink.client.log_inputs(sink.run_id, datasets=self.datasets)


@dataclass
class _Model(_Op):
    key: str
    model: Any  # the Keras model
    signature: Any
    requirements: list[str]
    params: dict[str, str]

    def apply(self, sink: Sink) -> None:
        import mlflow
        import mlflow.keras
        from mlflow.models import Model

        model_id = self._earlier(sink) if self.attempts else None
        self.attempts += 1
        if model_id is None:
            created = sink.client.create_logged_model(
                sink.experiment_id,
                name="model",
                source_run_id=sink.run_id,
                tags={names.MODEL_KEY_TAG: self.key},
                params=self.params,
            )
            model_id = created.model_id
        with _tracking_uri(sink.uri):  # Model.log writes through the global tracking URI only
            Model.log(
                artifact_path=None,
                name="model",
                flavor=mlflow.keras,
                run_id=sink.run_id,
                model_id=model_id,
                model=self.model,
                signature=self.signature,
                pip_requirements=self.requirements,
            )
        sink.models[self.key] = model_id

    def _earlier(self, sink: Sink) -> str | None:
        found = sink.client.search_logged_models(
            [sink.experiment_id], filter_string=f"tags.`{names.MODEL_KEY_TAG}` = '{self.key}'"
        )
        return found[0].model_id if found else None


@dataclass
class _Link(_Op):
    """Metrics of this run describe a LoggedModel that exists already (an evaluation of it)."""

    key: str
    model_id: str

    def apply(self, sink: Sink) -> None:
        if not sink.is_spool:  # the model lives in the tracking store, not in the spool
            sink.models[self.key] = self.model_id


@dataclass
class _End(_Op):
    status: str
    end_time: int

    def apply(self, sink: Sink) -> None:
        sink.client.set_terminated(sink.run_id, self.status, end_time=self.end_time)


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


class Recording:
    """One run: params, tags, metrics, artifacts, dataset inputs and the model, written in order.

    Each write goes to the tracking store through `rider`, which waits out a server that stops
    answering. If it does not come back within the grace period, `spool()` gives the sink the run
    is replayed into, from its first write: nothing is lost, and `mnistexp-runs sync` delivers it.
    """

    def __init__(
        self,
        store: Sink,
        rider: Rider,
        spool: Any,  # a callable returning the spool's Sink (made on first use)
        experiment: str,
        run_name: str | None,
        tags: Mapping[str, str],
        experiment_tags: Mapping[str, str] = names.EXPERIMENT_KIND,
    ) -> None:
        self._sink, self._rider, self._spool = store, rider, spool
        self._journal: list[_Op] = []
        self._files = tempfile.TemporaryDirectory(prefix="mnistexp-run-")
        self.server_run_id: str | None = None
        from mlflow.tracking.context import registry  # MLflow's own run tags, as start_run adds them

        start_tags = {
            **registry.resolve_tags({name: mask(value) for name, value in tags.items()}),
            names.RUN_KEY_TAG: uuid.uuid4().hex,  # what `sync` and a retried start find the run by
            names.SPOOL_SERVER_TAG: mask(store.uri),
        }
        self._write(_Start(experiment, dict(experiment_tags), run_name, start_tags, now_ms()))
        self.server_run_id = None if self.spooled else self._sink.run_id

    @property
    def run_id(self) -> str:
        """The run's id where it is: the tracking store's, or the spool's once it went there."""
        assert self._sink.run_id is not None
        return self._sink.run_id

    @property
    def experiment_id(self) -> str:
        assert self._sink.experiment_id is not None
        return self._sink.experiment_id

    @property
    def uri(self) -> str:
        return self._sink.uri

    @property
    def spooled(self) -> bool:
        return self._sink.is_spool

    def params(self, params: Mapping[str, Any]) -> None:
        self._write(_Batch(params={key: mask(str(value)) for key, value in params.items()}))

    def tags(self, tags: Mapping[str, str]) -> None:
        self._write(_Batch(tags={key: mask(str(value)) for key, value in tags.items()}))

    def metrics(self, metrics: Mapping[str, float], step: int = 0, model: str | None = None) -> None:
        self._write(_Batch(metrics=dict(metrics), step=step, timestamp=now_ms(), model=model))

    def text(self, text: str, artifact_file: str) -> None:
        path = self._file(artifact_file)
        path.write_text(mask(text))
        self._write(_Artifact(path, _folder(artifact_file)))

    def dict(self, value: Mapping[str, Any], artifact_file: str) -> None:
        self.text(json.dumps(value, indent=2), artifact_file)

    def figure(self, figure: Figure, artifact_file: str) -> None:
        path = self._file(artifact_file)
        figure.savefig(path)
        self._write(_Artifact(path, _folder(artifact_file)))

    def inputs(self, datasets: Sequence[Any]) -> None:
        self._write(_Inputs(list(datasets)))

    def model(self, model: Any, signature: Any, requirements: Sequence[str]) -> str:
        """Logs the Keras model as this run's LoggedModel; returns the key that links metrics to it."""
        params = {key: value for op in self._journal if isinstance(op, _Batch) for key, value in op.params.items()}
        key = uuid.uuid4().hex
        self._write(_Model(key, model, signature, list(requirements), params))
        return key

    def link_model(self, model_id: str) -> str:
        """A key that links metrics to an existing LoggedModel of the tracking store."""
        key = uuid.uuid4().hex
        self._write(_Link(key, model_id))
        return key

    def end(self, status: str, *, patient: bool = True) -> None:
        """FINISHED, FAILED or KILLED; not `patient` after a signal, so a server that does not answer
        sends the run to the spool at once."""
        try:
            self._write(_End(status, now_ms()), patient=patient)
        finally:
            self._files.cleanup()

    def _file(self, artifact_file: str) -> Path:
        """A new local file named like the artifact, kept until the run ends (a replay needs it)."""
        path = Path(self._files.name, uuid.uuid4().hex[:8], Path(artifact_file).name)
        path.parent.mkdir(parents=True)
        return path

    def _write(self, op: _Op, *, patient: bool = True) -> None:
        self._journal.append(op)
        if self.spooled:
            op.apply(self._sink)
            return
        try:
            self._rider.call(lambda: op.apply(self._sink), patient=patient)
        except TrackingOutageError:
            self._to_spool()

    def _to_spool(self) -> None:
        """Replay every write so far into the spool, and go on writing there."""
        sink = self._spool()
        for op in self._journal:
            op.attempts = 0
            op.apply(sink)
        self._sink = sink


def _folder(artifact_file: str) -> str | None:
    folder = str(Path(artifact_file).parent)
    return None if folder == "." else folder
