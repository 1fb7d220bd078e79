"""The first steps of a new user, page by page (issue 13): a paid order leads to its invoice and to a notebook
on its hours, a buyer who cannot buy yet is told what is missing, and notebooks carry names people read."""

from __future__ import annotations

import html
import re

from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger.models import Resource
from portal.market.models import Invoice
from portal.projects import services as projects
from portal.projects.models import ProjectMembership, ProjectRole
from tests.ledger_world import World
from tests.test_compute import open_now, spawn
from tests.test_market import shop
from tests.test_market_pages import paid_order
from tests.test_notebook_backends import cpu, world

#: Fixtures used here by name.
__all__ = ["cpu", "shop", "world"]


def test_a_paid_order_links_its_invoice_and_a_notebook_on_its_hours(shop, db: Session) -> None:  # type: ignore[no-untyped-def]
    placed = paid_order(shop, db, 12)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    page = shop.client.get(f"/market/orders/{placed.id}").get_data(as_text=True)
    assert f'href="/market/invoices/{invoice.id}.pdf"' in page
    assert f"Download invoice {invoice.reference}" in page
    start = f"/projects/{placed.project_id}/notebooks?allocation_id={placed.allocation_id}"
    assert f'href="{html.escape(start)}">Start a notebook on these hours</a>' in page
    assert "Cancel the order" not in page

    # The link opens the notebook form with the order's hours chosen.
    form = shop.client.get(start).get_data(as_text=True)
    assert re.search(rf'<option value="{placed.allocation_id}" selected>', form), form

    # The inbox message names the invoice and links to it.
    inbox = shop.client.get("/inbox").get_data(as_text=True)
    assert invoice.reference in inbox
    assert f'href="{shop.settings.base_url}/market/invoices/{invoice.id}.pdf"' in inbox


def test_a_buyer_is_told_what_is_missing_until_they_can_order(shop, db: Session, login) -> None:  # type: ignore[no-untyped-def]
    client = shop.app.test_client()
    newcomer = login(client, given_name="Maris")
    order_page = f"/market/offerings/{shop.offering.id}/order"

    # No organisation: register one (the catalogue and the order page say so, and the order form is not shown).
    for url in ("/market", order_page):
        page = client.get(url).get_data(as_text=True)
        assert "Hours are bought by a verified organisation" in page and 'href="/organisations/new"' in page
    assert "Continue to payment" not in client.get(order_page).get_data(as_text=True)

    # Registered but not verified yet: wait for the staff's check.
    org = projects.create_organisation(db, newcomer, name="Riga Robotics SIA", kind="sme", country="LV")
    page = html.unescape(client.get(order_page).get_data(as_text=True))
    assert "once the factory's staff have verified Riga Robotics SIA" in page
    assert f'href="/organisations/{org.id}"' in page

    # Verified, with no project: create one.
    admin = login(shop.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    page = client.get("/market").get_data(as_text=True)
    assert f'href="/organisations/{org.id}/projects/new">Create a project for Riga Robotics SIA</a>' in page

    # With a project, the catalogue has nothing to say and the order form offers the project.
    projects.create_project(db, newcomer, org, title="Warehouse robots")
    assert 'id="buying-needs"' not in client.get("/market").get_data(as_text=True)
    page = client.get(order_page).get_data(as_text=True)
    assert "Warehouse robots (Riga Robotics SIA)" in page and "Continue to payment" in page


def test_notebooks_are_named_by_their_allocation_and_profile(
    app: Flask, client: FlaskClient, db: Session, world: World, cpu: Resource, login
) -> None:  # type: ignore[no-untyped-def]
    browser = app.test_client()
    member = login(browser, given_name="Ilze")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    allocation = open_now(db, world.project, cpu, 10)
    server = f"a{allocation.id}-1"
    started = spawn(client, member, {"allocation": allocation.id, "profile": "cpu", "hours": 1}, server_name=server)
    assert started.status_code == 200, started.get_data(as_text=True)

    name = "cpu award · CPU only: 2 cores, 4 GB"
    mine = browser.get("/notebooks").get_data(as_text=True)
    assert f'">{name}</a>' in mine
    assert f'<span class="server-name">{server}</span>' in mine  # a detail beside the name
    session = browser.get(f"/notebooks/{started.json['session_id']}").get_data(as_text=True)
    assert f"<h1>{name}</h1>" in session and f'<span class="server-name">{server}</span>' in session
