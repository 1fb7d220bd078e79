"""Purchases: capacity held while an order awaits payment, credited once paid, refunds."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from portal.db import utcnow
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    EntryKind,
    LedgerEntry,
    Resource,
)
from portal.ledger.services.allocations import (
    _take_back_unused,
)
from portal.ledger.services.capacity import (
    release_capacity,
    reserve_capacity,
)
from portal.ledger.services.errors import (
    AllocationClosed,
)
from portal.ledger.services.posting import (
    _lock_allocation,
    _move,
    _once,
    _update_state,
    _validate_amount,
)
from portal.messages import N_, Message
from portal.projects.models import Project


def hold_for_purchase(
    db: Session,
    *,
    project: Project,
    resource: Resource,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    title: str,
) -> Allocation:
    """Reserve capacity for an order before it is paid: an allocation awaiting payment, with no hours yet."""
    _validate_amount(amount)

    def work() -> Allocation:
        allocation = Allocation(
            project_id=project.id,
            resource_id=resource.id,
            source=AllocationSource.PURCHASE,
            state=AllocationState.AWAITING_PAYMENT,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or resource.name,
        )
        db.add(allocation)
        db.flush()
        reserve_capacity(db, allocation, amount)
        return allocation

    return _once(db, None, work, lambda e: e)


def fulfil_purchase(
    db: Session, allocation_id: int, amount: int, *, idempotency_key: str, reason: str = ""
) -> LedgerEntry:
    """Credit a paid purchase, once per key. Its capacity is already held; if the hold was released (a
    late payment after the checkout expired) it is reserved again, or ``CapacityExhausted``."""
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            if allocation.ends_at <= utcnow():
                raise AllocationClosed(Message(N_("The purchase's validity ended before it was paid.")))
            reserve_capacity(db, allocation, amount)
        elif allocation.state != AllocationState.AWAITING_PAYMENT:
            raise AllocationClosed(Message(N_("This purchase has been paid already.")))
        entry = _move(db, allocation, EntryKind.PURCHASE, amount, key=idempotency_key, actor=None, reason=reason)
        allocation.state = AllocationState.ACTIVE
        _update_state(db, allocation)
        return entry

    return _once(db, idempotency_key, work, lambda e: e)


def release_purchase_hold(db: Session, allocation_id: int) -> bool:
    """The checkout expired or was cancelled: give the held capacity back. True if a hold was released."""

    def work() -> bool:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state != AllocationState.AWAITING_PAYMENT:
            return False
        release_capacity(db, allocation, allocation.reserved)
        allocation.state = AllocationState.EXPIRED
        return True

    return _once(db, None, work, lambda e: e)


def refund_unused(db: Session, allocation_id: int, amount: int, *, idempotency_key: str, reason: str) -> LedgerEntry:
    """Debit refunded hours (never more than the unused balance) and free their capacity, once per key."""
    return _take_back_unused(
        db, allocation_id, amount, kind=EntryKind.REFUND, key=idempotency_key, actor=None, reason=reason
    )
