"""End to end, in a real browser: the portal served over HTTP, logins through the real local OIDC
provider's page, invitations delivered over SMTP, htmx swaps, and axe-core accessibility checks.

Chromium is Debian's (``scripts/bootstrap --test`` installs it); Playwright drives it but downloads no
browser of its own. Nothing here reaches beyond 127.0.0.1.

axe-core: ``tests/vendor/axe-core-4.14.1.min.js`` is npm ``axe-core@4.14.1``, file ``axe.min.js``
(MPL-2.0, licence header kept; sha256 29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from portal_standin.devstack import OIDCProviderProcess, free_port, patience
from werkzeug.serving import make_server

from portal import create_app
from tests.conftest import Mailbox

pytestmark = pytest.mark.browser

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
AXE = Path(__file__).parents[1] / "vendor" / "axe-core-4.14.1.min.js"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EIDAS = "http://eidas.europa.eu/LoA/"
TIMEOUT_MS = 10_000


# --- servers -------------------------------------------------------------------------------------------


@pytest.fixture
def portal_url(make_settings, mailbox: Mailbox) -> Iterator[str]:
    """The real portal, served by werkzeug in a background thread, sending its e-mail over SMTP."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(make_settings(base_url=url, mail_backend="smtp", smtp_host="127.0.0.1", smtp_port=mailbox.port))
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=5)
    app.extensions["portal.engine"].dispose()


# --- browser -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; scripts/bootstrap --test installs Debian's Chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=patience(30_000))
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """``new_page() -> Page`` in a fresh browser context (its own cookies: one person)."""
    contexts = []

    def make():
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(patience(TIMEOUT_MS))  # more on a busy machine
        # The provider's page loads Pico CSS from a CDN; there is no internet here.
        context.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def add_person(provider: OIDCProviderProcess, given: str, family: str, **claims: Any) -> tuple[str, str]:
    """A user at the OIDC provider; returns their ``sub`` and e-mail address."""
    sub = f"{given.lower()}-{uuid.uuid4().hex[:8]}"
    email = f"{sub}@example.eu"
    provider.add_user(sub, given_name=given, family_name=family, email=email, email_verified=True, **claims)
    return sub, email


def log_in_at_provider(page: Any, provider: OIDCProviderProcess, sub: str) -> None:
    """On the provider's authorize page: type the sub and press Authorize, as a person would."""
    page.wait_for_url(f"{provider.url}/oauth2/authorize?**")
    page.get_by_placeholder("sub").fill(sub)
    page.get_by_role("button", name="Authorize").click()


def log_in(page: Any, portal_url: str, provider: OIDCProviderProcess, provider_label: str, sub: str) -> None:
    page.goto(f"{portal_url}/login")
    page.get_by_role("link", name=provider_label).click()
    log_in_at_provider(page, provider, sub)
    page.wait_for_url(f"{portal_url}/")


def assert_accessible(page: Any, what: str) -> None:
    """axe-core on the page as it is: no serious or critical violation (WCAG 2.x A and AA rules)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())  # evaluated by the DevTools protocol: the page's CSP still applies to it
    result = page.evaluate(
        "axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',"
        " 'best-practice']}})"
    )
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"accessibility violations on the {what}:\n" + "\n".join(bad)


def portal_errors(page: Any, portal_url: str) -> list[str]:
    """The JavaScript and console errors (a CSP block shows up there) of the portal's pages in ``page``."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error" and page.url.startswith(portal_url):
            errors.append(f"{page.url}: {message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"{page.url}: {exc}"))
    return errors


# --- tests ---------------------------------------------------------------------------------------------


def test_a_pi_invites_a_colleague_who_joins_and_is_made_manager(portal_url, mailbox, oidc_provider, new_page):
    anna_sub, _ = add_person(oidc_provider, "Anna", "Tamm", acr=EIDAS + "substantial", amr=["eid"])
    bob_sub, bob_email = add_person(oidc_provider, "Bob", "Bērziņš", acr="https://refeds.org/assurance/IAP/medium")

    # Anna logs in with eIDAS through the provider's own page.
    anna = new_page()
    anna_errors = portal_errors(anna, portal_url)
    log_in(anna, portal_url, oidc_provider, "eIDAS", anna_sub)
    assert anna.get_by_role("button", name=re.compile(r"Log out \(Anna Tamm\)")).is_visible()
    assert anna.get_by_role("heading", level=1).inner_text() == "Your projects"
    assert_accessible(anna, "empty dashboard")

    # She registers her company.
    anna.get_by_role("link", name="Register an organisation").click()
    anna.get_by_label("Name").fill("Tartu Vision OÜ")
    anna.get_by_label("Kind").select_option(label="SME or startup")
    anna.get_by_label("Country").select_option(label="Estonia")
    anna.get_by_label("Registry number").fill("14532901")
    anna.get_by_label("EU VAT number").fill("EE100931558")
    anna.get_by_role("button", name="Register").click()
    anna.wait_for_url(re.compile(r".*/organisations/\d+$"))
    assert "Tartu Vision OÜ is registered. You are its admin." in anna.locator(".flashes").inner_text()
    facts = anna.locator("dl.facts").inner_text()
    assert "14532901" in facts and "EE100931558" in facts and "EE" in facts

    # ... creates a project ...
    anna.get_by_role("link", name="New project").click()
    anna.get_by_label("Title").fill("Estonian speech models")
    anna.get_by_label("Description").fill("Fine-tuning ASR models on Estonian broadcast archives.")
    anna.get_by_role("button", name="Create project").click()
    anna.wait_for_url(re.compile(r".*/projects/\d+$"))
    project_url = anna.url
    assert anna.get_by_role("heading", level=1).inner_text() == "Estonian speech models"

    # ... and invites Bob as a member.
    invite = anna.locator("#invitations")
    invite.get_by_label("E-mail address").fill(bob_email)
    invite.get_by_label("Role").select_option("member")
    invite.get_by_role("button", name="Send invitation").click()
    anna.wait_for_url(f"{project_url}#invitations")
    assert f"An invitation was sent to {bob_email}." in anna.locator(".flashes").inner_text()
    assert anna.locator("#invitations table").get_by_role("cell", name=bob_email).is_visible()

    # The invitation arrives by e-mail, with the link in it.
    mail = mailbox.wait_for(bob_email)
    assert mail["Subject"] == "Invitation to the project Estonian speech models"
    body = mail.get_content()
    assert "Anna Tamm invites you" in body
    link = re.search(rf"{re.escape(portal_url)}/invitations/\S+", body)
    assert link, body
    assert anna.locator("#invitation-link").get_attribute("href") == link.group(0)

    # In his own browser, Bob opens the link; the portal asks him to log in first.
    bob = new_page()
    bob_errors = portal_errors(bob, portal_url)
    bob.goto(link.group(0))
    bob.wait_for_url(re.compile(rf"{re.escape(portal_url)}/login\?next=.*"))
    assert_accessible(bob, "login page")
    bob.get_by_role("link", name="MyAccessID").click()
    log_in_at_provider(bob, oidc_provider, bob_sub)
    bob.wait_for_url(link.group(0))
    assert bob.get_by_role("heading", level=1).inner_text() == "Join Estonian speech models"
    bob.get_by_role("button", name="Accept and join").click()
    bob.wait_for_url(project_url)
    assert "Welcome to the project “Estonian speech models”." in bob.locator(".flashes").inner_text()
    bob.get_by_role("link", name="Dashboard").click()
    bob.wait_for_url(f"{portal_url}/")
    row = bob.get_by_role("row", name=re.compile("Estonian speech models"))
    assert row.get_by_role("cell").all_inner_texts() == ["Estonian speech models", "Tartu Vision OÜ", "Member", "2"]
    assert_accessible(bob, "dashboard")

    # Back in Anna's browser, Bob is in the members table.
    anna.goto(project_url)
    members = anna.locator("#members-table")
    bob_row = members.get_by_role("row", name=re.compile("Bob Bērziņš"))
    assert bob_row.get_by_role("cell").nth(1).inner_text() == "Member"
    assert_accessible(anna, "project page")

    # She makes him manager with the htmx form: the table is swapped in place, the page is not reloaded.
    navigations: list[str] = []
    anna.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == anna.main_frame else None)
    anna.evaluate("window.__samePage = true")
    with anna.expect_response(lambda r: r.url.endswith("/role") and r.request.method == "POST") as swap:
        bob_row.get_by_label("Role of Bob Bērziņš").select_option("manager")
        bob_row.get_by_role("button", name="Change").click()
    assert swap.value.status == 200
    assert swap.value.request.headers.get("hx-request") == "true"
    members = anna.locator("#members-table")
    members.get_by_role("status").filter(has_text="The member's role is changed.").wait_for()
    bob_row = members.get_by_role("row", name=re.compile("Bob Bērziņš"))
    assert bob_row.get_by_role("cell").nth(1).inner_text() == "Manager"
    assert anna.locator("#members-table").count() == 1  # swapped, not nested
    assert anna.evaluate("window.__samePage === true"), "the page was reloaded"
    assert navigations == []
    assert anna.url == project_url
    assert_accessible(anna, "project page after the swap")

    ARTIFACTS.mkdir(exist_ok=True)
    anna.screenshot(path=str(ARTIFACTS / "project-page.png"), full_page=True)

    # Bob, now a manager, sees the invitation form on the project page.
    bob.goto(project_url)
    assert bob.get_by_role("heading", name="Invite a member").is_visible()

    assert anna_errors + bob_errors == []


def test_an_invalid_vat_number_is_explained_next_to_the_field(portal_url, oidc_provider, new_page):
    sub, _ = add_person(oidc_provider, "Liis", "Kask", acr=EIDAS + "substantial")
    page = new_page()
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)
    page.goto(f"{portal_url}/organisations/new")
    page.get_by_label("Name").fill("Tallinn Robotics AS")
    page.get_by_label("Kind").select_option("large_company")
    page.get_by_label("Country").select_option(label="Estonia")
    page.get_by_label("Registry number").fill("14532901")
    page.get_by_label("EU VAT number").fill("EE100931559")  # last digit wrong
    page.get_by_role("button", name="Register").click()

    page.locator("#vat_number-error").wait_for()
    assert page.url == f"{portal_url}/organisations/new"
    vat = page.get_by_label("EU VAT number")
    assert vat.get_attribute("aria-invalid") == "true"
    assert "vat_number-error" in (vat.get_attribute("aria-describedby") or "").split()
    error = page.locator(".field.has-error").filter(has=vat).locator(".error")
    assert error.inner_text() == "This is not a valid EE VAT number: its check digit is wrong (a typo?)."
    assert page.locator(".has-error").count() == 1  # only the VAT number is wrong
    assert page.get_by_label("Name").get_attribute("aria-invalid") is None

    # What she typed is still there.
    assert page.get_by_label("Name").input_value() == "Tallinn Robotics AS"
    assert page.get_by_label("Kind").input_value() == "large_company"
    assert page.get_by_label("Country").input_value() == "EE"
    assert page.get_by_label("Registry number").input_value() == "14532901"
    assert vat.input_value() == "EE100931559"
    assert_accessible(page, "organisation form with an error")
