"""Reading the ledger's invariants."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, func, select

from portal.ledger.models import (
    Allocation,
    LedgerEntry,
)


@dataclass(frozen=True)
class BalanceMismatch:
    allocation_id: int
    balance: int
    entries_sum: int


def balance_mismatches(db: Session) -> list[BalanceMismatch]:
    """Allocations whose balance differs from the sum of their entries (should always be empty)."""
    sums = (
        select(LedgerEntry.allocation_id, func.coalesce(func.sum(LedgerEntry.amount), 0).label("total"))
        .group_by(LedgerEntry.allocation_id)
        .subquery()
    )
    rows = db.exec(
        select(Allocation.id, Allocation.balance, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.allocation_id == Allocation.id)
        .where(Allocation.balance != func.coalesce(sums.c.total, 0))
    ).all()
    return [BalanceMismatch(int(a), int(b), int(s)) for a, b, s in rows]
