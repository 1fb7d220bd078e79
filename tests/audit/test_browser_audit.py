"""End to end, in a real browser: an admin finds an adjustment in the audit log by its action and reason.

The harness (Debian's Chromium, axe-core, the provider's login page) is tests/journeys/test_browser.py's.
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.market import services as market
from portal.market.models import Offering
from tests.journeys.test_browser import (
    EIDAS,
    add_person,
    assert_accessible,
    browser,
    log_in,
    new_page,
    portal_errors,
    portal_url,
)
from tests.ledger_world import HOUR, admin, make_world, open_q1
from tests.market.test_market import fresh

#: The browser fixtures of tests/journeys/test_browser.py, used here by name.
__all__ = ["browser", "new_page", "portal_url"]

pytestmark = pytest.mark.browser


def test_an_admin_filters_the_audit_log_and_finds_who_adjusted_what_and_why(
    portal_url, oidc_provider, new_page, db
) -> None:
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    other_admin = admin(db)
    ledger.adjust(db, other_admin, allocation.id, -HOUR, reason="Job 4711 was charged twice")
    ledger.set_suspended(db, other_admin, allocation.id, True, reason="Abuse report from the site")

    sub, email = add_person(oidc_provider, "Aino", "Auditor", acr=EIDAS + "high")
    page = new_page()
    errors = portal_errors(page, portal_url)
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)
    me = db.exec(select(User).where(User.email == email)).one()
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")

    page.reload()
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    page.wait_for_url(f"{portal_url}/admin/audit")
    assert page.get_by_role("heading", name="Audit log").is_visible()
    page.get_by_label("Action").select_option("allocation_adjusted")
    page.get_by_label("Words in the summary or reason").fill("charged twice")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(f"{portal_url}/admin/audit?**")

    rows = page.locator("#audit-events tbody tr")
    assert rows.count() == 1
    row = rows.first.inner_text()
    assert "Allocation adjusted" in row and "Job 4711 was charged twice" in row and other_admin.email in row
    assert "Abuse report" not in page.content()
    csv_link = page.get_by_role("link", name="These events as CSV")
    assert "action=allocation_adjusted" in (csv_link.get_attribute("href") or "")
    assert_accessible(page, "audit log")
    assert errors == []


def test_an_admin_must_say_why_a_price_changes_and_finds_the_reason_in_the_log(
    portal_url, oidc_provider, new_page, db
) -> None:
    world = make_world(db)
    offering = market.create_offering(
        db, None, resource=world.gpu, title="H100 hours", price_cents=250, max_quantity=50, reason="test setup"
    )
    colleague = admin(db)
    sub, email = add_person(oidc_provider, "Aino", "Auditor", acr=EIDAS + "high")
    page = new_page()
    errors = portal_errors(page, portal_url)
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)
    me = db.exec(select(User).where(User.email == email)).one()
    grant_role(db, None, me, FactoryRole.ADMIN, reason="test setup")

    page.goto(f"{portal_url}/admin/offerings/{offering.id}")
    price_form = page.locator("form").filter(has_text="Save price")
    price_form.get_by_label("New price per hour in EUR, before VAT").fill("3.10")
    price_form.get_by_role("button", name="Save price").click()
    price_form.get_by_text("Say why").wait_for()  # refused: the form shown again with the message
    assert fresh(db, Offering, offering.id).price_cents == 250
    assert_accessible(page, "offering with a refused price")
    price_form.get_by_label("Why this price? (kept in the audit log)").fill("Electricity costs rose 20 %")
    price_form.get_by_role("button", name="Save price").click()
    page.get_by_text("The price is now €3.10 per hour for new orders.").wait_for()
    assert fresh(db, Offering, offering.id).price_cents == 310

    page.goto(f"{portal_url}/admin/users?q={colleague.email}")
    page.get_by_label(f"Why grant it to {colleague.display_name}? (kept in the audit log)").fill(
        "Covers finance in May"
    )
    page.get_by_label(f"Role for {colleague.display_name}").select_option("finance")
    page.get_by_role("row", name=colleague.email).get_by_role("button", name="Grant").click()
    page.get_by_text(f"{colleague.display_name} is now finance.").wait_for()
    assert_accessible(page, "users and roles")

    page.goto(f"{portal_url}/admin/audit")
    log = page.locator("#audit-events tbody").inner_text()
    assert "Electricity costs rose 20 %" in log and "Covers finance in May" in log
    assert len(errors) == 1 and "status of 422" in errors[0]  # the refused price, and nothing else
