"""Heavy imports: loaded with the garbage collector paused, and left out of its later passes."""

from __future__ import annotations

import gc
import importlib
import sys

import pytest

from mnistexp.imports import loaded_for_good

from .helpers import commands


@pytest.fixture
def new_module(tmp_path, monkeypatch):
    """The name of a module nobody has imported yet; it is forgotten afterwards, and nothing stays frozen."""
    name = "mnistexp_throwaway_module"
    (tmp_path / f"{name}.py").write_text(
        "import gc\nCOLLECTOR_ON_WHILE_LOADING = gc.isenabled()\nTABLE = {'weights': [1.0, 2.0]}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    gc.unfreeze()
    gc.enable()


def tracked(thing: object) -> bool:
    return any(candidate is thing for candidate in gc.get_objects())


def test_a_new_module_loads_with_the_collector_paused_and_stays_out_of_its_passes(new_module):
    frozen_before = gc.get_freeze_count()
    with loaded_for_good(new_module):
        module = importlib.import_module(new_module)
    assert module.COLLECTOR_ON_WHILE_LOADING is False
    assert gc.isenabled()
    assert gc.get_freeze_count() > frozen_before
    assert not tracked(module.TABLE)  # frozen: no later collection walks it


def test_a_loaded_module_is_left_alone(new_module):
    importlib.import_module(new_module)
    frozen_before = gc.get_freeze_count()
    with loaded_for_good(new_module):
        assert gc.isenabled()  # nothing to load: no pause
        table = {"created": ["in a later job"]}
    assert gc.get_freeze_count() == frozen_before
    assert tracked(table)


def test_a_collector_the_caller_paused_stays_paused(new_module):
    frozen_before = gc.get_freeze_count()
    gc.disable()
    with loaded_for_good(new_module):
        importlib.import_module(new_module)
    assert not gc.isenabled()
    assert gc.get_freeze_count() == frozen_before


def test_a_failed_import_still_turns_the_collector_back_on(tmp_path, monkeypatch, new_module):
    (tmp_path / "mnistexp_broken_module.py").write_text("raise ImportError('broken on purpose')\n")
    with pytest.raises(ImportError, match="broken on purpose"), loaded_for_good("mnistexp_broken_module"):
        importlib.import_module("mnistexp_broken_module")
    assert gc.isenabled()


@pytest.mark.slow  # a fresh interpreter that loads MLflow and TensorFlow
def test_the_job_path_loads_its_libraries_for_good_without_sklearn_jax_or_scipy_stats(tmp_path):
    """The store check (the first thing a job or a sweep asks of MLflow) and the TensorFlow import
    each leave their modules frozen, and the collector running. TensorFlow loads without the
    scikit-learn (MLflow brings it) and the JAX (the bench extra) it would import for parts mnistexp
    never uses, and seaborn after it without scipy.stats; all import as usual afterwards."""
    script = f"""
import gc
from mnistexp import imports
from mnistexp.tracking import store
from mnistexp.config.schema import TrackingConfig, typed
from mnistexp.config.schema import compose
config = typed(compose().tracking, TrackingConfig)
config.uri = "sqlite:///{tmp_path}/mlflow.db"
counts = [gc.get_freeze_count()]
store.use_store(config)
counts.append(gc.get_freeze_count())
imports.tensorflow(verbose=False)
counts.append(gc.get_freeze_count())
import importlib.util, sys
skipped = [name for name in ("sklearn", "jax") if importlib.util.find_spec(name) and name not in sys.modules]
imports.seaborn()
skipped += [name for name in ("scipy.stats",) if name not in sys.modules]
import sklearn, jax, scipy.stats
print(*counts, gc.isenabled(), ",".join(skipped))
"""
    done = commands.run(sys.executable, "-c", script, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after_mlflow, after_tensorflow, enabled, skipped = done.stdout.split()
    assert int(before) < int(after_mlflow) < int(after_tensorflow)
    assert enabled == "True"
    assert skipped == "sklearn,jax,scipy.stats"  # installed, and left out while they loaded (CI has the bench extra)
