"""Replicates: configurations compared by their mean over seeds, with intervals and ties computed here
independently (NumPy and scipy.stats) from the runs' own numbers."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from scipy import stats

from mnistexp.cli import runs as runs_cli
from mnistexp.config.schema import group_digest
from mnistexp.config.selection import Selection
from mnistexp.config.validation import validate
from mnistexp.multirun import replicates
from mnistexp.multirun.tables import Row
from mnistexp.pipeline import plots

VAL = Selection("val_accuracy", "max")


def row(name: str, seed: int, val: float, group: str, status: str = "FINISHED", **values: str) -> Row:
    metrics = {} if math.isnan(val) else {"val_accuracy": val, "test_accuracy": val - 0.001, "test_loss": 1 - val}
    return Row(
        run_id=f"{name}-{seed}",
        name=f"{name},seed={seed}",
        status=status,
        params={"seed": str(seed), **values},
        metrics=metrics,
        seconds=1.0,
        config_group=group,
    )


def config(name: str, units: str, scores: list[float], statuses: list[str] | None = None) -> list[Row]:
    statuses = statuses or ["FINISHED"] * len(scores)
    return [
        row(name, seed, score, f"group-{name}", status, **{"model.hidden_units": units})
        for seed, (score, status) in enumerate(zip(scores, statuses, strict=True))
    ]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """mean, sample std and the 95% half-width, as a statistics textbook computes them."""
    array = np.asarray(values)
    std = array.std(ddof=1)
    return array.mean(), std, stats.t.ppf(0.975, len(array) - 1) * std / math.sqrt(len(array))


BEST = [0.9790, 0.9760, 0.9775, 0.9801, 0.9768]
# Consistently 0.003 below the best on every seed: apart. One lucky seed is above BEST's worst.
APART = [score - 0.003 + jitter for score, jitter in zip(BEST, [0.0002, -0.0001, 0.0, 0.0003, -0.0002], strict=True)]
# Above on some seeds, below on others, by more than the mean gap: tied.
TIED = [score + jitter for score, jitter in zip(BEST, [0.0020, -0.0035, 0.0015, -0.0025, 0.0010], strict=True)]


def test_configurations_rank_by_their_mean_and_the_intervals_are_student_t():
    table = [*config("a", "64", APART), *config("b", "256", BEST), *config("c", "100", TIED)]
    found = replicates.groups(table, ["model.hidden_units", "seed"], VAL)
    means = {group.values["model.hidden_units"]: group.figures["val_accuracy"].mean for group in found}
    assert [group.values["model.hidden_units"] for group in found] == sorted(means, key=means.get, reverse=True)
    for group, scores in zip(found, (BEST, TIED, APART), strict=True):
        mean, std, half = t_interval(scores)
        interval = group.figures["val_accuracy"]
        assert interval.n == group.n == 5
        assert interval.mean == pytest.approx(mean, abs=1e-12) and interval.std == pytest.approx(std, rel=1e-9)
        assert interval.ci95 == pytest.approx(half, rel=1e-9)
        test_mean, _, test_half = t_interval([score - 0.001 for score in scores])
        assert group.figures["test_accuracy"].mean == pytest.approx(test_mean, abs=1e-12)
        assert group.figures["test_accuracy"].ci95 == pytest.approx(test_half, rel=1e-9)
    assert "seed" not in found[0].values  # the seed is what replicates differ in, never a key


def test_a_configuration_consistently_below_the_best_is_apart_and_a_noisy_one_is_tied():
    table = [*config("b", "256", BEST), *config("a", "64", APART), *config("c", "100", TIED)]
    found = {
        group.values["model.hidden_units"]: group for group in replicates.groups(table, ["model.hidden_units"], VAL)
    }
    assert found["256"].standing == "best"
    for units, scores, standing in (("64", APART, "apart"), ("100", TIED, "tied")):
        differences = np.asarray(scores) - np.asarray(BEST)
        mean, _, half = t_interval(list(differences))
        paired = found[units].versus_best
        assert paired.seeds == 5
        assert paired.difference.mean == pytest.approx(mean, abs=1e-12)
        assert paired.difference.ci95 == pytest.approx(half, rel=1e-9)
        assert paired.p_value == pytest.approx(stats.ttest_rel(scores, BEST).pvalue, rel=1e-6)
        assert (abs(mean) > half) == (standing == "apart")
        assert found[units].standing == standing
    assert [group.name for group in replicates.tied_with_best(list(found.values()))] == ["model.hidden_units=100"]


def test_a_lucky_seed_does_not_make_a_configuration_best():
    lucky = [0.9600, 0.9610, 0.9900, 0.9605, 0.9595]  # one seed beats every run of BEST, the mean does not
    found = replicates.groups([*config("lucky", "32", lucky), *config("b", "256", BEST)], ["model.hidden_units"], VAL)
    assert found[0].values["model.hidden_units"] == "256"
    assert found[0].best_run.run_id == "b-3"  # its best replicate by the selection metric: 0.9801


def test_one_replicate_has_no_interval_and_failed_replicates_are_left_out():
    table = [
        *config("one", "16", [0.95]),
        *config("some", "32", [0.96, 0.97, math.nan, 0.965], ["FINISHED", "FINISHED", "FAILED", "KILLED"]),
        *config("none", "-1", [math.nan, math.nan], ["FAILED", "FAILED"]),
    ]
    found = {
        group.values["model.hidden_units"]: group for group in replicates.groups(table, ["model.hidden_units"], VAL)
    }
    assert found["16"].n == 1 and math.isnan(found["16"].figures["val_accuracy"].ci95)
    assert found["16"].figures["val_accuracy"].shown() == "0.9500"  # no made-up ± for a single run
    assert found["32"].n == 2 and len(found["32"].runs) == 4  # the KILLED one's figures are not counted either
    assert found["32"].figures["val_accuracy"].mean == pytest.approx(0.965)
    assert found["-1"].n == 0 and found["-1"].status == "FAILED"
    assert replicates.groups(table, ["model.hidden_units"], VAL)[-1].values["model.hidden_units"] == "-1"
    assert found["16"].standing == "n/a"  # a single seed shared with the best: nothing to tell
    lines = list(csv.DictReader(io.StringIO(replicates.groups_csv(list(found.values()), ["model.hidden_units"]))))
    by_units = {line["model.hidden_units"]: line for line in lines}
    assert by_units["16"]["val_accuracy_ci95"] == "" and by_units["16"]["n"] == "1"
    assert by_units["-1"]["status"] == "FAILED" and by_units["-1"]["val_accuracy_mean"] == ""


def test_a_seed_run_twice_is_one_replicate():
    table = [*config("b", "256", BEST), row("b", 0, BEST[0], "group-b", **{"model.hidden_units": "256"})]
    [group] = replicates.groups(table, ["model.hidden_units"], VAL)
    assert group.n == 5 and len(group.runs) == 6


def test_the_report_line_names_the_configuration_its_intervals_and_ties():
    table = [*config("b", "256", BEST), *config("c", "100", TIED)]
    found = replicates.groups(table, ["model.hidden_units", "seed"], VAL)
    line = replicates.report_line(found[0], replicates.tied_with_best(found), VAL)
    mean, _, half = t_interval(BEST)
    assert line.startswith(
        f"best by val_accuracy (max, mean of 5 seeds): model.hidden_units=256 val_accuracy={mean:.4f} ± {half:.4f} "
    )
    assert "test_accuracy=" in line and line.endswith("; tied with it: model.hidden_units=100")


def test_the_plot_has_a_tick_per_value_error_bars_and_a_line_per_other_value():
    table = [
        *config("a", "64", APART),
        *config("b", "256", BEST),
        *[replace_group(r, "rate") for r in config("r", "256", TIED)],
    ]
    for item in table[10:]:
        item.params["optimizer.learning_rate"] = "0.01"
    for item in table[:10]:
        item.params["optimizer.learning_rate"] = "0.001"
    found = replicates.groups(table, ["model.hidden_units", "optimizer.learning_rate"], VAL)
    figure = plots.metric_by_key(found, "model.hidden_units", ["optimizer.learning_rate"])
    [axes] = figure.axes
    assert [label.get_text() for label in axes.get_xticklabels()] == ["64", "256"]  # numeric order, no 0.5 ticks
    assert sorted(text.get_text() for text in axes.get_legend().get_texts()) == [
        "optimizer.learning_rate=0.001",
        "optimizer.learning_rate=0.01",
    ]
    assert len(axes.containers) == 2  # an errorbar container per line
    caps = [segments for container in axes.containers for segments in container.lines[2]]
    assert all(np.ptp(segment.get_segments()[0][:, 1]) > 0 for segment in caps)  # intervals drawn, not flat
    plots.close(figure)


def replace_group(item: Row, group: str) -> Row:
    return Row(item.run_id + group, item.name, item.status, dict(item.params), item.metrics, item.seconds, group)


def test_replicates_share_a_config_group_and_nothing_else_does(compose_cfg):
    def digest(*overrides: str, source: str = "data-a") -> str:
        return group_digest(validate(compose_cfg(*overrides)), source)

    assert digest("seed=0") == digest("seed=1") == digest("seed=7", "tracking.run_name=x", "trainer.verbose=0")
    assert digest("seed=0", "model.hidden_units=100") != digest("seed=0")
    assert digest("seed=0", "data.validation_size=100") != digest("seed=0", "data.validation_size=200")
    assert digest("seed=0", source="data-b") != digest("seed=0")  # other data: not the same configuration


@pytest.fixture
def sweep_store(tmp_path):
    """A parent with 3 configurations x 5 seeds of children, made with MLflow's client (no training)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("mnistexp")
    parent = client.create_run(
        experiment,
        run_name="sweep",
        tags={"mnistexp.sweep": "parent", "mnistexp.swept_keys": "model.hidden_units,seed"},
    )
    children = {}
    for units, scores in (("64", APART), ("256", BEST), ("100", TIED)):
        for seed, score in enumerate(scores):
            run = client.create_run(
                experiment,
                run_name=f"model.hidden_units={units},seed={seed}",
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    "mnistexp.config_group": f"group-{units}",
                    "mnistexp.selection_metric": "val_accuracy",
                    "mnistexp.selection_mode": "max",
                },
            )
            client.log_param(run.info.run_id, "model.hidden_units", units)
            client.log_param(run.info.run_id, "seed", str(seed))
            for name, value in (("val_accuracy", score), ("test_accuracy", score - 0.002), ("test_loss", 1 - score)):
                client.log_metric(run.info.run_id, name, value)
            client.set_terminated(run.info.run_id, "FINISHED")
            children[run.info.run_id] = (units, seed)
    return {"uri": uri, "client": client, "parent": parent.info.run_id, "children": children, "path": tmp_path}


def test_the_sweep_summary_ranks_configurations_and_logs_their_means(sweep_store, compose_cfg):
    from mnistexp.multirun.summary import finish_parent_run

    client, parent = sweep_store["client"], sweep_store["parent"]
    tracking_cfg = validate(compose_cfg(f"tracking.uri={sweep_store['uri']}")).tracking
    outcome = finish_parent_run(tracking_cfg, parent, VAL, interrupted=False)
    mean, _, half = t_interval(BEST)
    assert (
        f"best by val_accuracy (max, mean of 5 seeds): model.hidden_units=256 val_accuracy={mean:.4f} ± {half:.4f}"
        in (outcome.report)
    )
    assert "tied with it: model.hidden_units=100" in outcome.report

    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["best_val_accuracy_mean"] == pytest.approx(mean, abs=1e-12)
    assert run.data.metrics["best_val_accuracy_ci95"] == pytest.approx(half, rel=1e-9)
    assert run.data.metrics["best_run_test_accuracy"] == pytest.approx(np.mean(BEST) - 0.002, abs=1e-12)
    assert run.data.tags["mnistexp.best_config_group"] == "group-256"
    best_run = run.data.tags["mnistexp.best_run_id"]
    assert sweep_store["children"][best_run] == ("256", int(np.argmax(BEST)))  # the best replicate of the best

    table = client.download_artifacts(parent, "sweep/groups.csv", str(sweep_store["path"]))
    lines = list(csv.DictReader(io.StringIO(Path(table).read_text())))
    assert [line["model.hidden_units"] for line in lines] == ["256", "100", "64"]
    assert "seed" not in lines[0]
    for line, scores in zip(lines, (BEST, TIED, APART), strict=True):
        mean, std, half = t_interval(scores)
        assert float(line["val_accuracy_mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(line["val_accuracy_std"]) == pytest.approx(std, rel=1e-9)
        assert float(line["val_accuracy_ci95"]) == pytest.approx(half, rel=1e-9)
        assert line["n"] == "5" and line["seeds"] == "0 1 2 3 4"
    assert [line["vs_best"] for line in lines] == ["best", "tied", "apart"]
    plotted = {item.path for item in client.list_artifacts(parent, "sweep")}
    assert plotted == {"sweep/summary.csv", "sweep/groups.csv", "sweep/val_accuracy_by_model.hidden_units.png"}


def test_compare_groups_replicates_and_says_when_there_are_none(sweep_store, capsys):
    uri, parent = sweep_store["uri"], sweep_store["parent"]
    plot = sweep_store["path"] / "plot.png"
    assert runs_cli.mnistexp_runs(["--tracking-uri", uri, "compare", "--parent", parent, "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("configurations ranked by the mean val_accuracy (max)")
    assert lines[1].split()[:4] == ["model.hidden_units", "status", "n", "val_accuracy"]
    body = lines[2:5]
    assert [line.split()[0] for line in body] == ["256", "100", "64"]
    assert [line.split()[-2] for line in body] == ["best", "tied", "apart"]
    mean, _, half = t_interval(BEST)
    assert f"{mean:.4f} ± {half:.4f}" in body[0]
    assert plot.stat().st_size > 1000

    assert runs_cli.mnistexp_runs(["--tracking-uri", uri, "compare", "--parent", parent, "--no-group"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2 + 15  # every run again

    client = sweep_store["client"]
    for run_id in sweep_store["children"]:  # every run a configuration of its own: no replicates
        client.set_tag(run_id, "mnistexp.config_group", run_id)
    assert runs_cli.mnistexp_runs(["--tracking-uri", uri, "compare", "--parent", parent]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ranked by val_accuracy (max)" and out[-1] == "one run per configuration, no interval"
