"""A pytest plugin: under CI (`CI` set) a skip fails unless it names why the environment cannot have the test."""

from __future__ import annotations

import os

import pytest

ENVIRONMENT_SKIP = "environment:"  # a skip whose reason starts so names why this environment cannot have it


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (`CI` set) a skip is a failure unless its reason starts with ENVIRONMENT_SKIP: a missing
    database or server there means CI is broken, not that the feature may go untested."""
    outcome = yield
    result = outcome.get_result()
    if not os.environ.get("CI") or not result.skipped or hasattr(result, "wasxfail"):
        return
    reason = result.longrepr[2] if isinstance(result.longrepr, tuple) else str(result.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(ENVIRONMENT_SKIP):
        result.outcome = "failed"
        result.longrepr = f"skipped under CI, which must run it: {reason}"
