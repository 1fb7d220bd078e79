"""The hub asks the portal, before every spawn, whether a server may start with these options.

``c.Spawner.apply_user_options = PortalSpawnCheck(...)`` (JupyterHub 5.3+ calls it with
``(spawner, user_options)`` after ``pre_spawn_start`` and before ``pre_spawn_hook``, on every spawn; when
a spawn request carries no options the previous ones are passed again, so they are checked again).

The request: ``POST {portal_url}/api/v1/hub/spawn-check`` with ``Authorization: Bearer <portal API token>``
and the JSON body ``{"user": ..., "server_name": ..., "user_options": {...}, "backend": {...}}``, where
``backend`` says where this hub runs servers: ``{"kind": "slurm", "cluster": NAME}`` (FactorySlurmSpawner)
or ``{"kind": "local", "gpus": [names]}`` (its own machine, with the GPUs ``nvidia-smi -L`` lists: the
portal refuses a GPU profile those GPUs cannot serve).

- 200 ``{"environment": {...}, "cpu_limit": float|null, "mem_limit": "4G"|int|null, "gpus": int,
  "slurm": {...}|null}``: the environment, limits and GPU count are applied to the spawner
  (``CUDA_VISIBLE_DEVICES`` is emptied when ``gpus`` is 0, so a server without a GPU allocation sees no
  GPU); ``slurm`` (account, partition, gpus, cpus, memory_mb, time_minutes, job_name) is the batch job
  that FactorySlurmSpawner submits, whose ``CUDA_VISIBLE_DEVICES`` Slurm sets.
- 4xx (other than 401): the spawn is refused with ``SpawnException(detail, reason="quota")``, carrying the
  portal's ``detail`` to the user and the portal's status code.
- 401, 5xx, timeouts, unreachable portal: refused with reason ``"portal_unavailable"`` (status 503), never
  started unchecked.

Only the standard library and tornado (a JupyterHub dependency) are used, so the module imports in the
hub's environment and in the portal's tests.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

try:  # JupyterHub 6.0+
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs: an HTTPError carries the message just as well
    from tornado.web import HTTPError

    class SpawnException(HTTPError):
        def __init__(self, message: str, *, reason: str, status_code: int = 400, **_: Any) -> None:
            self.message = message
            super().__init__(status_code, message, reason=reason)
            self.reason = reason


log = logging.getLogger(__name__)

SPAWN_CHECK_PATH = "/api/v1/hub/spawn-check"
UNAVAILABLE_MESSAGE = "The portal could not confirm this server's allocation right now; please try again later."


class PortalSpawnCheck:
    """Callable for ``c.Spawner.apply_user_options``: validates with the portal, then applies its answer."""

    def __init__(
        self, portal_url: str, api_token: str, *, timeout: float = 10.0, backend: dict[str, Any] | None = None
    ) -> None:
        self.url = portal_url.rstrip("/") + SPAWN_CHECK_PATH
        self.api_token = api_token
        self.timeout = timeout
        #: Where this hub runs servers (sent with every check); None: the local machine, GPUs looked up once.
        self.backend = backend if backend is not None else {"kind": "local", "gpus": local_gpu_names()}

    async def __call__(self, spawner: Any, user_options: dict[str, Any] | None) -> dict[str, Any]:
        decision = await self.check(spawner.user.name, spawner.name or "", user_options or {})
        apply_decision(spawner, decision)
        return decision

    async def check(self, user: str, server_name: str, user_options: dict[str, Any]) -> dict[str, Any]:
        """Asks the portal; returns its 200 answer or raises SpawnException."""
        body = json.dumps(
            {"user": user, "server_name": server_name, "user_options": user_options, "backend": self.backend},
            default=str,
        )
        request = HTTPRequest(
            self.url,
            method="POST",
            body=body,
            headers={
                "Authorization": f"Bearer {self.api_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError, TimeoutError) as exc:
            raise SpawnException(
                UNAVAILABLE_MESSAGE,
                reason="portal_unavailable",
                log_message=f"spawn check for {user}/{server_name} at {self.url} failed: {exc!r}",
                status_code=503,
            ) from exc
        if response.code == 599 or response.code >= 500 or response.code == 401 or response.code < 200:
            raise SpawnException(
                UNAVAILABLE_MESSAGE,
                reason="portal_unavailable",
                log_message=(
                    f"spawn check for {user}/{server_name} at {self.url} answered {response.code}: "
                    f"{_text(response.body)[:500] or response.error!r}"
                ),
                status_code=503,
            )
        payload = _json(response.body)
        if 400 <= response.code < 500:
            detail = payload.get("detail") if isinstance(payload, dict) else None
            message = str(detail) if detail else "The portal refused to start this server."
            raise SpawnException(message, reason="quota", status_code=response.code)
        if response.code != 200 or not isinstance(payload, dict):
            raise SpawnException(
                UNAVAILABLE_MESSAGE,
                reason="portal_unavailable",
                log_message=f"spawn check for {user}/{server_name}: unexpected answer {response.code}",
                status_code=503,
            )
        return payload


def apply_decision(spawner: Any, decision: dict[str, Any]) -> None:
    """Applies the portal's 200 answer to the spawner, replacing what an earlier spawn applied."""
    base = getattr(spawner, "_portal_base_environment", None)
    if base is None:
        base = dict(spawner.environment)
        spawner._portal_base_environment = base
    environment = {str(k): str(v) for k, v in (decision.get("environment") or {}).items()}
    gpus = int(decision.get("gpus") or 0)
    slurm = decision.get("slurm") or None
    if gpus <= 0:
        environment["CUDA_VISIBLE_DEVICES"] = ""
    elif slurm:
        environment.pop("CUDA_VISIBLE_DEVICES", None)  # Slurm sets it to the GPUs the job holds
    elif not environment.get("CUDA_VISIBLE_DEVICES"):
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    merged = {**base, **environment}
    if slurm and gpus > 0:
        merged.pop("CUDA_VISIBLE_DEVICES", None)
    spawner.environment = merged

    cpu_limit = decision.get("cpu_limit")
    spawner.cpu_limit = float(cpu_limit) if cpu_limit not in (None, "") else None
    mem_limit = decision.get("mem_limit")
    spawner.mem_limit = mem_limit if mem_limit not in (None, "") else None

    # GPU requests for the cluster spawners (set only where the spawner has them).
    if hasattr(spawner, "extra_resource_limits"):  # KubeSpawner
        limits = {k: v for k, v in (spawner.extra_resource_limits or {}).items() if k != "nvidia.com/gpu"}
        if gpus > 0:
            limits["nvidia.com/gpu"] = str(gpus)
        spawner.extra_resource_limits = limits
    if hasattr(spawner, "req_ngpus"):  # BatchSpawner (SlurmSpawner: #SBATCH --gres=gpu:{ngpus})
        spawner.req_ngpus = str(gpus) if gpus > 0 else ""
    if hasattr(spawner, "portal_slurm"):  # FactorySlurmSpawner submits exactly this job
        spawner.portal_slurm = slurm
    spawner.portal_gpus = gpus


def local_gpu_names() -> list[str]:
    """The names of this machine's NVIDIA GPUs (``nvidia-smi --query-gpu=name``), one per GPU; none without
    a driver. What the hub reports to the portal, so that a GPU profile never runs without its GPU."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return []
    try:
        result = subprocess.run(
            [program, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def _text(body: bytes | None) -> str:
    return (body or b"").decode("utf-8", "replace")


def _json(body: bytes | None) -> Any:
    try:
        return json.loads(_text(body))
    except ValueError:
        return None
