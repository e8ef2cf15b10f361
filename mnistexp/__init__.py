"""mnistexp: config-driven MNIST experiments with Hydra, Keras and MLflow.

The Python API (mnistexp/api.py), for a notebook or a script: the commands' own path, in this process.

    import mnistexp
    result = mnistexp.run(["model.hidden_units=100"])        # one job, as `mnistexp model.hidden_units=100`
    swept = mnistexp.sweep(["model.hidden_units=0,100", "seed=range(3)"])   # as `mnistexp -m ...`
    table = mnistexp.runs(parent=swept.parent_run_id)        # what `mnistexp-runs compare` ranks, as a DataFrame
    model = mnistexp.load_model(result.run_id)               # the logged Keras model

Bad input raises `mnistexp.MnistexpError` with the line the command prints. Importing mnistexp stays
cheap: the API, TensorFlow and MLflow load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mnistexp.errors import MnistexpError

if TYPE_CHECKING:
    from mnistexp.api import RunResult, SweepResult, load_model, run, runs, sweep

__version__ = "0.1.0"
__all__ = ["MnistexpError", "RunResult", "SweepResult", "load_model", "run", "runs", "sweep"]
_API = frozenset(__all__) - {"MnistexpError"}


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (PEP 562)."""
    if name in _API:
        from mnistexp import api

        return getattr(api, name)
    raise AttributeError(f"module 'mnistexp' has no attribute {name!r}")
