"""tests/notebooks/quickstart.ipynb: committed without outputs, and run headless through a real Jupyter kernel."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

from .helpers import REPO_ROOT, all_runs

NOTEBOOK = REPO_ROOT / "tests" / "notebooks" / "quickstart.ipynb"


def test_the_quickstart_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_quickstart_runs_in_a_kernel_with_one_line_per_epoch(tmp_path: Path, mnist_path: Path, monkeypatch):
    from nbclient import NotebookClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MNISTEXP_DATA", str(mnist_path))  # the kernel inherits this process's environment
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=540, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any cell's error

    streams = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    assert "\r" not in streams and "\x08" not in streams  # no redrawn progress bar
    epochs = re.findall(r"^\d+/\d+ - .*loss: ", streams, flags=re.MULTILINE)
    assert len(epochs) == 2 + 2 + 6  # one line per epoch: models A and B (2 epochs), six 1-epoch sweep jobs
    assert [f"job {k}/6" in streams for k in range(1, 7)] == [True] * 6
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 4  # the digits, the comparison plot, the confusion matrix, plots/mistakes.png

    runs = all_runs(MlflowClient(store))
    assert len(runs) == 2 + 1 + 6 and {run.info.status for run in runs} == {"FINISHED"}
