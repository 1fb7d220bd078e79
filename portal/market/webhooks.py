"""Stripe's webhook: each verified event applied once.

Hours are credited only here: the event id is stored in the same transaction that credits the allocation and
issues the invoice, so a redelivered, late or out-of-order event changes nothing twice. A refund made in
Stripe's dashboard is booked as if made in the portal (``invoicing.book_refund``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from portal.config import Settings
from portal.db import utcnow
from portal.errors import Conflict
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import UNITS, Allocation, Resource
from portal.market import invoicing
from portal.market.models import InvoiceKind, Order, OrderState, StripeEvent
from portal.market.stripe_gateway import StripeGateway
from portal.messages import N_, Message
from portal.notifications.services import notify

log = logging.getLogger("portal.market")


class PaymentNotBookedYet(Conflict):
    """A refund of an order's payment arrived before the event of the payment itself: the webhook answers
    non-2xx, so that Stripe delivers the refund again after the payment (it retries for up to three days)."""

    title = "Payment not booked yet"


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
            Message(
                N_("Order %(order)s's payment %(payment)s is not booked yet; send the refund again after it."),
                order=str(order.id),
                payment=payment_intent,
            )
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
        .join(Allocation, Allocation.resource_id == Resource.id)
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
                reason=wording.ORDER_PAID.english(order=order.id),
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
            invoice = invoicing.issue_invoice(
                db, settings, order, InvoiceKind.INVOICE, quantity=order.quantity, net_cents=order.net_cents
            )
            buyer = db.get(User, order.buyer_id)
            if buyer is not None:
                notify(
                    db,
                    settings,
                    buyer,
                    subject=Message(N_("Payment received: order %(order)s"), order=str(order.id)),
                    body=Message(
                        N_(
                            "%(quantity)s hours are on the project page; start a notebook on them from the order's "
                            "page. Invoice %(reference)s: %(url)s"
                        ),
                        quantity=order.quantity,
                        reference=invoice.reference,
                        url=f"{settings.base_url}/market/invoices/{invoice.id}.pdf",
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


def _reconcile_refund(db: Session, settings: Settings, event: Any, order: Order, charge: Any) -> str:
    """A refund made in Stripe's dashboard: book what the portal has not booked yet."""
    refunded = int(charge.get("amount_refunded") or 0)
    missing = refunded - order.refunded_cents
    if missing <= 0:
        return _record(db, event, order, "refund already booked")
    per_hour_gross = order.gross_cents // order.quantity
    quantity = min(invoicing.refundable_quantity(db, order), -(-missing // per_hour_gross))
    db.add(StripeEvent(id=event.id, type=event.type, order_id=order.id))
    db.flush()
    if quantity <= 0:
        order.refunded_cents = refunded
        db.commit()
        return "refund booked (no unused hours left to take back)"
    invoicing.book_refund(
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
