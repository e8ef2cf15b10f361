"""How a sweep's parent run reaches its jobs: environment variables Hydra sets in each job's process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, read_write

from mnistexp.tracking.masking import mask

PARENT_RUN_ENV = "MNISTEXP_PARENT_RUN_ID"
SWEPT_KEYS_ENV = "MNISTEXP_SWEPT_KEYS"
SWEEP_SIZE_ENV = "MNISTEXP_SWEEP_SIZE"
THREADS_ENV = "MNISTEXP_JOB_THREADS"
COMMAND_ENV = "MNISTEXP_SWEEP_COMMAND"  # this command's id: its children are its own among a study's
TRIAL_ENV = "MNISTEXP_TRIAL_ID"  # an Optuna study's job: the storage id of its trial (set per job by the sweeper)
DATA_ENV = "MNISTEXP_DATA"  # conf/data/mnist.yaml: data.path when set


@dataclass(frozen=True)
class SweepContext:
    """What a job inside a multirun knows about its sweep."""

    parent_run_id: str
    swept_keys: tuple[str, ...]
    size: int | None
    threads: int | None = None  # what trainer.threads=auto means for each job of this sweep
    command: str = ""  # this command's id, tagged on every child it runs

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SweepContext | None:
        """The context the callback handed this job, from the environment Hydra set for it."""
        parent = environ.get(PARENT_RUN_ENV)
        if not parent:
            return None
        keys = tuple(key for key in environ.get(SWEPT_KEYS_ENV, "").split(",") if key)
        size, threads = environ.get(SWEEP_SIZE_ENV), environ.get(THREADS_ENV)
        return cls(
            parent, keys, int(size) if size else None, int(threads) if threads else None, environ.get(COMMAND_ENV, "")
        )

    def sweeps_data(self) -> bool:
        """Whether the jobs differ in their data (a `data` option or a data.* key is swept)."""
        return any(key == "data" or key.startswith("data.") for key in self.swept_keys)

    def run_name(self, overrides: list[str]) -> str:
        """`model.hidden_units=32`: the job's own values of the swept keys."""
        swept = [item for item in overrides if item.split("=", 1)[0].lstrip("+~") in self.swept_keys]
        return ",".join(swept) or ",".join(overrides) or "job"

    def hand_off(self, config: DictConfig, store_uri: str) -> None:
        """Give every job of this sweep this context, whatever process or machine runs it.

        Each job's config is composed again from `hydra.overrides.hydra` plus the job's own
        overrides, and Hydra sets `hydra.job.env_set` in the job's process (the basic launcher's,
        a joblib or Ray worker, a Slurm node) before it calls the job. The parent's store goes
        along (a Ray cluster's workers have the environment of `ray start`, not this one's), and
        so does the data's path, which conf/data/mnist.yaml reads from MNISTEXP_DATA.
        """
        variables = {
            PARENT_RUN_ENV: self.parent_run_id,
            SWEPT_KEYS_ENV: ",".join(self.swept_keys),
            SWEEP_SIZE_ENV: str(self.size or ""),
            THREADS_ENV: str(self.threads or ""),
            COMMAND_ENV: self.command,
        }
        if mask(store_uri) == store_uri:  # Hydra writes env_set into hydra.yaml: a password never goes there
            variables["MLFLOW_TRACKING_URI"] = store_uri
        data_path = OmegaConf.select(config, "data.path")  # conf/data/mnist.yaml reads it from MNISTEXP_DATA
        if data_path:
            variables[DATA_ENV] = str(data_path)
        with read_write(config.hydra.overrides.hydra):
            for name, value in variables.items():
                config.hydra.overrides.hydra.append(f"+hydra.job.env_set.{name}={_quoted(value)}")


def _quoted(value: str) -> str:
    """A string as a quoted value in Hydra's override grammar (no interpolation, no sweep)."""
    escaped = value.replace("'", "\\'").replace("${", "\\${")  # OmegaConf reads \${ as a literal ${
    return f"'{escaped}'"
