"""Course allocations carved out of a teacher's allocation, topped up and returned."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from portal.authz import Action, require
from portal.db import utcnow
from portal.errors import InvalidInput
from portal.identity.models import User
from portal.ledger import wording
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    EntryKind,
    LedgerEntry,
)
from portal.ledger.services.capacity import (
    release_capacity,
)
from portal.ledger.services.errors import (
    AllocationClosed,
)
from portal.ledger.services.posting import (
    _after_commit,
    _existing_entry,
    _kind,
    _lock_allocation,
    _move,
    _once,
    _update_state,
    _validate_amount,
)
from portal.messages import N_, Amount, Message
from portal.projects.models import Project


def share_to_course(
    db: Session,
    actor: User | None,
    *,
    parent_id: int,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    title: str,
    idempotency_key: str | None = None,
) -> Allocation:
    """Carve a course allocation (source ``course``) out of ``parent_id``: ``amount`` leaves the parent's
    balance and opens a new allocation of the same project and resource over the course's term.

    Capacity-neutral: the parent's reservation already holds these hours, so nothing is reserved or
    released; ``return_course_hours`` gives the unused part back. ``actor`` must manage the parent's project.
    """
    _validate_amount(amount)
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidInput("Course dates must be timezone-aware.")
    if ends_at <= starts_at:
        raise InvalidInput(
            Message(N_("The course must end after it starts.")), errors={"ends_on": Message(N_("Before the start."))}
        )
    out_key = f"{idempotency_key}:out" if idempotency_key else None
    in_key = f"{idempotency_key}:in" if idempotency_key else None
    touched: list[tuple[Allocation, str]] = []

    def work() -> Allocation:
        parent = _lock_allocation(db, parent_id)
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
        if parent.source == AllocationSource.COURSE:
            raise InvalidInput(
                Message(N_("A course's hours cannot fund another course.")),
                errors={"allocation_id": Message(N_("A course's."))},
            )
        if parent.state not in (AllocationState.ACTIVE, AllocationState.PENDING):
            cannot = _CANNOT_FUND[AllocationState(parent.state)]
            raise AllocationClosed(Message(cannot, title=wording.title_of(parent, quoted=True)))
        if starts_at < parent.starts_at or ends_at > parent.ends_at:
            raise InvalidInput(
                Message(
                    N_("The course's term must lie within the allocation's dates (%(starts)s to %(ends)s)."),
                    starts=parent.starts_at.date(),
                    ends=parent.ends_at.date(),
                ),
                errors={"ends_on": Message(N_("Outside the allocation's dates."))},
            )
        touched.append((parent, parent.state))
        course = Allocation(
            project_id=parent.project_id,
            resource_id=parent.resource_id,
            source=AllocationSource.COURSE,
            state=AllocationState.ACTIVE if starts_at <= utcnow() else AllocationState.PENDING,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or parent.title,
        )
        db.add(course)
        db.flush()
        reason = wording.TO_COURSE.english(allocation=course.id)
        _move(db, parent, EntryKind.TRANSFER_OUT, -amount, key=out_key, actor=actor, floor=0, reason=reason)
        reason = wording.FROM_ALLOCATION.english(allocation=parent.id)
        _move(db, course, EntryKind.COURSE_SHARE, amount, key=in_key, actor=actor, reason=reason)
        _update_state(db, parent)
        return course

    def replay(entry: LedgerEntry) -> Allocation:
        incoming = _existing_entry(db, in_key)
        assert incoming is not None
        return db.get(Allocation, incoming.allocation_id)

    course = _once(db, out_key, work, replay)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return course


#: Why an allocation in this state cannot fund a course (only active and pending ones can).
_CANNOT_FUND = {
    AllocationState.EXHAUSTED: N_("The allocation %(title)s is exhausted; it cannot fund a course."),
    AllocationState.EXPIRED: N_("The allocation %(title)s is expired; it cannot fund a course."),
    AllocationState.SUSPENDED: N_("The allocation %(title)s is suspended; it cannot fund a course."),
    AllocationState.AWAITING_PAYMENT: N_("The allocation %(title)s is awaiting_payment; it cannot fund a course."),
}


def top_up_course(
    db: Session, actor: User | None, *, parent_id: int, course_allocation_id: int, amount: int, reason: str
) -> LedgerEntry:
    """Move ``amount`` more from the parent allocation into its course allocation (a raised student cap)."""
    _validate_amount(amount)
    touched: list[tuple[Allocation, str]] = []

    def work() -> LedgerEntry:
        first, second = sorted((parent_id, course_allocation_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        parent, course = locked[parent_id], locked[course_allocation_id]
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
        if course.source != AllocationSource.COURSE or course.resource_id != parent.resource_id:
            raise InvalidInput(Message(N_("Hours move only from an allocation into its own course's allocation.")))
        if AllocationState.EXPIRED in (parent.state, course.state) or parent.state == AllocationState.SUSPENDED:
            raise AllocationClosed(Message(N_("Expired or suspended allocations take no transfers.")))
        touched.append((parent, parent.state))
        _move(db, parent, EntryKind.TRANSFER_OUT, -amount, key=None, actor=actor, floor=0, reason=reason)
        entry = _move(db, course, EntryKind.COURSE_SHARE, amount, key=None, actor=actor, reason=reason)
        _update_state(db, parent)
        _update_state(db, course)
        return entry

    entry = _once(db, None, work, lambda e: e)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return entry


def return_course_hours(
    db: Session, course_allocation_id: int, parent_id: int, *, now: datetime | None = None, keep: int = 0
) -> int:
    """Give a course allocation's unused balance back to the parent allocation (or, when the parent has ended
    meanwhile, let it expire). Returns the base units given back.

    ``keep`` > 0: that much stays for charges still to come (hours promised to notebooks that have not
    stopped); only the rest goes back and the course allocation stays open for those charges. ``keep`` 0:
    the course allocation closes (expired). A balance below zero then (usage beyond what it held) is settled
    from the parent allocation with a recorded reason, so the teacher's hours always add up: what left the
    parent = what the students used + what came back. Idempotent: a closed course allocation moves nothing
    again, and a repeated partial return finds nothing above ``keep``, so two workers may both try."""
    now = now or utcnow()
    if not isinstance(keep, int) or keep < 0:
        raise InvalidInput("What a course keeps is zero or more.")
    touched: list[tuple[Allocation, str]] = []

    def work() -> int:
        first, second = sorted((parent_id, course_allocation_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        parent, course = locked[parent_id], locked[course_allocation_id]
        if course.source != AllocationSource.COURSE:
            raise InvalidInput("Only a course allocation is closed this way.")
        if course.state == AllocationState.EXPIRED:
            return 0
        touched.append((parent, parent.state))
        amount = max(course.balance - keep, 0)
        returned = 0
        key = None if keep else f"course-return:{course.id}"
        if amount and parent.state != AllocationState.EXPIRED and parent.ends_at > now:
            if keep:
                kept = Amount(keep, _kind(db, course))
                reason = wording.COURSE_HOURS_BACK_KEPT.english(allocation=parent.id, kept=kept)
            else:
                reason = wording.COURSE_HOURS_BACK.english(allocation=parent.id)
            _move(db, course, EntryKind.TRANSFER_OUT, -amount, key=key and f"{key}:out", actor=None, reason=reason)
            if keep:
                reason = wording.COURSE_HOURS_RETURNED_KEPT.english(course=course.id, kept=kept)
            else:
                reason = wording.COURSE_HOURS_RETURNED.english(course=course.id)
            _move(db, parent, EntryKind.TRANSFER_IN, amount, key=key and f"{key}:in", actor=None, reason=reason)
            _update_state(db, parent)
            returned = amount
        elif amount:
            reason = wording.COURSE_OUTLIVED_PARENT.english()
            _move(db, course, EntryKind.EXPIRY, -amount, key=key and f"{key}:expiry", actor=None, reason=reason)
        if keep:
            _update_state(db, course)
            return returned
        if course.balance < 0:
            overdraft = -course.balance
            reason = wording.COURSE_OVERDRAFT_SETTLED.english(course=course.id, allocation=parent.id)
            _move(db, parent, EntryKind.TRANSFER_OUT, -overdraft, key=f"{key}:settle-out", actor=None, reason=reason)
            reason = wording.OVERDRAFT_SETTLED.english(allocation=parent.id)
            _move(db, course, EntryKind.COURSE_SHARE, overdraft, key=f"{key}:settle-in", actor=None, reason=reason)
            _update_state(db, parent)
        release_capacity(db, course, course.reserved)
        course.state = AllocationState.EXPIRED
        db.flush()
        return returned

    returned = _once(db, None, work, lambda e: 0)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return returned
