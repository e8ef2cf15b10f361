"""Secrets out of everything mnistexp writes or prints: the password of a URL becomes ***."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# scheme://user:password@host -> scheme://user:***@host (also with an empty user name)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s@'\"]+)@")
# ...?password=secret&... -> ...?password=***&...
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_token)=)(?P<secret>[^&\s'\"]+)", re.I)


def mask(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***: user:PASSWORD@ and ?password=..."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda found: f"{found['head']}:{MASK}@", text)
    return _QUERY.sub(lambda found: f"{found['head']}{MASK}", text)


def masked(value: Any) -> Any:
    """A config value with every string in it masked (dicts and lists walked)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(item) for item in value)
    return value


class MaskingFilter(logging.Filter):
    """Masks every record a logger emits, so no console line carries a password."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg, record.args = record.getMessage(), ()
        if isinstance(record.msg, str):
            record.msg = mask(record.msg)
        return True


SECRETS_ENV = "MNISTEXP_SECRETS"  # masked URL -> the real one, for the jobs a command starts (cli/ sets it)
_known: dict[str, str] = {}  # masked URL -> the real one, in this process


def hide_in_overrides(arguments: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command line with the password of every URL replaced by *** (`tracking.uri=postgresql://u:***@h/db`),
    and the masked URLs with the real ones they stand for. Hydra writes overrides and configs into
    its output folders, and only the masked form reaches them; `unmask` puts a URL back where
    mnistexp connects."""
    rewritten, secrets = [], {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals and not argument.startswith("-") and mask(value) != value:
            secrets[mask(value)] = value
            argument = f"{key}={mask(value)}"
        rewritten.append(argument)
    return rewritten, secrets


def remember(secrets: Mapping[str, str]) -> None:
    """The real URLs behind masked ones, for `unmask` in this process (the CLI and each job's process)."""
    _known.update(secrets)


def unmask(url: str) -> str:
    """The real URL a masked one from the command line stands for (itself when it is not one)."""
    return _known.get(url, url) if MASK in url else url
