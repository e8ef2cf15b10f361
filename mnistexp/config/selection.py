"""The selection rule: which metric ranks and chooses runs, in which direction; the test set only reports."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

# Figures a run logs after every epoch (Keras's names), and the ones it logs once at its end.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
RUN_METRICS = (*EPOCH_METRICS, "test_loss", "test_accuracy", "fit_seconds", "samples_per_second")
MODES = ("auto", "max", "min")

Item = TypeVar("Item")


def direction(metric: str, mode: str) -> str:
    """`max` or `min`; `auto` means min for losses and times, max otherwise."""
    if mode != "auto":
        return mode
    return "min" if metric.endswith(("loss", "seconds")) else "max"


@dataclass(frozen=True)
class Selection:
    metric: str
    mode: str  # max or min

    @classmethod
    def of(cls, metric: str | None, mode: str, validation_size: float = 0) -> Selection:
        """The rule from the config's keys, or a run's tags: `metric: null` picks val_accuracy when there is
        a validation split, else test_accuracy; `mode: auto` a direction by the metric's name."""
        chosen = metric or ("val_accuracy" if validation_size else "test_accuracy")
        return cls(chosen, direction(chosen, mode))

    @property
    def on_test_data(self) -> bool:
        return self.metric.startswith("test_")

    def describe(self) -> str:
        """`val_accuracy (max)`, with a warning when the choice is made on the test set."""
        return f"{self.metric} ({self.mode})" + (", selected on test data" if self.on_test_data else "")

    def ranked(self, items: Iterable[Item], key: Callable[[Item], float | None]) -> list[Item]:
        """`items` best first by `key(item)`; NaN and missing scores last."""

        def order(item: Item) -> tuple[bool, float]:
            value = key(item)
            if value is None or math.isnan(value):
                return True, 0.0
            return False, -value if self.mode == "max" else value

        return sorted(items, key=order)

    def objective(self, metrics: Mapping[str, float]) -> float:
        """The job's value of the selection metric (NaN when it has none): what a search optimises."""
        return float(metrics.get(self.metric, math.nan))
