"""Hydra plugins: `experiment=NAME` finds ./experiments/NAME.yaml before the experiments that ship with mnistexp."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

MAIN_CONFIG = "pkg://mnistexp.conf"
GROUP = "experiment"


class ExperimentsFolder(ConfigSource):
    """A folder of experiment files (`experiments/NAME.yaml`) seen as Hydra's `experiment` group.

    Hydra names a group after its folder; this source lets the user's folder keep the plural name
    that `mnistexp-runs pin` writes to and the repository uses.
    """

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.folder = Path(self.path)

    @staticmethod
    def scheme() -> str:
        return "mnistexp-experiments"

    def _file(self, config_path: str) -> Path | None:
        group, _, name = config_path.partition("/")
        if group != GROUP or not name or "/" in name:
            return None
        return self.folder / self._normalize_file_name(name)

    def load_config(self, config_path: str) -> ConfigResult:
        file = self._file(config_path)
        if file is None or not file.is_file():
            raise ConfigLoadError(f"Config not found : {config_path}")
        with file.open(encoding="utf-8") as stream:  # a YAML error then names the file
            header = ConfigSource._get_header_dict(stream.read(512))
            stream.seek(0)
            config = OmegaConf.load(stream)
        return ConfigResult(config=config, path=f"{self.scheme()}://{self.path}", provider=self.provider, header=header)

    def available(self) -> bool:
        return True  # an absent folder is an empty group, not an error

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP) and self.folder.is_dir()

    def is_config(self, config_path: str) -> bool:
        file = self._file(config_path)
        return file is not None and file.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> builtins.list[str]:
        if not self.is_group(config_path):
            return []
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if results_filter == ObjectType.GROUP:
            return []
        return sorted(file.stem for file in self.folder.glob("*.yaml") if file.is_file())


class WorkingDirectoryExperiments(SearchPathPlugin):
    """Puts ./experiments (of the directory mnistexp runs in) in front of mnistexp's own configs."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if not any(element.path == MAIN_CONFIG for element in search_path.get_path()):
            return  # another Hydra app in the same environment: leave it alone
        folder = Path(os.getcwd(), "experiments")
        search_path.prepend(
            "mnistexp (./experiments)",
            f"{ExperimentsFolder.scheme()}://{folder}",
            anchor=SearchPathQuery(path=MAIN_CONFIG),
        )
