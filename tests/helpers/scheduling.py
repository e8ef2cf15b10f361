"""How pytest-xdist hands the suite to its workers: by group (`--dist loadgroup`), in collection order."""

from __future__ import annotations

import pytest


def xdist_group_of(item: pytest.Item) -> str | None:
    """The group loadgroup schedules `item` by: its xdist_group marks' names joined, as xdist joins them."""
    names = [mark.args[0] if mark.args else mark.kwargs.get("name") for mark in item.iter_markers("xdist_group")]
    return "_".join(sorted(names)) if names else None


def slow_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """The slow tests before the fast ones, each group as one block and every group's order kept:
    xdist hands out work in this order, so the last to start are tests of a second, not a sweep
    that keeps one worker busy after the others have finished."""
    groups: dict[str | None, bool] = {}
    for item in items:
        group = xdist_group_of(item)
        if group is not None:
            groups[group] = groups.get(group, False) or item.get_closest_marker("slow") is not None

    def fast(item: pytest.Item) -> bool:
        group = xdist_group_of(item)
        return not groups[group] if group is not None else item.get_closest_marker("slow") is None

    return sorted(items, key=fast)  # stable: the collection's order within each kind
