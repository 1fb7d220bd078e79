"""Keeping the monthly rollups: added to in the writer's transaction, rebuilt and checked from the source.

The ledger calls ``add_usage`` from the transaction that charges usage (next to its daily aggregates), the
market calls ``add_invoice`` from the transaction that issues an invoice or credit note. Each is one
batched upsert (``INSERT ... ON CONFLICT DO UPDATE SET x = x + excluded.x``), atomic on SQLite and
PostgreSQL, so concurrent charges never lose an update. This module imports only models: it is safe for the
ledger and the market to import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from portal.ledger.models import Allocation, DailyUsage
from portal.market.models import Invoice, Order
from portal.reports.models import RevenueMonth, UsageMonth

USAGE_KEY = ("allocation_id", "month")
REVENUE_KEY = ("month", "offering_id", "organisation_id")
REVENUE_SUMS = ("quantity", "net_cents", "vat_cents", "gross_cents")


def month_of(day: date | datetime) -> date:
    return date(day.year, day.month, 1)


def _add(db: Session, table: sa.Table, key: tuple[str, ...], sums: tuple[str, ...], rows: list[dict]) -> None:
    if not rows:
        return
    insert = postgresql_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=list(key), set_={name: table.c[name] + statement.excluded[name] for name in sums}
    )
    db.execute(statement, rows)


def add_usage(db: Session, daily_totals: dict[tuple[int, date], int]) -> None:
    """Add usage per (allocation, day), as the ledger adds it to its daily aggregates, to the months."""
    months: dict[tuple[int, date], int] = {}
    for (allocation_id, day), amount in daily_totals.items():
        key = (allocation_id, month_of(day))
        months[key] = months.get(key, 0) + amount
    rows = [{"allocation_id": a, "month": m, "amount": amount} for (a, m), amount in sorted(months.items())]
    _add(db, UsageMonth.__table__, USAGE_KEY, ("amount",), rows)  # type: ignore[attr-defined]


def _invoice_row(invoice: Invoice, offering_id: int) -> dict[str, object]:
    return {
        "month": month_of(invoice.issued_at),
        "offering_id": offering_id,
        "organisation_id": invoice.organisation_id,
        "quantity": sum(int(line.get("quantity", 0)) for line in invoice.lines),
        "net_cents": invoice.net_cents,
        "vat_cents": invoice.vat_cents,
        "gross_cents": invoice.gross_cents,
    }


def add_invoice(db: Session, invoice: Invoice, offering_id: int) -> None:
    """Add an issued invoice (or credit note, whose amounts are negative) to its month's revenue."""
    _add(db, RevenueMonth.__table__, REVENUE_KEY, REVENUE_SUMS, [_invoice_row(invoice, offering_id)])  # type: ignore[attr-defined]


# --- recomputing from the source ------------------------------------------------------------------------


def expected_usage(db: Session) -> dict[tuple[int, date], int]:
    """Usage months recomputed from the ledger's daily usage, read in streamed batches."""
    months: dict[tuple[int, date], int] = {}
    rows = db.execute(
        select(DailyUsage.allocation_id, DailyUsage.day, DailyUsage.amount).execution_options(yield_per=20_000)
    )
    for allocation_id, day, amount in rows:
        key = (int(allocation_id), month_of(day))
        months[key] = months.get(key, 0) + int(amount)
    return {k: v for k, v in months.items() if v}


def expected_revenue(db: Session) -> dict[tuple[date, int, int], tuple[int, ...]]:
    """Revenue months recomputed from every invoice and credit note."""
    months: dict[tuple[date, int, int], list[int]] = {}
    rows = db.execute(
        select(Invoice, Order.offering_id)
        .join(Order, Order.id == Invoice.order_id)  # type: ignore[arg-type]
        .execution_options(yield_per=5_000)
    )
    for invoice, offering_id in rows:
        row = _invoice_row(invoice, int(offering_id))
        sums = months.setdefault((row["month"], int(offering_id), invoice.organisation_id), [0] * 4)  # type: ignore[arg-type]
        for i, name in enumerate(REVENUE_SUMS):
            sums[i] += int(row[name])  # type: ignore[call-overload]
    return {k: tuple(v) for k, v in months.items()}


def _stored_usage(db: Session) -> dict[tuple[int, date], int]:
    return {
        (int(a), m): int(x)
        for a, m, x in db.execute(select(UsageMonth.allocation_id, UsageMonth.month, UsageMonth.amount))
        if x
    }


def _stored_revenue(db: Session) -> dict[tuple[date, int, int], tuple[int, ...]]:
    table = RevenueMonth.__table__  # type: ignore[attr-defined]
    rows = db.execute(sa.select(*(table.c[k] for k in REVENUE_KEY), *(table.c[s] for s in REVENUE_SUMS)))
    return {(r[0], int(r[1]), int(r[2])): tuple(int(x) for x in r[3:]) for r in rows}


@dataclass(frozen=True)
class RollupDifference:
    """One rollup row that differs from what its source says (``stored`` or ``expected`` None: missing)."""

    table: str
    key: tuple[object, ...]
    stored: object
    expected: object


def _differences(table: str, stored: dict, expected: dict) -> list[RollupDifference]:  # type: ignore[type-arg]
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


def _chunks(rows: list[dict], size: int = 5_000) -> Iterable[list[dict]]:  # type: ignore[type-arg]
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
    usage_table, revenue_table = UsageMonth.__table__, RevenueMonth.__table__  # type: ignore[attr-defined]
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
