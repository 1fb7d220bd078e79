"""The first steps of a new user, page by page (issue 13): a paid order leads to its invoice and to a notebook
on its hours, a buyer who cannot buy yet is told what is missing, and notebooks carry names people read."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from flask import Flask, render_template
from flask.testing import FlaskClient
from sqlmodel import Session, col, select

from portal.classroom import services as classroom
from portal.db import utcnow
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Resource
from portal.market.models import Invoice, Order
from portal.projects import services as projects
from portal.projects.models import ProjectMembership, ProjectRole
from tests.compute.conftest import cpu, world  # the compute tests' fixtures, for these pages too
from tests.compute.test_compute import spawn
from tests.conftest import post_form
from tests.factories import open_now
from tests.ledger_world import HOUR, World
from tests.market.test_market import order, shop
from tests.market.test_market_pages import paid_order

#: Fixtures used here by name.
__all__ = ["cpu", "shop", "world"]


def test_a_paid_order_links_its_invoice_and_a_notebook_on_its_hours(shop, db: Session) -> None:
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


def test_a_buyer_is_told_what_is_missing_until_they_can_order(shop, db: Session, login) -> None:
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
) -> None:
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


def test_the_market_is_filtered_by_the_names_people_read_in_any_case(shop) -> None:
    page = shop.client.get("/market").get_data(as_text=True)
    # The choices are the cities and GPUs on sale, not the site codes.
    assert "<option>Riga</option>" in page and "<option>H100</option>" in page
    for query in ("site=riga&gpu=h100", "site=RIGA", "gpu=H100", "site=Test+Centre"):
        found = shop.client.get(f"/market?{query}").get_data(as_text=True)
        assert "H100 hours" in found and 'href="/market/offerings/' in found, query
    chosen = shop.client.get("/market?site=riga").get_data(as_text=True)
    assert "<option selected>Riga</option>" in chosen
    nothing = shop.client.get("/market?site=Warsaw").get_data(as_text=True)
    assert "Nothing on sale matches this filter." in nothing and 'href="/market">Show all offerings</a>' in nothing
    assert "H100 hours" not in nothing


def test_the_order_form_shows_net_vat_and_total_before_payment(shop, db: Session, login) -> None:
    order_page = f"/market/offerings/{shop.offering.id}/order"
    # An LT company with a VAT number buys from the PL seller: reverse charge, no VAT.
    page = html.unescape(shop.client.get(order_page).get_data(as_text=True))
    assert 'id="quote-net">€2.50' in page and 'id="quote-total"><strong>€2.50' in page
    quote = html.unescape(
        shop.client.get(
            f"/market/offerings/{shop.offering.id}/quote?project_id={shop.project.id}&quantity=12"
        ).get_data(as_text=True)
    )
    assert 'id="quote-net">€30.00' in quote and 'id="quote-vat">€0.00' in quote
    assert 'id="quote-total"><strong>€30.00' in quote and "VAT 0 %" in quote and "everse charge" in quote
    too_many = shop.client.get(f"/market/offerings/{shop.offering.id}/quote?quantity=100000").get_data(as_text=True)
    assert "Choose between 1 and 500 hours." in too_many
    blank = shop.client.get(f"/market/offerings/{shop.offering.id}/quote?quantity=").get_data(as_text=True)
    assert "Choose between 1 and 500 hours." in blank and "quote-total" not in blank

    # A Polish company without a VAT number pays Polish VAT (23 %), shown before payment.
    client = shop.app.test_client()
    buyer = login(client, given_name="Zofia")
    org = projects.create_organisation(db, buyer, name="Przykładowa sp. z o.o.", kind="sme", country="PL")
    admin = login(shop.app.test_client())
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    projects.verify_organisation(db, admin, org, reason="test setup")
    project = projects.create_project(db, buyer, org, title="Mowa")
    quote = html.unescape(
        client.get(f"/market/offerings/{shop.offering.id}/quote?project_id={project.id}&quantity=10").get_data(
            as_text=True
        )
    )
    assert 'id="quote-net">€25.00' in quote and 'id="quote-vat">€5.75' in quote
    assert 'id="quote-total"><strong>€30.75' in quote and "VAT 23 %" in quote


def test_a_checkout_waiting_for_payment_is_in_words_and_an_abandoned_one_leaves_the_project_page(
    shop, db: Session
) -> None:
    pay_url = order(shop, 12)
    placed = db.exec(select(Order).order_by(col(Order.id).desc())).first()
    assert pay_url and placed is not None
    project_page = f"/projects/{shop.project.id}"
    page = shop.client.get(project_page).get_data(as_text=True)
    assert "awaiting_payment" not in re.sub(r"<[^>]*>", " ", page)  # no raw state where people read
    assert ">awaiting payment</span>" in page and "the hours appear once the payment arrives" in page
    order_page = shop.client.get(f"/market/orders/{placed.id}").get_data(as_text=True)
    assert "Cancel the order" in order_page  # inside the part that turns paid (htmx), so it leaves with it
    assert 'id="order-state"' in order_page.split("Cancel the order")[0]

    cancelled = post_form(shop.client, f"/market/orders/{placed.id}/cancel", page=f"/market/orders/{placed.id}")
    assert cancelled.status_code in (302, 303), cancelled.get_data(as_text=True)
    page = shop.client.get(project_page).get_data(as_text=True)
    assert "awaiting payment" not in page and "This project has no allocation yet." in page


def test_the_first_visit_tells_each_kind_of_visitor_their_path(app: Flask) -> None:
    with app.test_request_context("/"):
        page = html.unescape(render_template("_first_visit.html"))
    for kind, button, target in (
        ("startup", "Buy GPU hours", "/market"),
        ("academic", "See the open calls", "/calls"),
        ("student", "Join a course", "/courses/join"),
        ("teacher", "Create a course", "/courses/new"),
    ):
        part = page.split(f'id="path-{kind}"')[1].split("</li>")[0]
        assert part.count('class="button"') == 1 and f'href="{target}">{button}</a>' in part, kind
        assert part.count("<p>") == 2  # one sentence, one button


def test_the_project_allocations_add_up_and_tell_alike_allocations_apart(
    app: Flask, db: Session, world: World, cpu: Resource, login
) -> None:
    browser = app.test_client()
    member = login(browser, given_name="Ilze")
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    running = open_now(db, world.project, cpu, 10, days=30)
    teaching = open_now(db, world.project, cpu, 10, days=30)  # the same title: "cpu award"
    ledger.charge_usage(db, running.id, 60, idempotency_key="a-minute")  # at this rate it lasts for years
    now = utcnow()
    classroom.create_course(
        db,
        app.extensions["portal.settings"],
        world.pi,
        parent_allocation_id=teaching.id,
        title="Parallel Python",
        starts_at=now,
        ends_at=now + timedelta(days=14),
        student_cap=3 * HOUR,
        max_seats=2,
        profiles=["cpu"],
    )

    page = browser.get(f"/projects/{world.project.id}").get_data(as_text=True)
    rows = {
        allocation.id: page.split(f'/allocations/{allocation.id}"')[1].split("</tr>")[0]
        for allocation in (running, teaching)
    }
    for allocation in (running, teaching):
        assert f"· #{allocation.id}</span>" in rows[allocation.id]  # told apart beside the shared name
    # Running for years at this rate, but the allocation ends in 30 days: no date past its end.
    runs_out = rows[running.id].split('data-label="Runs out">')[1].split("</td>")[0]
    assert runs_out == "not before it ends"
    # 10 granted = 0 used + 6 shared with the course + 4 remaining.
    cells = re.findall(r'data-label="(Granted|Used|Shared or moved|Remaining)">([^<]*)', rows[teaching.id])
    assert [(label, text.strip()) for label, text in cells] == [
        ("Granted", "10.0 core-hours"),
        ("Used", "0.0 core-hours"),
        ("Shared or moved", "6.0 core-hours"),
        ("Remaining", "4.0 core-hours"),
    ]


def test_join_and_start_joins_even_when_the_notebook_cannot_start_and_says_why(
    app: Flask, db: Session, world: World, cpu: Resource, login
) -> None:
    teaching = open_now(db, world.project, cpu, 10, days=30)
    now = utcnow()
    course = classroom.create_course(
        db,
        app.extensions["portal.settings"],
        world.pi,
        parent_allocation_id=teaching.id,
        title="Parallel Python",
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=14),
        student_cap=3 * HOUR,
        max_seats=2,
        profiles=["cpu"],
    )
    student = app.test_client()
    login(student, given_name="Sten")
    join_page = f"/courses/join?code={course.join_code}"
    assert "Join and start a notebook" in student.get(join_page).get_data(as_text=True)

    # No hub answers in this test: the seat is taken, and the course page says why no notebook started.
    joined = post_form(student, "/courses/join", {"code": course.join_code, "start": "1"}, page=join_page)
    assert joined.status_code == 302 and joined.headers["Location"].endswith(f"/courses/{course.id}")
    page = html.unescape(student.get(f"/courses/{course.id}").get_data(as_text=True))
    assert "You joined the course." in page and "The notebook service is not reachable right now" in page
