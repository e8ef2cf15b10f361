"""Hydra's and OmegaConf's composition errors as one line in mnistexp's voice, naming the key, option or file."""

from __future__ import annotations

import re
import traceback
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from mnistexp.config.schema import MnistexpConfig
from mnistexp.config.validation import show

_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def explain(error: BaseException) -> str | None:
    """The one line to print for an error raised while Hydra composes the config; None if it is not one."""
    if isinstance(error, ValueError) and _raised_by_hydras_command_line(error):
        return str(error)  # e.g. "Only one of --run, --multirun, --cfg, ... can be specified"
    if not isinstance(error, (ConfigCompositionException, OverrideParseException, yaml.YAMLError)):
        return None
    syntax = next((cause for cause in _chain(error) if isinstance(cause, yaml.MarkedYAMLError)), None)
    if syntax is not None:
        return _yaml_error(syntax)
    if isinstance(error, MissingConfigException) and error.missing_cfg_file and error.options is not None:
        return _missing_option(error.missing_cfg_file, error.options)
    if isinstance(error, OverrideParseException):
        override = re.search(r"string: (.*?) out of \[", str(error))
        reason = str(error).splitlines()[1] if len(str(error).splitlines()) > 1 else str(error)
        return f"cannot parse the override {override.group(1) if override else ''} ({reason})"
    ambiguous = re.match(r"Ambiguous value for argument '(.*?)'", str(error))
    if ambiguous:
        return (
            f"{ambiguous.group(1)} gives several values: add -m to run one job per value "
            "(a sweep), or write [a,b] for a list"
        )
    where = re.match(r"In '(experiment/[^']+)'", str(error))
    prefix = f"{where.group(1).replace('/', '=')}: " if where else ""
    cause = next((cause for cause in _chain(error) if isinstance(cause, OmegaConfBaseException)), None)
    if cause is not None and getattr(cause, "full_key", None):
        return prefix + _bad_value(cause)
    return prefix + str(error).strip().splitlines()[0]


def _raised_by_hydras_command_line(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].name == "_run_hydra"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _yaml_error(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{mark.name}, line {mark.line + 1}" if mark else "a config file"
    return f"{where}: not valid YAML ({error.problem or error.context})"


def _missing_option(missing: str, options: typing.Sequence[str]) -> str:
    group, _, name = missing.rpartition("/")
    found = ", ".join(options) or "none"
    if group == "experiment":
        return (
            f"experiment={name}: no such experiment in {Path.cwd() / 'experiments'} or among "
            f"mnistexp's own (found: {found})"
        )
    return f"{group}={name}: no such option (choose from: {found})"


def _bad_value(cause: OmegaConfBaseException) -> str:
    key = str(cause.full_key)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return f"{key} is not a known key (`mnistexp --cfg job` lists them)"
    if isinstance(cause, ValidationError) and "is not Optional" in str(cause):
        return f"{key} must not be null"
    wanted = _describe(_schema_type(key))
    return f"{key} must be {wanted} (got {show(cause.value)})"


def _schema_type(dotted_key: str) -> Any:
    """The type the schema declares for a dotted key (Any when the key is not a schema field)."""
    node: Any = MnistexpConfig
    for part in dotted_key.split("."):
        if not is_dataclass(node) or part not in {item.name for item in fields(node)}:
            return Any
        node = typing.get_type_hints(node)[part]
    return node


def _describe(hint: Any) -> str:
    if hint in _TYPE_NAMES:
        return _TYPE_NAMES[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _describe(arg) for arg in args)
    if origin is list and args:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    if is_dataclass(hint):
        return "a group of keys"
    return "a value of the right type"
