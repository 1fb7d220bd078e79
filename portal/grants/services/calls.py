"""Calls for proposals: creating, opening and closing them, and their days (in the call's time zone)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.db import utcnow
from portal.errors import InvalidInput, NotFound
from portal.grants.models import AccessMode, Call, CallBudget, CallState, ReviewMode
from portal.grants.services.states import QUESTION_TYPES, transaction
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger.models import Resource
from portal.messages import N_, Message


def _validate_questions(questions: list[dict[str, Any]]) -> None:
    keys = set()
    for q in questions:
        if q.get("type") not in QUESTION_TYPES or not q.get("key") or not q.get("label"):
            raise InvalidInput(
                Message(N_("Each question has a key, a label and a type among text, number, choice, pdf.")),
                errors={"questions": Message(N_("Question %(question)s is incomplete."), question=repr(q))},
            )
        if q["key"] in keys:
            raise InvalidInput(
                Message(N_("Question keys are unique.")),
                errors={"questions": Message(N_("'%(key)s' repeats."), key=q["key"])},
            )
        keys.add(q["key"])
        if q["type"] == "choice" and not q.get("choices"):
            raise InvalidInput(Message(N_("A choice question lists its choices.")), errors={"questions": q["key"]})


@transaction
def create_call(
    db: Session,
    actor: User | None,
    *,
    title: str,
    access_mode: AccessMode,
    review_mode: ReviewMode,
    manager: User,
    budgets: dict[int, int],
    max_request: int,
    opens_at: datetime,
    closes_at: datetime,
    first_cutoff: date,
    description: str = "",
    min_request: int = 0,
    duration_months: int = 6,
    eligible_kinds: list[str] | None = None,
    eligible_countries: list[str] | None = None,
    cutoff_every_days: int | None = None,
    decision_within_working_days: int | None = None,
    questions: list[dict[str, Any]] | None = None,
    criteria: list[dict[str, Any]] | None = None,
    reason: str,
) -> Call:
    """Create a call in the draft state (``open_call`` publishes it); ``actor`` None is seed data."""
    if actor is not None:
        require(db, actor, Action.CREATE_CALLS)
    reason = audit.require_reason(reason)
    errors: dict[str, Message] = {}
    if not title.strip():
        errors["title"] = Message(N_("Enter a title."))
    if duration_months not in (3, 6, 12):
        errors["duration_months"] = Message(N_("Allocations run 3, 6 or 12 months."))
    if closes_at <= opens_at:
        errors["closes_at"] = Message(N_("The call must close after it opens."))
    if not 0 <= min_request <= max_request or not 0 < max_request <= ledger.LARGEST_AMOUNT:
        errors["max_request"] = Message(N_("The largest request must be positive and at least the smallest."))
    if not budgets or any(not 0 < amount <= ledger.LARGEST_AMOUNT for amount in budgets.values()):
        errors["budgets"] = Message(N_("Give each resource of the call a positive budget."))
    criteria = criteria or []
    if review_mode == ReviewMode.PEER_REVIEW and sum(int(c.get("weight", 0)) for c in criteria) != 100:
        errors["criteria"] = Message(N_("Peer review criteria weights must add up to 100."))
    if errors:
        raise InvalidInput(Message(N_("The call could not be created.")), errors=errors)
    _validate_questions(questions or [])
    call = Call(
        title=title.strip(),
        description=description,
        access_mode=access_mode,
        review_mode=review_mode,
        eligible_kinds=eligible_kinds or [],
        eligible_countries=[c.upper() for c in eligible_countries or []],
        min_request=min_request,
        max_request=max_request,
        duration_months=duration_months,
        opens_at=opens_at,
        closes_at=closes_at,
        first_cutoff=first_cutoff,
        cutoff_every_days=cutoff_every_days,
        decision_within_working_days=decision_within_working_days,
        questions=questions or [],
        criteria=criteria,
        manager_id=manager.id,
    )
    db.add(call)
    db.flush()
    for resource_id, amount in budgets.items():
        if db.get(Resource, resource_id) is None:
            db.rollback()
            raise InvalidInput(
                Message(N_("No such resource.")),
                errors={"budgets": Message(N_("resource %(id)s"), id=str(resource_id))},
            )
        db.add(CallBudget(call_id=call.id, resource_id=resource_id, budget=amount))
    summary = f"call '{call.title}' ({access_mode}, {review_mode}), managed by {manager.display_name}"
    audit.record(
        db, actor, AuditAction.CALL_CREATED, call, summary=summary, reason=reason, details={"budgets": budgets}
    )
    db.commit()
    return call


@transaction
def set_call_state(db: Session, actor: User, call: Call, state: CallState, *, reason: str) -> Call:
    require(db, actor, Action.MANAGE_CALL, call)
    reason = audit.require_reason(reason)
    before, call.state = call.state, state
    details = {"before": before, "after": state}
    summary = f"call '{call.title}' {before} -> {state}"
    audit.record(db, actor, AuditAction.CALL_STATE_CHANGED, call, summary=summary, reason=reason, details=details)
    db.commit()
    return call


def get_call(db: Session, call_id: int) -> Call:
    call = db.get(Call, call_id)
    if call is None or call.state == CallState.DRAFT:
        raise NotFound(Message(N_("No such call.")))
    return call


# Dates of calls are days in the call's time zone, as people say them: a call "opens on D" at the start of D
# and "closes on D" at the end of D; a cut-off D takes what is submitted until the end of D. The time zone is
# the factory's (Europe/Warsaw), stated wherever such a day is shown.
CALL_TIME_ZONE = ZoneInfo("Europe/Warsaw")


def start_of_day(day: date) -> datetime:
    """00:00 of ``day`` in the call's time zone, as a UTC moment."""
    return datetime.combine(day, time.min, tzinfo=CALL_TIME_ZONE).astimezone(UTC)


def end_of_day(day: date) -> datetime:
    """The end of ``day`` in the call's time zone (the next day's 00:00 there), as a UTC moment."""
    return start_of_day(day + timedelta(days=1))


def local_day(moment: datetime) -> date:
    return moment.astimezone(CALL_TIME_ZONE).date()


def closing_day(call: Call) -> date:
    """The last day the call takes submissions (it closes at that day's end, in the call's time zone)."""
    return local_day(call.closes_at - timedelta(microseconds=1))


def accepting(call: Call, now: datetime) -> bool:
    """Open, between its opening and closing, and (unless decided at submission) with a cut-off still to come:
    a call whose last cut-off has passed takes no more applications, whatever its closing day."""
    if call.state != CallState.OPEN or not call.opens_at <= now < call.closes_at:
        return False
    return call.review_mode == ReviewMode.AUTOMATIC or next_cutoff(call, now) is not None


def open_calls(db: Session, now: datetime | None = None) -> list[Call]:
    now = now or utcnow()
    candidates = db.exec(
        select(Call)
        .where(Call.state == CallState.OPEN, col(Call.opens_at) <= now, col(Call.closes_at) > now)
        .order_by(Call.closes_at)
    )
    return [call for call in candidates if accepting(call, now)]


def next_cutoff(call: Call, after: datetime) -> date | None:
    """The first cut-off whose day has not ended by ``after`` (in the call's time zone), on or before the
    closing day; None when the call has no more."""
    day = local_day(after)
    cutoff = call.first_cutoff
    if call.cutoff_every_days:
        if cutoff < day:
            periods = -(-(day - cutoff).days // call.cutoff_every_days)
            cutoff = cutoff + timedelta(days=periods * call.cutoff_every_days)
    elif cutoff < day:
        return None
    return cutoff if cutoff <= closing_day(call) else None


def decision_due(call: Call, cutoff: date) -> date | None:
    """The cut-off plus the call's working days (Monday to Friday)."""
    if call.decision_within_working_days is None:
        return None
    day, left = cutoff, call.decision_within_working_days
    while left:
        day += timedelta(days=1)
        if day.weekday() < 5:
            left -= 1
    return day


def budgets_of(db: Session, call: Call) -> list[tuple[CallBudget, Resource]]:
    return list(
        db.exec(
            select(CallBudget, Resource)
            .join(Resource, Resource.id == CallBudget.resource_id)
            .where(CallBudget.call_id == call.id)
            .order_by(Resource.id)
        ).all()
    )
