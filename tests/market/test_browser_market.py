"""End to end, in a real browser: a buyer orders GPU hours, pays on the Stripe stand-in's hosted page, watches
the order turn paid by itself (htmx polling, the webhook delivered to the real portal) and downloads the invoice.

The harness (Debian's Chromium, axe-core, the provider's login page) is tests/journeys/test_browser.py's.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
from portal_standin.devstack import free_port
from portal_standin.devstripe import StripeStandIn
from sqlmodel import select
from werkzeug.serving import make_server

from portal import create_app
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.market.models import Invoice, Order, OrderState
from portal.projects import services as projects
from tests.journeys.test_browser import EIDAS, add_person, assert_accessible, browser, log_in, new_page, portal_errors
from tests.ledger_world import HOUR, make_world, publish_offering

#: The browser fixtures of tests/journeys/test_browser.py, used here by name.
__all__ = ["browser", "new_page"]

pytestmark = pytest.mark.browser

WEBHOOK_SECRET = "whsec_browser_market"


@pytest.fixture(scope="module")
def stripe_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StripeStandIn]:
    server = StripeStandIn(free_port(), tmp_path_factory.mktemp("stripe"), from_scratch=True).start()
    yield server
    server.stop()


@pytest.fixture
def portal(make_settings, stripe_stand_in, db) -> Iterator[SimpleNamespace]:
    """The real portal in a thread, paying through the stand-in, whose webhook goes to the portal; a published
    H100 offering with capacity for the coming year."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = make_settings(
        base_url=url,
        stripe_api_base=stripe_stand_in.url,
        stripe_api_key=stripe_stand_in.api_key,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stripe_stand_in.configure_webhook(f"{url}/market/stripe/webhook", WEBHOOK_SECRET)
    world = make_world(db)
    start = date.today()
    for _ in range(4):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, world.gpu, starts_on=q_start, ends_on=q_end, capacity=1000 * HOUR, reason="test setup"
        )
        start = q_end
    offering = publish_offering(db, world.gpu)
    yield SimpleNamespace(url=url, app=app, settings=settings, offering=offering)
    server.shutdown()
    thread.join(timeout=5)
    app.extensions["portal.engine"].dispose()


def test_a_buyer_pays_for_hours_and_downloads_the_invoice(
    portal, stripe_stand_in, oidc_provider, new_page, db, login, tmp_path: Path
):
    sub, email = add_person(oidc_provider, "Rasa", "Pirkėja", acr=EIDAS + "substantial", amr=["eid"])
    page = new_page()
    errors = portal_errors(page, portal.url)
    log_in(page, portal.url, oidc_provider, "eIDAS", sub)

    # Her verified company and its project (registering and verifying have their own browser tests).
    buyer = db.exec(select(User).where(User.email == email)).one()
    org = projects.create_organisation(
        db, buyer, name="Kaunas Vision UAB", kind="sme", country="LT", vat_number="LT119511515"
    )
    admin = login(portal.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Shelf vision")

    # The catalogue, from the navigation.
    page.goto(f"{portal.url}/")
    page.get_by_role("link", name="Buy hours").click()
    page.wait_for_url(f"{portal.url}/market")
    assert_accessible(page, "catalogue")
    row = page.get_by_role("row", name=re.compile("H100 hours"))
    assert "€2.50" in row.inner_text()
    row.get_by_role("link", name="Order").click()
    page.wait_for_url(re.compile(r".*/market/offerings/\d+/order$"))
    assert_accessible(page, "order form")
    page.get_by_label("For the project").select_option(label="Shelf vision (Kaunas Vision UAB)")
    page.get_by_label("Hours").fill("12")
    page.get_by_role("button", name="Continue to payment").click()

    # The stand-in's hosted payment page.
    page.wait_for_url(f"{stripe_stand_in.url}/pay/**")
    assert "30.00" in page.content()  # 12 × 2.50 EUR, reverse charge: no VAT
    page.get_by_role("button", name="Pay", exact=True).click()

    # Back on the portal, the order page turns paid by itself once the webhook has arrived.
    placed = db.exec(select(Order).where(Order.project_id == project.id)).one()
    page.wait_for_url(f"{portal.url}/market/orders/{placed.id}")
    page.locator("#order-state").get_by_text("paid", exact=True).wait_for(timeout=20_000)
    db.expire_all()
    assert db.get(Order, placed.id).state == OrderState.PAID
    assert_accessible(page, "paid order")

    # The hours are on the project page.
    page.get_by_role("link", name="Open the project").click()
    page.wait_for_url(f"{portal.url}/projects/{project.id}")
    credited = page.locator("#allocations tbody tr").filter(has_text="active")
    cells = credited.get_by_role("cell").all_inner_texts()
    assert cells[2] == "active" and cells[3].startswith("12") and cells[6].startswith("12"), cells

    # The invoice, from the organisation's billing page.
    page.goto(f"{portal.url}/organisations/{org.id}")
    page.get_by_role("link", name="Orders and invoices").click()
    page.wait_for_url(f"{portal.url}/organisations/{org.id}/billing")
    assert_accessible(page, "billing page")
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    with page.expect_download() as download:
        page.get_by_role("link", name=f"Download {invoice.reference}").click()
    saved = tmp_path / "invoice.pdf"
    download.value.save_as(saved)
    assert saved.read_bytes().startswith(b"%PDF")
    assert download.value.suggested_filename == f"{invoice.reference}.pdf"

    assert errors == []
