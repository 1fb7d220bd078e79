"""A notebook end to end, in a real browser: a member logs in to the portal, launches a notebook from her
project page, watches the session page become ready (htmx), opens JupyterLab at a real JupyterHub (which logs
her in through the portal's OAuth2 server, in the same browser), comes back to "My sessions" and stops it.
axe-core checks the portal's pages on the way.

Same harness as ``tests/journeys/test_browser.py``; the portal and hub are ``tests/compute/test_notebooks.py``'s stack.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from sqlmodel import Session, select

pytest.importorskip("jupyterhub", reason="needs the [hub] extra")

from portal_standin.devstack import free_port

from portal.compute.hub_client import ServerStatus
from portal.identity.models import User
from tests.compute.test_hub import wait_for
from tests.compute.test_notebooks import Stack, hub_settings, running_stack
from tests.factories import cpu_project
from tests.journeys import test_browser as harness
from tests.journeys.test_browser import EIDAS, add_person, assert_accessible, log_in, portal_errors

pytestmark = [pytest.mark.browser, pytest.mark.hub]

browser = harness.browser
new_page = harness.new_page

#: Starting a server and loading JupyterLab take seconds each on a small machine.
SLOW_MS = 60_000


@pytest.fixture
def stack(make_settings, tmp_path) -> Iterator[Stack]:
    port = free_port()
    settings = hub_settings(lambda **o: make_settings(base_url=f"http://127.0.0.1:{port}", **o), free_port())
    with running_stack(settings, tmp_path / "hub", port=port) as running:
        yield running


def test_a_member_launches_opens_jupyterlab_through_the_portal_login_and_stops_it(
    stack: Stack, oidc_provider, new_page
) -> None:
    portal_url = stack.portal_url
    sub, email = add_person(oidc_provider, "Liis", "Kask", acr=EIDAS + "substantial")
    page = new_page()
    errors = portal_errors(page, portal_url)
    log_in(page, portal_url, oidc_provider, "eIDAS", sub)

    with Session(stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        liis = db.exec(select(User).where(User.email == email)).one()
        _world, project, allocation = cpu_project(
            db, liis, hours=10, title="Protein folding", organisation="Tartu Ülikool", country="EE"
        )

    # From the project page to the launch form: allocation, profile, hours.
    page.goto(f"{portal_url}/projects/{project.id}")
    assert_accessible(page, "project page")
    page.get_by_role("link", name="Start a notebook").click()
    page.wait_for_url(f"{portal_url}/projects/{project.id}/notebooks")
    assert_accessible(page, "launch form")
    page.get_by_label("Allocation").select_option(str(allocation.id))
    page.get_by_label("Profile").select_option(label="CPU only: 2 cores, 4 GB")
    page.get_by_label("Maximum duration (hours)").fill("1")
    page.get_by_role("button", name="Launch").click()

    # The session page follows the start with htmx until the notebook is ready.
    page.wait_for_url(re.compile(rf"{re.escape(portal_url)}/notebooks/\d+$"))
    session_url = page.url
    open_link = page.get_by_role("link", name="Open the notebook")
    open_link.wait_for(timeout=SLOW_MS)
    assert "Your notebook is ready." in page.locator("#session-state").inner_text()
    assert_accessible(page, "session page, ready")

    # Into JupyterLab at the hub: the hub's login goes through the portal's OAuth2 server in this browser.
    hub_user, server_name = f"u{liis.id}", f"a{allocation.id}-1"
    open_link.click()
    page.wait_for_url(f"{stack.hub.url}/user/{hub_user}/{server_name}/lab**", timeout=SLOW_MS)
    page.locator("#jp-main-dock-panel").wait_for(timeout=SLOW_MS)
    assert "JupyterLab" in page.title()
    assert stack.client.server_status(hub_user, server_name) == ServerStatus.READY

    # Back in the portal: My sessions shows it running, and Stop stops it.
    page.goto(f"{portal_url}/notebooks")
    row = page.get_by_role("row").filter(has_text=server_name)
    assert row.get_by_role("link", name="cpu award · CPU only: 2 cores, 4 GB").is_visible()
    assert_accessible(page, "My sessions, one running")
    row.get_by_role("button", name="Stop").click()
    page.wait_for_url(f"{portal_url}/notebooks")
    assert "The notebook is stopped" in page.locator(".flashes").inner_text()
    assert "No notebook is running" in page.content()
    stopped = page.get_by_role("row").filter(has_text=server_name)
    assert "You stopped it." in stopped.inner_text()
    assert_accessible(page, "My sessions, one stopped")
    wait_for(
        lambda: stack.client.server_status(hub_user, server_name) == ServerStatus.STOPPED,
        timeout=20,
        what="the server to stop at the hub",
    )
    page.goto(session_url)
    assert "This notebook is stopped. You stopped it." in page.locator("#session-state").inner_text()
    assert errors == []
