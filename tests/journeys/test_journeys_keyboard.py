"""The startup's journey with the keyboard only (issue 14): no mouse, no ``click()``.

The same journey as tests/journeys/test_journeys.py's startup (log in -> buy H100 hours -> pay at the Stripe stand-in ->
invoice -> notebook -> a Dask result in JupyterLab), walked as a keyboard user walks it: Tab and Shift+Tab to a
control, Enter to follow or press it, typing into fields. At every stop the focused control must show that it
has the focus (an outline or a box shadow): a keyboard user who cannot see where the focus is cannot go on.

The provider's login page is the stand-in's (standin/portal_standin/oidc_provider.py): the focus starts in its
"Subject" field (autofocus, as the package's own page had it), so the person types the ``sub`` and presses
Enter, which submits the form as its Authorize button would; the demo people's buttons above it stay one
Shift+Tab away. JupyterLab opens on the first notebook with the focus in it; Shift+Enter runs its first cell.

The servers, fixtures and helpers are tests/journeys/test_journeys.py's and tests/journeys/test_browser.py's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from portal_standin.devstack import patience
from sqlmodel import select

from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role
from portal.market.models import Invoice, Order
from portal.projects import services as projects
from tests.journeys.test_browser import EIDAS, add_person, assert_accessible, portal_errors
from tests.journeys.test_journeys import (
    SLOW_MS,
    browser,
    factory,
    fake_gpu_path,
    new_page,
    stripe_stand_in,
    wait_for_jupyterlab,
)

pytestmark = [pytest.mark.browser, pytest.mark.hub]

#: Fixtures used here by name.
__all__ = ["browser", "factory", "fake_gpu_path", "new_page", "stripe_stand_in"]

#: Tab and Shift+Tab presses in the portal and at the stand-in, past the skip links (41 when issue 14 was done).
TAB_BUDGET = 45

#: What the focused element is, for a failure message: its tag, id and the start of its text.
DESCRIBE_FOCUS = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return "(the page itself)";
  const name = (el.getAttribute("aria-label") || el.innerText || el.value || el.title || "").trim();
  return el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (name ? ` "${name.slice(0, 50)}"` : "");
}"""

#: A visible focus indicator: an outline that is drawn, or a box shadow.
FOCUS_INDICATOR = """el => {
  const style = getComputedStyle(el);
  const outline = style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0;
  const seen = `outline ${style.outlineStyle} ${style.outlineWidth} ${style.outlineColor}, shadow ${style.boxShadow}`;
  return {outline, shadow: style.boxShadow !== "none", style: seen};
}"""


def tab_to(
    page: Any,
    role: str,
    name: str | re.Pattern[str],
    max_presses: int = 60,
    *,
    within: Any = None,
    backwards: bool = False,
    exact: bool = True,
) -> int:
    """Press Tab (Shift+Tab with ``backwards``) until the element with ``role`` and accessible ``name`` has the
    focus, as a keyboard user would; the number of presses. Fails, listing where the focus went, when it is not
    reached within ``max_presses``, and when the focused element shows no focus indicator."""
    scope = within if within is not None else page
    wanted = scope.get_by_role(role, name=name, exact=exact if isinstance(name, str) else None)
    return tab_to_element(page, wanted.first, f"the {role} {name!r}", max_presses, backwards=backwards)


def tab_to_element(page: Any, wanted: Any, what: str, max_presses: int = 60, *, backwards: bool = False) -> int:
    """:func:`tab_to` for an element found otherwise than by its role (the ``wanted`` locator)."""
    wanted.wait_for(state="visible")
    handle = wanted.element_handle()
    key = "Shift+Tab" if backwards else "Tab"
    visited: list[str] = []
    presses = 0
    while not page.evaluate("el => el === document.activeElement", handle):
        if presses == max_presses:
            pytest.fail(
                f"{key} x {max_presses} never reached {what} on {page.url}; the focus went to:\n  "
                + "\n  ".join(visited or ["(nowhere: no key was pressed)"])
            )
        page.keyboard.press(key)
        presses += 1
        visited.append(page.evaluate(DESCRIBE_FOCUS))
    indicator = page.evaluate(FOCUS_INDICATOR, handle)
    assert indicator["outline"] or indicator["shadow"], (
        f"{what}, focused, shows no focus indicator on {page.url} ({indicator['style']})"
    )
    return presses


def focus_comes_to(page: Any, selector: str, what: str) -> None:
    """Wait until the focus is in the element matching ``selector`` (a page that moves the focus by itself)."""
    try:
        page.wait_for_function(
            "selector => document.activeElement?.closest(selector) != null", arg=selector, timeout=patience(SLOW_MS)
        )
    except PlaywrightTimeout:
        pytest.fail(f"the focus never came to {what} on {page.url}; it is on {page.evaluate(DESCRIBE_FOCUS)}")


def skip_to_content(page: Any) -> int:
    """The first Tab reaches the visible "Skip to content" link; Enter moves the focus to the page's main part."""
    presses = tab_to(page, "link", "Skip to content", max_presses=1)
    box = page.get_by_role("link", name="Skip to content").bounding_box()
    assert box is not None and box["x"] >= 0 and box["y"] >= 0, f"the focused skip link is off screen: {box}"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement === document.querySelector('main')")
    return presses


def test_a_startup_buys_h100_hours_and_gets_a_dask_result_with_the_keyboard_only(
    factory, stripe_stand_in, oidc_provider, new_page, db, login, tmp_path: Path
) -> None:
    sub, email = add_person(oidc_provider, "Mārtiņš", "Jaunzems", acr=EIDAS + "substantial", amr=["eid"])
    page = new_page()
    errors = portal_errors(page, factory.url)
    presses = 0

    # The home page's "Log in", the login page's eIDAS button.
    page.goto(f"{factory.url}/")
    presses += tab_to(page, "link", "Log in")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{factory.url}/login**")
    presses += tab_to(page, "link", "eIDAS", exact=False)
    page.keyboard.press("Enter")

    # The provider's page (see the module's docstring): the focus is in its Subject field already; type.
    page.wait_for_url(f"{oidc_provider.url}/oauth2/authorize?**")
    tab_to_element(page, page.get_by_label("Subject"), "the provider's Subject field", max_presses=10)
    page.keyboard.type(sub)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{factory.url}/")

    # Registering and verifying the company have their own browser tests: here it is verified, with a project.
    buyer = db.exec(select(User).where(User.email == email)).one()
    org = projects.create_organisation(db, buyer, name="Rīgas Redze SIA", kind="sme", country="LV")
    admin = login(factory.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Shelf vision for retail")

    # The navigation's "Buy hours"; on the market, past the navigation by the skip link to the H100 row's Order.
    page.reload()
    presses += tab_to(page, "link", "Buy hours")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{factory.url}/market")
    presses += skip_to_content(page)
    h100 = page.get_by_role("row", name=re.compile("H100 hours"))
    presses += tab_to(page, "link", "Order", within=h100)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/market/offerings/\d+/order$"))

    # The order form: the project is chosen; select the hours, type 10, and the price with VAT follows.
    presses += skip_to_content(page)
    presses += tab_to(page, "combobox", "For the project")
    assert page.get_by_label("For the project").input_value() == str(project.id)
    presses += tab_to(page, "spinbutton", "Hours")
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.type("10")
    page.locator("#quote-total").get_by_text("€30.25").wait_for()  # 25.00 EUR + 21 % Latvian VAT
    presses += tab_to(page, "button", "Continue to payment")
    page.keyboard.press("Enter")

    # The stand-in's hosted payment page: Tab to Pay, Enter; the order turns paid by itself.
    page.wait_for_url(f"{stripe_stand_in.url}/pay/**")
    presses += tab_to(page, "button", "Pay")
    page.keyboard.press("Enter")
    placed = db.exec(select(Order).where(Order.project_id == project.id)).one()
    page.wait_for_url(f"{factory.url}/market/orders/{placed.id}")
    page.locator("#order-state").get_by_text("paid", exact=True).wait_for(timeout=patience(20_000))

    # The invoice downloads with Enter; Shift+Tab goes back to the notebook on these hours.
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    presses += skip_to_content(page)
    presses += tab_to(page, "link", f"Download invoice {invoice.reference}")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert download.value.suggested_filename == f"{invoice.reference}.pdf"
    presses += tab_to(page, "link", "Start a notebook on these hours", backwards=True)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf".*/projects/{project.id}/notebooks\?allocation_id=\d+$"))

    # The launch form has the order's hours and the H100 profile: Tab to Launch.
    db.expire_all()
    assert page.get_by_label("Allocation").input_value() == str(db.get(Order, placed.id).allocation_id)
    assert page.get_by_label("Profile").input_value() == "1x-h100"
    presses += skip_to_content(page)
    presses += tab_to(page, "button", "Launch")
    page.keyboard.press("Enter")

    # The session page follows the start; its "Open the notebook" is reached by Tab once it is there.
    # The launch form posts to its own address, #main included; the redirect keeps the fragment, so the session
    # page opens with the focus at its main part, and the first Tab reaches the link.
    page.wait_for_url(re.compile(rf"{re.escape(factory.url)}/notebooks/\d+(#main)?$"))
    page.get_by_role("link", name="Open the notebook").wait_for(timeout=patience(SLOW_MS))
    assert_accessible(page, "session page, ready")
    presses += tab_to(page, "link", "Open the notebook")
    page.keyboard.press("Enter")
    wait_for_jupyterlab(page, factory)

    # JupyterLab opens on the first notebook (hub_config/first_notebook.py) with the focus in it: its first cell
    # runs with Shift+Enter once the kernel is there (the status bar says Idle; a run while it connects is lost).
    focus_comes_to(page, ".jp-NotebookPanel", "the first notebook")
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell").first
    cell.get_by_text(re.compile("First steps on the Baltic AI Factory")).wait_for(timeout=patience(SLOW_MS))
    page.locator(".jp-StatusBar-Widget").get_by_text(re.compile(r"Dask GPU\) \| Idle")).wait_for(
        timeout=patience(SLOW_MS)
    )
    page.keyboard.press("Shift+Enter")
    try:
        cell.locator(".jp-OutputArea-output").get_by_text(re.compile(r"Dask result: the mean of 16,000,000")).wait_for(
            timeout=patience(SLOW_MS)
        )
    except PlaywrightTimeout:
        page.screenshot(path=tmp_path / "notebook.png")
        pytest.fail(f"no Dask result in the notebook ({tmp_path / 'notebook.png'}):\n" + cell.inner_text())

    assert presses <= TAB_BUDGET, f"{presses} Tab presses in the portal and at the stand-in"
    assert errors == []
