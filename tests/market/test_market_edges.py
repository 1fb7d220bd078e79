"""Money edge cases of the marketplace, with the real stripe library against the local stand-in: a payment of
another amount or currency, a refund that arrives before its payment, webhook timestamps from the future, and
credit notes that together cancel their invoice to the cent."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
import stripe
from sqlmodel import Session, func, select

from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation
from portal.market.models import Invoice, InvoiceKind, Order, OrderState, StripeEvent
from portal.projects import services as projects
from tests.conftest import post_form
from tests.ledger_world import HOUR
from tests.market.test_market import WEBHOOK_SECRET, _completed, fresh, order, pay, shop, wait_for

#: The fixtures of tests/market/test_market.py, used here by name.
__all__ = ["shop"]


def signed(event: dict[str, Any], *, at: int | None = None) -> tuple[bytes, str]:
    payload = json.dumps(event).encode()
    timestamp = int(time.time()) if at is None else at
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload.decode()}", WEBHOOK_SECRET)
    return payload, f"t={timestamp},v1={signature}"


def deliver(shop, event: dict[str, Any], *, at: int | None = None):
    payload, signature = signed(event, at=at)
    return shop.app.test_client().post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature})


def newest(db: Session) -> Order:
    db.expire_all()
    found = db.exec(select(Order).order_by(Order.id.desc())).first()
    assert found is not None
    return found


def finance_client(shop, login, db):
    client = shop.app.test_client()
    grant_role(db, None, login(client), FactoryRole.FINANCE, reason="test setup")
    return client


# --- a payment that is not the order's ------------------------------------------------------------------------


def test_a_payment_of_another_amount_or_currency_is_not_credited_and_finance_sees_it(shop, db, login):
    order(shop, 10)  # 25.00 EUR
    short = newest(db)
    order(shop, 12)  # 30.00 EUR
    dollars = newest(db)

    cent_short = deliver(shop, _completed(short.id, short.checkout_session_id, "evt_short", amount_total=2_499))
    in_dollars = deliver(shop, _completed(dollars.id, dollars.checkout_session_id, "evt_usd", 3_000, currency="usd"))

    # answered 2xx, so that Stripe does not retry forever, and recorded once
    assert cent_short.status_code == 200 and in_dollars.status_code == 200
    assert cent_short.json["outcome"] == in_dollars.json["outcome"] == "amount or currency differs: not credited"
    again = deliver(shop, _completed(short.id, short.checkout_session_id, "evt_short", amount_total=2_499))
    assert again.json["outcome"] == "duplicate"
    for placed, paid in ((short, "2499 cents EUR"), (dollars, "3000 cents USD")):
        placed = fresh(db, Order, placed.id)
        allocation = fresh(db, Allocation, placed.allocation_id)
        assert (placed.state, placed.paid_at, allocation.balance, allocation.reserved) == (
            OrderState.EXPIRED,
            None,
            0,
            0,
        )  # no hours, and the held capacity is back on sale
        assert placed.problem is not None and f"Stripe reports {paid} paid" in placed.problem
        assert placed.payment_intent_id == "pi_x"  # so that its refund in Stripe finds it
        assert db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all() == []
        assert db.get(StripeEvent, "evt_short" if placed.id == short.id else "evt_usd") is not None

    # finance sees both as needing attention; the buyer is told no hours were added
    finance = finance_client(shop, login, db)
    page = finance.get("/finance/orders?problems=1").get_data(as_text=True)
    assert f'id="problem-{short.id}"' in page and f'id="problem-{dollars.id}"' in page
    assert "Needs attention:" in page and "Stripe reports 2499 cents EUR paid" in page
    assert "2499 cents EUR" in finance.get("/finance/orders.csv").get_data(as_text=True)
    buyer_page = shop.client.get(f"/market/orders/{short.id}").get_data(as_text=True)
    assert "could not be booked for this order; no hours were added" in buyer_page
    # the right amount for an order still pending is credited as before
    order(shop, 4)
    right = newest(db)
    fine = deliver(shop, _completed(right.id, right.checkout_session_id, "evt_right", amount_total=1_000))
    assert fine.json["outcome"] == "fulfilled" and fresh(db, Order, right.id).problem is None
    assert f'id="problem-{right.id}"' not in finance.get("/finance/orders").get_data(as_text=True)


# --- a refund before its payment ----------------------------------------------------------------------------


def stand_in_events(shop, event_type: str, payment_intent: str) -> list[dict[str, Any]]:
    """The stand-in's events of a type about a payment, as Stripe delivers them."""
    response = requests.get(
        f"{shop.stand_in.url}/v1/events",
        params={"type": event_type, "limit": 100},
        headers={"Authorization": f"Bearer {shop.stand_in.api_key}"},
        timeout=10,
    )
    response.raise_for_status()
    return [e for e in response.json()["data"] if e["data"]["object"].get("payment_intent") == payment_intent]


def test_a_refund_that_arrives_before_its_payment_is_retried_and_booked_after_it(shop, db):
    # the portal hears of everything but the payment's completion (as when that delivery is late)
    everything_else = ["charge.refunded", "checkout.session.expired", "refund.created", "charge.succeeded"]
    shop.stand_in.configure_webhook(f"{shop.settings.base_url}/market/stripe/webhook", WEBHOOK_SECRET, everything_else)
    pay_url = order(shop, 20)  # 50.00 EUR
    placed = newest(db)
    assert pay(pay_url).status_code == 303
    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    payment_intent = client.v1.checkout.sessions.retrieve(placed.checkout_session_id).payment_intent
    assert isinstance(payment_intent, str)
    client.v1.refunds.create({"payment_intent": payment_intent, "amount": 1_000})  # 4 of 20 hours, in Stripe

    # the refund's delivery is answered non-2xx and not recorded: Stripe delivers it again later
    refunded = wait_for("charge.refunded", lambda: stand_in_events(shop, "charge.refunded", payment_intent))[0]
    early = deliver(shop, refunded)
    assert early.status_code == 409 and early.mimetype == "application/problem+json"
    assert "not booked yet" in early.json["detail"]
    time.sleep(1.5)  # the stand-in's own delivery has come and gone by now
    assert db.get(StripeEvent, refunded["id"]) is None
    assert fresh(db, Order, placed.id).state == OrderState.PENDING

    # the payment arrives, then Stripe's retry of the refund: both are booked, in that order
    (completed,) = stand_in_events(shop, "checkout.session.completed", payment_intent)
    assert deliver(shop, completed).json["outcome"] == "fulfilled"
    retried = deliver(shop, refunded)
    assert retried.status_code == 200 and retried.json["outcome"] == "refund reconciled"
    placed = fresh(db, Order, placed.id)
    assert (placed.state, placed.refunded_cents) == (OrderState.PARTIALLY_REFUNDED, 1_000)
    assert fresh(db, Allocation, placed.allocation_id).balance == 16 * HOUR  # the buyer keeps no refunded hours
    note = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.CREDIT_NOTE)).one()
    assert (note.gross_cents, note.lines[0]["quantity"]) == (-1_000, -4)
    assert deliver(shop, refunded).json["outcome"] == "duplicate"
    assert ledger.balance_mismatches(db) == []


def test_a_refund_of_a_payment_that_is_not_the_portals_is_acknowledged(shop, db):
    charge = {"id": "ch_elsewhere", "object": "charge", "payment_intent": "pi_of_another_shop", "amount_refunded": 5}
    event = {"id": "evt_elsewhere", "object": "event", "type": "charge.refunded", "data": {"object": charge}}
    response = deliver(shop, event)
    assert response.status_code == 200 and response.json["outcome"] == "unknown order"


# --- webhook timestamps -------------------------------------------------------------------------------------


def test_webhook_timestamps_are_bounded_in_the_future_as_in_the_past(shop, db):
    order(shop, 10)
    placed = newest(db)
    event = _completed(placed.id, placed.checkout_session_id, "evt_from_the_future")
    now = int(time.time())
    for when in (now + 3600, now + 400, now - 400):
        refused = deliver(shop, event, at=when)
        assert refused.status_code == 400 and refused.mimetype == "application/problem+json", when
        assert "tolerance zone" in refused.json["detail"]
    assert fresh(db, Order, placed.id).state == OrderState.PENDING
    assert db.get(StripeEvent, "evt_from_the_future") is None
    # a sender whose clock runs a minute ahead is no attacker
    assert deliver(shop, event, at=now + 60).json["outcome"] == "fulfilled"


# --- credit notes -------------------------------------------------------------------------------------------


def domestic_order(shop, db, login, quantity: int) -> Order:
    """A paid order of a Polish company: 23 % VAT, so that cents must be rounded."""
    org = projects.create_organisation(
        db, shop.buyer, name="Gdańsk Robotics sp. z o.o.", kind="sme", country="PL", vat_number="PL5260250274"
    )
    admin = login(shop.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, shop.buyer, org, title="Welding vision")
    response = post_form(
        shop.client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": project.id, "quantity": quantity},
        page="/market",
    )
    assert response.status_code == 303
    placed = newest(db)
    pay(response.headers["Location"])
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    return fresh(db, Order, placed.id)


def refund_on_the_finance_page(finance, order_id: int, hours: int):
    return post_form(
        finance,
        f"/finance/orders/{order_id}/refund",
        {"quantity": hours, "reason": "Customer asked for unused hours back"},
        page="/finance/orders",
    )


def notes_total(db: Session, order_id: int) -> tuple[int, int, int]:
    db.expire_all()
    return tuple(
        db.exec(
            select(func.sum(Invoice.net_cents), func.sum(Invoice.vat_cents), func.sum(Invoice.gross_cents)).where(
                Invoice.order_id == order_id, Invoice.kind == InvoiceKind.CREDIT_NOTE
            )
        ).one()
    )


def test_partial_refunds_from_the_finance_page_credit_exactly_the_invoice(shop, db, login):
    placed = domestic_order(shop, db, login, 3)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.INVOICE)).one()
    assert (invoice.net_cents, invoice.vat_cents, invoice.gross_cents) == (750, 173, 923)  # 23 % of 7.50, rounded
    finance = finance_client(shop, login, db)

    assert refund_on_the_finance_page(finance, placed.id, 1).status_code == 302
    first = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.CREDIT_NOTE)).one()
    assert first.gross_cents == -fresh(db, Order, placed.id).refunded_cents  # the note says what was paid back
    assert first.net_cents + first.vat_cents == first.gross_cents
    assert refund_on_the_finance_page(finance, placed.id, 2).status_code == 302

    placed = fresh(db, Order, placed.id)
    assert (placed.state, placed.refunded_cents) == (OrderState.REFUNDED, 923)
    assert notes_total(db, placed.id) == (-750, -173, -923)  # the notes cancel the invoice to the cent
    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    charge = client.v1.payment_intents.retrieve(placed.payment_intent_id).latest_charge
    charge = client.v1.charges.retrieve(charge if isinstance(charge, str) else charge.id)
    assert charge.amount_refunded == 923  # and Stripe paid back exactly that
    allocation = fresh(db, Allocation, placed.allocation_id)
    assert allocation.balance == 0
    assert ledger.balance_mismatches(db) == []


def test_a_refund_in_stripe_after_one_from_the_finance_page_credits_the_exact_remainder(shop, db, login):
    placed = domestic_order(shop, db, login, 3)
    finance = finance_client(shop, login, db)
    assert refund_on_the_finance_page(finance, placed.id, 1).status_code == 302
    refunded = fresh(db, Order, placed.id).refunded_cents
    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    client.v1.refunds.create({"payment_intent": placed.payment_intent_id})  # the rest, in Stripe's dashboard
    wait_for("the refund", lambda: fresh(db, Order, placed.id).refunded_cents == 923)
    assert refunded < 923
    assert notes_total(db, placed.id) == (-750, -173, -923)
    assert ledger.balance_mismatches(db) == []
