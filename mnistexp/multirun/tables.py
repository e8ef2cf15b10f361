"""Tables of MLflow runs, best first by the selection rule: shared by sweep summaries and `mnistexp-runs compare`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mnistexp.config.schema import RESULT_NEUTRAL_KEYS
from mnistexp.config.selection import Selection
from mnistexp.tracking.names import CONFIG_GROUP_TAG, PRUNED_TAG

REPORTED = ("test_accuracy", "test_loss")  # beside the selection metric in every table


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float]
    seconds: float | None
    config_group: str = ""  # what its replicates share (mnistexp.config_group); the run id for a run without it

    @property
    def seed(self) -> str:
        return self.params.get("seed", "-")

    def metric(self, name: str) -> float:
        return self.metrics.get(name, math.nan)

    @property
    def epochs(self) -> str:
        """Epochs trained (early stopping may end before trainer.epochs)."""
        stopped = self.metrics.get("stopped_epoch")
        return str(int(stopped) + 1) if stopped is not None else self.params.get("trainer.epochs", "?")


def rows(runs: Iterable[Any], selection: Selection) -> list[Row]:
    """One row per MLflow run, best by the selection metric first; runs without it come last."""
    table = [
        Row(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            status="PRUNED" if run.data.tags.get(PRUNED_TAG) == "true" else run.info.status,  # never ranked
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            seconds=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
            config_group=run.data.tags.get(CONFIG_GROUP_TAG) or run.info.run_id,
        )
        for run in runs
    ]
    return selection.ranked(table, key=lambda row: row.metrics.get(selection.metric))


def get_run(client: Any, run_id: str) -> Any:
    """The run, or one line naming the id and the store."""
    from mlflow.exceptions import MlflowException

    from mnistexp.errors import UserError

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        raise UserError(f"no run {run_id} in {client.tracking_uri}") from error


def compared(
    client: Any, experiment: str, parent: str | None = None, metric: str | None = None, mode: str = "auto"
) -> tuple[list[Row], list[str], Selection]:
    """What `mnistexp-runs compare` ranks (the Python API's `runs` too): the children of `parent`, else
    every run of `experiment`, sweep parents left out, best first by `metric` (default: the selection
    metric the runs were made with); the keys their configs differ in; the rule that ranked them."""
    from mnistexp.errors import UserError
    from mnistexp.tracking import lifecycle
    from mnistexp.tracking.names import SWEEP_PARENT, SWEEP_TAG

    if parent:
        found = lifecycle.children_of(client, get_run(client, parent))
    else:
        known = client.get_experiment_by_name(experiment)
        if known is None:
            raise UserError(f"no experiment {experiment!r} in {client.tracking_uri}")
        found = list(client.search_runs([known.experiment_id], max_results=50_000))
    runs = [run for run in found if run.data.tags.get(SWEEP_TAG) != SWEEP_PARENT]
    if not runs:
        raise UserError(f"no runs to compare in {client.tracking_uri}")
    selection = _selection(runs, metric, mode)
    table = rows(runs, selection)
    return table, varying_keys(table), selection


def _selection(runs: list, metric: str | None, mode: str) -> Selection:
    """`metric` if given; else the selection metric the runs were made with, which must be one."""
    from mnistexp.errors import UserError
    from mnistexp.tracking.names import SELECTION_METRIC_TAG, SELECTION_MODE_TAG

    if metric:
        return Selection.of(metric, mode)
    chosen = {
        (run.data.tags.get(SELECTION_METRIC_TAG, "test_accuracy"), run.data.tags.get(SELECTION_MODE_TAG, "max"))
        for run in runs
    }
    if len(chosen) > 1:
        found = ", ".join(sorted(f"{name} ({how})" for name, how in chosen))
        raise UserError(f"these runs were ranked by different metrics ({found}); choose one with --metric")
    [(name, how)] = chosen
    return Selection.of(name, how if mode == "auto" else mode)


def varying_keys(table: Sequence[Row]) -> list[str]:
    """Config keys whose values differ between the rows: what the runs were compared on."""
    keys = sorted({key for row in table for key in row.params if "." in key and not _neutral(key)})
    return [key for key in keys if len({row.params.get(key) for row in table}) > 1]


def _neutral(key: str) -> bool:
    return any(key == neutral or key.startswith(f"{neutral}.") for neutral in RESULT_NEUTRAL_KEYS)


def _metric_columns(selection: Selection) -> list[str]:
    return [selection.metric, *(name for name in REPORTED if name != selection.metric)]


def _cells(row: Row, keys: Sequence[str], selection: Selection) -> list[str]:
    seconds = f"{row.seconds:.1f}" if row.seconds is not None else "-"
    return [
        row.run_id,
        row.name,
        row.status,
        *(row.params.get(key, "-") for key in keys),
        *(_fmt(row.metric(name)) for name in _metric_columns(selection)),
        row.epochs,
        seconds,
    ]


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _header(keys: Sequence[str], selection: Selection) -> list[str]:
    return ["run_id", "run", "status", *keys, *_metric_columns(selection), "epochs", "seconds"]


def runs_csv(table: Sequence[Row], keys: Sequence[str], selection: Selection) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_header(keys, selection))
    writer.writerows(_cells(row, keys, selection) for row in table)
    return buffer.getvalue()


def runs_text(table: Sequence[Row], keys: Sequence[str], selection: Selection) -> str:
    """An aligned table for the terminal, best first, full run ids so they can be pasted into `reproduce`."""
    lines = [_header(keys, selection)] + [_cells(row, keys, selection) for row in table]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    body = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return f"ranked by {selection.describe()}\n{body}"
