"""Hydra's Ray launcher, with the Ray it starts in this process kept on 127.0.0.1 and behind a token.

Ray 2.60 started by `ray.init(address="local")` finds "the node IP" by a UDP connect to 8.8.8.8 and
then binds its servers (GCS, raylet, agents, metrics) on all interfaces, with no authentication: an
open Ray runs code for anyone who reaches it (CVE-2023-48022). Here, before Ray is imported:
- RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes the node IP 127.0.0.1 (ray/_private/services.py,
  read at import by every Ray process), so every listener binds loopback and nothing dials out;
- RAY_AUTH_MODE=token with a token file of this sweep's own (0600, removed at exit): Ray would
  otherwise write one to ~/.ray/auth_token;
- the dashboard process's cloud-metadata probe (169.254.169.254, metadata.google.internal) meets a
  closed loopback proxy while Ray starts; the jobs get the user's own proxy settings back.
A cluster address (`hydra.launcher.ray.init.address=HOST:PORT`) is left as it is: see `.ci/ray`.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from mnistexp import environment
from mnistexp.errors import UserError

try:
    from hydra_plugins.hydra_ray_launcher.ray_launcher import RayLauncher as HydrasRayLauncher
except ImportError:  # without the `launchers` extra: hydra/launcher=ray says what to install
    from hydra.plugins.launcher import Launcher

    class HydrasRayLauncher(Launcher):  # type: ignore[no-redef]
        def __init__(self, **ray: Any) -> None:
            raise UserError("hydra/launcher=ray needs Hydra's Ray launcher: pip install 'mnistexp[launchers]'")

        def setup(self, **context: Any) -> None: ...

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any: ...


CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, a proxied request fails at once
PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
LOOPBACK = "127.0.0.1,localhost,::1"


class RayLauncher(HydrasRayLauncher):
    """Starts a loopback Ray with token auth for `address: local`, then launches as Hydra's does."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        resolved = OmegaConf.to_container(self.ray_cfg.init, resolve=True)
        init = {str(key): value for key, value in resolved.items()} if isinstance(resolved, dict) else {}
        if init.get("address") == "local" and not _ray_running():
            start_loopback_ray(init)  # Hydra's own start_ray then finds Ray running and leaves it be
        return super().launch(job_overrides, initial_job_idx)


def _ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def start_loopback_ray(init: dict[str, Any]) -> None:
    """ray.init for a Ray of this process only: every socket on 127.0.0.1, token auth on."""
    if "ray" in sys.modules:
        raise RuntimeError("ray was imported before its loopback settings could be made")
    state = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    atexit.register(shutil.rmtree, state, True)  # before `import ray`: runs after Ray's own shutdown
    token = os.path.join(state, "auth_token")
    with os.fdopen(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as stream:
        stream.write(secrets.token_hex(32))
    environment.for_every_process(
        {
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": token,
            "RAY_USAGE_STATS_ENABLED": "0",
        },
        unset=("RAY_AUTH_TOKEN",),  # it would win over the file
    )
    while_starting = {
        **dict.fromkeys(PROXIES, CLOSED),
        "no_proxy": LOOPBACK,
        "NO_PROXY": LOOPBACK,
        "DASHBOARD_METRIC_PORT": str(_free_port()),  # the defaults are shared by every Ray on the machine
        "AUTOSCALER_METRIC_PORT": str(_free_port()),
    }
    with environment.only_while(while_starting) as before:  # Ray's daemons keep these, this process does not
        import ray

        runtime_env = dict(init.get("runtime_env") or {})
        own_proxies = {name: before[name] for name in (*PROXIES, "no_proxy", "NO_PROXY")}
        runtime_env["env_vars"] = {**own_proxies, **runtime_env.get("env_vars", {})}  # nor do the jobs
        ray.init(
            **{
                **init,
                "address": "local",
                "_node_ip_address": "127.0.0.1",
                "dashboard_host": "127.0.0.1",
                "runtime_env": runtime_env,
                "_temp_dir": init.get("_temp_dir", state),
            }
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
