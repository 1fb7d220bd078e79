"""Allocations over the JSON API: the caller's allocations, one allocation's balance and burn rate, its ledger
entries and its daily usage, read through the same statements as the allocation page.

What the portal wrote on an allocation or an entry ("Purchase: H100 hours", "order 12") is kept in English: ``title``
and ``reason`` give it as stored, ``title_shown`` and ``reason_shown`` as the pages show it, in the language of
``Accept-Language`` (``portal.ledger.wording``)."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from flask import jsonify, make_response, request, url_for
from pydantic import BaseModel, Field
from spectree import Response
from sqlmodel import col, func, select

from portal.api.core import Problem, api_user, bp, responses, spec, token_required
from portal.db import get_db
from portal.errors import NotAuthorised, NotFound
from portal.identity.models import ApiScope, User
from portal.ledger import statements, wording
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    EntryKind,
    LedgerEntry,
    Resource,
    ResourceKind,
    Site,
)
from portal.messages import N_, Message, current_locale
from portal.pagination import MAX_PAGE_SIZE, PAGE_SIZE, KeyColumn, keyset_page
from portal.projects import services as projects

TAGS = ["allocations"]


class ETagResponse(Response):
    """A response whose 200 carries an ``ETag`` and whose 304 answers a matching ``If-None-Match``."""

    def generate_spec(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        responses = super().generate_spec(*args, **kwargs)
        etag = {"ETag": {"description": "Send it back as `If-None-Match` to get 304", "schema": {"type": "string"}}}
        responses.setdefault("200", {})["headers"] = etag
        responses.setdefault("304", {})["headers"] = etag
        responses["304"]["description"] = "Not Modified: the `If-None-Match` ETag is still current; no body"
        return responses


class ResourceOut(BaseModel):
    id: int
    code: str
    name: str
    kind: ResourceKind
    site_code: str
    site_name: str
    base_unit: str = Field(description="The unit of every amount: GPU-second, core-second or GB-day")
    display_unit: str = Field(description="The unit people read: GPU-hour, core-hour, TB-month")
    per_display_unit: int = Field(description="Base units in one display unit (3600 for an hour)")

    @classmethod
    def of(cls, resource: Resource, site: Site) -> ResourceOut:
        return cls(
            id=resource.id,
            code=resource.code,
            name=resource.name,
            kind=resource.kind,
            site_code=site.code,
            site_name=site.name,
            base_unit=resource.base_unit,
            display_unit=resource.display_unit,
            per_display_unit=resource.per_display_unit,
        )


#: The stored text and the text shown: one description each, for allocations' titles and entries' reasons.
STORED = (
    "As stored, in English where the portal wrote it (the CSV files and the audit log say the same); as written "
    "where a person wrote it"
)
SHOWN = (
    "The same in the language of `Accept-Language` (the best match among the portal's languages, else English), as "
    "the portal's pages show it; what a person wrote, as written"
)


class AllocationOut(BaseModel):
    id: int
    project_id: int
    title: str = Field(description=f"The allocation's title. {STORED}")
    title_shown: str = Field(description=f"The title. {SHOWN}")
    source: AllocationSource
    state: AllocationState
    resource: ResourceOut
    starts_at: datetime
    ends_at: datetime
    balance: int = Field(description="Base units left: the sum of the ledger entries (negative after an overrun)")
    credited: int = Field(
        description="Base units credited so far (awards, purchases, course shares, transfers in, and the opening hours"
        " of an allocation an operator opened)"
    )
    used: int = Field(description="Base units charged as usage so far")
    remaining: int = Field(description="Base units that can still be used: the balance, at least 0")

    @classmethod
    def of(cls, allocation: Allocation, resource: Resource, site: Site) -> AllocationOut:
        return cls(
            id=allocation.id,
            project_id=allocation.project_id,
            title=allocation.title,
            title_shown=wording.allocation_title(allocation),
            source=allocation.source,
            state=allocation.state,
            resource=ResourceOut.of(resource, site),
            starts_at=allocation.starts_at,
            ends_at=allocation.ends_at,
            balance=allocation.balance,
            credited=allocation.credited,
            used=allocation.used,
            remaining=max(0, allocation.balance),
        )


class AllocationDetailOut(AllocationOut):
    percent_used: int = Field(description="Used as a whole percentage of what was credited (0-100)")
    burn_per_day: int = Field(
        description=f"Base units used per day, averaged over the last {statements.BURN_WINDOW_DAYS} days"
    )
    projected_exhaustion: date | None = Field(
        description="The UTC day the balance runs out at that rate; null when nothing burns or nothing is left"
    )
    exhausts_before_end: bool = Field(description="The projected day comes before the allocation's end")


class AllocationListQuery(BaseModel):
    project_id: int | None = Field(default=None, ge=1, le=2**62, description="Only this project's allocations")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Allocations per page")


class AllocationPageOut(BaseModel):
    allocations: list[AllocationOut] = Field(description="In the order they were opened")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class EntryOut(BaseModel):
    id: int
    kind: EntryKind
    amount: int = Field(description="Base units; credits positive, debits negative")
    balance_after: int = Field(description="The allocation's balance right after this entry")
    reason: str = Field(description=f"Why the entry was written. {STORED}")
    reason_shown: str = Field(description=f"The reason. {SHOWN}")
    created_at: datetime

    @classmethod
    def of(cls, entry: LedgerEntry) -> EntryOut:
        return cls(
            id=entry.id,
            kind=entry.kind,
            amount=entry.amount,
            balance_after=entry.balance_after,
            reason=entry.reason,
            reason_shown=wording.entry_reason(entry),
            created_at=entry.created_at,
        )


class EntryListQuery(BaseModel):
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Entries per page")


class EntryPageOut(BaseModel):
    entries: list[EntryOut] = Field(
        description="Oldest first; entries never change, so asking again with the `cursor` that led to the last "
        "page returns it with the entries added since"
    )
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


class UsageDayOut(BaseModel):
    day: date
    amount: int = Field(description="Base units charged as usage on that UTC day")


class UsageSeriesOut(BaseModel):
    allocation_id: int
    base_unit: str
    days: list[UsageDayOut] = Field(
        description="Every UTC day from the allocation's start to today (or its end), days without usage as 0"
    )


def _dump(model: BaseModel):
    return jsonify(model.model_dump(mode="json"))


def _statement(user: User, allocation_id: int) -> statements.AllocationStatement:
    """The allocation's statement if the caller may see its project; a hidden one reads like a missing one."""
    db = get_db()
    allocation = db.get(Allocation, allocation_id)
    if allocation is None:
        raise NotFound(Message(N_("No such allocation.")))
    try:
        project = projects.get_project(db, user, allocation.project_id)
    except (NotFound, NotAuthorised):
        raise NotFound(Message(N_("No such allocation."))) from None
    return statements.get_statement(db, user, project, allocation_id)


def _etag(*parts: object) -> str:
    """The ETag of an answer made of ``parts``, in the language of the request (its texts are in that language)."""
    return hashlib.sha256(":".join(str(p) for p in (current_locale(), *parts)).encode()).hexdigest()[:32]


def _with_etag(body: BaseModel, etag: str):
    """The body with its ETag, or 304 without it when the caller's ``If-None-Match`` holds the same."""
    response = make_response("", 304) if etag in request.if_none_match else _dump(body)
    response.set_etag(etag)
    return response


def _following(cursor: str | None, **args: Any) -> str | None:
    if not cursor:
        return None
    args = (request.view_args or {}) | {k: v for k, v in args.items() if v is not None}
    return url_for(request.endpoint or "", cursor=cursor, **args)


#: The API's order of allocations: by id, that is in the order they were opened.
ALLOCATION_ORDER = (KeyColumn(col(Allocation.id), int),)


@bp.get("/allocations")
@token_required(ApiScope.READ)
@spec.validate(
    query=AllocationListQuery,
    resp=responses(400, 401, 403, 404, 422, HTTP_200=AllocationPageOut),
    tags=TAGS,
    operation_id="list_allocations",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_allocations():
    """The allocations of the caller's projects, their personal project included (or of one project they may
    see), one page at a time; a cursor that was not handed out: 400. Checkouts abandoned before payment, which
    never held an hour, are left out."""
    db, user = get_db(), api_user()
    query: AllocationListQuery = request.context.query
    if query.project_id is not None:
        where = Allocation.project_id == projects.get_project(db, user, query.project_id).id
    else:
        where = col(Allocation.project_id).in_([s.project.id for s in projects.projects_of(db, user, personal=True)])
    stmt = (
        select(Allocation, Resource, Site)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(
            where,
            sa.not_(
                sa.and_(
                    Allocation.source == AllocationSource.PURCHASE,
                    Allocation.state == AllocationState.EXPIRED,
                    Allocation.credited == 0,
                )
            ),
        )
    )
    page = keyset_page(db, stmt, ALLOCATION_ORDER, lambda row: (row[0].id,), cursor=query.cursor, size=query.size)
    return _dump(
        AllocationPageOut(
            allocations=[AllocationOut.of(a, r, s) for a, r, s in page.items],
            next_cursor=page.next_cursor,
            next=_following(page.next_cursor, size=query.size, project_id=query.project_id),
        )
    )


@bp.get("/allocations/<int:allocation_id>")
@token_required(ApiScope.READ)
@spec.validate(
    resp=ETagResponse("HTTP_304", HTTP_200=AllocationDetailOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=TAGS,
    operation_id="get_allocation",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def get_allocation(allocation_id: int):
    """One allocation with its balance, use, burn rate and projected exhaustion (as its page shows them).
    Send the `ETag` back as `If-None-Match`: 304 while nothing has changed."""
    db = get_db()
    s = _statement(api_user(), allocation_id)
    last_entry = db.exec(select(func.max(LedgerEntry.id)).where(LedgerEntry.allocation_id == allocation_id)).one()
    a = s.allocation
    etag = _etag(a.id, a.state, a.balance, a.credited, a.used, a.title, a.ends_at, last_entry, s.burn_per_day)
    etag = _etag(etag, s.projected_exhaustion)
    body = AllocationDetailOut(
        **AllocationOut.of(a, s.resource, s.site).model_dump(),
        percent_used=s.percent_used,
        burn_per_day=s.burn_per_day,
        projected_exhaustion=s.projected_exhaustion,
        exhausts_before_end=s.exhausts_before_end,
    )
    return _with_etag(body, etag)


#: Ledger entries in the order they were written.
ENTRY_ORDER = (KeyColumn(col(LedgerEntry.id), int),)


@bp.get("/allocations/<int:allocation_id>/entries")
@token_required(ApiScope.READ)
@spec.validate(
    query=EntryListQuery,
    resp=ETagResponse(
        "HTTP_304",
        HTTP_200=EntryPageOut,
        HTTP_400=Problem,
        HTTP_401=Problem,
        HTTP_403=Problem,
        HTTP_404=Problem,
        HTTP_422=Problem,
    ),
    tags=TAGS,
    operation_id="list_allocation_entries",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_allocation_entries(allocation_id: int):
    """The allocation's ledger entries, oldest first, one page at a time (a cursor that was not handed out:
    400). Entries never change once written, so the `ETag` of a page changes only when entries are added."""
    db = get_db()
    query: EntryListQuery = request.context.query
    s = _statement(api_user(), allocation_id)
    stmt = select(LedgerEntry).where(LedgerEntry.allocation_id == s.allocation.id)
    page = keyset_page(db, stmt, ENTRY_ORDER, lambda entry: (entry.id,), cursor=query.cursor, size=query.size)
    body = EntryPageOut(
        entries=[EntryOut.of(e) for e in page.items],
        next_cursor=page.next_cursor,
        next=_following(page.next_cursor, size=query.size),
    )
    last = page.items[-1].id if page.items else None
    return _with_etag(body, _etag(s.allocation.id, query.cursor, query.size, last, page.next_cursor))


@bp.get("/allocations/<int:allocation_id>/usage")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=UsageSeriesOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=TAGS,
    operation_id="get_allocation_usage",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def get_allocation_usage(allocation_id: int):
    """Usage per UTC day (the daily usage rollup, written with each charge), as the allocation page's chart."""
    s = _statement(api_user(), allocation_id)
    series = statements.usage_series(get_db(), s)
    return _dump(
        UsageSeriesOut(
            allocation_id=s.allocation.id,
            base_unit=s.resource.base_unit,
            days=[UsageDayOut(day=d, amount=amount) for d, amount in series],
        )
    )
