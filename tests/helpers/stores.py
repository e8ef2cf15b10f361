"""An empty MLflow store to copy: MLflow makes a new SQLite store's tables by running its alembic
migrations, about 1.3 CPU-s in each process that meets one, and the suite's tests make about a
hundred. A copy opens at once; tests whose subject is that creation opt out (`new_store` marker)."""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

STORE_FILE = "mlflow.db"  # MLflow's default store in the working directory (sqlite:///mlflow.db)


def make_template(folder: Path) -> Path:
    """folder/mlflow.db with MLflow's tables and nothing else but its Default experiment."""
    from mlflow import MlflowClient

    path = folder / STORE_FILE
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def seed(template: Path, folder: Path) -> None:
    """folder/mlflow.db as a first MLflow process there would make it: the template's tables, and
    the Default experiment's artifacts in folder/mlruns/0 (MLflow resolves ./mlruns at creation)."""
    target = folder / STORE_FILE
    shutil.copyfile(template, target)
    with closing(sqlite3.connect(target)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(folder / "mlruns" / "0"),)
        )
