"""Rebuilding and checking the monthly rollups that the dashboards read; the producers keep them.

The ledger adds to the usage months (``portal.ledger.rollups``) in the transaction that charges usage, the
market to the revenue months (``portal.market.rollups``) in the transaction that issues an invoice or
credit note. This module only reads them: it recomputes both from their source, lists the differences
(``portal reports check``) and replaces them by the recomputation (``portal reports rebuild``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import sqlalchemy as sa
from sqlmodel import Session, select

from portal.ledger.models import Allocation, UsageMonth
from portal.ledger.rollups import expected_usage
from portal.market.models import RevenueMonth
from portal.market.rollups import REVENUE_KEY, REVENUE_SUMS, expected_revenue


def _stored_usage(db: Session) -> dict[tuple[int, date], int]:
    return {
        (int(a), m): int(x)
        for a, m, x in db.execute(select(UsageMonth.allocation_id, UsageMonth.month, UsageMonth.amount))
        if x
    }


def _stored_revenue(db: Session) -> dict[tuple[date, int, int], tuple[int, ...]]:
    table = RevenueMonth.__table__
    rows = db.execute(sa.select(*(table.c[k] for k in REVENUE_KEY), *(table.c[s] for s in REVENUE_SUMS)))
    return {(r[0], int(r[1]), int(r[2])): tuple(int(x) for x in r[3:]) for r in rows}


@dataclass(frozen=True)
class RollupDifference:
    """One rollup row that differs from what its source says (``stored`` or ``expected`` None: missing)."""

    table: str
    key: tuple[object, ...]
    stored: object
    expected: object


def _differences(table: str, stored: dict, expected: dict) -> list[RollupDifference]:
    return [
        RollupDifference(table, key, stored.get(key), expected.get(key))
        for key in sorted(set(stored) | set(expected), key=repr)
        if stored.get(key) != expected.get(key)
    ]


def rollup_differences(db: Session) -> list[RollupDifference]:
    """Rollup rows that differ from a recomputation (should always be empty), plus allocations whose
    usage months do not add up to the allocation's ``used``."""
    stored_usage = _stored_usage(db)
    found = _differences("report_usage_months", stored_usage, expected_usage(db))
    found += _differences("report_revenue_months", _stored_revenue(db), expected_revenue(db))
    per_allocation: dict[int, int] = {}
    for (allocation_id, _month), amount in stored_usage.items():
        per_allocation[allocation_id] = per_allocation.get(allocation_id, 0) + amount
    used = {int(a): int(u) for a, u in db.execute(select(Allocation.id, Allocation.used)) if u or a in per_allocation}
    found += [
        RollupDifference("allocations.used", (allocation_id,), per_allocation.get(allocation_id, 0), amount)
        for allocation_id, amount in sorted(used.items())
        if per_allocation.get(allocation_id, 0) != amount
    ]
    return found


def _chunks(rows: list[dict], size: int = 5_000) -> Iterable[list[dict]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def rebuild(db: Session) -> tuple[int, int]:
    """Replace both rollups by a recomputation, in one transaction; returns (usage rows, revenue rows).

    Run it after upgrading a database that has usage or invoices from before the rollups existed, or to
    repair what ``portal reports check`` finds. On PostgreSQL the allocations and the rollup tables are locked
    before the source is read (charges wait meanwhile); on SQLite the deletes take the database's write lock.
    So a charge or invoice committing meanwhile either is read from its source or waits and adds itself
    afterwards: nothing is lost or counted twice.
    """
    usage_table, revenue_table = UsageMonth.__table__, RevenueMonth.__table__
    if db.get_bind().dialect.name == "postgresql":
        # In the order charges take them (allocation rows in id order, then the rollup), or the two deadlock:
        # the rollup rows written below hold KEY SHARE on their allocations for their foreign keys.
        db.execute(sa.text("SELECT id FROM allocations ORDER BY id FOR KEY SHARE"))
        db.execute(sa.text(f"LOCK TABLE {usage_table.name}, {revenue_table.name} IN SHARE ROW EXCLUSIVE MODE"))
    db.execute(sa.delete(usage_table))
    db.execute(sa.delete(revenue_table))
    usage = expected_usage(db)
    revenue = expected_revenue(db)
    usage_rows = [{"allocation_id": a, "month": m, "amount": x} for (a, m), x in sorted(usage.items())]
    for chunk in _chunks(usage_rows):
        db.execute(sa.insert(usage_table), chunk)
    revenue_rows = [
        {**dict(zip(REVENUE_KEY, key, strict=True)), **dict(zip(REVENUE_SUMS, sums, strict=True))}
        for key, sums in sorted(revenue.items())
    ]
    for chunk in _chunks(revenue_rows):
        db.execute(sa.insert(revenue_table), chunk)
    db.commit()
    return len(usage_rows), len(revenue_rows)
