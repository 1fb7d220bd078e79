"""The monthly usage rollup (``UsageMonth``), kept beside the daily usage it sums.

``services`` adds to it in the transaction that charges usage, right after the daily aggregates, with one
batched upsert (atomic on SQLite and PostgreSQL, so concurrent charges never lose an update). The
operators' dashboards read it; ``portal.reports.rollups`` rebuilds and checks it from ``expected_usage``.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlmodel import Session, select

from portal.db import add_to_sums
from portal.ledger.models import DailyUsage, UsageMonth

USAGE_KEY = ("allocation_id", "month")


def month_of(day: date | datetime) -> date:
    return date(day.year, day.month, 1)


def add_usage(db: Session, daily_totals: dict[tuple[int, date], int]) -> None:
    """Add usage per (allocation, day), as the ledger adds it to its daily aggregates, to the months."""
    months: dict[tuple[int, date], int] = {}
    for (allocation_id, day), amount in daily_totals.items():
        key = (allocation_id, month_of(day))
        months[key] = months.get(key, 0) + amount
    rows = [{"allocation_id": a, "month": m, "amount": amount} for (a, m), amount in sorted(months.items())]
    add_to_sums(db, UsageMonth.__table__, USAGE_KEY, ("amount",), rows)


def expected_usage(db: Session) -> dict[tuple[int, date], int]:
    """Usage months recomputed from the daily usage, read in streamed batches."""
    months: dict[tuple[int, date], int] = {}
    rows = db.execute(
        select(DailyUsage.allocation_id, DailyUsage.day, DailyUsage.amount).execution_options(yield_per=20_000)
    )
    for allocation_id, day, amount in rows:
        key = (int(allocation_id), month_of(day))
        months[key] = months.get(key, 0) + int(amount)
    return {k: v for k, v in months.items() if v}
