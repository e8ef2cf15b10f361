"""The MLflow UI in a real browser: a sweep's children show their hidden units and test accuracy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .helpers import MNISTEXP, TINY, clean_env, commands
from .helpers.servers import mlflow_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("MNISTEXP_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def sweep_store(tmp_path, mnist_path) -> str:
    env = clean_env(MNISTEXP_DATA=str(mnist_path))
    done = commands.run_here(MNISTEXP, "-m", "model.hidden_units=0,16,32", *TINY, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def ui_server(sweep_store, tmp_path):
    with mlflow_server(sweep_store, tmp_path) as url:
        yield url


def test_sweep_children_appear_in_the_mlflow_ui(ui_server, sweep_store, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    client = MlflowClient(sweep_store)
    experiment = client.get_experiment_by_name("mnistexp")
    children = [run for run in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 3

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # MLflow 3.17's UI opens on its GenAI views unless told this is model training.
            runs_page = f"{ui_server}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
            page.goto(runs_page)
            parent_row = page.locator("[role=row]", has_text="sweep model.hidden_units")
            parent_row.first.wait_for(timeout=60_000)
            parent_row.locator("button").first.click()  # unfold the nested child runs
            for child in children:
                page.get_by_text(child.info.run_name, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "experiment.png"), full_page=True)

            for child in children:
                page.goto(
                    f"{ui_server}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}"
                    "?workflowType=machine_learning"
                )
                page.get_by_text("test_accuracy", exact=True).first.wait_for(timeout=60_000)
                page.get_by_text("model.hidden_units", exact=True).first.wait_for(timeout=30_000)
                lines = page.inner_text("body").splitlines()
                shown_units = lines[lines.index("model.hidden_units") + 1]
                shown_accuracy = float(lines[lines.index("test_accuracy") + 1])
                assert shown_units == child.data.params["model.hidden_units"]
                assert shown_accuracy == pytest.approx(child.data.metrics["test_accuracy"], abs=1e-9)
                page.screenshot(path=str(tmp_path / f"run_{shown_units}.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots: {tmp_path}")
