"""``/api/v1/me``: who the token belongs to, and ``/api/v1/me/export``: everything the portal holds about them."""

from __future__ import annotations

from typing import Any

from flask import jsonify
from pydantic import BaseModel
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
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
def me():
    """The user the token belongs to, and their factory roles."""
    user = api_user()
    roles = sorted(str(r) for r in factory_roles(get_db(), user))
    return jsonify(
        Me(
            id=user.id,
            display_name=user.display_name,
            email=user.email,
            factory_roles=roles,
        ).model_dump()
    )


class PersonalDataExport(BaseModel):
    exported_at: str
    #: The account row.
    user: dict[str, Any]
    #: Per table, the rows that belong to the person or record what they did (secrets' digests left out).
    tables: dict[str, list[dict[str, Any]]]


@bp.get("/me/export")
@token_required(ApiScope.READ)
@spec.validate(resp=Response(HTTP_200=PersonalDataExport, HTTP_401=Problem, HTTP_403=Problem), tags=["identity"])
def export_me():
    """Everything the portal holds about the token's owner (GDPR Art. 15 and 20), as one JSON document."""
    from portal.identity.personal_data import export_personal_data

    return jsonify(export_personal_data(get_db(), api_user()))
