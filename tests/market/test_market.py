"""Buying GPU hours: the real stripe library against the local stand-in, signed webhooks to the real portal."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import date
from types import SimpleNamespace

import pytest
import requests
import stripe
from portal_standin.devstack import free_port, patience
from sqlmodel import Session, select
from werkzeug.serving import make_server

from portal import create_app
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, CapacityPeriod, EntryKind, LedgerEntry
from portal.market import services as market
from portal.market.invoice_pdf import invoice_pdf
from portal.market.models import Invoice, InvoiceKind, Order, OrderState, StripeEvent
from portal.projects import services as projects
from tests.conftest import EIDAS, post_form
from tests.ledger_world import HOUR, make_world, publish_offering

WEBHOOK_SECRET = "whsec_market_tests"


@pytest.fixture
def shop(make_settings, stand_in, login, db) -> Iterator[SimpleNamespace]:
    """The portal served over HTTP (Stripe delivers its webhooks there), a verified LT company whose admin is
    logged in at level substantial, and a published H100 offering with capacity for this quarter and the next."""
    port = free_port()
    settings = make_settings(
        base_url=f"http://127.0.0.1:{port}",
        stripe_api_base=stand_in.url,
        stripe_api_key=stand_in.api_key,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stand_in.configure_webhook(f"{settings.base_url}/market/stripe/webhook", WEBHOOK_SECRET)
    world = make_world(db, q1_gpu_hours=10, q2_gpu_hours=10)
    start = date.today()
    for _ in range(4):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=1000 * HOUR, reason="test setup"
        )
        start = q_end
    client = app.test_client()
    buyer = login(client)
    org = projects.create_organisation(
        db, buyer, name="Kaunas Vision UAB", kind="sme", country="LT", vat_number="LT119511515"
    )
    admin = login(app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Shelf vision")
    offering = publish_offering(db, world.gpu)
    yield SimpleNamespace(
        app=app,
        settings=settings,
        client=client,
        buyer=buyer,
        org=org,
        project=project,
        offering=offering,
        world=world,
        stand_in=stand_in,
    )
    server.shutdown()
    thread.join(timeout=5)
    app.extensions["portal.engine"].dispose()


def order(shop, quantity: int):
    response = post_form(
        shop.client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": shop.project.id, "quantity": quantity},
        page="/market",
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    return response.headers["Location"]


def pay(pay_url: str, action: str = "pay") -> requests.Response:
    return requests.post(
        pay_url, data={"action": action, "email": "buyer@example.eu"}, allow_redirects=False, timeout=10
    )


def wait_for(what: str, check, timeout: float = 15.0):
    """Poll ``check`` until it is true: ``timeout`` seconds on an idle machine, more on a busy one."""
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fresh(db: Session, model, id_):
    db.expire_all()
    return db.get(model, id_)


def test_paying_on_the_hosted_page_credits_the_hours_once_and_issues_an_invoice(shop, db):
    pay_url = order(shop, 40)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    # reverse charge: an LT company buying from the PL seller
    assert (placed.net_cents, placed.vat_cents, placed.gross_cents, placed.vat_scheme) == (
        10_000,
        0,
        10_000,
        "reverse_charge",
    )
    held = fresh(db, Allocation, placed.allocation_id)
    assert (held.state, held.balance, held.reserved) == (AllocationState.AWAITING_PAYMENT, 0, 40 * HOUR)
    session = stripe.StripeClient(
        shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url}
    ).v1.checkout.sessions.retrieve(placed.checkout_session_id)
    assert (session.amount_total, session.metadata["order_id"]) == (10_000, str(placed.id))

    paid = pay(pay_url)
    assert paid.status_code == 303 and paid.headers["Location"].endswith(f"/market/orders/{placed.id}")
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    allocation = fresh(db, Allocation, placed.allocation_id)
    assert (allocation.balance, allocation.state) == (40 * HOUR, AllocationState.ACTIVE)
    (invoice,) = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()
    assert (invoice.net_cents, invoice.vat_cents, invoice.gross_cents) == (10_000, 0, 10_000)
    assert "Reverse charge" in invoice.mention and invoice.reference.startswith(f"BAIF-{date.today().year}-")
    page = shop.client.get(f"/market/orders/{placed.id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "paid" in page and "hx-trigger" not in page  # htmx stops polling once paid
    pdf = shop.client.get(f"/market/invoices/{invoice.id}.pdf")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF-")
    purchases = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == placed.allocation_id)).all()
    assert [(e.kind, e.amount) for e in purchases] == [(EntryKind.PURCHASE, 40 * HOUR)]


def _signed(event: dict) -> tuple[bytes, str]:
    payload = json.dumps(event).encode()
    timestamp = int(time.time())
    signature = stripe.WebhookSignature._compute_signature(f"{timestamp}.{payload.decode()}", WEBHOOK_SECRET)
    return payload, f"t={timestamp},v1={signature}"


def _completed(order_id: int, session_id: str, event_id: str, amount_total: int = 2_500, currency: str = "eur") -> dict:
    return {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": session_id,
                "object": "checkout.session",
                "payment_status": "paid",
                "payment_intent": "pi_x",
                "amount_total": amount_total,
                "currency": currency,
                "metadata": {"order_id": str(order_id)},
            }
        },
    }


def test_a_repeated_or_late_webhook_changes_nothing_and_a_bad_signature_is_refused(shop, db):
    order(shop, 10)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    client = shop.app.test_client()
    payload, signature = _signed(_completed(placed.id, placed.checkout_session_id, "evt_first"))
    assert (
        client.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature}).json["outcome"]
        == "fulfilled"
    )
    again = client.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature})
    assert again.json["outcome"] == "duplicate"
    payload2, signature2 = _signed(_completed(placed.id, placed.checkout_session_id, "evt_second_delivery"))
    assert (
        client.post("/market/stripe/webhook", data=payload2, headers={"Stripe-Signature": signature2}).json["outcome"]
        == "already paid"
    )
    assert fresh(db, Allocation, placed.allocation_id).balance == 10 * HOUR
    assert len(db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()) == 1
    forged = client.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": "t=1,v1=bad"})
    assert forged.status_code == 400 and forged.mimetype == "application/problem+json"
    unknown_payload, unknown_signature = _signed(_completed(999_999, "cs_unknown", "evt_unknown"))
    unknown = client.post(
        "/market/stripe/webhook", data=unknown_payload, headers={"Stripe-Signature": unknown_signature}
    )
    assert unknown.status_code == 200 and unknown.json["outcome"] == "unknown order"
    assert db.get(StripeEvent, "evt_unknown") is not None


def test_an_expired_checkout_releases_the_held_capacity(shop, db):
    order(shop, 30)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    gateway = market.StripeGateway(shop.settings)
    gateway.expire_checkout_session(placed.checkout_session_id)
    wait_for("the expiry event", lambda: fresh(db, Order, placed.id).state == OrderState.EXPIRED)
    allocation = fresh(db, Allocation, placed.allocation_id)
    assert (allocation.state, allocation.reserved) == (AllocationState.EXPIRED, 0)


def test_a_declined_card_leaves_the_order_pending(shop, db):
    pay_url = order(shop, 5)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    declined = pay(pay_url, "decline")
    assert declined.status_code == 402
    time.sleep(1.5)
    assert fresh(db, Order, placed.id).state == OrderState.PENDING


def test_finance_refunds_unused_hours_with_a_credit_note_and_stripe_agrees(shop, db, login):
    pay_url = order(shop, 40)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    pay(pay_url)
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    ledger.charge_usage(db, placed.allocation_id, 10 * HOUR, idempotency_key="market-usage")
    finance = login(shop.app.test_client())
    grant_role(db, None, finance, FactoryRole.FINANCE, reason="test setup")
    placed = fresh(db, Order, placed.id)
    with pytest.raises(market.InvalidInput, match="unused hours"):
        market.refund_order(
            db, shop.settings, market.StripeGateway(shop.settings), finance, placed, quantity=31, reason="test setup"
        )
    note = market.refund_order(
        db, shop.settings, market.StripeGateway(shop.settings), finance, placed, quantity=30, reason="test setup"
    )
    assert (note.kind, note.net_cents, note.gross_cents, note.lines[0]["quantity"]) == (
        InvoiceKind.CREDIT_NOTE,
        -7_500,
        -7_500,
        -30,
    )
    placed = fresh(db, Order, placed.id)
    assert (placed.state, placed.refunded_cents) == (OrderState.PARTIALLY_REFUNDED, 7_500)
    assert fresh(db, Allocation, placed.allocation_id).balance == 0
    # the charge.refunded event of that very refund finds it booked already
    wait_for(
        "charge.refunded",
        lambda: db.exec(
            select(StripeEvent).where(StripeEvent.type == "charge.refunded", StripeEvent.order_id == placed.id)
        ).first(),
    )
    assert fresh(db, Order, placed.id).refunded_cents == 7_500
    assert invoice_pdf(note).startswith(b"%PDF-")
    assert ledger.balance_mismatches(db) == []


def test_buying_needs_a_verified_organisation_and_the_billing_role(shop, db, login):
    outsider_client = shop.app.test_client()
    login(outsider_client)
    response = post_form(
        outsider_client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": shop.project.id, "quantity": 10},
        page="/market",
    )
    assert response.status_code == 404  # not a member of the project
    unverified = projects.create_organisation(db, shop.buyer, name="New OÜ", kind="sme", country="EE")
    other = projects.create_project(db, shop.buyer, unverified, title="New")
    response = post_form(
        shop.client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": other.id, "quantity": 10},
        page="/market",
    )
    assert response.status_code == 409 and "not verified yet" in response.get_data(as_text=True)
    too_many = post_form(
        shop.client,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": shop.project.id, "quantity": 501},
        page="/market",
    )
    assert too_many.status_code == 422 and "Between 1 and 500" in too_many.get_data(as_text=True)
    assert db.exec(select(Order)).all() == []


def test_the_login_that_places_the_order_needs_substantial_not_an_earlier_one(shop, db, login):
    from portal.identity.models import ExternalIdentity

    subject = db.exec(select(ExternalIdentity.subject).where(ExternalIdentity.user_id == shop.buyer.id)).first()
    later = shop.app.test_client()
    assert login(later, subject, acr=EIDAS + "low").id == shop.buyer.id  # the same buyer, now at level low
    response = post_form(
        later,
        f"/market/offerings/{shop.offering.id}/order",
        {"project_id": shop.project.id, "quantity": 10},
        page="/market",
    )
    assert response.status_code == 409
    assert "To buy for an organisation, log in at level substantial" in response.get_data(as_text=True)
    assert db.exec(select(Order)).all() == []


def test_the_catalogue_shows_what_is_honestly_left(shop, db):
    page = shop.client.get("/market").get_data(as_text=True)
    assert "H100 hours" in page and "€2.50" in page
    items = market.catalogue(db)
    before = items[0].available
    order(shop, 100)
    assert market.catalogue(db)[0].available == before - 100
    assert db.exec(select(CapacityPeriod)).all()


def test_the_buyer_cancels_a_pending_order_and_the_hold_is_released(shop, db):
    pay_url = order(shop, 25)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    response = post_form(shop.client, f"/market/orders/{placed.id}/cancel", page=f"/market/orders/{placed.id}")
    assert response.status_code == 302
    assert fresh(db, Order, placed.id).state == OrderState.EXPIRED
    allocation = fresh(db, Allocation, placed.allocation_id)
    assert (allocation.state, allocation.reserved) == (AllocationState.EXPIRED, 0)
    assert requests.get(pay_url, timeout=10).status_code == 410  # the session is expired at Stripe too
    again = post_form(
        shop.client, f"/market/orders/{placed.id}/cancel", page=f"/market/orders/{placed.id}", follow_redirects=True
    )
    assert "only a pending order can be cancelled" in again.get_data(as_text=True)


def test_a_refund_made_in_stripes_dashboard_is_booked_from_its_webhook(shop, db):
    pay_url = order(shop, 20)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    pay(pay_url)
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    placed = fresh(db, Order, placed.id)
    client = stripe.StripeClient(shop.stand_in.api_key, base_addresses={"api": shop.stand_in.url})
    client.v1.refunds.create({"payment_intent": placed.payment_intent_id, "amount": 1_000})  # 4 of 20 hours
    wait_for("the refund", lambda: fresh(db, Order, placed.id).refunded_cents == 1_000)
    placed = fresh(db, Order, placed.id)
    assert placed.state == OrderState.PARTIALLY_REFUNDED
    assert fresh(db, Allocation, placed.allocation_id).balance == 16 * HOUR
    note = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.CREDIT_NOTE)).one()
    assert (note.gross_cents, note.lines[0]["quantity"]) == (-1_000, -4)
    assert ledger.balance_mismatches(db) == []


def test_issued_invoices_cannot_be_changed_or_deleted(shop, db):
    import sqlalchemy as sa

    pay_url = order(shop, 10)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    pay(pay_url)
    wait_for("payment", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    with pytest.raises(sa.exc.DatabaseError, match="immutable"):
        db.execute(sa.text("UPDATE invoices SET gross_cents = 1 WHERE order_id = :o"), {"o": placed.id})
    db.rollback()
    with pytest.raises(sa.exc.DatabaseError, match="immutable"):
        db.execute(sa.text("DELETE FROM invoices WHERE order_id = :o"), {"o": placed.id})
    db.rollback()


class _Vies:
    """A local stand-in for the EU's VIES REST service: registered numbers are the ones it is given."""

    def __init__(self, registered: set[str]) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        registered_numbers, asked = registered, []
        self.asked = asked

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked.append(body)
                answer = json.dumps(
                    {
                        "countryCode": body["countryCode"],
                        "vatNumber": body["vatNumber"],
                        "valid": body["countryCode"] + body["vatNumber"] in registered_numbers,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/check-vat-number"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_with_the_vies_check_on_an_unregistered_vat_number_stops_the_order(shop, db):
    vies = _Vies(registered=set())
    try:
        settings = shop.settings.model_copy(update={"vies_check": True, "vies_url": vies.url})
        from portal.market.vat import VatNumberNotConfirmed

        with pytest.raises(VatNumberNotConfirmed, match="VIES does not know LT119511515"):
            market.place_order(
                db,
                settings,
                market.StripeGateway(settings),
                shop.buyer,
                _login(shop.buyer),
                offering=shop.offering,
                project=shop.project,
                quantity=10,
            )
        assert vies.asked == [{"countryCode": "LT", "vatNumber": "119511515"}]
        assert db.exec(select(Order)).all() == []
        vies_ok = _Vies(registered={"LT119511515"})
        try:
            settings = settings.model_copy(update={"vies_url": vies_ok.url})
            placed, _url = market.place_order(
                db,
                settings,
                market.StripeGateway(settings),
                shop.buyer,
                _login(shop.buyer),
                offering=shop.offering,
                project=shop.project,
                quantity=10,
            )
            assert placed.vat_scheme == "reverse_charge"
        finally:
            vies_ok.close()
    finally:
        vies.close()


def _login(user):
    from tests.grants_world import login_of

    return login_of(user)


def test_site_operators_do_not_see_organisations_orders(shop, db, login):
    order(shop, 10)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id)).one()
    operator_client = shop.app.test_client()
    operator = login(operator_client)
    grant_role(db, None, operator, FactoryRole.SITE_OPERATOR, reason="test setup")
    assert operator_client.get(f"/market/orders/{placed.id}").status_code == 404
    assert operator_client.get(f"/organisations/{shop.org.id}/billing").status_code == 404
    finance_client = shop.app.test_client()
    grant_role(db, None, login(finance_client), FactoryRole.FINANCE, reason="test setup")
    assert finance_client.get(f"/market/orders/{placed.id}").status_code == 200
    assert finance_client.get(f"/organisations/{shop.org.id}/billing").status_code == 200
