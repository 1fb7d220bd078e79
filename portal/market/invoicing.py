"""Invoices and credit notes with EU VAT, numbered without gaps per seller and year, and the refunds that
issue credit notes: written in the caller's transaction by the orders (``services``) and by Stripe's webhook
(``webhooks``) alike.
"""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, func, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.config import Settings
from portal.db import utcnow
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import UNITS, Allocation, Resource
from portal.market import rollups
from portal.market.models import Invoice, InvoiceKind, InvoiceSequence, Offering, Order, OrderState
from portal.market.vat import consumer_treatment, treatment_for, vat_cents
from portal.projects.models import Organisation


def next_invoice_number(db: Session, seller_vat_number: str, year: int) -> int:
    """The next number of the seller's year, taken under a row lock: no gaps, no duplicates."""
    table = InvoiceSequence.__table__
    insert = postgresql_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(table).values(seller_vat_number=seller_vat_number, year=year, last_number=1)
    number = db.execute(
        statement.on_conflict_do_update(
            index_elements=["seller_vat_number", "year"], set_={"last_number": table.c.last_number + 1}
        ).returning(table.c.last_number)
    ).scalar_one()
    return int(number)


def issue_invoice(
    db: Session,
    settings: Settings,
    order: Order,
    kind: InvoiceKind,
    *,
    quantity: int,
    net_cents: int,
    corrects: Invoice | None = None,
    vat_cents_due: int | None = None,
) -> Invoice:
    """Write an invoice (or, with negative amounts, a credit note) in the caller's transaction; its VAT is
    computed from ``net_cents`` unless ``vat_cents_due`` gives it (a credit note's share of the invoice's)."""
    offering = db.get(Offering, order.offering_id)
    assert offering is not None
    now = utcnow()
    number = next_invoice_number(db, settings.seller_vat_number, now.year)
    vat = vat_cents(net_cents, order.vat_basis_points) if vat_cents_due is None else vat_cents_due
    buyer, mention = _buyer_and_mention(db, settings, order)
    invoice = Invoice(
        kind=kind,
        seller_vat_number=settings.seller_vat_number,
        year=now.year,
        number=number,
        reference=f"{settings.invoice_prefix}-{now.year}-{number:06d}"
        + ("-CN" if kind == InvoiceKind.CREDIT_NOTE else ""),
        order_id=order.id,
        organisation_id=order.organisation_id,
        corrects_id=corrects.id if corrects else None,
        issued_at=now,
        seller={
            "name": settings.seller_name,
            "address": settings.seller_address,
            "country": settings.seller_country,
            "vat_number": settings.seller_vat_number,
        },
        buyer=buyer,
        lines=[
            {
                "description": offering.title,
                "quantity": quantity,
                "unit": "hour",
                "unit_price_cents": order.unit_price_cents,
                "net_cents": net_cents,
            }
        ],
        currency=order.currency,
        net_cents=net_cents,
        vat_basis_points=order.vat_basis_points,
        vat_cents=vat,
        gross_cents=net_cents + vat,
        mention=mention,
    )
    db.add(invoice)
    db.flush()
    rollups.add_invoice(db, invoice, order.offering_id)  # the monthly revenue, same transaction
    return invoice


def _buyer_and_mention(db: Session, settings: Settings, order: Order) -> tuple[dict[str, str | None], str]:
    """Who the invoice is made out to, and its VAT mention: an organisation (with its VAT and registry
    numbers; a mention for reverse charge and outside the EU), or a private buyer (their name and address, no
    VAT number; the consumer VAT's rate and country, always)."""
    if order.organisation_id is None:
        assert order.billing_name is not None and order.billing_country is not None
        treatment = consumer_treatment(
            seller_country=settings.seller_country,
            customer_country=order.billing_country,
            on=order.created_at.date(),
            above_oss_threshold=order.vat_scheme == "oss",  # as the order was priced
        )
        buyer = {"name": order.billing_name, "address": order.billing_address, "country": order.billing_country}
        return buyer, treatment.mention
    organisation = db.get(Organisation, order.organisation_id)
    assert organisation is not None
    mention = ""
    if order.vat_scheme in ("reverse_charge", "outside_eu"):
        mention = treatment_for(
            seller_country=settings.seller_country,
            customer_country=organisation.country,
            customer_vat_number=organisation.vat_number,
            on=order.created_at.date(),
        ).mention
    buyer = {
        "name": organisation.name,
        "country": organisation.country,
        "vat_number": organisation.vat_number,
        "registry_id": organisation.registry_id,
    }
    return buyer, mention


# --- refunds ----------------------------------------------------------------------------------------------


def refundable_quantity(db: Session, order: Order) -> int:
    """Bought hours not yet used or refunded: the allocation's balance, capped by what was bought."""
    allocation = db.get(Allocation, order.allocation_id)
    resource = db.get(Resource, allocation.resource_id) if allocation else None
    if allocation is None or resource is None or order.state not in (OrderState.PAID, OrderState.PARTIALLY_REFUNDED):
        return 0
    return min(max(0, allocation.balance) // UNITS[resource.kind][2], order.quantity - refunded_quantity(order))


def refunded_quantity(order: Order) -> int:
    return order.refunded_cents // (order.gross_cents // order.quantity) if order.quantity else 0


def book_refund(
    db: Session,
    settings: Settings,
    order: Order,
    *,
    quantity: int,
    gross_cents: int,
    key: str,
    actor: User | str,
    reason: str,
) -> Invoice:
    """Take ``quantity`` unused hours back from the order's allocation and issue the credit note for
    ``gross_cents``, in one transaction; ``key`` makes it once only (a refund in the portal or one made in
    Stripe's dashboard and reported by the webhook)."""
    resource = db.exec(
        select(Resource)
        .join(Allocation, Allocation.resource_id == Resource.id)
        .where(Allocation.id == order.allocation_id)
    ).one()
    original = db.exec(select(Invoice).where(Invoice.order_id == order.id, Invoice.kind == InvoiceKind.INVOICE)).one()
    with ledger.unit_of_work(db):
        net, vat = _credit_note_amounts(db, order, original, gross_cents)
        ledger.refund_unused(
            db,
            order.allocation_id,
            quantity * UNITS[resource.kind][2],
            idempotency_key=key,
            reason=wording.ORDER_REFUNDED.english(order=order.id),
        )
        order.refunded_cents += gross_cents
        order.state = (
            OrderState.REFUNDED if order.refunded_cents >= order.gross_cents else OrderState.PARTIALLY_REFUNDED
        )
        note = issue_invoice(
            db,
            settings,
            order,
            InvoiceKind.CREDIT_NOTE,
            quantity=-quantity,
            net_cents=-net,
            corrects=original,
            vat_cents_due=-vat,
        )
        summary = f"refunded {quantity} hours of order {order.id}: {gross_cents} cents, credit note {note.reference}"
        details = {"quantity": quantity, "gross_cents": gross_cents, "credit_note_id": note.id}
        audit.record(db, actor, AuditAction.REFUND_ISSUED, order, summary=summary, reason=reason, details=details)
    return note


def _credit_note_amounts(db: Session, order: Order, original: Invoice, gross_cents: int) -> tuple[int, int]:
    """(net, VAT) a credit note for ``gross_cents`` refunded takes back, both positive; they add up to the
    refund. The refund that completes the order's takes exactly what the earlier notes left of the invoice,
    so that all its credit notes together cancel it to the cent."""
    credited = db.exec(
        select(func.coalesce(func.sum(Invoice.net_cents), 0), func.coalesce(func.sum(Invoice.vat_cents), 0)).where(
            Invoice.corrects_id == original.id, Invoice.kind == InvoiceKind.CREDIT_NOTE
        )
    ).one()
    net_left, vat_left = original.net_cents + int(credited[0]), original.vat_cents + int(credited[1])
    if order.refunded_cents + gross_cents >= original.gross_cents:
        return net_left, vat_left
    net = min(net_left, (2 * original.net_cents * gross_cents + original.gross_cents) // (2 * original.gross_cents))
    return net, gross_cents - net
