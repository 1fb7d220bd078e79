"""What project members and factory staff see and do on the allocation pages."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import select

from portal.db import utcnow
from portal.identity.models import FactoryRole
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.ledger import statements
from portal.ledger.models import Allocation, CapacityPeriod, LedgerEntry
from portal.ledger.services import UsageCharge
from portal.projects import services as projects
from tests.conftest import post_form
from tests.factories import open_allocation, plan_capacity_around_now
from tests.ledger_world import HOUR, make_world, open_q1


@pytest.fixture
def pi_world(client, login, db):
    """A logged-in PI whose project has two allocations."""
    pi = login(client)
    world = make_world(db)
    org = projects.create_organisation(db, pi, name="Riga Uni", kind="university", country="LV")
    project = projects.create_project(db, pi, org, title="Latvian LLM")
    first = open_q1(db, world, 100, project=project, title="Main award")
    second = open_q1(db, world, 20, project=project, title="Pilot")
    return world, project, first, second, pi


def text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(as_text=True))


def test_the_project_page_shows_each_allocation_with_its_balance(client, pi_world, db):
    _world, project, first, _second, _pi = pi_world
    for i in range(3):
        ledger.charge_usage(db, first.id, 2 * HOUR, idempotency_key=f"page-job-{i}")
    page = text(client.get(f"/projects/{project.id}"))
    assert "Main award" in page and "Pilot" in page
    assert "100.0 GPU-hours" in page  # granted
    assert '6.0 GPU-hours <span class="hint">(6 %)' in page  # used
    assert "94.0 GPU-hours" in page  # remaining
    assert "0.9 GPU-hours" in page  # burn rate: 6 hours over the last 7 days


def test_the_allocation_page_has_the_ledger_and_the_usage_series(client, pi_world, db):
    _world, project, first, _second, _pi = pi_world
    ledger.charge_usage(db, first.id, 3 * HOUR, idempotency_key="series-job")
    response = client.get(f"/projects/{project.id}/allocations/{first.id}")
    assert response.status_code == 200
    page = text(response)
    assert "Slurm" not in page  # a plain charge has no reason text
    assert "-3.00 GPU-hours" in page and "97.00 GPU-hours" in page
    data = json.loads(
        re.search(
            r'<script type="application/json" id="usage-data">(.*?)</script>', response.get_data(as_text=True), re.S
        ).group(1)
    )
    assert (data["unit"] == "GPU-hours" and data["used"] == []) or data["used"][-1] == 3.0


def test_older_ledger_entries_load_page_by_page(client, pi_world, db):
    _world, project, first, _second, _pi = pi_world
    for i in range(60):
        ledger.charge_usage(db, first.id, 60, idempotency_key=f"many-{i}")
    page = client.get(f"/projects/{project.id}/allocations/{first.id}").get_data(as_text=True)
    assert page.count("<td>usage</td>") == 50
    link = re.search(r'hx-get="([^"]+entries\?before=\d+)"', page).group(1).replace("&amp;", "&")
    older = client.get(link, headers={"HX-Request": "true"}).get_data(as_text=True)
    assert older.count("<td>usage</td>") == 10 and "<td>award</td>" in older
    assert "Show older entries" not in older
    # followed as a plain link (no JavaScript, a new tab): the allocation's whole page, from those entries on
    whole = client.get(link).get_data(as_text=True)
    assert whole.startswith("<!doctype html>") and '<html lang="en">' in whole
    assert whole.count("<td>usage</td>") == 10 and "<td>award</td>" in whole


def test_the_allocation_page_costs_the_same_queries_however_long_the_ledger(client, pi_world, db, app):
    _world, project, first, second, _pi = pi_world
    for i in range(300):
        ledger.charge_usage(db, first.id, 60, idempotency_key=f"long-{i}")
    engine = app.extensions["portal.engine"]
    counts = []

    def count(*_args):
        counts[-1] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        for allocation in (second, first):  # 1 entry, then 301 entries
            counts.append(0)
            assert client.get(f"/projects/{project.id}/allocations/{allocation.id}").status_code == 200
            counts.append(0)
            assert client.get(f"/projects/{project.id}").status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    short_page, short_project, long_page, long_project = counts
    assert long_page == short_page
    assert long_project == short_project


def test_a_pi_moves_hours_between_allocations_and_gives_some_back(client, pi_world, db):
    _world, project, first, second, _pi = pi_world
    response = post_form(
        client,
        f"/projects/{project.id}/allocations/transfer",
        {"from_id": first.id, "to_id": second.id, "hours": "12.5"},
        page=f"/projects/{project.id}",
    )
    assert response.status_code == 302
    response = post_form(
        client,
        f"/projects/{project.id}/allocations/{second.id}/release",
        {"hours": "2.5"},
        page=f"/projects/{project.id}/allocations/{second.id}",
    )
    assert response.status_code == 302
    db.expire_all()
    assert db.get(Allocation, first.id).balance == int(87.5 * HOUR)
    assert db.get(Allocation, second.id).balance == 30 * HOUR
    assert ledger.balance_mismatches(db) == []


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ("lots", "Enter a number"),
        ("-3", "Must be more than zero"),
        ("1.001", "at most two decimals"),
        ("500", "has 100.0 GPU-hours left"),
    ],
)
def test_a_bad_transfer_says_why_and_changes_nothing(client, pi_world, db, hours, message):
    _world, project, first, second, _pi = pi_world
    before = len(db.exec(select(LedgerEntry)).all())
    response = post_form(
        client,
        f"/projects/{project.id}/allocations/transfer",
        {"from_id": first.id, "to_id": second.id, "hours": hours},
        page=f"/projects/{project.id}",
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert message.lower() in text(response).lower()
    assert len(db.exec(select(LedgerEntry)).all()) == before


def test_a_plain_member_sees_allocations_but_cannot_move_hours(app, pi_world, db, login, settings):
    _world, project, first, _second, pi = pi_world
    member_client = app.test_client()
    member = login(member_client)
    _inv, link = projects.invite_member(db, settings, pi, project, email=member.email or "", role="member")
    projects.accept_invitation(db, member, link.rsplit("/", 1)[1])
    assert member_client.get(f"/projects/{project.id}/allocations/{first.id}").status_code == 200
    response = post_form(
        member_client,
        f"/projects/{project.id}/allocations/{first.id}/release",
        {"hours": "1"},
        page=f"/projects/{project.id}",
        follow_redirects=True,
    )
    assert "not allowed" in text(response)
    db.refresh(first)
    assert first.balance == 100 * HOUR


def test_admins_plan_capacity_from_gpus_and_utilisation(client, login, db, app):
    admin = login(client)
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    world = make_world(db)
    response = post_form(
        client,
        "/admin/capacity",
        {
            "resource_id": world.gpu.id,
            "quarter_start": "2030-08-15",
            "units": "64",
            "utilisation": "75",
            "capacity": "",
            "reason": "Riga's new GPU racks are in service",
        },
        page="/admin/capacity",
    )
    assert response.status_code == 302
    period = db.exec(
        select(CapacityPeriod)
        .where(CapacityPeriod.resource_id == world.gpu.id)
        .order_by(CapacityPeriod.starts_on.desc())
    ).first()
    assert (str(period.starts_on), str(period.ends_on)) == ("2030-07-01", "2030-10-01")
    assert period.capacity == 64 * 92 * 86_400 * 75 // 100


def test_capacity_below_what_is_reserved_is_refused_on_the_page(client, login, db):
    admin = login(client)
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    world = make_world(db)
    open_q1(db, world, 600)
    response = post_form(
        client,
        "/admin/capacity",
        {
            "resource_id": world.gpu.id,
            "quarter_start": "2030-02-01",
            "capacity": "100",
            "reason": "Half the nodes fail",
        },
        page="/admin/capacity",
    )
    assert response.status_code == 409
    assert "already reserved" in text(response)


def test_people_without_a_factory_role_cannot_plan_capacity_or_open_allocations(client, login):
    login(client)
    assert client.get("/admin/capacity").status_code == 403
    assert client.get("/admin/allocations/new").status_code == 403


def test_an_admin_opens_an_allocation_by_hand_with_a_reason(client, login, db):
    admin = login(client)
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    world = make_world(db)
    response = post_form(
        client,
        "/admin/allocations/new",
        {
            "project_id": world.project.id,
            "resource_id": world.gpu.id,
            "title": "Pilot",
            "hours": "40",
            "starts_on": "2030-01-01",
            "ends_on": "2030-02-01",
            "reason": "Pilot agreed with the Riga centre",
        },
        page="/admin/allocations/new",
    )
    assert response.status_code == 302
    allocation = db.exec(select(Allocation).where(Allocation.project_id == world.project.id)).one()
    assert (allocation.balance, allocation.source) == (40 * HOUR, "admin")
    entry = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == allocation.id)).one()
    assert (entry.actor_id, entry.reason) == (admin.id, "Pilot agreed with the Riga centre")


def test_an_overbooking_factor_lets_the_site_book_beyond_capacity(client, login, db):
    admin = login(client)
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    world = make_world(db)
    open_q1(db, world, 1000)
    with pytest.raises(ledger.CapacityExhausted):
        open_q1(db, world, 50, project=world.other_project)
    response = post_form(
        client,
        "/admin/capacity/overbooking",
        {"resource_id": world.gpu.id, "factor": "1.05", "reason": "Jobs finish early on average"},
        page="/admin/capacity",
        follow_redirects=True,
    )
    assert "may now be booked to 1.050× its capacity" in text(response)
    open_q1(db, world, 50, project=world.other_project)
    response = post_form(
        client,
        "/admin/capacity/overbooking",
        {"resource_id": world.gpu.id, "factor": "1.0", "reason": "No more overbooking"},
        page="/admin/capacity",
        follow_redirects=True,
    )
    assert "already has more reserved than that factor allows" in text(response)


@pytest.mark.parametrize("began, ends", [(None, None), (-60, -30), (-5, 60)], ids=["future", "ended", "current"])
def test_the_allocation_pages_one_read_of_daily_usage_gives_the_statement_and_series_of_two(pi_world, db, began, ends):
    world, project, first, _second, pi = pi_world
    plan_capacity_around_now(db, world.gpu, 10_000 * HOUR)
    now = utcnow()
    allocation = (
        first  # the first quarter of 2030
        if began is None
        else open_allocation(
            db, project, world.gpu, 50 * HOUR, now + timedelta(days=began), now + timedelta(days=ends), "Held"
        )
    )
    today = now.date()
    days = [allocation.starts_at.date() + timedelta(days=n) for n in (0, 1, 40)] + [
        today - timedelta(days=n) for n in (0, 3, 6, 7, 12)
    ]
    ledger.charge_usage_batch(
        db, [UsageCharge(allocation.id, (n + 1) * 600, f"day-{began}-{n}", day=day) for n, day in enumerate(days)]
    )
    statement, series = statements.statement_with_series(db, pi, project, allocation.id)
    apart = statements.get_statement(db, pi, project, allocation.id)
    assert series == statements.usage_series(db, apart)
    assert (statement.burn_per_day, statement.projected_exhaustion) == (apart.burn_per_day, apart.projected_exhaustion)
    assert statement.burn_per_day > 0
    assert (sum(amount for _day, amount in series) > 0) == (began is not None)  # a future one has no series yet
