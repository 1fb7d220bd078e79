"""``GET /api/v1/audit``: the audit log for admins' tokens, with the page's filters."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask import jsonify, request
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.audit import services
from portal.audit.models import AuditAction
from portal.db import get_db


class AuditQuery(BaseModel):
    actor: str = Field(default="", max_length=200, description="Text in the actor's name or e-mail, or cli/system")
    action: AuditAction | None = None
    object_type: str = Field(default="", max_length=64, description="A table name, e.g. allocations")
    object_id: int | None = Field(default=None, ge=1, le=services.MAX_ID)
    since: date | None = Field(default=None, description="First day (UTC), included")
    until: date | None = Field(default=None, description="Last day (UTC), included")
    q: str = Field(default="", max_length=200, description="Text in the summary or the reason")
    before: int | None = Field(default=None, ge=1, le=services.MAX_ID, description="next_before of the previous page")
    limit: int = Field(default=services.PAGE_SIZE, ge=1, le=500)


class AuditEventOut(BaseModel):
    id: int
    occurred_at: datetime
    actor: str = Field(description="Name and e-mail as they were, or cli, system, stripe")
    actor_user_id: int | None
    action: AuditAction
    object_type: str
    object_id: int | None
    summary: str
    reason: str
    details: dict[str, Any]
    request_id: str | None
    ip_address: str | None


class AuditPageOut(BaseModel):
    events: list[AuditEventOut]
    next_before: int | None = Field(description="Pass as `before` for the next, older page; null on the last")


@bp.get("/audit")
@token_required("read")  # ApiScope.READ: audit may not import identity, which writes to it
@spec.validate(
    query=AuditQuery,
    resp=Response(HTTP_200=AuditPageOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["audit"],
)
def audit_events():
    """Audit events, newest first (admins only): role grants, awards, refunds, capacity and price changes, ..."""
    query: AuditQuery = request.context.query
    filters = services.AuditFilters(**query.model_dump(exclude={"q", "before", "limit"}), text=query.q)
    page = services.search(get_db(), api_user(), filters, before=query.before, limit=query.limit)
    events = [AuditEventOut.model_validate({**e.model_dump(), "actor": e.actor_label}) for e in page.events]
    return jsonify(AuditPageOut(events=events, next_before=page.next_before).model_dump(mode="json"))
