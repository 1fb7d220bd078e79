"""The marketplace: offerings, orders paid through Stripe Checkout, invoices with EU VAT, refunds.

Hours are credited only by a verified webhook: the event id is stored in the same transaction that
credits the allocation and issues the invoice, so a redelivered, late or out-of-order event changes
nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, AssuranceTooLow, allowed, organisation_role, require, require_level
from portal.config import AssuranceLevel, Settings
from portal.db import utcnow
from portal.errors import Conflict, InvalidInput, NotAuthorised, NotFound
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger.models import UNITS, Allocation, CapacityPeriod, Resource, Site
from portal.market import rollups
from portal.market.models import (
    Invoice,
    InvoiceKind,
    InvoiceSequence,
    Offering,
    OfferingPrice,
    OfferingState,
    Order,
    OrderState,
    StripeEvent,
)
from portal.market.stripe_gateway import StripeGateway
from portal.market.vat import confirm_with_vies, treatment_for, vat_cents
from portal.notifications.services import notify
from portal.projects.models import Organisation, OrganisationRole, Project

log = logging.getLogger("portal.market")


class OrderRefused(Conflict):
    title = "Order not possible"


class PaymentNotBookedYet(Conflict):
    """A refund of an order's payment arrived before the event of the payment itself: the webhook answers
    non-2xx, so that Stripe delivers the refund again after the payment (it retries for up to three days)."""

    title = "Payment not booked yet"


# --- offerings ------------------------------------------------------------------------------------------


#: The most hours one order may buy: far beyond any real order, and within the quantity columns' range.
LARGEST_ORDER = 1_000_000
QUANTITIES_MESSAGE = (
    "The largest quantity is at least the smallest, which is at least 1; "
    f"an order buys at most {LARGEST_ORDER:,} hours."
)


def create_offering(
    db: Session,
    actor: User | None,
    *,
    resource: Resource,
    title: str,
    price_cents: int,
    max_quantity: int,
    min_quantity: int = 1,
    validity_months: int = 6,
    description: str = "",
    reason: str,
) -> Offering:
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    errors = {}
    if not title.strip():
        errors["title"] = "Enter a title."
    if not isinstance(price_cents, int) or price_cents <= 0:
        errors["price"] = "The price is a positive amount."
    if not 1 <= min_quantity <= max_quantity <= LARGEST_ORDER:
        errors["max_quantity"] = QUANTITIES_MESSAGE
    if validity_months not in (3, 6, 12):
        errors["validity_months"] = "Bought hours are valid 3, 6 or 12 months."
    if errors:
        raise InvalidInput("The offering could not be saved.", errors=errors)
    offering = Offering(
        resource_id=resource.id,
        title=title.strip(),
        description=description,
        price_cents=price_cents,  # type: ignore[arg-type]
        min_quantity=min_quantity,
        max_quantity=max_quantity,
        validity_months=validity_months,
    )
    db.add(offering)
    db.flush()
    db.add(OfferingPrice(offering_id=offering.id, price_cents=price_cents, changed_by_id=actor.id if actor else None))  # type: ignore[arg-type]
    summary = f"offering '{offering.title}' of {resource.name} at {price_cents} cents an hour"
    audit.record(db, actor, AuditAction.OFFERING_CREATED, offering, summary=summary, reason=reason)
    db.commit()
    return offering


def update_offering(
    db: Session,
    actor: User,
    offering: Offering,
    *,
    title: str,
    description: str,
    min_quantity: int,
    max_quantity: int,
    validity_months: int,
    reason: str,
) -> Offering:
    """Edit what an offering says and allows; orders already placed keep what they bought."""
    require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    errors = {}
    if not title.strip():
        errors["title"] = "Enter a title."
    if not 1 <= min_quantity <= max_quantity <= LARGEST_ORDER:
        errors["max_quantity"] = QUANTITIES_MESSAGE
    if validity_months not in (3, 6, 12):
        errors["validity_months"] = "Bought hours are valid 3, 6 or 12 months."
    if errors:
        raise InvalidInput("The offering could not be saved.", errors=errors)
    fields = ("title", "description", "min_quantity", "max_quantity", "validity_months")
    before = {f: getattr(offering, f) for f in fields}
    offering.title, offering.description = title.strip()[:200], description[:5000]
    offering.min_quantity, offering.max_quantity, offering.validity_months = min_quantity, max_quantity, validity_months
    changed = {
        f: {"before": before[f], "after": getattr(offering, f)} for f in fields if before[f] != getattr(offering, f)
    }
    summary = f"offering '{offering.title}': {', '.join(changed) or 'nothing'} changed"
    audit.record(db, actor, AuditAction.OFFERING_UPDATED, offering, summary=summary, reason=reason, details=changed)
    db.commit()
    return offering


def change_price(db: Session, actor: User, offering: Offering, price_cents: int, *, reason: str) -> Offering:
    """A new price for new orders; orders placed before keep theirs (each order stores its unit price)."""
    require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if not isinstance(price_cents, int) or price_cents <= 0:
        raise InvalidInput("The price is a positive amount.", errors={"price": "Must be positive."})
    before, offering.price_cents = offering.price_cents, price_cents
    db.add(OfferingPrice(offering_id=offering.id, price_cents=price_cents, changed_by_id=actor.id))  # type: ignore[arg-type]
    summary = f"price of '{offering.title}' {before} -> {price_cents} cents an hour"
    details = {"before_cents": before, "after_cents": price_cents}
    audit.record(db, actor, AuditAction.PRICE_CHANGED, offering, summary=summary, reason=reason, details=details)
    db.commit()
    return offering


def set_offering_state(
    db: Session, actor: User | None, offering: Offering, state: OfferingState, *, reason: str
) -> Offering:
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    before, offering.state = offering.state, state
    summary = f"offering '{offering.title}' {before} -> {state}"
    details = {"before": before, "after": state}
    audit.record(
        db, actor, AuditAction.OFFERING_STATE_CHANGED, offering, summary=summary, reason=reason, details=details
    )
    db.commit()
    return offering


@dataclass(frozen=True)
class CatalogueItem:
    offering: Offering
    resource: Resource
    site: Site
    #: Display units still free over the offering's validity from today (capacity × overbooking − reserved).
    available: int


def catalogue(db: Session, *, site_code: str | None = None, gpu_model: str | None = None) -> list[CatalogueItem]:
    """Published offerings with the capacity honestly left for a purchase made today."""
    stmt = (
        select(Offering, Resource, Site)
        .join(Resource, Resource.id == Offering.resource_id)  # type: ignore[arg-type]
        .join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
        .where(Offering.state == OfferingState.PUBLISHED)
        .order_by(Site.name, Offering.price_cents)
    )
    if site_code:
        stmt = stmt.where(Site.code == site_code)
    if gpu_model:
        stmt = stmt.where(Resource.gpu_model == gpu_model)
    rows = db.exec(stmt).all()
    items = []
    for offering, resource, site in rows:
        starts_at, ends_at = _validity(offering)
        free = _free_capacity(db, resource, starts_at, ends_at)
        items.append(CatalogueItem(offering, resource, site, free // UNITS[resource.kind][2]))
    return items


def _validity(offering: Offering) -> tuple[datetime, datetime]:
    today = utcnow().date()
    starts_at = datetime.combine(today, time.min, tzinfo=UTC)
    return starts_at, starts_at + timedelta(days=round(offering.validity_months * 30.44))


def _free_capacity(db: Session, resource: Resource, starts_at: datetime, ends_at: datetime) -> int:
    """The most an allocation over these dates could still reserve: the tightest period decides."""
    periods = db.exec(
        select(CapacityPeriod)
        .where(
            CapacityPeriod.resource_id == resource.id,
            col(CapacityPeriod.starts_on) < ends_at.date(),
            col(CapacityPeriod.ends_on) > starts_at.date(),
        )
        .order_by(CapacityPeriod.starts_on)
    ).all()
    if not periods or periods[0].starts_on > starts_at.date() or periods[-1].ends_on < ends_at.date():
        return 0
    total = int((ends_at - starts_at).total_seconds())
    best: int | None = None
    for period in periods:
        start = max(starts_at, datetime.combine(period.starts_on, time.min, tzinfo=UTC))
        end = min(ends_at, datetime.combine(period.ends_on, time.min, tzinfo=UTC))
        seconds = int((end - start).total_seconds())
        if seconds <= 0:
            continue
        room = period.capacity * resource.overbooking_permille // 1000 - period.reserved
        fits = max(0, room) * total // seconds  # the share of an allocation that lands in this period
        best = fits if best is None else min(best, fits)
    return best or 0


# --- ordering ---------------------------------------------------------------------------------------------


def _require_buyer(db: Session, actor: User, login: Login | None, organisation: Organisation) -> None:
    role = organisation_role(db, actor, organisation.id)  # type: ignore[arg-type]
    if role not in (OrganisationRole.BILLING, OrganisationRole.ADMIN):
        raise NotAuthorised(f"Only {organisation.name}'s admins and billing members may buy for it.")
    if organisation.verified_at is None:
        raise OrderRefused(f"{organisation.name} is not verified yet; the factory's staff check it first.")
    try:  # the login placing this order, not an earlier, stronger one
        require_level(login, AssuranceLevel.SUBSTANTIAL, to="buy for an organisation")
    except AssuranceTooLow as exc:
        raise OrderRefused(exc.detail) from exc


def place_order(
    db: Session,
    settings: Settings,
    gateway: StripeGateway,
    actor: User,
    login: Login | None,
    *,
    offering: Offering,
    project: Project,
    quantity: int,
) -> tuple[Order, str]:
    """Hold the capacity, create the order and its Checkout Session; returns the order and the page to pay on."""
    require(db, actor, Action.VIEW_PROJECT, project)
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    _require_buyer(db, actor, login, organisation)
    if offering.state != OfferingState.PUBLISHED:
        raise OrderRefused("This offering is not on sale.")
    if not isinstance(quantity, int) or not offering.min_quantity <= quantity <= offering.max_quantity:
        raise InvalidInput(
            "Choose another quantity.",
            errors={"quantity": f"Between {offering.min_quantity} and {offering.max_quantity}."},
        )
    resource = db.get(Resource, offering.resource_id)
    assert resource is not None
    treatment = treatment_for(
        seller_country=settings.seller_country,
        customer_country=organisation.country,
        customer_vat_number=organisation.vat_number,
        on=utcnow().date(),
    )
    if settings.vies_check and treatment.scheme == "reverse_charge" and treatment.customer_vat_number:
        confirm_with_vies(settings.vies_url, treatment.customer_vat_number)
    net = offering.price_cents * quantity
    vat = vat_cents(net, treatment.basis_points)
    starts_at, ends_at = _validity(offering)
    with ledger.unit_of_work(db):
        allocation = ledger.hold_for_purchase(
            db,
            project=project,
            resource=resource,
            amount=quantity * UNITS[resource.kind][2],
            starts_at=starts_at,
            ends_at=ends_at,
            title=f"Purchase: {offering.title}",
        )
        order = Order(
            organisation_id=organisation.id,
            project_id=project.id,
            buyer_id=actor.id,
            offering_id=offering.id,  # type: ignore[arg-type]
            quantity=quantity,
            unit_price_cents=offering.price_cents,
            net_cents=net,
            vat_basis_points=treatment.basis_points,
            vat_cents=vat,
            gross_cents=net + vat,
            currency=offering.currency,
            vat_scheme=treatment.scheme,
            vat_country=treatment.country,
            customer_vat_number=treatment.customer_vat_number,
            allocation_id=allocation.id,  # type: ignore[arg-type]
        )
        db.add(order)
    try:
        session = gateway.create_checkout_session(
            order_id=order.id,
            name=f"{offering.title} ({quantity} {resource.display_unit}s)",  # type: ignore[arg-type]
            unit_amount_cents=order.gross_cents,
            quantity=1,
            currency=order.currency,
            success_url=f"{settings.base_url}/market/orders/{order.id}",
            cancel_url=f"{settings.base_url}/market/orders/{order.id}?cancelled=1",
            customer_email=actor.email,
            # the order and the moment it was placed: unique even across databases sharing one Stripe account
            idempotency_key=f"order-{order.id}-{order.created_at.timestamp():.6f}-checkout",
        )
    except Exception:
        _expire_order(db, order)
        raise
    order.checkout_session_id = session.id
    db.commit()
    return order, session.url


def _expire_order(db: Session, order: Order) -> None:
    with ledger.unit_of_work(db):
        ledger.release_purchase_hold(db, order.allocation_id)
        if order.state == OrderState.PENDING:
            order.state = OrderState.EXPIRED


def cancel_order(db: Session, gateway: StripeGateway, actor: User, order: Order) -> Order:
    """The buyer gives up before paying: the Checkout Session is expired at Stripe and the hold released."""
    if order.buyer_id != actor.id and organisation_role(db, actor, order.organisation_id) != OrganisationRole.ADMIN:
        raise NotAuthorised("Only the buyer or the organisation's admins cancel an order.")
    if order.state != OrderState.PENDING:
        raise OrderRefused(f"This order is {order.state.replace('_', ' ')}; only a pending order can be cancelled.")
    if order.checkout_session_id:
        gateway.expire_checkout_session(order.checkout_session_id)
    _expire_order(db, order)
    return order


def get_order(db: Session, actor: User, order_id: int) -> Order:
    """An order its organisation's admins and billing members, and finance staff, may see."""
    order = db.get(Order, order_id)
    if order is None:
        raise NotFound("No such order.")
    role = organisation_role(db, actor, order.organisation_id)
    if (
        role not in (OrganisationRole.ADMIN, OrganisationRole.BILLING)
        and order.buyer_id != actor.id
        and not allowed(db, actor, Action.MANAGE_BILLING)
    ):
        raise NotFound("No such order.")
    return order


# --- webhooks ----------------------------------------------------------------------------------------------


#: The Stripe events the portal acts on; others are acknowledged and recorded.
HANDLED_EVENTS = frozenset(
    {
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "checkout.session.expired",
        "checkout.session.async_payment_failed",
        "charge.refunded",
    }
)


def handle_stripe_event(db: Session, settings: Settings, event: Any, gateway: StripeGateway | None = None) -> str:
    """Apply a verified Stripe event once; returns what happened (for the log).

    Raises :class:`PaymentNotBookedYet` for a refund of a payment whose own event has not arrived yet (the
    event is not recorded, so Stripe's next delivery of it is applied), and ``PaymentServiceError`` when
    Stripe cannot be asked which order a refunded payment was for.
    """
    if db.get(StripeEvent, event.id) is not None:
        return "duplicate"
    if event.type not in HANDLED_EVENTS:
        return _record(db, event, None, "ignored")
    data: dict[str, Any] = event.data.object.to_dict()
    order = _order_of(db, event.type, data)
    if order is None and event.type == "charge.refunded" and data.get("payment_intent"):
        order = _order_of_unbooked_payment(db, gateway or StripeGateway(settings), str(data["payment_intent"]))
    if order is None:
        log.warning("Stripe event %s (%s) names no known order", event.id, event.type)
        return _record(db, event, None, "unknown order")
    if event.type in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
        if data.get("payment_status") != "paid":
            return _record(db, event, order, "not paid yet")
        return _fulfil(db, settings, event, order, data)
    if event.type in ("checkout.session.expired", "checkout.session.async_payment_failed"):
        if order.state == OrderState.PENDING:
            with ledger.unit_of_work(db):
                db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id))
                db.flush()
                ledger.release_purchase_hold(db, order.allocation_id)
                order.state = OrderState.EXPIRED
            return "expired"
        return _record(db, event, order, "ignored: order not pending")
    if event.type == "charge.refunded":
        return _reconcile_refund(db, settings, event, order, data)
    return _record(db, event, order, "ignored")


def _order_of(db: Session, event_type: str, data: Any) -> Order | None:
    metadata = data.get("metadata") or {}
    if event_type.startswith("checkout.session."):
        if str(metadata.get("order_id", "")).isdigit():
            order = db.get(Order, int(metadata["order_id"]))
            if order is not None and order.checkout_session_id in (None, data.get("id")):
                return order
        return db.exec(select(Order).where(Order.checkout_session_id == data.get("id"))).first()
    if event_type.startswith("charge."):
        payment_intent = data.get("payment_intent")
        return (
            db.exec(select(Order).where(Order.payment_intent_id == payment_intent)).first() if payment_intent else None
        )
    return None


def _order_of_unbooked_payment(db: Session, gateway: StripeGateway, payment_intent: str) -> Order | None:
    """The order a payment the portal has not booked was for, found through its Checkout Session at Stripe;
    :class:`PaymentNotBookedYet` if that order still waits for the payment's own event."""
    session_id = gateway.checkout_session_of_payment(payment_intent)
    order = db.exec(select(Order).where(Order.checkout_session_id == session_id)).first() if session_id else None
    if order is not None and order.paid_at is None and order.problem is None:
        log.info("refund of order %s's payment %s came before the payment: Stripe retries", order.id, payment_intent)
        raise PaymentNotBookedYet(
            f"Order {order.id}'s payment {payment_intent} is not booked yet; send the refund again after it."
        )
    return order


def _record(db: Session, event: Any, order: Order | None, outcome: str) -> str:
    db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id if order else None))
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        return "duplicate"
    return outcome


class _AlreadyPaid(Exception):
    """Raised inside the fulfilment's transaction to undo it when a concurrent event paid the order first."""


def _payment_mismatch(order: Order, data: Any) -> str | None:
    """Why a Checkout Session's payment is not the order's (another amount or currency), or ``None``."""
    paid = data.get("amount_total")
    currency = str(data.get("currency") or "").upper()
    if type(paid) is int and paid == order.gross_cents and currency == order.currency.upper():
        return None
    shown = f"{paid} cents {currency}" if isinstance(paid, int) and currency else "an unknown amount"
    return (
        f"Stripe reports {shown} paid for order {order.id}, which costs {order.gross_cents} cents "
        f"{order.currency}: not credited; refund the payment in Stripe."
    )


def _record_problem(
    db: Session, event: Any, order: Order, data: Any, problem: str, outcome: str, *, release_hold: bool
) -> str:
    """Record a payment that cannot be booked, on the order for finance to see (and to match its refund)."""
    log.error("Stripe event %s: %s", event.id, problem)
    try:
        with ledger.unit_of_work(db):
            db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id))
            db.flush()
            order.problem = problem[:500]
            order.payment_intent_id = order.payment_intent_id or data.get("payment_intent")
            if release_hold and order.state == OrderState.PENDING:
                ledger.release_purchase_hold(db, order.allocation_id)
                order.state = OrderState.EXPIRED
    except IntegrityError:
        db.rollback()
        return "duplicate"
    return outcome


def _fulfil(db: Session, settings: Settings, event: Any, order: Order, data: Any) -> str:
    if order.state != OrderState.PENDING and order.paid_at is not None:
        return _record(db, event, order, "already paid")
    mismatch = _payment_mismatch(order, data)
    if mismatch is not None:
        return _record_problem(
            db, event, order, data, mismatch, "amount or currency differs: not credited", release_hold=True
        )
    resource = db.exec(
        select(Resource)
        .join(Allocation, Allocation.resource_id == Resource.id)  # type: ignore[arg-type]
        .where(Allocation.id == order.allocation_id)
    ).one()
    try:
        with ledger.unit_of_work(db):
            db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id))
            db.flush()
            ledger.fulfil_purchase(
                db,
                order.allocation_id,
                order.quantity * UNITS[resource.kind][2],
                idempotency_key=f"order:{order.id}:paid",
                reason=f"order {order.id}",
            )
            # Another event for the same payment may have committed since the order was read: then
            # fulfil_purchase replayed its entry, and the order, read again under a lock, is paid.
            db.exec(
                select(Order)
                .where(Order.id == order.id)
                .with_for_update(key_share=True)  # NO KEY UPDATE: the stripe_events FK holds KEY SHARE
                .execution_options(populate_existing=True)
            ).one()
            if order.paid_at is not None:
                raise _AlreadyPaid
            order.state, order.paid_at = OrderState.PAID, utcnow()
            order.payment_intent_id = data.get("payment_intent")
            invoice = issue_invoice(
                db, settings, order, InvoiceKind.INVOICE, quantity=order.quantity, net_cents=order.net_cents
            )
            buyer = db.get(User, order.buyer_id)
            if buyer is not None:
                notify(
                    db,
                    settings,
                    buyer,
                    subject=f"Payment received: order {order.id}",
                    body=(
                        f"{order.quantity} hours are on the project page; start a notebook on them from the order's"
                        f" page. Invoice {invoice.reference}: {settings.base_url}/market/invoices/{invoice.id}.pdf"
                    ),
                    link=f"/market/orders/{order.id}",
                )
    except IntegrityError:
        db.rollback()
        return "duplicate"
    except _AlreadyPaid:
        db.rollback()
        return _record(db, event, order, "already paid")
    except ledger.CapacityExhausted:
        db.rollback()
        problem = f"Order {order.id} was paid after its hold was released and the capacity is gone: refund it."
        return _record_problem(
            db, event, order, data, problem, "paid but capacity gone: needs a refund", release_hold=False
        )
    except ledger.AllocationClosed:
        db.rollback()  # expires the order: paid_at is read again, as committed
        if order.paid_at is not None:  # another event for the same payment, applied a moment ago
            return _record(db, event, order, "already paid")
        problem = f"Order {order.id} was paid after its validity ended: refund it."
        return _record_problem(
            db, event, order, data, problem, "paid after the validity ended: needs a refund", release_hold=False
        )
    return "fulfilled"


def next_invoice_number(db: Session, seller_vat_number: str, year: int) -> int:
    """The next number of the seller's year, taken under a row lock: no gaps, no duplicates."""
    table = InvoiceSequence.__table__  # type: ignore[attr-defined]
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
    organisation = db.get(Organisation, order.organisation_id)
    offering = db.get(Offering, order.offering_id)
    assert organisation is not None and offering is not None
    now = utcnow()
    number = next_invoice_number(db, settings.seller_vat_number, now.year)
    vat = vat_cents(net_cents, order.vat_basis_points) if vat_cents_due is None else vat_cents_due
    mention = ""
    if order.vat_scheme in ("reverse_charge", "outside_eu"):
        mention = treatment_for(
            seller_country=settings.seller_country,
            customer_country=organisation.country,
            customer_vat_number=organisation.vat_number,
            on=order.created_at.date(),
        ).mention
    invoice = Invoice(
        kind=kind,
        seller_vat_number=settings.seller_vat_number,
        year=now.year,
        number=number,
        reference=f"{settings.invoice_prefix}-{now.year}-{number:06d}"
        + ("-CN" if kind == InvoiceKind.CREDIT_NOTE else ""),
        order_id=order.id,
        organisation_id=organisation.id,
        corrects_id=corrects.id if corrects else None,  # type: ignore[arg-type]
        issued_at=now,
        seller={
            "name": settings.seller_name,
            "address": settings.seller_address,
            "country": settings.seller_country,
            "vat_number": settings.seller_vat_number,
        },
        buyer={
            "name": organisation.name,
            "country": organisation.country,
            "vat_number": organisation.vat_number,
            "registry_id": organisation.registry_id,
        },
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


# --- refunds ------------------------------------------------------------------------------------------------


def refundable_quantity(db: Session, order: Order) -> int:
    """Bought hours not yet used or refunded: the allocation's balance, capped by what was bought."""
    allocation = db.get(Allocation, order.allocation_id)
    resource = db.get(Resource, allocation.resource_id) if allocation else None
    if allocation is None or resource is None or order.state not in (OrderState.PAID, OrderState.PARTIALLY_REFUNDED):
        return 0
    return min(max(0, allocation.balance) // UNITS[resource.kind][2], order.quantity - _refunded_quantity(order))


def _refunded_quantity(order: Order) -> int:
    return order.refunded_cents // (order.gross_cents // order.quantity) if order.quantity else 0


def refund_order(
    db: Session, settings: Settings, gateway: StripeGateway, actor: User, order: Order, *, quantity: int, reason: str
) -> Invoice:
    """Finance refunds unused hours: a Stripe refund (idempotency key), a ledger debit and a credit note."""
    require(db, actor, Action.MANAGE_BILLING)
    reason = audit.require_reason(reason)
    available = refundable_quantity(db, order)
    if not isinstance(quantity, int) or not 1 <= quantity <= available:
        raise InvalidInput(
            "Choose how many unused hours to refund.",
            errors={"quantity": f"Between 1 and {available} (the unused hours of the order)."},
        )
    per_hour_gross = order.gross_cents // order.quantity
    amount = (
        per_hour_gross * quantity
        if quantity < order.quantity - _refunded_quantity(order)
        else order.gross_cents - order.refunded_cents
    )
    key = f"order-{order.id}-{order.created_at.timestamp():.6f}-refund-{order.refunded_cents}-{amount}"
    assert order.payment_intent_id is not None
    gateway.refund(payment_intent=order.payment_intent_id, amount_cents=amount, idempotency_key=key)
    return _book_refund(db, settings, order, quantity=quantity, gross_cents=amount, key=key, actor=actor, reason=reason)


def _book_refund(
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
    resource = db.exec(
        select(Resource)
        .join(Allocation, Allocation.resource_id == Resource.id)  # type: ignore[arg-type]
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
            reason=f"refund of order {order.id}",
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


def _reconcile_refund(db: Session, settings: Settings, event: Any, order: Order, charge: Any) -> str:
    """A refund made in Stripe's dashboard: book what the portal has not booked yet."""
    refunded = int(charge.get("amount_refunded") or 0)
    missing = refunded - order.refunded_cents
    if missing <= 0:
        return _record(db, event, order, "refund already booked")
    per_hour_gross = order.gross_cents // order.quantity
    quantity = min(refundable_quantity(db, order), -(-missing // per_hour_gross))
    db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id))
    db.flush()
    if quantity <= 0:
        order.refunded_cents = refunded
        db.commit()
        return "refund booked (no unused hours left to take back)"
    _book_refund(
        db,
        settings,
        order,
        quantity=quantity,
        gross_cents=missing,
        key=f"stripe-refund:{event.id}",
        actor="stripe",
        reason=_dashboard_refund_reason(event, charge),
    )
    return "refund reconciled"


def _dashboard_refund_reason(event: Any, charge: Any) -> str:
    """Why, for a refund nobody gave a reason for in the portal: Stripe's reason and the refund's id."""
    refunds = (charge.get("refunds") or {}).get("data") or []
    latest = refunds[0] if refunds else {}
    why = str(latest.get("reason") or "no reason given in Stripe").replace("_", " ")
    return f"refunded in Stripe's dashboard ({why}; {latest.get('id') or 'event ' + str(event.id)})"


# --- reading ------------------------------------------------------------------------------------------------


def orders_of_organisation(db: Session, actor: User, organisation: Organisation) -> list[Order]:
    role = organisation_role(db, actor, organisation.id)  # type: ignore[arg-type]
    if role not in (OrganisationRole.ADMIN, OrganisationRole.BILLING) and not allowed(db, actor, Action.MANAGE_BILLING):
        raise NotFound("No such organisation.")
    return list(
        db.exec(select(Order).where(Order.organisation_id == organisation.id).order_by(col(Order.created_at).desc()))
    )


def invoices_of_organisation(db: Session, actor: User, organisation: Organisation) -> list[Invoice]:
    orders_of_organisation(db, actor, organisation)  # the same permission
    return list(
        db.exec(
            select(Invoice).where(Invoice.organisation_id == organisation.id).order_by(col(Invoice.issued_at).desc())
        )
    )
