"""``POST /api/v1/hub/spawn-check``: the hub's spawner asks whether a server may start, and with what."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import jsonify, request
from pydantic import BaseModel, Field
from spectree import Response

from portal import web
from portal.api import Problem, bp, spec
from portal.compute.services import check_spawn
from portal.db import get_db
from portal.errors import AuthenticationRequired, InvalidInput


class SpawnCheckIn(BaseModel):
    user: str = Field(min_length=1, max_length=100, description="The hub user name (u<portal user id>)")
    server_name: str = Field(default="", max_length=255, description="The named server; empty for the default one")
    user_options: dict[str, Any] | None = Field(
        default=None,
        description="Exactly {allocation: int, profile: str, hours: number}, as the portal's start form sets them",
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
    decision = check_spawn(get_db(), web.settings(), body.user, body.server_name, body.user_options)
    return jsonify(
        SpawnCheckOut(
            environment=decision.environment,
            cpu_limit=decision.cpu_limit,
            mem_limit=decision.mem_limit,
            gpus=decision.profile.gpus,
            max_seconds=decision.max_seconds,
            session_id=decision.session.id,  # type: ignore[arg-type]
        ).model_dump()
    )
