"""Replicates: runs whose configs differ only in `seed`, grouped into configurations with means,
Student-t intervals and a paired test against the best. Pure numbers in, numbers out."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mnistexp.config.selection import Selection
from mnistexp.multirun.tables import REPORTED, Row

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation and the half-width of the 95% Student-t interval of `n` values;
    with fewer than two values there is no spread and no interval (NaN), never a made-up one."""

    n: int
    mean: float
    std: float
    ci95: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Interval:
        kept = [value for value in values if not math.isnan(value)]
        n = len(kept)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan)
        mean = math.fsum(kept) / n
        if n == 1:
            return cls(1, mean, math.nan, math.nan)
        std = math.sqrt(math.fsum((value - mean) ** 2 for value in kept) / (n - 1))
        return cls(n, mean, std, t_quantile(n - 1) * std / math.sqrt(n))

    def shown(self) -> str:
        """`0.9759 ± 0.0014`, or the bare mean when there is no interval."""
        if math.isnan(self.mean):
            return "-"
        return f"{self.mean:.4f}" + ("" if math.isnan(self.ci95) else f" ± {self.ci95:.4f}")


def t_quantile(degrees_of_freedom: int) -> float:
    """The two-sided 95% critical value of Student's t."""
    from scipy.special import stdtrit  # scipy.special alone: scipy.stats takes a second to import

    return float(stdtrit(degrees_of_freedom, 1 - (1 - CONFIDENCE) / 2))


@dataclass(frozen=True)
class Paired:
    """A configuration against the best one, over the seeds both finished: the mean of the
    per-seed differences (this minus the best) with its 95% interval and two-sided p-value."""

    seeds: int
    difference: Interval
    p_value: float

    @property
    def apart(self) -> bool | None:
        """Whether the interval excludes 0; None with fewer than two shared seeds (nothing to tell)."""
        if self.seeds < 2:
            return None
        return abs(self.difference.mean) > self.difference.ci95

    @classmethod
    def of(cls, differences: Sequence[float]) -> Paired:
        interval = Interval.of(differences)
        return cls(interval.n, interval, _p_value(interval))


def _p_value(interval: Interval) -> float:
    if interval.n < 2:
        return math.nan
    if interval.std == 0:
        return 1.0 if interval.mean == 0 else 0.0
    from scipy.special import stdtr

    t = abs(interval.mean) / (interval.std / math.sqrt(interval.n))
    return float(2 * stdtr(interval.n - 1, -t))


@dataclass(frozen=True)
class Group:
    """One configuration: its replicates, the finished ones' figures, and how it stands to the best."""

    key: str  # the mnistexp.config_group digest its runs share
    values: dict[str, str]  # the swept keys' values, seed excluded
    runs: list[Row]  # every replicate, best first by the selection metric
    figures: dict[str, Interval]  # the selection metric and REPORTED, over the finished replicates
    versus_best: Paired | None  # None for the best group itself, and for groups with nothing finished

    @property
    def finished(self) -> list[Row]:
        return [row for row in self.runs if row.status == "FINISHED" and not math.isnan(row.metric(self.metric))]

    @property
    def metric(self) -> str:
        return next(iter(self.figures))

    @property
    def n(self) -> int:
        """Finished replicates: distinct seeds that finished with the selection metric."""
        return self.figures[self.metric].n

    @property
    def status(self) -> str:
        """FINISHED when a replicate finished, else the first replicate's (FAILED, KILLED, RUNNING)."""
        return "FINISHED" if self.finished else self.runs[0].status

    @property
    def best_run(self) -> Row | None:
        """The replicate a sweep names as `mnistexp.best_run_id`: the group's best by the selection metric."""
        return self.finished[0] if self.finished else None

    @property
    def name(self) -> str:
        return ",".join(f"{key}={value}" for key, value in self.values.items()) or "(one configuration)"

    @property
    def standing(self) -> str:
        """`best`, `apart` (the paired interval excludes 0), `tied`, or `n/a` (fewer than two shared seeds)."""
        if self.versus_best is None:
            return "best" if self.finished else "n/a"
        apart = self.versus_best.apart
        return "n/a" if apart is None else "apart" if apart else "tied"


def has_replicates(table: Sequence[Row]) -> bool:
    """Whether two runs of the table share a configuration."""
    keys = [row.config_group for row in table]
    return len(set(keys)) < len(keys)


def groups(table: Sequence[Row], keys: Sequence[str], selection: Selection) -> list[Group]:
    """The table's runs grouped by configuration, best first by the mean of the selection metric;
    groups with no finished replicate come last. `keys` are the swept keys shown (seed is left out)."""
    metric = selection.metric
    shown = [key for key in keys if key != "seed"]
    by_key: dict[str, list[Row]] = {}
    for row in selection.ranked(table, key=lambda row: _scored(row, metric)):
        by_key.setdefault(row.config_group, []).append(row)

    def figures(rows: list[Row]) -> dict[str, Interval]:
        names = [metric, *(name for name in REPORTED if name != metric)]
        return {name: Interval.of(_by_seed(rows, metric, name).values()) for name in names}

    made = [
        (key, rows, figures(rows), {name: rows[0].params.get(name, "-") for name in shown})
        for key, rows in by_key.items()
    ]
    ranked = selection.ranked(made, key=lambda item: item[2][metric].mean)
    best_rows = ranked[0][1] if ranked else []
    return [
        Group(
            key,
            values,
            rows,
            stats,
            None if index == 0 or stats[metric].n == 0 else _paired(rows, best_rows, metric),
        )
        for index, (key, rows, stats, values) in enumerate(ranked)
    ]


def _scored(row: Row, metric: str) -> float | None:
    """The row's value of the selection metric if it finished with one."""
    value = row.metric(metric)
    return None if row.status != "FINISHED" or math.isnan(value) else value


def _paired(rows: list[Row], best_rows: list[Row], metric: str) -> Paired:
    """Per-seed differences (this minus the best) over the seeds both finished."""
    mine, best = _by_seed(rows, metric, metric), _by_seed(best_rows, metric, metric)
    return Paired.of([mine[seed] - best[seed] for seed in sorted(mine.keys() & best.keys())])


def _by_seed(rows: list[Row], metric: str, name: str) -> dict[str, float]:
    """seed -> `name` over the replicates that finished with the selection metric. A seed run more
    than once (the same config again) is one replicate, at its mean, not several."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if _scored(row, metric) is not None:
            values.setdefault(row.seed, []).append(row.metric(name))
    return {seed: math.fsum(found) / len(found) for seed, found in values.items()}


def tied_with_best(table: Sequence[Group]) -> list[Group]:
    return [group for group in table if group.standing == "tied"]


def report_line(best: Group, tied: Sequence[Group], selection: Selection) -> str:
    """`best by val_accuracy (max, mean of 5 seeds): model.hidden_units=256 val_accuracy=0.9759 ± 0.0014
    test_accuracy=0.9756 ± 0.0039 ...; tied with it: none`."""
    rule = selection.describe()
    rule = f"{rule[:-1]}, mean of {best.n} seeds)" if rule.endswith(")") else f"{rule}, mean of {best.n} seeds"
    figures = " ".join(f"{name}={interval.shown()}" for name, interval in best.figures.items())
    ties = ", ".join(group.name for group in tied) or "none"
    return f"best by {rule}: {best.name} {figures}; tied with it: {ties}"


def _header(keys: Sequence[str], metrics: Sequence[str]) -> list[str]:
    figures = [f"{name}_{part}" for name in metrics for part in ("mean", "std", "ci95")]
    paired = ["shared_seeds", "difference_vs_best", "difference_ci95", "p_vs_best", "vs_best"]
    return ["config_group", *keys, "status", "n", "replicates", "seeds", *figures, *paired]


def _cells(group: Group, keys: Sequence[str]) -> list[str]:
    figures = [
        _number(value) for interval in group.figures.values() for value in (interval.mean, interval.std, interval.ci95)
    ]
    versus = group.versus_best
    paired = (
        [str(versus.seeds), _number(versus.difference.mean), _number(versus.difference.ci95), _number(versus.p_value)]
        if versus is not None
        else ["", "", "", ""]
    )
    seeds = " ".join(sorted({row.seed for row in group.finished}, key=_seed_order))
    return [
        group.key,
        *(group.values.get(key, "-") for key in keys),
        group.status,
        str(group.n),
        str(len(group.runs)),
        seeds,
        *figures,
        *paired,
        group.standing,
    ]


def _seed_order(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


def _number(value: float) -> str:
    return "" if math.isnan(value) else repr(value)


def groups_csv(table: Sequence[Group], keys: Sequence[str]) -> str:
    """sweep/groups.csv: one row per configuration, best first, full-precision figures."""
    keys = [key for key in keys if key != "seed"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_header(keys, list(table[0].figures) if table else []))
    writer.writerows(_cells(group, keys) for group in table)
    return buffer.getvalue()


def groups_text(table: Sequence[Group], keys: Sequence[str], selection: Selection) -> str:
    """An aligned table for the terminal: a configuration a line, mean ± 95% interval, how it stands to the best."""
    keys = [key for key in keys if key != "seed"]
    metrics = list(table[0].figures) if table else [selection.metric]
    lines = [[*keys, "status", "n", *metrics, "vs_best", "p"]]
    for group in table:
        p = group.versus_best.p_value if group.versus_best is not None else math.nan
        lines.append(
            [
                *(group.values.get(key, "-") for key in keys),
                group.status,
                str(group.n),
                *(group.figures[name].shown() for name in metrics),
                group.standing,
                "-" if math.isnan(p) else f"{p:.3f}",
            ]
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    body = "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return (
        f"configurations ranked by the mean {selection.describe()} over their seeds "
        f"(± the 95% Student-t interval; vs_best: paired over shared seeds)\n{body}"
    )
