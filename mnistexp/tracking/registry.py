"""The Model Registry: a run's logged model as a new version of a registered model, alias `champion` on it."""

from __future__ import annotations

import math
from typing import Any

from mnistexp.errors import UserError
from mnistexp.tracking import names

CHAMPION = "champion"
TAGS_FROM_RUN = (
    names.CONFIG_DIGEST_TAG,
    names.DATA_DIGEST_TAG,
    names.SELECTION_METRIC_TAG,
    names.SELECTION_MODE_TAG,
)
METRICS_FROM_RUN = ("test_accuracy", "test_loss")


def logged_model_id(client: Any, run: Any) -> str:
    """The id of the LoggedModel a run logged (`tracking.log_model: true`)."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    if not models:
        raise UserError(f"run {run.info.run_id} logged no model (it ran with tracking.log_model=false)")
    return str(models[0].model_id)


def best_child(client: Any, parent_run_id: str) -> str:
    """The run a sweep's parent chose by its selection rule (tag `mnistexp.best_run_id`)."""
    parent = client.get_run(parent_run_id)
    best = parent.data.tags.get(names.BEST_RUN_ID_TAG)
    if not best:
        raise UserError(f"run {parent_run_id} is no finished sweep: it has no mnistexp.best_run_id tag")
    return str(best)


def register_model_version(client: Any, run: Any, name: str) -> Any:
    """A new version of `name` from the run's logged model, alias `champion` on it, and the run's
    digests, selection metric and test metrics as the version's tags. Returns the ModelVersion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model_id = logged_model_id(client, run)
    try:
        version = mlflow.register_model(f"models:/{model_id}", name, tags={names.VERSION_RUN_TAG: run.info.run_id})
    except MlflowException as error:
        raise UserError(f"cannot register in {client.tracking_uri}: {str(error).splitlines()[0]}") from error
    tags = {key: run.data.tags[key] for key in TAGS_FROM_RUN if key in run.data.tags}
    metrics = dict(run.data.metrics)
    selection = run.data.tags.get(names.SELECTION_METRIC_TAG)
    wanted = [*METRICS_FROM_RUN, *([selection] if selection else [])]
    tags.update({key: repr(metrics[key]) for key in wanted if key in metrics and not math.isnan(metrics[key])})
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return client.get_model_version(name, version.version)
