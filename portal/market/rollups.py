"""The monthly revenue rollup (``RevenueMonth``), kept by the market that issues the invoices.

``services`` adds each invoice or credit note (whose amounts are negative) in the transaction that issues
it, with one upsert (atomic on SQLite and PostgreSQL); private buyers' invoices add up under
``PRIVATE_BUYERS`` (0) in place of an organisation. The operators' dashboards read it;
``portal.reports.rollups`` rebuilds and checks it from ``expected_revenue``.
"""

from __future__ import annotations

from datetime import date

from sqlmodel import Session, select

from portal.db import add_to_sums
from portal.ledger.rollups import month_of
from portal.market.models import PRIVATE_BUYERS, Invoice, Order, RevenueMonth

REVENUE_KEY = ("month", "offering_id", "organisation_id")
REVENUE_SUMS = ("quantity", "net_cents", "vat_cents", "gross_cents")


def _invoice_row(invoice: Invoice, offering_id: int) -> dict[str, object]:
    return {
        "month": month_of(invoice.issued_at),
        "offering_id": offering_id,
        "organisation_id": PRIVATE_BUYERS if invoice.organisation_id is None else invoice.organisation_id,
        "quantity": sum(int(line.get("quantity", 0)) for line in invoice.lines),
        "net_cents": invoice.net_cents,
        "vat_cents": invoice.vat_cents,
        "gross_cents": invoice.gross_cents,
    }


def add_invoice(db: Session, invoice: Invoice, offering_id: int) -> None:
    """Add an issued invoice (or credit note, whose amounts are negative) to its month's revenue."""
    add_to_sums(db, RevenueMonth.__table__, REVENUE_KEY, REVENUE_SUMS, [_invoice_row(invoice, offering_id)])


def expected_revenue(db: Session) -> dict[tuple[date, int, int], tuple[int, ...]]:
    """Revenue months recomputed from every invoice and credit note."""
    months: dict[tuple[date, int, int], list[int]] = {}
    rows = db.execute(
        select(Invoice, Order.offering_id).join(Order, Order.id == Invoice.order_id).execution_options(yield_per=5_000)
    )
    for invoice, offering_id in rows:
        row = _invoice_row(invoice, int(offering_id))
        sums = months.setdefault((row["month"], int(offering_id), int(row["organisation_id"])), [0] * 4)
        for i, name in enumerate(REVENUE_SUMS):
            sums[i] += int(row[name])
    return {k: tuple(v) for k, v in months.items()}
