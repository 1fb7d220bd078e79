"""Recording privileged actions, and searching and exporting the record (admins only).

``record`` adds the event to the caller's session without committing: the action's own commit writes it,
so a rolled-back action leaves no event and a committed one always has its event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from typing import Any, Protocol

from flask import g, has_request_context, request
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, func, select

from portal.audit.models import AuditAction, AuditEvent
from portal.authz import Action, require
from portal.errors import InvalidInput
from portal.messages import N_, Message

#: Events per page of the search; the page costs the same few queries however long the history.
PAGE_SIZE = 50
#: The largest id a search may name (a 64-bit integer column).
MAX_ID = 2**63 - 1
#: Rows read per query while a CSV export streams.
EXPORT_BATCH = 500
#: Shortest and longest reason (after stripping) an action that asks why accepts.
REASON_LENGTH = (3, 500)
CSV_COLUMNS = [
    "id",
    "occurred_at",
    "actor",
    "actor_user_id",
    "action",
    "object_type",
    "object_id",
    "summary",
    "reason",
    "details",
    "request_id",
    "ip_address",
]


class Person(Protocol):
    """Someone who acts, as the log names them (``identity.models.User`` is one): the log keeps their id and
    their name and e-mail at the time, so audit imports nothing of identity, which writes to it."""

    @property
    def id(self) -> int | None: ...

    @property
    def display_name(self) -> str: ...

    @property
    def email(self) -> str | None: ...


def actor_label(actor: Person | str | None) -> str:
    """How the actor is shown for ever: the person's name and e-mail at the time, or ``cli``/``system``."""
    if actor is None or isinstance(actor, str):
        return actor or "system"
    return f"{actor.display_name} <{actor.email}>" if actor.email else actor.display_name


def require_reason(reason: str) -> str:
    """The reason a privileged action is taken, stripped: the one check every action that asks why makes.

    ``InvalidInput`` (on the field ``reason``) when it is blank or outside REASON_LENGTH, before anything changes.
    """
    text = (reason or "").strip()
    shortest, longest = REASON_LENGTH
    if not shortest <= len(text) <= longest:
        raise InvalidInput(
            Message(
                N_("Say why (%(shortest)s to %(longest)s characters); the reason is kept in the audit log."),
                shortest=str(shortest),
                longest=str(longest),
            ),
            errors={
                "reason": Message(
                    N_("Say why, in %(shortest)s to %(longest)s characters."),
                    shortest=str(shortest),
                    longest=str(longest),
                )
            },
        )
    return text


def _plain(value: Any) -> Any:
    """Details as JSON: dates as ISO 8601, enums as their values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date | datetime):
        return value.isoformat()
    return value


def _request_origin() -> tuple[str | None, str | None]:
    """The web request behind the action (its id and the client's address); none for the CLI and worker."""
    if not has_request_context():
        return None, None
    request_id = g.get("request_id") or request.headers.get("X-Request-ID")
    return (str(request_id)[:100] if request_id else None), request.remote_addr


def record(
    db: Session,
    actor: Person | str | None,
    action: AuditAction,
    obj: Any,
    *,
    summary: str,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add the event for a privileged action on ``obj`` (a table row) to the action's transaction.

    ``actor`` is the person, or a label where none acted: ``"cli"`` (an operator's command), ``"stripe"``
    (a payment provider's webhook); None means the portal itself (``system``: an automatic decision, seed data).
    """
    if getattr(obj, "id", None) is None:
        db.flush()
    request_id, ip_address = _request_origin()
    event = AuditEvent(
        actor_user_id=None if actor is None or isinstance(actor, str) else actor.id,
        actor_label=actor_label(actor)[:400],
        action=action,
        object_type=type(obj).__tablename__,
        object_id=obj.id,
        summary=summary[:1000],
        reason=(reason or "").strip()[:5000],
        details=_plain(details or {}),
        request_id=request_id,
        ip_address=ip_address,
    )
    db.add(event)
    return event


# --- reading --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilters:
    #: Text in the actor's name or e-mail (or ``cli``, ``system``, ``stripe``).
    actor: str = ""
    action: AuditAction | None = None
    #: A table name (``allocations``) and optionally one row's id.
    object_type: str = ""
    object_id: int | None = None
    #: First and last day (UTC), both included.
    since: date | None = None
    until: date | None = None
    #: Text in the summary or the reason.
    text: str = ""


@dataclass(frozen=True)
class AuditPage:
    events: list[AuditEvent]
    #: Pass as ``before`` for the next (older) page; None on the last page.
    next_before: int | None


def _contains(column: Any, text: str) -> ColumnElement[bool]:
    return func.lower(column).contains(text.strip().lower(), autoescape=True)


def _conditions(filters: AuditFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if filters.actor.strip():
        conditions.append(_contains(AuditEvent.actor_label, filters.actor))
    if filters.action is not None:
        conditions.append(col(AuditEvent.action) == filters.action)
    if filters.object_type.strip():
        conditions.append(col(AuditEvent.object_type) == filters.object_type.strip())
    if filters.object_id is not None:
        conditions.append(col(AuditEvent.object_id) == filters.object_id)
    if filters.since is not None:
        conditions.append(col(AuditEvent.occurred_at) >= datetime.combine(filters.since, time.min, tzinfo=UTC))
    if filters.until is not None and filters.until < date.max:
        end = datetime.combine(filters.until + timedelta(days=1), time.min, tzinfo=UTC)
        conditions.append(col(AuditEvent.occurred_at) < end)
    if filters.text.strip():
        conditions.append(_contains(AuditEvent.summary, filters.text) | _contains(AuditEvent.reason, filters.text))
    return conditions


_NOT_AN_ID = {
    "object_id": N_("The object id is not an event's or object's id."),
    "before": N_("The before is not an event's or object's id."),
}


def search(
    db: Session, actor: Person, filters: AuditFilters, *, before: int | None = None, limit: int = PAGE_SIZE
) -> AuditPage:
    """One page of matching events, newest first; ``before`` (an event id) continues where a page ended."""
    require(db, actor, Action.VIEW_AUDIT)  # a User
    for name, value in (("object_id", filters.object_id), ("before", before)):
        if value is not None and not 1 <= value <= MAX_ID:
            raise InvalidInput(Message(_NOT_AN_ID[name]), errors={name: Message(N_("Not an id."))})
    limit = max(1, min(limit, 500))
    stmt = select(AuditEvent).where(*_conditions(filters))
    if before is not None:
        stmt = stmt.where(col(AuditEvent.id) < before)
    rows = list(db.exec(stmt.order_by(col(AuditEvent.id).desc()).limit(limit + 1)))
    more = len(rows) > limit
    events = rows[:limit]
    return AuditPage(events, events[-1].id if more and events else None)


def csv_row(event: AuditEvent) -> list[Any]:
    """One event as a CSV row (``portal.web.csv_response`` defuses text a spreadsheet would run)."""
    return [
        event.id,
        event.occurred_at.isoformat(),
        event.actor_label,
        event.actor_user_id,
        event.action.value,
        event.object_type,
        event.object_id,
        event.summary,
        event.reason,
        json.dumps(event.details, sort_keys=True, ensure_ascii=False),
        event.request_id,
        event.ip_address,
    ]


def export_rows(db: Session, actor: Person, filters: AuditFilters) -> Iterator[list[Any]]:
    """The whole filtered record as CSV rows, newest first, read in batches (never all in memory). The
    permission is checked here, before the first row is asked for."""
    require(db, actor, Action.VIEW_AUDIT)  # a User

    def rows() -> Iterator[list[Any]]:
        before: int | None = None
        while True:
            page = search(db, actor, filters, before=before, limit=EXPORT_BATCH)
            for event in page.events:
                yield csv_row(event)
            if page.next_before is None:
                return
            before = page.next_before

    return rows()
