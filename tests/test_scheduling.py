"""The suite's own machinery: tests that share a module's sweep, server or study stay on one worker,
the units go out longest first, each test's empty store is the one MLflow would make, and the
tests run outside the checkout."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from .helpers import REPO_ROOT, stores
from .longest_first import group_of

pytestmark = pytest.mark.xdist_group("scheduling")


def test_a_grouped_test_carries_the_group_that_xdist_schedules_it_by(request):
    """pytest-xdist's loadgroup sends every test whose node id ends in the same `@group` to one worker.
    On a pytest where it cannot add that suffix (9.2, pytest-xdist #1386) every group is silently
    spread over the workers: each builds the module's sweep or server again, and tests kept apart
    (one Ray, one Slurm node, one PostgreSQL database) run side by side."""
    under_loadgroup = bool(getattr(request.config.option, "loadgroup", False))  # set in xdist's workers
    assert request.node.nodeid.endswith("@scheduling") == under_loadgroup, request.node.nodeid


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
        f"{module}:{name}": sorted({str(group_of(item)) for item in items})
        for (module, name), items in users.items()
        if len(items) > 1 and (len({group_of(item) for item in items}) > 1 or group_of(items[0]) is None)
    }
    assert spread == {}


# Two files in file order short-first: a new test, a 1 s and a 5 s test, a 3-test group of 6 s, a 10 s test.
SUITE = {
    "test_a": """
import json

import pytest
def test_new(): pass
def test_short(): pass
def test_medium(): pass
@pytest.mark.xdist_group("g")
def test_g1(): pass
""",
    "test_b": """
import json

import pytest
pytestmark = pytest.mark.xdist_group("g")
def test_g2(): pass
def test_g3(): pass
""",
    "test_c": "def test_long(): pass\n",
}
SECONDS = {
    "test_a.py::test_short": 1.0,
    "test_a.py::test_medium": 5.0,
    "test_a.py::test_g1@g": 2.0,
    "test_b.py::test_g2@g": 2.0,
    "test_b.py::test_g3@g": 2.0,
    "test_c.py::test_long": 10.0,
}
LONGEST_FIRST = ["test_long", "test_g1", "test_g2", "test_g3", "test_medium", "test_new", "test_short"]


def make_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *addopts: str) -> None:
    """SUITE and SECONDS in a pytester directory, run in a process of its own (after the repository's
    suite has been collected in this one, an in-process run cannot find pluggy's metadata)."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # the plugin, as `tests.longest_first`
    pytester.makepyfile(**SUITE)
    pytester.makeini(f"[pytest]\ndurations_file = seconds.json\naddopts = {' '.join(addopts)}\n")
    (pytester.path / "seconds.json").write_text(json.dumps(SECONDS))


def test_units_are_ordered_longest_first_and_a_groups_tests_stay_together(pytester, monkeypatch):
    """A group counts its tests' seconds together (6 s: after the 10 s test, before the 5 s one), in
    its files' order; a test the file does not know counts as the median one (2 s: before 1 s)."""
    make_suite(pytester, monkeypatch)
    result = pytester.runpytest_subprocess("--collect-only", "-q", "-p", "tests.longest_first", "-p", "no:xdist")
    assert [line.rpartition("::")[2] for line in result.outlines if "::" in line] == LONGEST_FIRST


def test_xdist_hands_the_units_out_in_that_order(pytester, monkeypatch, request):
    """The order reaches the workers: with this project's addopts, one worker runs every unit in the
    order above. xdist's own order (by test count, `--loadscope-reorder`) would start with the group."""
    addopts = " ".join(request.config.getini("addopts")).replace("-n auto", "-n 1")  # pyproject's
    assert "--dist loadgroup" in addopts  # the scheduler the suite runs under
    make_suite(pytester, monkeypatch, addopts)
    log = pytester.path / "started.txt"
    pytester.makeconftest(f"def pytest_runtest_setup(item):\n    open({str(log)!r}, 'a').write(item.name + '\\n')\n")
    result = pytester.runpytest_subprocess("-p", "tests.longest_first", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(LONGEST_FIRST))
    assert log.read_text().split() == LONGEST_FIRST


def test_store_durations_writes_each_tests_seconds_under_the_id_xdist_reports(pytester, monkeypatch):
    """What `pytest --store-durations` writes is what the order reads back: a grouped test under its
    `@group` id whether or not xdist ran the suite, and its setup, call and teardown together."""
    pytester.makepyfile(
        test_s="""
import time, pytest
@pytest.fixture
def slow_setup():
    time.sleep(0.2)
    yield
    time.sleep(0.2)
@pytest.mark.xdist_group("g")
def test_grouped(slow_setup):
    time.sleep(0.2)
def test_alone(): pass
"""
    )
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    pytester.makeini("[pytest]\ndurations_file = out/seconds.json\n")
    (pytester.path / "out").mkdir()
    result = pytester.runpytest_subprocess("-p", "tests.longest_first", "-p", "no:xdist", "--store-durations")
    result.assert_outcomes(passed=2)
    seconds = json.loads((pytester.path / "out" / "seconds.json").read_text())
    assert set(seconds) == {"test_s.py::test_grouped@g", "test_s.py::test_alone"}
    assert seconds["test_s.py::test_grouped@g"] >= 0.6 > seconds["test_s.py::test_alone"]


def _contents(store: Path) -> dict[str, list]:
    """Every table's definition and rows, times of day left out and the folder's path made ".". A
    definition's clauses are sorted: two new stores list a table's constraints in either order."""
    contents: dict[str, list] = {}
    with sqlite3.connect(store) as connection:
        for name, sql in connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name"):
            contents[f"schema {name}"] = sorted(line.strip(" \t,") for line in (sql or "").splitlines())
            if (sql or "").startswith("CREATE TABLE"):
                rows = connection.execute(f'SELECT * FROM "{name}"').fetchall()
                contents[name] = [[v for v in row if not (isinstance(v, int) and v > 10**12)] for row in rows]
    return {key: [str(v).replace(str(store.parent), ".") for v in value] for key, value in contents.items()}


def test_a_tests_copied_store_is_the_one_mlflow_makes_in_that_folder(tmp_path, store_template, monkeypatch):
    """conftest gives each test an empty ./mlflow.db copied from one made once per worker: the same
    tables, migrations and rows as MLflow makes in that folder, the Default experiment's artifacts
    under it rather than under the template's folder."""
    from mlflow import MlflowClient

    assert (tmp_path / stores.STORE_FILE).is_file()  # this test's own, from the autouse fixture
    made, copied = tmp_path / "made", tmp_path / "copied"
    made.mkdir()
    copied.mkdir()
    monkeypatch.chdir(made)  # MLflow resolves the Default experiment's ./mlruns where it runs
    MlflowClient(f"sqlite:///{made / stores.STORE_FILE}").search_experiments()
    stores.seed(store_template, copied)
    expected = _contents(made / stores.STORE_FILE)
    assert len(expected) > 100 and "./mlruns/0" in str(expected["experiments"])
    assert _contents(copied / stores.STORE_FILE) == expected


@pytest.mark.new_store
def test_a_test_marked_new_store_finds_no_store(tmp_path):
    assert not (tmp_path / stores.STORE_FILE).exists()


def test_a_test_works_outside_the_checkout():
    """What a test runs in this process writes ./mlruns and outputs/ where it runs: not in the repository."""
    cwd = Path.cwd().resolve()
    assert REPO_ROOT.resolve() not in (cwd, *cwd.parents)
