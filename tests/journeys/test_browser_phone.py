"""The main pages on a phone (390 × 844, issue 13), in a real browser: nothing scrolls sideways, the header
stays short, tables become one card per row while Chromium still reads them as tables, and axe finds no
serious or critical problem.

The harness is tests/journeys/test_browser.py's; the portal, with the Stripe stand-in,
tests/market/test_browser_market.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from portal_standin.devstack import patience
from sqlmodel import select

from portal.config import DEV_HUB_SPAWN_CHECK_TOKEN
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.market.models import Order
from portal.projects import services as projects
from tests.compute.test_compute import GPU_HUB
from tests.journeys.test_browser import EIDAS, TIMEOUT_MS, add_person, assert_accessible, browser, log_in
from tests.market.test_browser_market import portal, stripe_stand_in

#: Fixtures used here by name.
__all__ = ["browser", "portal", "stripe_stand_in"]

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}


@pytest.fixture
def phone(browser) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=3)
    context.set_default_timeout(patience(TIMEOUT_MS))  # more on a busy machine
    context.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
    yield context.new_page()
    context.close()


def assert_fits_the_phone(page: Any, what: str) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the {what} is {widths[0]} px wide on a {widths[1]} px screen"
    header = page.locator("header.site-header").bounding_box()
    assert header["height"] <= 120, f"the header of the {what} is {header['height']} px high"
    assert_accessible(page, f"{what} on a phone")


def accessibility_roles(page: Any) -> set[str]:
    """The roles in Chromium's own accessibility tree (what a screen reader gets), not the DOM's."""
    cdp = page.context.new_cdp_session(page)
    tree = cdp.send("Accessibility.getFullAXTree")
    return {node.get("role", {}).get("value") for node in tree["nodes"]}


def test_the_main_pages_fit_a_phone(portal, stripe_stand_in, oidc_provider, phone, db, login) -> None:
    sub, email = add_person(oidc_provider, "Kristīne", "Ozoliņa-Bērziņa", acr=EIDAS + "substantial", amr=["eid"])
    page = phone
    log_in(page, portal.url, oidc_provider, "eIDAS", sub)
    buyer = db.exec(select(User).where(User.email == email)).one()
    org = projects.create_organisation(
        db, buyer, name="Daugavpils Vision SIA", kind="sme", country="LV", vat_number="LV40003245752"
    )
    admin = login(portal.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Baltic shelf-vision models for retail")

    assert_fits_the_phone(page, "dashboard")

    # The catalogue: its Order button is on the screen; then order and pay, as on a phone.
    page.goto(f"{portal.url}/market")
    assert_fits_the_phone(page, "catalogue")
    order_button = page.get_by_role("row", name=re.compile("H100 hours")).get_by_role("link", name="Order")
    box = order_button.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    order_button.click()
    page.wait_for_url(re.compile(r".*/market/offerings/\d+/order$"))
    assert_fits_the_phone(page, "order form")
    page.get_by_label("Hours").fill("12")
    page.get_by_role("button", name="Continue to payment").click()
    page.wait_for_url(f"{stripe_stand_in.url}/pay/**")
    page.get_by_role("button", name="Pay", exact=True).click()
    placed = db.exec(select(Order).where(Order.project_id == project.id)).one()
    page.wait_for_url(f"{portal.url}/market/orders/{placed.id}")
    page.locator("#order-state").get_by_text("paid", exact=True).wait_for(timeout=20_000)
    assert_fits_the_phone(page, "paid order")

    page.goto(f"{portal.url}/organisations/{org.id}/billing")
    assert_fits_the_phone(page, "orders and invoices")

    page.goto(f"{portal.url}/projects/{project.id}")
    assert_fits_the_phone(page, "project page")

    # A notebook on the hours (the hub's spawn check, as the hub asks it), then My sessions.
    db.expire_all()
    allocation_id = db.get(Order, placed.id).allocation_id
    started = portal.app.test_client().post(
        "/api/v1/hub/spawn-check",
        json={
            "user": f"u{buyer.id}",
            "server_name": f"a{allocation_id}-1",
            "user_options": {"allocation": allocation_id, "profile": "1x-h100", "hours": 1},
            "backend": GPU_HUB,
        },
        headers={"Authorization": f"Bearer {DEV_HUB_SPAWN_CHECK_TOKEN}"},
    )
    assert started.status_code == 200, started.get_data(as_text=True)
    page.goto(f"{portal.url}/notebooks")
    assert_fits_the_phone(page, "My sessions")
    stop = page.get_by_role("button", name=re.compile("^Stop"))
    box = stop.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    # The cards are still a table to a screen reader.
    assert {"table", "row", "columnheader", "cell"} <= accessibility_roles(page)
