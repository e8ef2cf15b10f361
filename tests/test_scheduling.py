"""The suite's own scheduling: tests that share a module's sweep, server or study stay on one worker."""

from __future__ import annotations

import pytest

from .helpers import REPO_ROOT
from .helpers.scheduling import slow_first, xdist_group_of

pytestmark = pytest.mark.xdist_group("scheduling")


def test_a_grouped_test_carries_the_group_that_xdist_schedules_it_by(request):
    """pytest-xdist's loadgroup sends every test whose node id ends in the same `@group` to one worker.
    On a pytest where it cannot add that suffix (9.2, pytest-xdist #1386) every group is silently
    spread over the workers: each builds the module's sweep or server again, and tests kept apart
    (one Ray, one Slurm node, one PostgreSQL database) run side by side."""
    under_loadgroup = bool(getattr(request.config.option, "loadgroup", False))  # set in xdist's workers
    assert request.node.nodeid.endswith("@scheduling") == under_loadgroup, request.node.nodeid


_SUITE: list[pytest.Item] = []


def the_suite(pytester) -> list[pytest.Item]:
    """The suite's items, collected once per process: a second collection of tests/ in the same
    process stopped with an internal error of pytest's (seen: no package metadata for pluggy)."""
    if not _SUITE:
        _SUITE.extend(pytester.inline_genitems(str(REPO_ROOT / "tests"), "-o", "addopts=", "-p", "no:xdist")[0])
    return _SUITE


def test_every_module_fixture_is_built_once(pytester):
    """A module-scoped fixture (a sweep, a server, a study) is built once per worker that runs a test
    using it: its tests must share one xdist group, or two workers build it (seen: test_fused's two
    sweeps, 90 s of CPU each, made twice)."""
    items = the_suite(pytester)
    users: dict[tuple[str, str], list[pytest.Item]] = {}
    for item in items:
        for name, definitions in item._fixtureinfo.name2fixturedefs.items():
            if definitions and definitions[-1].scope == "module":
                users.setdefault((item.module.__name__, name), []).append(item)
    assert ("tests.test_fused", "sweeps") in users  # the check below sees the suite's module fixtures
    spread = {
        f"{module}:{name}": sorted({str(xdist_group_of(item)) for item in items})
        for (module, name), items in users.items()
        if len(items) > 1 and (len({xdist_group_of(item) for item in items}) > 1 or xdist_group_of(items[0]) is None)
    }
    assert spread == {}


def test_workers_are_handed_the_slow_tests_first_and_each_group_in_its_order(pytester):
    """The last tests to start are the fast ones (conftest's slow_first, in every worker), and a group's
    tests keep the order its module fixtures rely on (test_clusters: in-process Ray before the head)."""
    items = the_suite(pytester)
    ordered = slow_first(items)
    assert sorted(item.nodeid for item in ordered) == sorted(item.nodeid for item in items)
    alone = [item.get_closest_marker("slow") is not None for item in ordered if xdist_group_of(item) is None]
    assert alone.count(True) > 20 and alone.count(False) > 20  # both tiers are there to be ordered
    assert alone == sorted(alone, reverse=True)  # every slow test of no group before every fast one
    for group in {xdist_group_of(item) for item in items} - {None}:
        assert [item.nodeid for item in ordered if xdist_group_of(item) == group] == [
            item.nodeid for item in items if xdist_group_of(item) == group
        ], group
