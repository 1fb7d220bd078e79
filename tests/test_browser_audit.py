"""End to end, in a real browser: an admin finds an adjustment in the audit log by its action and reason.

The harness (Debian's Chromium, axe-core, the provider's login page) is tests/test_browser.py's.
"""

from __future__ import annotations

import pytest
from sqlmodel import select

from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from tests.ledger_world import HOUR, admin, make_world, open_q1
from tests.test_browser import (
    EIDAS,
    add_person,
    assert_accessible,
    browser,
    log_in,
    new_page,
    portal_errors,
    portal_url,
)

#: The browser fixtures of tests/test_browser.py, used here by name.
__all__ = ["browser", "new_page", "portal_url"]

pytestmark = pytest.mark.browser


def test_an_admin_filters_the_audit_log_and_finds_who_adjusted_what_and_why(  # type: ignore[no-untyped-def]
    portal_url, oidc_provider, new_page, db
) -> None:
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    other_admin = admin(db)
    ledger.adjust(db, other_admin, allocation.id, -HOUR, reason="Job 4711 was charged twice")  # type: ignore[arg-type]
    ledger.set_suspended(db, other_admin, allocation.id, True, reason="Abuse report from the site")  # type: ignore[arg-type]

    sub, email = add_person(oidc_provider, "Aino", "Auditor", acr=EIDAS + "high")
    page = new_page()
    errors = portal_errors(page, portal_url)
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)
    me = db.exec(select(User).where(User.email == email)).one()
    grant_role(db, None, me, FactoryRole.ADMIN)

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
