"""Tables of MLflow runs, best first: shared by sweep summaries and `mnistexp-runs compare`."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

# Params that differ between runs without changing what is trained.
NOT_SWEPT = {"tracking.run_name", "tracking.uri", "tracking.experiment", "trainer.verbose", "data.path"}


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    status: str
    params: dict[str, str]
    test_accuracy: float
    test_loss: float
    epochs: str
    seconds: float | None


def rows(runs: Iterable[Any], metric: str = "test_accuracy") -> list[Row]:
    """One row per MLflow run, best `metric` first; runs without it come last."""
    table = [
        Row(
            run_id=run.info.run_id,
            name=run.info.run_name or run.info.run_id[:8],
            status=run.info.status,
            params=dict(run.data.params),
            test_accuracy=run.data.metrics.get("test_accuracy", math.nan),
            test_loss=run.data.metrics.get("test_loss", math.nan),
            epochs=run.data.params.get("trainer.epochs", "?"),
            seconds=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
        )
        for run in runs
    ]
    score = {row.run_id: getattr(row, metric) for row in table}
    return sorted(table, key=lambda row: (math.isnan(score[row.run_id]), -_number(score[row.run_id])))


def _number(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def varying_keys(table: Sequence[Row]) -> list[str]:
    """Config keys whose values differ between the rows: what the runs were compared on."""
    keys = sorted({key for row in table for key in row.params if "." in key and key not in NOT_SWEPT})
    return [key for key in keys if len({row.params.get(key) for row in table}) > 1]


def _cells(row: Row, keys: Sequence[str]) -> list[str]:
    seconds = f"{row.seconds:.1f}" if row.seconds is not None else "-"
    return [row.run_id, row.name, row.status, *(row.params.get(key, "-") for key in keys),
            _fmt(row.test_accuracy), _fmt(row.test_loss), row.epochs, seconds]


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def _header(keys: Sequence[str]) -> list[str]:
    return ["run_id", "run", "status", *keys, "test_accuracy", "test_loss", "epochs", "seconds"]


def to_csv(table: Sequence[Row], keys: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_header(keys))
    writer.writerows(_cells(row, keys) for row in table)
    return buffer.getvalue()


def to_text(table: Sequence[Row], keys: Sequence[str]) -> str:
    """An aligned table for the terminal, full run ids so they can be pasted into `reproduce`."""
    lines = [_header(keys)] + [_cells(row, keys) for row in table]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)
