"""``POST /api/v1/usage``: usage records from site agents."""

from __future__ import annotations

from flask import jsonify, request
from pydantic import AwareDatetime, BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_token, bp, spec, token_required
from portal.db import LARGEST_ID, get_db
from portal.errors import NotAuthorised
from portal.identity.models import ApiScope
from portal.messages import N_, Message
from portal.metering.services import MAX_AGENT_BATCH, AgentRecord, record_agent_usage


class UsageRecordIn(BaseModel):
    id: str = Field(min_length=1, max_length=200, description="The agent's own id of the record, unique at its site")
    allocation_id: int = Field(ge=1, le=LARGEST_ID)
    quantity: int = Field(gt=0, description="Base units: GPU-seconds, core-seconds or GB-days")
    started_at: AwareDatetime
    ended_at: AwareDatetime
    user: str = Field(default="", max_length=100, description="The user name at the site")


class UsageBatchIn(BaseModel):
    records: list[UsageRecordIn] = Field(min_length=1, max_length=MAX_AGENT_BATCH)


class UsageBatchOut(BaseModel):
    accepted: int = Field(description="Records charged now")
    duplicates: int = Field(description="Records charged before (same id from this site): nothing changed")


@bp.post("/usage")
@token_required(ApiScope.USAGE_WRITE)
@spec.validate(
    json=UsageBatchIn,
    resp=Response(HTTP_200=UsageBatchOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["usage"],
)
def report_usage():
    """A site agent reports usage; the batch is charged all or nothing, and resending it changes nothing."""
    token = api_token()
    if token.site_id is None:
        raise NotAuthorised(Message(N_("Only a site agent's token (bound to a site) may report usage.")))
    body: UsageBatchIn = request.context.json
    result = record_agent_usage(
        get_db(),
        site_id=token.site_id,
        records=[
            AgentRecord(
                record_id=r.id,
                allocation_id=r.allocation_id,
                quantity=r.quantity,
                started_at=r.started_at,
                ended_at=r.ended_at,
                username=r.user,
            )
            for r in body.records
        ],
    )
    return jsonify(UsageBatchOut(accepted=result.accepted, duplicates=result.duplicates).model_dump())
