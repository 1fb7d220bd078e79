"""``POST /api/v1/hub/spawn-check``: the hub's spawner asks whether a server may start, and with what."""

from __future__ import annotations

import dataclasses
import functools
import hmac
from collections.abc import Callable
from typing import Any, Literal

from flask import jsonify, request
from pydantic import BaseModel, Field
from spectree import Response

from portal import web
from portal.api import Problem, bp, spec
from portal.compute.services import HubBackend, check_gateway, check_spawn
from portal.db import get_db
from portal.errors import AuthenticationRequired, InvalidInput


class BackendIn(BaseModel):
    kind: Literal["local", "slurm"] = Field(description="local: the hub's own machine; slurm: Slurm jobs")
    cluster: str | None = Field(default=None, max_length=64, description="kind slurm: the cluster's name")
    gpus: list[str] = Field(
        default_factory=list, max_length=64, description="kind local: the machine's GPU names, one per GPU"
    )

    def to_backend(self) -> HubBackend:
        if self.kind == "slurm":
            if not self.cluster:
                raise InvalidInput("A slurm backend names its cluster.", errors={"backend.cluster": "required"})
            return HubBackend(slurm_cluster=self.cluster)
        return HubBackend(local_gpus=tuple(name[:200] for name in self.gpus))


class SlurmJobOut(BaseModel):
    cluster: str
    account: str = Field(description="sbatch --account")
    partition: str = Field(description="sbatch --partition; empty: the cluster's default")
    gpus: int = Field(description="sbatch --gres=gpu:N when N > 0")
    cpus: int = Field(description="sbatch --cpus-per-task")
    memory_mb: int = Field(description="sbatch --mem (MB)")
    time_minutes: int = Field(description="sbatch --time")
    job_name: str = Field(description="sbatch --job-name")


class SpawnCheckIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="The hub user name (u<portal user id>)")
    server_name: str = Field(default="", max_length=255, description="The named server; empty for the default one")
    user_options: dict[str, Any] | None = Field(
        default=None,
        description="Exactly {allocation: int, profile: str, hours: number}, as the portal's start form sets them",
    )
    backend: BackendIn | None = Field(
        default=None, description="Where the hub runs servers; absent: its own machine, with no GPU"
    )


class SpawnCheckOut(BaseModel):
    environment: dict[str, str] = Field(
        description="PORTAL_ALLOCATION, PORTAL_PROJECT, PORTAL_PROFILE, PORTAL_MAX_SECONDS, "
        "PORTAL_NOTEBOOK_SESSION, CUDA_VISIBLE_DEVICES"
    )
    cpu_limit: float
    mem_limit: str = Field(description="Memory limit for the spawner, e.g. 4G")
    gpus: int
    max_seconds: int = Field(description="The longest the server may run")
    session_id: int = Field(description="The portal's record of this notebook session")
    slurm: SlurmJobOut | None = Field(default=None, description="The batch job to submit (a slurm backend only)")


def hub_token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only the hub, with its service token (``hub_spawn_check_token``), compared in constant time."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = web.settings().hub_spawn_check_token
        kind, _, given = request.headers.get("Authorization", "").partition(" ")
        valid = kind.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())
        if not (expected and valid):
            raise AuthenticationRequired("Send the hub's service token: 'Authorization: Bearer <token>'.")
        if not request.is_json:
            raise InvalidInput("Send the request body as application/json.")
        return view(*args, **kwargs)

    return wrapper


@bp.post("/hub/spawn-check")
@hub_token_required
@spec.validate(
    json=SpawnCheckIn,
    resp=Response(HTTP_200=SpawnCheckOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["hub"],
    security={"bearerAuth": []},
)
def spawn_check():  # type: ignore[no-untyped-def]
    """The hub's spawner validates a spawn's options. Authenticated only by the hub's service token
    (`Authorization: Bearer <hub_spawn_check_token>`), not by personal API tokens. 200 gives the environment
    and limits for the spawner; 403 refuses the spawn, saying why in `detail`."""
    body: SpawnCheckIn = request.context.json  # type: ignore[attr-defined]
    # A hub that does not say where it runs servers is taken to run them on a machine without GPUs.
    backend = body.backend.to_backend() if body.backend is not None else HubBackend()
    decision = check_spawn(get_db(), web.settings(), body.user, body.server_name, body.user_options, backend)
    slurm = decision.slurm
    return jsonify(
        SpawnCheckOut(
            environment=decision.environment,
            cpu_limit=decision.cpu_limit,
            mem_limit=decision.mem_limit,
            gpus=decision.profile.gpus,
            max_seconds=decision.max_seconds,
            session_id=decision.session.id,  # type: ignore[arg-type]
            slurm=SlurmJobOut(**dataclasses.asdict(slurm)) if slurm is not None else None,
        ).model_dump()
    )


class GatewayCheckIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="The hub user name (u<portal user id>)")
    session: int = Field(ge=1, le=2**62, description="The notebook session (PORTAL_NOTEBOOK_SESSION in the kernel)")


class GatewayCheckOut(BaseModel):
    session: int
    allocation: int
    cluster: str
    account: str = Field(description="sbatch --account for the scheduler and every worker")
    partition: str = Field(description="sbatch --partition; empty: the cluster's default")
    worker_gpus: int = Field(description="GPUs per worker (--gres=gpu:N, dask-cuda workers when > 0)")
    worker_cores: int
    worker_memory_gb: int
    max_workers: int


@bp.post("/hub/gateway-check")
@hub_token_required
@spec.validate(
    json=GatewayCheckIn,
    resp=Response(HTTP_200=GatewayCheckOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["hub"],
    security={"bearerAuth": []},
)
def gateway_check():  # type: ignore[no-untyped-def]
    """Dask Gateway asks whether a hub user may start a Dask cluster for a notebook session, and on which
    Slurm account. Authenticated like the spawn check (the hub's service token). 403 refuses, saying why."""
    body: GatewayCheckIn = request.context.json  # type: ignore[attr-defined]
    decision = check_gateway(get_db(), web.settings(), body.user, body.session)
    return jsonify(GatewayCheckOut(**dataclasses.asdict(decision)).model_dump())
