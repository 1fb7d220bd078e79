"""Opening allocations and moving hours in and out of them: credits, transfers, releases, adjustments,
expiry, suspension."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.db import utcnow
from portal.errors import InvalidInput
from portal.formatting import quantity
from portal.identity.models import User
from portal.ledger import wording
from portal.ledger.models import (
    CREDIT_KINDS,
    Allocation,
    AllocationSource,
    AllocationState,
    EntryKind,
    LedgerEntry,
    Resource,
)
from portal.ledger.services.capacity import (
    release_capacity,
    reserve_capacity,
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
from portal.ledger.services.sites import (
    PLANNING_YEARS,
)
from portal.messages import N_, Message
from portal.projects.models import Project


def open_allocation(
    db: Session,
    actor: User | None,
    *,
    project: Project,
    resource: Resource,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    source: AllocationSource,
    title: str,
    idempotency_key: str | None = None,
    reason: str = "",
    held_for_later: int = 0,
) -> Allocation:
    """Create an allocation holding ``amount`` base units, reserving capacity; all or nothing.

    ``held_for_later``: capacity reserved now, over the same dates, for hours credited later with
    ``credit(..., capacity_held=True)`` (an award's second tranche), so that crediting them can never fail
    for capacity. ``actor`` None means a trusted caller in the portal (an award decision, a paid order) or,
    with ``source`` ADMIN, the command line (which checks the reason itself); a person opening an allocation
    by hand must be an admin and give a reason. One opened by hand (``source`` ADMIN) is audited.
    """
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
        if source == AllocationSource.ADMIN:
            reason = audit.require_reason(reason)
    _validate_amount(amount)
    if held_for_later:
        _validate_amount(held_for_later, "held_for_later")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidInput("Allocation dates must be timezone-aware.")
    if ends_at <= starts_at:
        raise InvalidInput(
            Message(N_("The allocation must end after it starts.")),
            errors={"ends_at": Message(N_("Before the start."))},
        )
    first, last = PLANNING_YEARS
    if not (first <= starts_at.year and ends_at.year <= last):
        message = Message(N_("An allocation runs between %(first)s and %(last)s."), first=str(first), last=str(last))
        raise InvalidInput(message, errors={"ends_at": message})
    kind = {
        AllocationSource.AWARD: EntryKind.AWARD,
        AllocationSource.PURCHASE: EntryKind.PURCHASE,
        AllocationSource.COURSE: EntryKind.COURSE_SHARE,
        AllocationSource.TRANSFER: EntryKind.TRANSFER_IN,
        AllocationSource.ADMIN: EntryKind.ADJUSTMENT,
    }[source]

    def work() -> Allocation:
        now = utcnow()
        allocation = Allocation(
            project_id=project.id,
            resource_id=resource.id,
            source=source,
            state=AllocationState.ACTIVE if starts_at <= now else AllocationState.PENDING,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or resource.name,
            # the opening hours of one opened by hand are an adjustment entry, yet they are what it was granted
            credited=amount if source == AllocationSource.ADMIN else 0,
        )
        db.add(allocation)
        db.flush()
        reserve_capacity(db, allocation, amount + held_for_later)
        _move(db, allocation, kind, amount, key=idempotency_key, actor=actor, reason=reason)
        if actor is not None or source == AllocationSource.ADMIN:  # awards, purchases: audited where decided
            summary = f"opened with {quantity(amount, resource.kind)} for project {project.id}"
            audit.record(db, actor or "cli", AuditAction.ALLOCATION_OPENED, allocation, summary=summary, reason=reason)
        return allocation

    return _once(db, idempotency_key, work, lambda e: db.get(Allocation, e.allocation_id))


def credit(
    db: Session,
    actor: User | None,
    allocation_id: int,
    amount: int,
    *,
    kind: EntryKind,
    idempotency_key: str | None = None,
    reason: str = "",
    capacity_held: bool = False,
) -> LedgerEntry:
    """Add ``amount`` to an allocation (award tranche, purchase, course share), reserving capacity; with
    ``capacity_held`` the capacity was reserved when the allocation opened (``held_for_later``)."""
    if kind not in CREDIT_KINDS:
        raise InvalidInput(f"{kind} is not a credit.")
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            raise AllocationClosed(Message(N_("This allocation has expired; open a new one instead.")))
        if not capacity_held:
            reserve_capacity(db, allocation, amount)
        entry = _move(db, allocation, kind, amount, key=idempotency_key, actor=actor, reason=reason)
        _update_state(db, allocation)
        return entry

    return _once(db, idempotency_key, work, lambda e: e)


def transfer(
    db: Session, actor: User, *, from_id: int, to_id: int, amount: int, idempotency_key: str | None = None
) -> tuple[LedgerEntry, LedgerEntry]:
    """Move unused hours between two allocations of the same project and resource."""
    _validate_amount(amount)
    if from_id == to_id:
        raise InvalidInput(Message(N_("Choose two different allocations.")))
    out_key = f"{idempotency_key}:out" if idempotency_key else None
    in_key = f"{idempotency_key}:in" if idempotency_key else None

    def work() -> tuple[LedgerEntry, LedgerEntry]:
        first, second = sorted((from_id, to_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        source, target = locked[from_id], locked[to_id]
        require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, source.project_id))
        if source.project_id != target.project_id or source.resource_id != target.resource_id:
            raise InvalidInput(Message(N_("Hours move only between allocations of the same project and resource.")))
        if AllocationState.EXPIRED in (source.state, target.state) or target.state == AllocationState.SUSPENDED:
            raise AllocationClosed(Message(N_("Expired or suspended allocations take no transfers.")))
        out = _move(
            db,
            source,
            EntryKind.TRANSFER_OUT,
            -amount,
            actor=actor,
            floor=0,
            key=out_key,
            reason=wording.TO_ALLOCATION.english(allocation=target.id),
        )
        release_capacity(db, source, amount)
        reserve_capacity(db, target, amount)
        reason = wording.FROM_ALLOCATION.english(allocation=source.id)
        incoming = _move(db, target, EntryKind.TRANSFER_IN, amount, actor=actor, key=in_key, reason=reason)
        _update_state(db, source)
        _update_state(db, target)
        return out, incoming

    return _once(db, out_key, work, lambda e: (e, _existing_entry(db, in_key)))


def release_to_pool(db: Session, actor: User, allocation_id: int, amount: int) -> LedgerEntry:
    """Give unused hours back to the site's pool: the balance and the reserved capacity shrink."""
    return _take_back_unused(
        db,
        allocation_id,
        amount,
        kind=EntryKind.RELEASE,
        key=None,
        actor=actor,
        reason=wording.GIVEN_BACK.english(),
    )


def _take_back_unused(
    db: Session,
    allocation_id: int,
    amount: int,
    *,
    kind: EntryKind,
    key: str | None,
    actor: User | None,
    reason: str,
) -> LedgerEntry:
    """Debit unused hours (never below zero) and free their capacity; ``actor`` must manage the project."""
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, allocation.project_id))
        entry = _move(db, allocation, kind, -amount, key=key, actor=actor, floor=0, reason=reason)
        release_capacity(db, allocation, min(amount, allocation.reserved))
        _update_state(db, allocation)
        return entry

    return _once(db, key, work, lambda e: e)


def adjust(db: Session, actor: User, allocation_id: int, amount: int, *, reason: str) -> LedgerEntry:
    """An admin's correction, positive or negative, with a mandatory reason."""
    require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    if not isinstance(amount, int) or amount == 0:
        raise InvalidInput(
            Message(N_("The adjustment must be a non-zero whole number.")), errors={"amount": Message(N_("Not zero."))}
        )
    touched: list[tuple[Allocation, str]] = []

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        touched.append((allocation, allocation.state))
        if amount > 0:
            reserve_capacity(db, allocation, amount)
        else:
            release_capacity(db, allocation, min(-amount, allocation.reserved))
        entry = _move(db, allocation, EntryKind.ADJUSTMENT, amount, key=None, actor=actor, reason=reason)
        _update_state(db, allocation)
        summary = f"balance {'+' if amount > 0 else '-'}{quantity(abs(amount), _kind(db, allocation))}"
        details = {"amount": amount, "balance_after": entry.balance_after, "ledger_entry_id": entry.id}
        audit.record(
            db, actor, AuditAction.ALLOCATION_ADJUSTED, allocation, summary=summary, reason=reason, details=details
        )
        return entry

    entry = _once(db, None, work, lambda e: e)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return entry


def expire(db: Session, allocation_id: int, *, now: datetime | None = None) -> LedgerEntry | None:
    """Close an allocation past its end: the remaining balance is debited and its capacity released."""
    now = now or utcnow()

    def work() -> LedgerEntry | None:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED or allocation.ends_at > now:
            return None
        entry = None
        if allocation.balance > 0:
            entry = _move(
                db,
                allocation,
                EntryKind.EXPIRY,
                -allocation.balance,
                key=f"expiry:{allocation.id}",
                actor=None,
                reason=wording.ENDED.english(),
            )
        release_capacity(db, allocation, allocation.reserved)
        allocation.state = AllocationState.EXPIRED
        return entry

    return _once(db, None, work, lambda e: e)


def set_suspended(db: Session, actor: User, allocation_id: int, suspended: bool, *, reason: str) -> Allocation:
    require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)

    def work() -> Allocation:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            raise AllocationClosed(Message(N_("This allocation has expired.")))
        before = allocation.state
        if suspended:
            allocation.state = AllocationState.SUSPENDED
        else:
            allocation.state = AllocationState.ACTIVE
            _update_state(db, allocation)
        action = AuditAction.ALLOCATION_SUSPENDED if suspended else AuditAction.ALLOCATION_RESUMED
        summary = f"state {before} -> {allocation.state}"
        details = {"before": before, "after": allocation.state}
        audit.record(db, actor, action, allocation, summary=summary, reason=reason, details=details)
        return allocation

    return _once(db, None, work, lambda e: e)
