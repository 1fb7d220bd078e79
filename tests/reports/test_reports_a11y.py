"""The operators' dashboards in a real browser: axe-core finds nothing serious, can decide the contrast of every
chart's text and bar (no "needs review"), and every scrollable table can be reached and scrolled by keyboard.

The harness (Debian's Chromium, axe-core, the provider's login page) is tests/journeys/test_browser.py's.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import select

from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from tests.journeys.test_browser import AXE, EIDAS, add_person, assert_accessible, browser, log_in, new_page, portal_url
from tests.reports.test_reports import seed

#: The browser fixtures of tests/journeys/test_browser.py, used here by name.
__all__ = ["browser", "new_page", "portal_url"]

pytestmark = pytest.mark.browser


def axe_results(page: Any, rules: list[str]) -> dict:
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    return page.evaluate("rules => axe.run(document, {runOnly: {type: 'rule', values: rules}})", rules)


@pytest.mark.parametrize(
    ("path", "language"),
    [
        ("/reports?quarter=2030-Q1", "en"),
        ("/reports/revenue?quarter=2030-Q1", "en"),
        ("/reports?quarter=2030-Q1", "pl"),
    ],
)
def test_an_admin_can_read_every_chart_and_scroll_every_table_by_keyboard(
    portal_url, oidc_provider, new_page, db, path: str, language: str
) -> None:
    """The longer Polish words must not push a table out of its box either (axe cannot judge a clipped cell)."""
    seed(db)
    sub, email = add_person(oidc_provider, "Rita", "Reporter", acr=EIDAS + "high")
    page = new_page()
    page.set_extra_http_headers({"Accept-Language": language})
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)
    grant_role(db, None, db.exec(select(User).where(User.email == email)).one(), FactoryRole.ADMIN, reason="test")

    page.goto(f"{portal_url}{path}")
    assert page.locator("html").get_attribute("lang") == language
    assert page.locator(".report-chart svg").count() >= 1
    assert_accessible(page, f"reports page {path}")

    found = axe_results(page, ["color-contrast", "scrollable-region-focusable"])
    undecided = [n["target"] for v in found["incomplete"] if v["id"] == "color-contrast" for n in v["nodes"]]
    assert undecided == [], f"{len(undecided)} colour-contrast items left for review: {undecided[:10]}"
    failing = [(v["id"], [n["target"] for n in v["nodes"]]) for v in found["violations"]]
    assert failing == [], failing
    assert "color-contrast" in {v["id"] for v in found["passes"]}  # the rule ran on real text

    page.set_viewport_size({"width": 480, "height": 900})  # the wide tables scroll now
    narrow = axe_results(page, ["scrollable-region-focusable"])
    assert narrow["violations"] == [] and [v["id"] for v in narrow["passes"]] == ["scrollable-region-focusable"]

    regions = page.locator(".table-scroll")
    assert regions.count() >= 1
    for i in range(regions.count()):
        region = regions.nth(i)
        assert region.get_attribute("tabindex") == "0" and region.get_attribute("role") == "region"
        assert region.get_attribute("aria-labelledby") or region.get_attribute("aria-label")
    regions.first.focus()
    assert page.evaluate("document.activeElement.classList.contains('table-scroll')")
