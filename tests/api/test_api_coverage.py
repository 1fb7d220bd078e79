"""The JSON API's user side: allocations, notebooks, orders and invoices, calls and applications, courses and
the inbox, each read and written with personal API tokens through the same services as the pages."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal.classroom import services as classroom
from portal.compute.services import check_spawn, hub_username
from portal.config import Settings
from portal.grants import services as grants
from portal.grants.models import ReviewMode
from portal.identity.models import User
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, ResourceKind
from portal.market.models import Invoice, Order
from portal.notebook_models import NotebookSession
from portal.notifications.services import notify
from portal.projects import services as projects
from tests.api.test_api import assert_problem, bearer
from tests.classroom.test_classroom import enrol, run_for, spawn_as
from tests.factories import login_of, make_grant_world, open_now, plan_capacity_around_now
from tests.ledger_world import HOUR, World, make_world, person
from tests.market.test_market import WEBHOOK_SECRET, _completed, _signed, order, shop  # noqa: F401  (shop: a fixture)


def token_of(db: Session, user: User, *scopes: str) -> dict[str, str]:
    _row, plain = create_api_token(db, user, name="script", scopes=list(scopes or ("read", "write")), ttl_days=30)
    return bearer(plain)


def walk(client: FlaskClient, url: str, headers: dict[str, str], items: str) -> list[dict[str, Any]]:
    """Every item of a paged list, following `next` to the last page."""
    found: list[dict[str, Any]] = []
    pages = 0
    while url:
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        found += response.json[items]
        url = response.json["next"]
        pages += 1
        assert pages < 100
    return found


# --- allocations ----------------------------------------------------------------------------------------------


@pytest.fixture
def world(db: Session) -> World:
    world = make_world(db)
    plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
    return world


def test_a_member_reads_balance_burn_rate_projection_and_the_daily_usage_of_an_allocation(
    client: FlaskClient, db: Session, world: World
) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    ledger.charge_usage(db, allocation.id, 14 * HOUR, idempotency_key="use-1")
    headers = token_of(db, world.pi, "read")

    detail = client.get(f"/api/v1/allocations/{allocation.id}", headers=headers)
    assert detail.status_code == 200, detail.get_data(as_text=True)
    body = detail.json
    assert body["balance"] == 86 * HOUR and body["used"] == 14 * HOUR and body["credited"] == 100 * HOUR
    assert body["remaining"] == 86 * HOUR and body["percent_used"] == 14
    assert body["burn_per_day"] == 2 * HOUR  # 14 hours over the 7-day window
    today = allocation.starts_at.date() + timedelta(days=1)
    assert body["projected_exhaustion"] == (today + timedelta(days=43)).isoformat()
    assert body["resource"]["base_unit"] == "GPU-second" and body["resource"]["per_display_unit"] == 3600

    usage = client.get(f"/api/v1/allocations/{allocation.id}/usage", headers=headers)
    assert usage.status_code == 200
    assert [d["amount"] for d in usage.json["days"]] == [0, 14 * HOUR]
    assert usage.json["days"][-1]["day"] == today.isoformat()


def test_the_allocation_list_holds_only_the_callers_projects_page_by_page(
    client: FlaskClient, db: Session, world: World
) -> None:
    mine = [open_now(db, world.project, world.gpu, 10 + i) for i in range(5)]
    second = projects.create_project(db, world.pi, projects.organisations_of(db, world.pi)[0][0], title="Second")
    also_mine = open_now(db, second, world.gpu, 3)
    theirs = open_now(db, world.other_project, world.gpu, 7)
    headers = token_of(db, world.pi, "read")

    listed = walk(client, "/api/v1/allocations?size=2", headers, "allocations")
    assert [a["id"] for a in listed] == [a.id for a in [*mine, also_mine]]
    assert theirs.id not in {a["id"] for a in listed}

    only_second = client.get(f"/api/v1/allocations?project_id={second.id}", headers=headers)
    assert [a["id"] for a in only_second.json["allocations"]] == [also_mine.id]

    assert client.get(f"/api/v1/allocations?project_id={world.other_project.id}", headers=headers).status_code in (
        403,
        404,
    )
    assert_problem(client.get("/api/v1/allocations?cursor=bm90LWEtY3Vyc29y", headers=headers), 400)
    assert_problem(client.get("/api/v1/allocations?size=0", headers=headers), 422)
    assert_problem(client.get("/api/v1/allocations?project_id=abc", headers=headers), 422)


def test_another_projects_member_gets_no_allocation_data(client: FlaskClient, db: Session, world: World) -> None:
    theirs = open_now(db, world.other_project, world.gpu, 7)
    headers = token_of(db, world.pi, "read")
    for path in ("", "/entries", "/usage"):
        response = client.get(f"/api/v1/allocations/{theirs.id}{path}", headers=headers)
        body = assert_problem(response, 404)
        assert "balance" not in body and "entries" not in body
    assert_problem(client.get("/api/v1/allocations/999999999", headers=headers), 404)
    assert_problem(client.get(f"/api/v1/allocations/{theirs.id}"), 401)


def test_ledger_entries_are_walked_oldest_first_and_a_new_entry_shows_on_the_last_page(
    client: FlaskClient, db: Session, world: World
) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    for i in range(6):
        ledger.charge_usage(db, allocation.id, (i + 1) * 60, idempotency_key=f"walk-{i}")
    headers = token_of(db, world.pi, "read")

    entries = walk(client, f"/api/v1/allocations/{allocation.id}/entries?size=3", headers, "entries")
    assert [e["kind"] for e in entries] == ["award"] + ["usage"] * 6
    assert [e["amount"] for e in entries[1:]] == [-60 * (i + 1) for i in range(6)]
    assert entries[-1]["balance_after"] == 100 * HOUR - 60 * 21
    assert [e["id"] for e in entries] == sorted(e["id"] for e in entries)

    url = f"/api/v1/allocations/{allocation.id}/entries?size=3"
    second = client.get(url, headers=headers).json["next_cursor"]
    last_cursor = client.get(f"{url}&cursor={second}", headers=headers).json["next_cursor"]
    last = client.get(f"{url}&cursor={last_cursor}", headers=headers).json
    assert len(last["entries"]) == 1 and last["next_cursor"] is None
    ledger.charge_usage(db, allocation.id, 60, idempotency_key="walk-later")
    later = client.get(f"{url}&cursor={last_cursor}", headers=headers).json["entries"]
    assert [e["id"] for e in later][:1] == [entries[-1]["id"]] and later[-1]["amount"] == -60

    bad = client.get(f"/api/v1/allocations/{allocation.id}/entries?cursor=%%%", headers=headers)
    assert_problem(bad, 400)
    assert_problem(client.get(f"/api/v1/allocations/{allocation.id}/entries?size=1000", headers=headers), 422)


def test_an_unchanged_allocation_or_entries_page_answers_304_and_a_charge_changes_the_etag(
    client: FlaskClient, db: Session, world: World
) -> None:
    allocation = open_now(db, world.project, world.gpu, 100)
    headers = token_of(db, world.pi, "read")
    for path in (f"/api/v1/allocations/{allocation.id}", f"/api/v1/allocations/{allocation.id}/entries"):
        first = client.get(path, headers=headers)
        etag = first.headers["ETag"]
        assert first.status_code == 200 and etag
        again = client.get(path, headers={**headers, "If-None-Match": etag})
        assert again.status_code == 304 and again.get_data() == b"" and again.headers["ETag"] == etag
        assert client.get(path, headers={**headers, "If-None-Match": '"stale"'}).status_code == 200

    detail_etag = client.get(f"/api/v1/allocations/{allocation.id}", headers=headers).headers["ETag"]
    entries_etag = client.get(f"/api/v1/allocations/{allocation.id}/entries", headers=headers).headers["ETag"]
    ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="etag-1")
    changed = client.get(f"/api/v1/allocations/{allocation.id}", headers={**headers, "If-None-Match": detail_etag})
    assert changed.status_code == 200 and changed.json["used"] == HOUR
    more = client.get(
        f"/api/v1/allocations/{allocation.id}/entries", headers={**headers, "If-None-Match": entries_etag}
    )
    assert more.status_code == 200 and len(more.json["entries"]) == 2


# --- notebooks ------------------------------------------------------------------------------------------------


@pytest.fixture
def cpu_world(db: Session, world: World) -> tuple[World, Allocation]:
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    return world, open_now(db, world.project, cpu, 100)


def spawned(db: Session, settings: Settings, user: User, allocation: Allocation, server: str) -> NotebookSession:
    """A notebook the hub's spawn check accepted (the hub asks it before every start)."""
    options = {"allocation": allocation.id, "profile": "cpu", "hours": 1}
    return check_spawn(db, settings, hub_username(user), server, options).session


def test_my_notebooks_are_listed_newest_first_and_another_users_are_not_found(
    client: FlaskClient, db: Session, settings: Settings, cpu_world: tuple[World, Allocation]
) -> None:
    world, allocation = cpu_world
    sessions = [spawned(db, settings, world.pi, allocation, f"a{allocation.id}-{i}") for i in range(1, 4)]
    headers = token_of(db, world.pi)

    listed = walk(client, "/api/v1/notebooks?size=2", headers, "notebooks")
    assert [n["id"] for n in listed] == [s.id for s in reversed(sessions)]
    assert all(n["running"] and n["profile"] == "cpu" for n in listed)
    assert client.get("/api/v1/notebooks?running=false", headers=headers).json["notebooks"] == []

    detail = client.get(f"/api/v1/notebooks/{sessions[0].id}", headers=headers)
    assert detail.status_code == 200
    assert detail.json["state"] == "unknown"  # no hub answers in this test: said so, never guessed
    assert detail.json["allocation_id"] == allocation.id and detail.json["max_seconds"] == HOUR

    other = token_of(db, world.other_pi)
    assert client.get("/api/v1/notebooks", headers=other).json["notebooks"] == []
    assert_problem(client.get(f"/api/v1/notebooks/{sessions[0].id}", headers=other), 404)
    assert_problem(client.post(f"/api/v1/notebooks/{sessions[0].id}/stop", json={}, headers=other), 404)
    assert_problem(client.get("/api/v1/notebooks?cursor=xyz", headers=headers), 400)


def test_launching_checks_the_allocation_profile_and_hours_as_the_page_does(
    client: FlaskClient, db: Session, cpu_world: tuple[World, Allocation]
) -> None:
    world, allocation = cpu_world
    theirs = open_now(db, world.other_project, world.gpu, 5)
    headers = token_of(db, world.pi)
    launch = {"allocation_id": allocation.id, "profile": "cpu", "hours": 1}

    assert_problem(client.post("/api/v1/notebooks", json={**launch, "allocation_id": theirs.id}, headers=headers), 404)
    unknown = assert_problem(client.post("/api/v1/notebooks", json={**launch, "profile": "huge"}, headers=headers), 422)
    assert unknown["errors"] == {"profile": "unknown profile"}
    assert_problem(client.post("/api/v1/notebooks", json={**launch, "hours": 0}, headers=headers), 422)
    assert_problem(client.post("/api/v1/notebooks", json={**launch, "hours": "many"}, headers=headers), 422)
    assert_problem(client.post("/api/v1/notebooks", data="allocation_id=1", headers=headers), 422)
    assert_problem(client.post("/api/v1/notebooks", json=launch, headers=token_of(db, world.pi, "read")), 403)
    # every check passed: the portal asks the hub, which is not running here
    down = client.post("/api/v1/notebooks", json=launch, headers=headers)
    assert_problem(down, 503)
    assert down.headers["Retry-After"] == "60"
    assert db.exec(select(NotebookSession).where(NotebookSession.user_id == world.pi.id)).all() == []


def test_stopping_needs_the_hub_and_says_so_when_it_is_down(
    client: FlaskClient, db: Session, settings: Settings, cpu_world: tuple[World, Allocation]
) -> None:
    world, allocation = cpu_world
    session = spawned(db, settings, world.pi, allocation, f"a{allocation.id}-1")
    response = client.post(f"/api/v1/notebooks/{session.id}/stop", json={}, headers=token_of(db, world.pi))
    assert_problem(response, 503)
    db.expire_all()
    assert db.get(NotebookSession, session.id).stopped_at is None  # nothing charged or closed half-way


@pytest.fixture
def hub_stack(make_settings, tmp_path: Path):
    """The portal served over HTTP and a real JupyterHub against it (``tests/compute/test_notebooks.py``'s stack)."""
    pytest.importorskip("jupyterhub", reason="needs the [hub] extra")
    from portal_standin.devstack import free_port

    from tests.compute import test_notebooks as notebooks

    with notebooks.running_stack(notebooks.hub_settings(make_settings, free_port()), tmp_path / "hub") as running:
        yield running


@pytest.mark.hub
def test_a_notebook_launched_through_the_api_runs_at_the_hub_and_stops_charged(hub_stack) -> None:
    from tests.compute.test_hub import wait_for

    client = hub_stack.app.test_client()
    with Session(hub_stack.app.extensions["portal.engine"], expire_on_commit=False) as db:
        world = make_world(db)
        cpu = ledger.create_resource(
            db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
        )
        plan_capacity_around_now(db, cpu, 100_000 * HOUR)
        allocation = open_now(db, world.project, cpu, 10)
        headers = token_of(db, world.pi)

        launched = client.post(
            "/api/v1/notebooks", json={"allocation_id": allocation.id, "profile": "cpu", "hours": 1}, headers=headers
        )
        assert launched.status_code == 201, launched.get_data(as_text=True)
        assert launched.json["state"] in ("starting", "ready") and launched.json["max_seconds"] == HOUR
        location = launched.headers["Location"]
        assert location.endswith(f"/api/v1/notebooks/{launched.json['id']}")
        wait_for(
            lambda: client.get(location, headers=headers).json["state"] == "ready", timeout=60, what="a ready server"
        )

        stopped = client.post(f"{location}/stop", json={}, headers=headers)
        assert stopped.status_code == 200, stopped.get_data(as_text=True)
        assert stopped.json["state"] == "stopped" and stopped.json["stop_reason"] == "stopped by user"
        again = client.post(f"{location}/stop", json={}, headers=headers)
        assert again.status_code == 200 and again.json["stopped_at"] == stopped.json["stopped_at"]
        assert client.get("/api/v1/notebooks?running=true", headers=headers).json["notebooks"] == []
        db.expire_all()
        assert db.get(Allocation, allocation.id).used == stopped.json["charged_seconds"] * 2  # the profile's 2 cores


# --- orders and invoices --------------------------------------------------------------------------------------


def test_billing_members_list_orders_and_invoices_and_download_the_pdf(shop, db: Session) -> None:  # noqa: F811
    for quantity in (2, 3, 4):
        order(shop, quantity)
    placed = db.exec(select(Order).where(Order.project_id == shop.project.id).order_by(Order.id)).all()
    client = shop.app.test_client()
    for found in placed[:2]:
        payload, signature = _signed(
            _completed(found.id, found.checkout_session_id, f"evt_api_{found.id}", found.gross_cents)
        )
        paid = client.post("/market/stripe/webhook", data=payload, headers={"Stripe-Signature": signature})
        assert paid.json["outcome"] == "fulfilled", paid.json
    headers = token_of(db, shop.buyer, "read")

    orders = walk(client, "/api/v1/orders?size=2", headers, "orders")
    assert [o["id"] for o in orders] == [o.id for o in reversed(placed)]
    assert [o["state"] for o in orders] == ["pending", "paid", "paid"]
    assert orders[1]["gross_cents"] == placed[1].gross_cents and orders[1]["currency"] == "EUR"

    invoices = walk(client, f"/api/v1/invoices?size=1&organisation_id={shop.org.id}", headers, "invoices")
    assert [i["order_id"] for i in invoices] == [placed[1].id, placed[0].id]
    stored = db.get(Invoice, invoices[0]["id"])
    pdf = client.get(invoices[0]["pdf"], headers=headers)
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf" and pdf.data.startswith(b"%PDF")
    assert stored.reference in pdf.headers["Content-Disposition"]

    stranger = person(db, "Stranger")
    theirs = token_of(db, stranger, "read")
    assert client.get("/api/v1/orders", headers=theirs).json["orders"] == []
    assert client.get("/api/v1/invoices", headers=theirs).json["invoices"] == []
    assert_problem(client.get(f"/api/v1/orders?organisation_id={shop.org.id}", headers=theirs), 404)
    assert_problem(client.get(invoices[0]["pdf"], headers=theirs), 404)
    assert_problem(client.get("/api/v1/invoices/999999999/pdf", headers=headers), 404)
    assert_problem(client.get("/api/v1/invoices?cursor=WzFd", headers=headers), 400)


# --- calls and applications -----------------------------------------------------------------------------------


def test_the_pi_reads_open_calls_fills_in_a_draft_and_reads_the_decision(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    g = make_grant_world(db, mode=ReviewMode.AUTOMATIC)
    headers = token_of(db, g.pi)

    calls = client.get("/api/v1/calls", headers=headers)
    assert calls.status_code == 200
    listed = {c["id"]: c for c in calls.json["calls"]}
    assert listed[g.call.id]["resources"][0]["resource_id"] == g.ledger.gpu.id
    assert {q["key"] for q in listed[g.call.id]["questions"]} >= {"software", "nodes"}

    # a token made outside a login carries no level of assurance: the PI's steps that need one are refused, saying why
    refused = client.post(
        "/api/v1/applications", json={"call_id": g.call.id, "project_id": g.project.id, "title": "T"}, headers=headers
    )
    assert assert_problem(refused, 409)["type"].endswith("not-eligible")

    draft = grants.start_application(db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="Draft")
    update = {
        "abstract": "Train ASR models.",
        "answers": {"software": "PyTorch", "nodes": "8"},
        "requests": [{"resource_id": g.ledger.gpu.id, "amount": 200 * HOUR, "justification": "3 models"}],
    }
    saved = client.patch(f"/api/v1/applications/{draft.id}", json=update, headers=headers)
    assert saved.status_code == 200, saved.get_data(as_text=True)
    assert saved.json["answers"]["software"] == "PyTorch" and saved.json["requests"][0]["requested"] == 200 * HOUR
    bad = client.patch(f"/api/v1/applications/{draft.id}", json={"answers": {"nodes": "many"}}, headers=headers)
    assert "answers.nodes" in assert_problem(bad, 422)["errors"]
    assert_problem(client.patch(f"/api/v1/applications/{draft.id}", json={"title": 5}, headers=headers), 422)
    assert_problem(client.post(f"/api/v1/applications/{draft.id}/submit", json={}, headers=headers), 409)

    db.refresh(draft)
    grants.submit(db, settings, g.pi, login_of(g.pi), draft)  # in the browser; the call decides at once
    mine = client.get("/api/v1/applications", headers=headers).json["applications"]
    assert [(a["id"], a["state"]) for a in mine] == [(draft.id, "accepted")]
    decided = client.get(f"/api/v1/applications/{draft.id}", headers=headers).json
    assert decided["decided_at"] and decided["awards"][0]["amount"] == 200 * HOUR
    assert decided["awards"][0]["allocation_id"] is not None
    assert_problem(client.patch(f"/api/v1/applications/{draft.id}", json={"title": "Late"}, headers=headers), 409)

    other = token_of(db, g.ledger.other_pi)
    assert_problem(client.get(f"/api/v1/applications/{draft.id}", headers=other), 404)
    assert_problem(client.patch(f"/api/v1/applications/{draft.id}", json={"title": "Mine"}, headers=other), 404)
    assert client.get("/api/v1/applications", headers=other).json["applications"] == []
    assert_problem(client.patch("/api/v1/applications/999999999", json={"title": "x"}, headers=headers), 404)


# --- courses ----------------------------------------------------------------------------------------------------


def test_a_teacher_reads_seats_and_use_and_a_student_only_their_own_seat(
    client: FlaskClient, db: Session, settings: Settings, cpu_world: tuple[World, Allocation]
) -> None:
    world, parent = cpu_world
    now = parent.starts_at + timedelta(days=1)
    course = classroom.create_course(
        db,
        settings,
        world.pi,
        parent_allocation_id=parent.id,
        title="Intro to Dask",
        starts_at=now - timedelta(hours=1),
        ends_at=now + timedelta(days=20),
        student_cap=10 * HOUR,
        max_seats=3,
        profiles=["cpu"],
    )
    student, _seat = enrol(db, course, "Student")
    run_for(db, spawn_as(db, settings, student, course).session, HOUR)  # the metering's charge of an hour

    teacher = token_of(db, world.pi, "read")
    mine = client.get("/api/v1/courses", headers=teacher).json
    assert [c["id"] for c in mine["teaching"]] == [course.id] and mine["attending"] == []
    seats = client.get(f"/api/v1/courses/{course.id}/seats", headers=teacher)
    assert seats.status_code == 200
    assert seats.json["seats"][0]["student_id"] == student.id
    used = settings.notebook_profile("cpu").cpus * HOUR  # an hour on the profile's cores
    assert seats.json["seats"][0]["used"] == used and seats.json["used"] == used
    assert seats.json["seats"][0]["remaining"] == 10 * HOUR - used and seats.json["seats"][0]["status"] == "active"

    as_student = token_of(db, student, "read")
    attending = client.get("/api/v1/courses", headers=as_student).json["attending"]
    assert attending[0]["id"] == course.id and attending[0]["seat"]["cap"] == 10 * HOUR
    assert_problem(client.get(f"/api/v1/courses/{course.id}/seats", headers=as_student), 403)
    assert_problem(client.get(f"/api/v1/courses/{course.id}/seats", headers=token_of(db, world.other_pi)), 404)
    assert_problem(client.get("/api/v1/courses/999999999/seats", headers=teacher), 404)


# --- notifications ----------------------------------------------------------------------------------------------


def test_the_inbox_is_paged_newest_first_and_a_notice_is_marked_read_once(
    client: FlaskClient, db: Session, settings: Settings
) -> None:
    user, other = person(db, "Reader"), person(db, "Other")
    for i in range(5):
        notify(db, settings, user, subject=f"Notice {i}", body="Body", link="/inbox")
    notify(db, settings, other, subject="Not yours", body="Body")
    db.commit()
    headers = token_of(db, user)

    notices = walk(client, "/api/v1/notifications?size=2", headers, "notifications")
    assert [n["subject"] for n in notices] == [f"Notice {i}" for i in reversed(range(5))]
    first = client.get("/api/v1/notifications?size=2", headers=headers).json
    assert first["unread_count"] == 5

    read = client.post(f"/api/v1/notifications/{notices[0]['id']}/read", json={}, headers=headers)
    assert read.status_code == 200 and read.json["read_at"]
    again = client.post(f"/api/v1/notifications/{notices[0]['id']}/read", json={}, headers=headers)
    assert again.json["read_at"] == read.json["read_at"]
    unread = client.get("/api/v1/notifications?unread=true", headers=headers).json
    assert unread["unread_count"] == 4 and len(unread["notifications"]) == 4

    assert_problem(
        client.post(f"/api/v1/notifications/{notices[0]['id']}/read", json={}, headers=token_of(db, other)), 404
    )
    assert_problem(client.post(f"/api/v1/notifications/{notices[1]['id']}/read", headers=headers), 422)
    assert_problem(client.get("/api/v1/notifications?unread=perhaps", headers=headers), 422)


# --- the OpenAPI document -----------------------------------------------------------------------------------------


def test_the_openapi_document_names_each_operation_its_scope_pdf_and_etag(client: FlaskClient) -> None:
    document = client.get("/api/v1/openapi.json").json
    operations = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}
    expected = {
        "list_allocations",
        "get_allocation",
        "list_allocation_entries",
        "get_allocation_usage",
        "list_notebooks",
        "launch_notebook",
        "get_notebook",
        "stop_notebook",
        "list_orders",
        "list_invoices",
        "get_invoice_pdf",
        "list_calls",
        "list_applications",
        "get_application",
        "create_application",
        "update_application",
        "submit_application",
        "list_courses",
        "list_course_seats",
        "list_notifications",
        "mark_notification_read",
    }
    assert expected <= operations.keys()
    assert "application/pdf" in operations["get_invoice_pdf"]["responses"]["200"]["content"]
    assert "ETag" in operations["get_allocation"]["responses"]["200"]["headers"]
    assert "304" in operations["list_allocation_entries"]["responses"]
    assert "Retry-After" in operations["launch_notebook"]["responses"]["503"]["headers"]
    writes = {"launch_notebook", "stop_notebook", "create_application", "update_application", "submit_application"}
    for name in expected:
        scope = "write" if name in writes | {"mark_notification_read"} else "read"
        assert operations[name]["security"] == [{"bearerAuth": [scope]}], name
        for status, response in operations[name]["responses"].items():
            if status[0] in "45":
                assert list(response["content"]) == ["application/problem+json"], (name, status)
