"""Running `mnistexp` and `mnistexp-runs` as a user does: a new process, its output captured."""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import clean_env


def run(
    program: str,
    *args: str,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    check: bool = False,
    timeout: float = 900,
) -> subprocess.CompletedProcess:
    """`program ARGS` in `cwd` with `env` (default: this environment without a tracking URI); text
    output captured. `check`: a non-zero exit fails the test, showing the end of what it printed."""
    done = subprocess.run(
        [program, *args],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{Path(program).name} {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done
