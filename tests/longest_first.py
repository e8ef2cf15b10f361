"""A pytest plugin: the suite's work units in order of their recorded seconds, longest first.

pytest-xdist's loadgroup hands each worker the next unit (an xdist_group, or a test on its own) in
collection order (with `--no-loadscope-reorder`, in pyproject; by default it orders them by test
count). In file order the long servers, sweeps and grace periods of the last files started last,
and one worker ran them alone while the others stood idle. Longest first, short tests fill the cores
at the end. `pytest --store-durations` writes the run's seconds per test (setup, call and teardown)
to the `durations_file` ini setting's file; a test missing from it counts as the median test.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("durations_file", "JSON of seconds per test id, for the order (relative to the rootdir)")
    parser.addoption(
        "--store-durations",
        action="store_true",
        help="write each test's seconds in this run to the durations_file, the order of later runs",
    )


def durations_file(config: pytest.Config) -> Path | None:
    name = config.getini("durations_file")
    return config.rootpath / name if name else None


def group_of(item: pytest.Item) -> str | None:
    """The group xdist's loadgroup schedules `item` by: its xdist_group names sorted and joined, as xdist does."""
    names = {
        str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
        for mark in item.iter_markers("xdist_group")
    }
    return "_".join(sorted(names)) if names else None


def test_id(item: pytest.Item) -> str:
    """The id xdist's workers report: the node id with `@group` added (once, whether or not xdist has yet)."""
    group = group_of(item)
    if group is None or item.nodeid.endswith(f"@{group}"):
        return item.nodeid
    return f"{item.nodeid}@{group}"


@pytest.hookimpl(trylast=True)  # after any plugin that selects or deselects tests
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = durations_file(config)
    seconds: dict[str, float] = json.loads(path.read_text()) if path is not None and path.exists() else {}
    unknown = statistics.median(seconds.values()) if seconds else 1.0
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    units = [group_of(item) or test_id(item) for item in items]
    for index, (item, unit) in enumerate(zip(items, units, strict=True)):
        cost[unit] = cost.get(unit, 0.0) + seconds.get(test_id(item), unknown)
        first.setdefault(unit, index)
    # A unit's tests keep their order and stay together; equal costs keep the files' order.
    ranked = sorted(range(len(items)), key=lambda i: (-cost[units[i]], first[units[i]], i))
    items[:] = [items[i] for i in ranked]


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path, self.seconds, self.ids = path, {}, {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.ids = {item.nodeid: test_id(item) for item in session.items}  # without xdist: no suffix yet

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = self.ids.get(report.nodeid, report.nodeid)
        self.seconds[name] = self.seconds.get(name, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        table = {name: round(seconds, 2) for name, seconds in sorted(self.seconds.items())}
        self.path.write_text(json.dumps(table, indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    # On xdist's controller (its workers' reports reach it) or without xdist; never in a worker.
    path = durations_file(config)
    if config.getoption("store_durations") and path is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(path), "longest-first-recorder")
