"""Allocations opened by an operator (the API's ``POST /admin/allocations``, ``portal allocations open``,
``ledger.open_allocation`` with source ADMIN): their opening hours come as an adjustment entry, yet they are what
the project was granted, so "Granted", "% used" and exhaustion count them as they count an award's."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session, select

from portal.db import make_engine, utcnow
from portal.identity.services import create_api_token
from portal.ledger import services as ledger
from portal.ledger import statements
from portal.ledger.models import Allocation, AllocationSource, AllocationState, EntryKind, LedgerEntry, Resource
from portal.migrations import downgrade, upgrade
from portal.projects import services as projects
from tests.ledger_world import HOUR, admin, make_world

REASON = "Pilot hours for the shipyard project"


def plan_around_now(db: Session, resource: Resource, hours: int) -> None:
    today = utcnow().date()
    for day in (today - timedelta(days=40), today, today + timedelta(days=40)):
        starts_on, ends_on = ledger.quarter_of(day)
        ledger.set_capacity(
            db, None, resource, starts_on=starts_on, ends_on=ends_on, capacity=hours * HOUR, reason="test setup"
        )


def open_by_hand(db: Session, actor, project, resource: Resource, hours: int, **kw) -> Allocation:
    now = utcnow()
    return ledger.open_allocation(
        db,
        actor,
        project=project,
        resource=resource,
        amount=hours * HOUR,
        starts_at=now - timedelta(days=1),
        ends_at=now + timedelta(days=30),
        source=AllocationSource.ADMIN,
        title="Pilot",
        reason=REASON,
        **kw,
    )


def statement_of(db: Session, actor, project, allocation_id: int) -> statements.AllocationStatement:
    db.expire_all()
    [statement] = [s for s in statements.allocations_of_project(db, actor, project) if s.allocation.id == allocation_id]
    return statement


def test_the_opening_hours_of_an_allocation_opened_by_hand_count_as_granted_and_exhaust_it(db: Session) -> None:
    world = make_world(db)
    plan_around_now(db, world.gpu, 1000)
    allocation = open_by_hand(db, admin(db), world.project, world.gpu, 100)
    [opening] = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == allocation.id)).all()
    assert opening.kind == EntryKind.ADJUSTMENT and opening.amount == 100 * HOUR  # the entry stays an adjustment
    assert (allocation.credited, allocation.balance, allocation.used) == (100 * HOUR, 100 * HOUR, 0)

    ledger.charge_usage(db, allocation.id, 25 * HOUR, idempotency_key="job-1")
    statement = statement_of(db, world.pi, world.project, allocation.id)
    assert (statement.allocation.credited, statement.allocation.used, statement.percent_used) == (
        100 * HOUR,
        25 * HOUR,
        25,
    )

    ledger.charge_usage(db, allocation.id, 75 * HOUR, idempotency_key="job-2")
    statement = statement_of(db, world.pi, world.project, allocation.id)
    assert statement.percent_used == 100 and statement.allocation.state == AllocationState.EXHAUSTED
    assert statement.projected_exhaustion == utcnow().date()
    assert ledger.balance_mismatches(db) == []


def test_the_same_key_opens_once_and_credits_once(db: Session) -> None:
    world = make_world(db)
    plan_around_now(db, world.gpu, 1000)
    boss = admin(db)
    first = open_by_hand(db, boss, world.project, world.gpu, 40, idempotency_key="pilot-1")
    again = open_by_hand(db, boss, world.project, world.gpu, 40, idempotency_key="pilot-1")
    db.expire_all()
    assert again.id == first.id
    assert db.get(Allocation, first.id).credited == 40 * HOUR


def test_the_api_and_the_project_page_show_what_an_operator_granted(client, db: Session, login) -> None:
    pi = login(client)
    org = projects.create_organisation(db, pi, name="Shipyard Uni", kind="university", country="PL")
    project = projects.create_project(db, pi, org, title="Shipyard vision")
    world = make_world(db)
    plan_around_now(db, world.gpu, 1000)
    boss = admin(db)
    _row, operate = create_api_token(db, boss, name="script", scopes=["operate"], ttl_days=5)
    now = utcnow()
    body = {
        "project_id": project.id,
        "resource_id": world.gpu.id,
        "amount": 200 * HOUR,
        "starts_at": (now - timedelta(days=1)).isoformat(),
        "ends_at": (now + timedelta(days=30)).isoformat(),
        "title": "Pilot",
        "reason": REASON,
    }
    opened = client.post("/api/v1/admin/allocations", json=body, headers={"Authorization": f"Bearer {operate}"})
    assert opened.status_code == 201, opened.get_data(as_text=True)
    assert (opened.json["credited"], opened.json["balance"]) == (200 * HOUR, 200 * HOUR)
    ledger.charge_usage(db, opened.json["id"], 50 * HOUR, idempotency_key="job-1")

    _row, read = create_api_token(db, pi, name="mine", scopes=["read"], ttl_days=5)
    detail = client.get(f"/api/v1/allocations/{opened.json['id']}", headers={"Authorization": f"Bearer {read}"})
    assert detail.status_code == 200, detail.get_data(as_text=True)
    assert (detail.json["credited"], detail.json["used"], detail.json["percent_used"]) == (200 * HOUR, 50 * HOUR, 25)
    page = client.get(f"/projects/{project.id}/allocations/{opened.json['id']}").get_data(as_text=True)
    assert "<dt>Granted</dt><dd>200.0 GPU-hours</dd>" in page
    assert "50.0 GPU-hours (25 %)" in page


def test_the_migration_counts_the_opening_hours_of_existing_allocations_opened_by_hand(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'before.db'}"
    upgrade(url, "0020")
    engine = make_engine(url)
    try:
        with Session(engine, expire_on_commit=False) as db:
            world = make_world(db)
            plan_around_now(db, world.gpu, 1000)
            boss = admin(db)
            kept = open_by_hand(db, boss, world.project, world.gpu, 100)
            ledger.charge_usage(db, kept.id, 10 * HOUR, idempotency_key="job-1")
            ledger.adjust(db, boss, kept.id, 5 * HOUR, reason="a later correction")
            spent = open_by_hand(db, boss, world.other_project, world.gpu, 20)
            ledger.charge_usage(db, spent.id, 20 * HOUR, idempotency_key="job-2")
            award = ledger.open_allocation(
                db,
                None,
                project=world.project,
                resource=world.gpu,
                amount=30 * HOUR,
                starts_at=kept.starts_at,
                ends_at=kept.ends_at,
                source=AllocationSource.AWARD,
                title="Award",
            )
            # as the portal before this change wrote them: nothing credited, the spent one still active
            db.execute(sa.text("UPDATE allocations SET credited = 0 WHERE source = 'admin'"))
            db.execute(sa.text("UPDATE allocations SET state = 'active' WHERE id = :id"), {"id": spent.id})
            db.commit()
        upgrade(url)

        def rows() -> dict[int, tuple[int, str]]:
            with Session(engine) as db:
                found = db.exec(select(Allocation.id, Allocation.credited, Allocation.state)).all()
                return {i: (credited, str(state)) for i, credited, state in found}

        after = rows()
        assert after[kept.id] == (100 * HOUR, "active")  # the opening hours, not the later correction
        assert after[spent.id] == (20 * HOUR, "exhausted")
        assert after[award.id] == (30 * HOUR, "active")
        downgrade(url, "0020")
        assert {i: credited for i, (credited, _state) in rows().items()} == {
            kept.id: 0,
            spent.id: 0,
            award.id: 30 * HOUR,
        }
    finally:
        engine.dispose()
