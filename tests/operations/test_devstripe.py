"""The Stripe stand-in (``portal_standin.devstripe``) driven by the real ``stripe`` library, as the portal drives it.

One stand-in runs for the whole module on a free port of 127.0.0.1, delivering its webhooks to a small
HTTP server here, where every delivery is checked with ``stripe.Webhook.construct_event``. The hosted
payment page is used with ``requests`` and, once, in Debian's Chromium through Playwright.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import stripe
from portal_standin.devstack import free_port
from portal_standin.devstripe import StripeStandIn

WEBHOOK_SECRET = "whsec_devstripe_test"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class WebhookInbox:
    """An HTTP server on 127.0.0.1: POSTs are webhook deliveries; GETs (the shop's success and cancel
    pages, for the browser) answer a small page."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[bytes, str]] = []
        self._changed = threading.Condition()
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with inbox._changed:
                    inbox.deliveries.append((body, self.headers.get("Stripe-Signature", "")))
                    inbox._changed.notify_all()
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                page = b"<!DOCTYPE html><title>Shop</title><h1>Back at the shop</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, event_type: str, object_id: str, timeout: float = 10.0) -> list[stripe.Event]:
        """The verified events of ``event_type`` about ``object_id``, waiting until there is one."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                events = [
                    stripe.Webhook.construct_event(body, signature, WEBHOOK_SECRET)
                    for body, signature in self.deliveries
                ]
                found = [e for e in events if e.type == event_type and e.data.object.id == object_id]
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {event_type} event about {object_id} within {timeout} s")
                self._changed.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def inbox() -> Iterator[WebhookInbox]:
    inbox = WebhookInbox()
    yield inbox
    inbox.close()


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory, inbox: WebhookInbox) -> Iterator[StripeStandIn]:
    server = StripeStandIn(free_port(), tmp_path_factory.mktemp("devstripe")).start()
    try:
        server.configure_webhook(f"{inbox.url}/webhooks/stripe", WEBHOOK_SECRET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(stand_in: StripeStandIn) -> stripe.StripeClient:
    return stripe.StripeClient(StripeStandIn.api_key, base_addresses={"api": stand_in.url}, max_network_retries=0)


@pytest.fixture
def global_stripe(stand_in: StripeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library's module-level configuration (``stripe.Refund.create``…), pointed at the stand-in."""
    monkeypatch.setattr(stripe, "api_key", StripeStandIn.api_key)
    monkeypatch.setattr(stripe, "api_base", stand_in.url)


def session_params(inbox: WebhookInbox, **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": "eur",
                    "unit_amount": 1000,
                    "product_data": {"name": "GPU hours, 10 × H100"},
                },
                "quantity": 2,
            },
            {"price_data": {"currency": "eur", "unit_amount": 500, "product_data": {"name": "Storage"}}, "quantity": 1},
        ],
        "success_url": f"{inbox.url}/shop/success?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{inbox.url}/shop/cancelled",
        "customer_email": "buyer@example.org",
        "client_reference_id": "order-42",
        "metadata": {"order": "42", "project": "p-7"},
        "payment_intent_data": {"metadata": {"order": "42"}},
    }
    params.update(overrides)
    return params


def pay(session_url: str, action: str = "pay", **form: str) -> requests.Response:
    return requests.post(session_url, data={"action": action, **form}, allow_redirects=False, timeout=10)


# --- creating, reading, listing, expiring ------------------------------------------------------------------


def test_create_with_an_idempotency_key(client: stripe.StripeClient, inbox: WebhookInbox, stand_in: StripeStandIn):
    key = str(uuid.uuid4())
    first = client.v1.checkout.sessions.create(session_params(inbox), options={"idempotency_key": key})
    again = client.v1.checkout.sessions.create(session_params(inbox), options={"idempotency_key": key})

    assert again.id == first.id and first.id.startswith("cs_test_")
    assert first.object == "checkout.session"
    assert (first.status, first.payment_status, first.mode) == ("open", "unpaid", "payment")
    assert (first.amount_total, first.currency) == (2500, "eur")
    assert first.metadata.to_dict() == {"order": "42", "project": "p-7"}
    assert first.client_reference_id == "order-42"
    assert first.customer_email == "buyer@example.org"
    assert first.url == f"{stand_in.url}/pay/{first.id}"
    assert first.payment_intent is None
    assert first.expires_at - first.created == 24 * 3600
    listed = client.v1.checkout.sessions.list({"limit": 100})
    assert [s.id for s in listed.data].count(first.id) == 1

    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        client.v1.checkout.sessions.create(
            session_params(inbox, client_reference_id="order-43"), options={"idempotency_key": key}
        )
    other = client.v1.checkout.sessions.create(session_params(inbox), options={"idempotency_key": str(uuid.uuid4())})
    assert other.id != first.id


def test_retrieve_and_line_items(client: stripe.StripeClient, inbox: WebhookInbox):
    created = client.v1.checkout.sessions.create(session_params(inbox))

    session = client.v1.checkout.sessions.retrieve(created.id)
    assert session.to_dict() == created.to_dict()
    items = client.v1.checkout.sessions.line_items.list(created.id)
    assert [(i.description, i.quantity, i.amount_total, i.price.unit_amount) for i in items.data] == [
        ("GPU hours, 10 × H100", 2, 2000, 1000),
        ("Storage", 1, 500, 500),
    ]
    assert all(i.object == "item" and i.currency == "eur" and i.price.type == "one_time" for i in items.data)
    first_only = client.v1.checkout.sessions.line_items.list(created.id, {"limit": 1})
    assert len(first_only.data) == 1 and first_only.has_more
    expanded = client.v1.checkout.sessions.retrieve(created.id, {"expand": ["line_items"]})
    assert [i.id for i in expanded.line_items.data] == [i.id for i in items.data]

    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.retrieve("cs_test_nonexistent")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"


def test_list_is_newest_first_and_paginated(client: stripe.StripeClient, inbox: WebhookInbox):
    ids = [client.v1.checkout.sessions.create(session_params(inbox)).id for _ in range(3)]

    page = client.v1.checkout.sessions.list({"limit": 2})
    assert [s.id for s in page.data] == ids[::-1][:2] and page.has_more
    following = client.v1.checkout.sessions.list({"limit": 1, "starting_after": page.data[-1].id})
    assert following.data[0].id == ids[0]
    assert all(s.status == "open" for s in client.v1.checkout.sessions.list({"status": "open", "limit": 100}).data)


def test_parameters_stripe_would_refuse_are_refused(client: stripe.StripeClient, inbox: WebhookInbox):
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.checkout.sessions.create(session_params(inbox, allow_promotion_codes=True))
    assert unknown.value.code == "parameter_unknown" and unknown.value.param == "allow_promotion_codes"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.create(session_params(inbox, mode=None))
    assert missing.value.param == "mode"
    with pytest.raises(stripe.InvalidRequestError, match=re.escape("at least €0.50")):
        client.v1.checkout.sessions.create(
            session_params(
                inbox,
                line_items=[
                    {"price_data": {"currency": "eur", "unit_amount": 10, "product_data": {"name": "x"}}, "quantity": 1}
                ],
            )
        )
    with pytest.raises(stripe.InvalidRequestError) as too_soon:
        client.v1.checkout.sessions.create(session_params(inbox, expires_at=int(time.time()) + 60))
    assert too_soon.value.param == "expires_at"


def test_expire(client: stripe.StripeClient, inbox: WebhookInbox):
    session = client.v1.checkout.sessions.create(session_params(inbox))

    expired = client.v1.checkout.sessions.expire(session.id)
    assert (expired.status, expired.payment_status, expired.url) == ("expired", "unpaid", None)
    (event,) = inbox.wait_for("checkout.session.expired", session.id)
    assert event.data.object.status == "expired"
    assert event.data.object.metadata.to_dict() == {"order": "42", "project": "p-7"}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(session.id)
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 410 and "expired" in page.text
    assert pay(session.url).status_code == 410


# --- the hosted page ---------------------------------------------------------------------------------------


def test_pay_on_the_hosted_page(client: stripe.StripeClient, inbox: WebhookInbox):
    session = client.v1.checkout.sessions.create(session_params(inbox))

    page = requests.get(session.url, timeout=10)
    assert page.status_code == 200
    assert "€25.00" in page.text and "GPU hours, 10 × H100" in page.text and "buyer@example.org" in page.text
    paid = pay(session.url)
    assert paid.status_code == 303
    assert paid.headers["Location"] == f"{inbox.url}/shop/success?session_id={session.id}"

    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status, done.url) == ("complete", "paid", None)
    assert done.customer_details.email == "buyer@example.org"
    assert done.customer is None  # customer_creation=if_required: no Customer in payment mode
    intent = client.v1.payment_intents.retrieve(done.payment_intent)
    assert (intent.status, intent.amount, intent.currency) == ("succeeded", 2500, "eur")
    assert intent.metadata.to_dict() == {"order": "42"}

    (event,) = inbox.wait_for("checkout.session.completed", session.id)
    completed = event.data.object
    assert (completed.status, completed.payment_status) == ("complete", "paid")
    assert completed.payment_intent == done.payment_intent
    assert completed.client_reference_id == "order-42" and completed.metadata.order == "42"
    assert inbox.wait_for("payment_intent.succeeded", intent.id)
    assert client.v1.checkout.sessions.list({"payment_intent": intent.id}).data[0].id == session.id
    assert "Payment complete" in requests.get(session.url, timeout=10).text


def test_a_declined_card_keeps_the_session_open(client: stripe.StripeClient, inbox: WebhookInbox):
    session = client.v1.checkout.sessions.create(session_params(inbox, customer_email=None, customer_creation="always"))

    assert pay(session.url, email="").status_code == 400  # Stripe asks for an e-mail address
    declined = pay(session.url, "decline", email="someone@example.org")
    assert declined.status_code == 402 and "Your card was declined." in declined.text
    still_open = client.v1.checkout.sessions.retrieve(session.id)
    assert (still_open.status, still_open.payment_status) == ("open", "unpaid")
    assert inbox.wait_for("payment_intent.payment_failed", still_open.payment_intent)

    assert pay(session.url, email="someone@example.org").status_code == 303
    done = client.v1.checkout.sessions.retrieve(session.id, {"expand": ["payment_intent", "customer"]})
    assert done.status == "complete"
    assert done.payment_intent.id == still_open.payment_intent  # the same PaymentIntent, confirmed again
    assert done.payment_intent.status == "succeeded"
    assert done.customer.email == "someone@example.org"


def test_cancel_returns_to_the_shop(client: stripe.StripeClient, inbox: WebhookInbox):
    session = client.v1.checkout.sessions.create(session_params(inbox))

    cancelled = pay(session.url, "cancel")
    assert cancelled.status_code == 303 and cancelled.headers["Location"] == f"{inbox.url}/shop/cancelled"
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"


# --- refunds -----------------------------------------------------------------------------------------------


def test_refunds_of_a_checkout_payment(client: stripe.StripeClient, inbox: WebhookInbox, global_stripe: None):
    session = client.v1.checkout.sessions.create(session_params(inbox))
    assert pay(session.url).status_code == 303
    intent_id = client.v1.checkout.sessions.retrieve(session.id).payment_intent

    key = str(uuid.uuid4())
    refund = stripe.Refund.create(
        payment_intent=intent_id, amount=1000, reason="requested_by_customer", idempotency_key=key
    )
    replayed = stripe.Refund.create(
        payment_intent=intent_id, amount=1000, reason="requested_by_customer", idempotency_key=key
    )
    assert replayed.id == refund.id  # a retried request refunds once
    assert (refund.amount, refund.status, refund.currency, refund.payment_intent) == (
        1000,
        "succeeded",
        "eur",
        intent_id,
    )
    (event,) = inbox.wait_for("charge.refunded", refund.charge)
    assert (event.data.object.amount_refunded, event.data.object.refunded) == (1000, False)
    assert event.data.object.payment_intent == intent_id
    assert event.data.previous_attributes.amount_refunded == 0

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        stripe.Refund.create(payment_intent=intent_id, amount=1501)
    assert too_much.value.param == "amount" and too_much.value.http_status == 400
    assert "greater than unrefunded amount on charge (€15.00)" in str(too_much.value)

    rest = stripe.Refund.create(payment_intent=intent_id)  # by default, what remains
    assert rest.amount == 1500
    events = inbox.wait_for("charge.refunded", refund.charge)
    while len(events) < 2:
        events = inbox.wait_for("charge.refunded", refund.charge)
    assert any(e.data.object.refunded and e.data.object.amount_refunded == 2500 for e in events)
    with pytest.raises(stripe.InvalidRequestError) as again:
        stripe.Refund.create(charge=refund.charge, amount=1)
    assert again.value.code == "charge_already_refunded"


# --- the process -------------------------------------------------------------------------------------------


def test_state_is_kept_in_the_data_dir_across_restarts(tmp_path: Path):
    with StripeStandIn(free_port(), tmp_path) as first:
        client = stripe.StripeClient(StripeStandIn.api_key, base_addresses={"api": first.url})
        session = client.v1.checkout.sessions.create(
            {
                "mode": "payment",
                "line_items": [
                    {
                        "price_data": {"currency": "eur", "unit_amount": 990, "product_data": {"name": "x"}},
                        "quantity": 1,
                    }
                ],
                "success_url": "http://127.0.0.1/ok",
            }
        )
    assert first.process is not None and first.process.returncode is not None
    assert (tmp_path / "localstripe.pickle").is_file()

    with StripeStandIn(free_port(), tmp_path) as second:
        client = stripe.StripeClient(StripeStandIn.api_key, base_addresses={"api": second.url})
        again = client.v1.checkout.sessions.retrieve(session.id)
        assert (again.amount_total, again.status) == (990, "open")
        assert again.url == f"{first.url}/pay/{session.id}"  # kept as created, as Stripe keeps its URLs


def test_api_needs_a_key_but_the_hosted_page_does_not(stand_in: StripeStandIn, client: stripe.StripeClient, inbox):
    session = client.v1.checkout.sessions.create(session_params(inbox))
    assert requests.get(f"{stand_in.url}/v1/checkout/sessions/{session.id}", timeout=10).status_code == 401
    assert requests.get(session.url, timeout=10).status_code == 200


# --- in a browser ------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_pay_in_a_browser(client: stripe.StripeClient, inbox: WebhookInbox):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; scripts/bootstrap --test installs Debian's Chromium")
    from playwright.sync_api import expect, sync_playwright

    session = client.v1.checkout.sessions.create(session_params(inbox, customer_email=None))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(session.url)
            expect(page.get_by_role("heading", name="Pay €25.00")).to_be_visible()
            page.get_by_label("Email").fill("browser@example.org")
            page.get_by_role("button", name="Pay", exact=True).click()
            page.wait_for_url(re.compile(re.escape(f"/shop/success?session_id={session.id}") + "$"))
            expect(page.get_by_role("heading", name="Back at the shop")).to_be_visible()
        finally:
            browser.close()

    done = client.v1.checkout.sessions.retrieve(session.id)
    assert (done.status, done.payment_status) == ("complete", "paid")
    assert done.customer_details.email == "browser@example.org"
    assert inbox.wait_for("checkout.session.completed", session.id)
