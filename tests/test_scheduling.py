"""The suite's own scheduling: tests that share a module's sweep, server or study stay on one worker."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.xdist_group("scheduling")


def test_a_grouped_test_carries_the_group_that_xdist_schedules_it_by(request):
    """pytest-xdist's loadgroup sends every test whose node id ends in the same `@group` to one worker.
    On a pytest where it cannot add that suffix (9.2, pytest-xdist #1386) every group is silently
    spread over the workers: each builds the module's sweep or server again, and tests kept apart
    (one Ray, one Slurm node, one PostgreSQL database) run side by side."""
    under_loadgroup = bool(getattr(request.config.option, "loadgroup", False))  # set in xdist's workers
    assert request.node.nodeid.endswith("@scheduling") == under_loadgroup, request.node.nodeid
