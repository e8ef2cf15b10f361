"""The suite's own scheduling: tests that share a module's sweep, server or study stay on one worker."""

from __future__ import annotations

import pytest

from .helpers import REPO_ROOT

pytestmark = pytest.mark.xdist_group("scheduling")


def test_a_grouped_test_carries_the_group_that_xdist_schedules_it_by(request):
    """pytest-xdist's loadgroup sends every test whose node id ends in the same `@group` to one worker.
    On a pytest where it cannot add that suffix (9.2, pytest-xdist #1386) every group is silently
    spread over the workers: each builds the module's sweep or server again, and tests kept apart
    (one Ray, one Slurm node, one PostgreSQL database) run side by side."""
    under_loadgroup = bool(getattr(request.config.option, "loadgroup", False))  # set in xdist's workers
    assert request.node.nodeid.endswith("@scheduling") == under_loadgroup, request.node.nodeid


def xdist_group_of(item: pytest.Item) -> str | None:
    """The group loadgroup schedules `item` by: its xdist_group marks' names joined, as xdist joins them."""
    names = [mark.args[0] if mark.args else mark.kwargs.get("name") for mark in item.iter_markers("xdist_group")]
    return "_".join(sorted(names)) if names else None


def test_every_module_fixture_is_built_once(pytester):
    """A module-scoped fixture (a sweep, a server, a study) is built once per worker that runs a test
    using it: its tests must share one xdist group, or two workers build it (seen: test_fused's two
    sweeps, 90 s of CPU each, made twice)."""
    items, _ = pytester.inline_genitems(str(REPO_ROOT / "tests"), "-o", "addopts=", "-p", "no:xdist")
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
