"""``/api/v1/me``: who the token belongs to."""

from __future__ import annotations

from flask import jsonify
from pydantic import BaseModel
from spectree import Response

from portal.api import Problem, api_user, bp, spec, token_required
from portal.authz import factory_roles
from portal.db import get_db
from portal.identity.models import ApiScope


class Me(BaseModel):
    id: int
    display_name: str
    email: str | None
    factory_roles: list[str]


@bp.get("/me")
@token_required(ApiScope.READ)
@spec.validate(resp=Response(HTTP_200=Me, HTTP_401=Problem, HTTP_403=Problem), tags=["identity"])
def me():  # type: ignore[no-untyped-def]
    """The user the token belongs to, and their factory roles."""
    user = api_user()
    roles = sorted(str(r) for r in factory_roles(get_db(), user))
    return jsonify(
        Me(
            id=user.id,
            display_name=user.display_name,
            email=user.email,  # type: ignore[arg-type]
            factory_roles=roles,
        ).model_dump()
    )
