"""The ledger: allocations, capacity, usage, transfers, expiry; what a PI or a site operator would notice."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from portal import enforcement_hooks
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.ledger import services as ledger
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    CapacityPeriod,
    CapacityReservation,
    EntryKind,
    LedgerEntry,
)
from portal.ledger.services import enforcement
from portal.projects import services as projects
from tests.ledger_world import HOUR, Q1, admin, at, make_world, open_q1, person


@pytest.fixture
def world(db):
    return make_world(db)


def entries(db, allocation):
    return list(db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == allocation.id).order_by(LedgerEntry.id)))


def period(db, resource, starts_on):
    return db.exec(
        select(CapacityPeriod).where(CapacityPeriod.resource_id == resource.id, CapacityPeriod.starts_on == starts_on)
    ).one()


def test_opening_an_allocation_credits_it_and_reserves_capacity(db, world):
    allocation = open_q1(db, world, 100)
    assert allocation.state == AllocationState.PENDING  # 2030 has not begun
    assert (allocation.balance, allocation.credited, allocation.used) == (100 * HOUR, 100 * HOUR, 0)
    (entry,) = entries(db, allocation)
    assert (entry.kind, entry.amount, entry.balance_after) == (EntryKind.AWARD, 100 * HOUR, 100 * HOUR)
    db.expire_all()
    assert period(db, world.gpu, Q1[0]).reserved == 100 * HOUR
    assert ledger.balance_mismatches(db) == []


def test_capacity_cannot_be_oversold_and_a_refusal_changes_nothing(db, world):
    open_q1(db, world, 900)
    with pytest.raises(ledger.CapacityExhausted, match="not enough capacity"):
        open_q1(db, world, 101, project=world.other_project)
    db.expire_all()
    assert period(db, world.gpu, Q1[0]).reserved == 900 * HOUR
    assert db.exec(select(Allocation).where(Allocation.project_id == world.other_project.id)).all() == []
    open_q1(db, world, 100, project=world.other_project)  # exactly the rest still fits
    db.expire_all()
    assert period(db, world.gpu, Q1[0]).reserved == 1000 * HOUR


def test_overbooking_lets_a_site_allocate_beyond_its_capacity_by_its_factor(db):
    world = make_world(db, overbooking_permille=1100)
    open_q1(db, world, 1100)
    with pytest.raises(ledger.CapacityExhausted):
        open_q1(db, world, 1, project=world.other_project)


def test_dates_without_planned_capacity_are_refused(db, world):
    with pytest.raises(ledger.NoCapacityPlanned):
        ledger.open_allocation(
            db,
            None,
            project=world.project,
            resource=world.gpu,
            amount=HOUR,
            starts_at=at(2030, 6, 1),
            ends_at=at(2030, 8, 1),
            source=AllocationSource.AWARD,
            title="Summer",
        )


def test_an_allocation_over_two_quarters_reserves_in_proportion_to_the_days(db, world):
    # 2030-03-01 .. 2030-05-01: 31 days in Q1, 30 days in Q2
    ledger.open_allocation(
        db,
        None,
        project=world.project,
        resource=world.gpu,
        amount=610 * HOUR,
        starts_at=at(2030, 3, 1),
        ends_at=at(2030, 5, 1),
        source=AllocationSource.AWARD,
        title="Spring",
    )
    db.expire_all()
    assert period(db, world.gpu, Q1[0]).reserved == 310 * HOUR
    assert period(db, world.gpu, at(2030, 4, 1).date()).reserved == 300 * HOUR


def test_dates_with_fractions_of_a_second_over_two_quarters_are_covered_by_their_capacity(db, world):
    # An allocation opened "now" carries microseconds; whole seconds on each side of the quarter would not add up.
    allocation = ledger.open_allocation(
        db,
        None,
        project=world.project,
        resource=world.gpu,
        amount=100 * HOUR,
        starts_at=at(2030, 3, 1) + timedelta(microseconds=250_000),
        ends_at=at(2030, 5, 1) + timedelta(microseconds=700_000),
        source=AllocationSource.AWARD,
        title="Opened at an odd moment",
    )
    db.expire_all()
    q1, q2 = period(db, world.gpu, Q1[0]).reserved, period(db, world.gpu, at(2030, 4, 1).date()).reserved
    assert (q1 + q2, allocation.balance) == (100 * HOUR, 100 * HOUR)
    assert 50 * HOUR < q1 < 51 * HOUR  # 31 of 61 days


def test_the_same_award_opened_twice_opens_one_allocation(db, world):
    first = open_q1(db, world, 50, key="award:call-7:application-3")
    second = open_q1(db, world, 50, key="award:call-7:application-3")
    assert first.id == second.id
    assert len(db.exec(select(Allocation)).all()) == 1
    db.expire_all()
    assert period(db, world.gpu, Q1[0]).reserved == 50 * HOUR


def test_usage_is_charged_once_per_record(db, world):
    allocation = open_q1(db, world, 10)
    ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="slurm:factory:1001")
    ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="slurm:factory:1001")
    db.refresh(allocation)
    assert (allocation.balance, allocation.used) == (8 * HOUR, 2 * HOUR)
    assert [e.kind for e in entries(db, allocation)] == [EntryKind.AWARD, EntryKind.USAGE]


def test_usage_beyond_the_balance_is_recorded_in_full_and_exhausts_the_allocation(db, world):
    allocation = open_q1(db, world, 1)
    exhausted = []
    ledger.register_enforcement_hook("test", exhausted.append)
    try:
        ledger.charge_usage(db, allocation.id, 3 * HOUR, idempotency_key="job-1")
        ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="job-2")
    finally:
        ledger.register_enforcement_hook("test", None)
    db.refresh(allocation)
    assert allocation.balance == -3 * HOUR
    assert allocation.state == AllocationState.EXHAUSTED
    assert [a.id for a in exhausted] == [allocation.id]  # told once, when it became exhausted
    ledger.credit(db, None, allocation.id, 5 * HOUR, kind=EntryKind.AWARD, idempotency_key="tranche-2")
    db.refresh(allocation)
    assert (allocation.balance, allocation.state) == (2 * HOUR, AllocationState.PENDING)


def test_hours_move_between_a_projects_own_allocations(db, world):
    a = open_q1(db, world, 10, title="A")
    b = open_q1(db, world, 10, title="B")
    ledger.transfer(db, world.pi, from_id=a.id, to_id=b.id, amount=4 * HOUR)
    db.refresh(a)
    db.refresh(b)
    assert (a.balance, b.balance) == (6 * HOUR, 14 * HOUR)
    assert (a.reserved, b.reserved) == (6 * HOUR, 14 * HOUR)
    assert ledger.balance_mismatches(db) == []


def test_a_transfer_larger_than_the_balance_is_refused_and_changes_nothing(db, world):
    a = open_q1(db, world, 10, title="A")
    b = open_q1(db, world, 10, title="B")
    with pytest.raises(ledger.InsufficientBalance):
        ledger.transfer(db, world.pi, from_id=a.id, to_id=b.id, amount=11 * HOUR)
    db.refresh(a)
    db.refresh(b)
    assert (a.balance, b.balance, len(entries(db, a)), len(entries(db, b))) == (10 * HOUR, 10 * HOUR, 1, 1)


def test_hours_cannot_move_to_another_projects_allocation(db, world):
    mine = open_q1(db, world, 10)
    theirs = open_q1(db, world, 10, project=world.other_project)
    with pytest.raises(InvalidInput, match="same project"):
        ledger.transfer(db, world.pi, from_id=mine.id, to_id=theirs.id, amount=HOUR)


def test_only_the_pi_or_a_manager_moves_hours(db, world):
    a = open_q1(db, world, 10, title="A")
    b = open_q1(db, world, 10, title="B")
    with pytest.raises(NotFound):
        ledger.transfer(db, world.other_pi, from_id=a.id, to_id=b.id, amount=HOUR)
    member = person(db, "Member")
    _inv, link = projects.invite_member(
        db, _mail_settings(), world.pi, world.project, email=member.email or "", role="member"
    )
    projects.accept_invitation(db, member, link.rsplit("/", 1)[1])
    with pytest.raises(NotAuthorised):
        ledger.transfer(db, member, from_id=a.id, to_id=b.id, amount=HOUR)


def _mail_settings():
    from portal.config import load_settings

    return load_settings(env="test", mail_backend="log")


def test_giving_hours_back_frees_capacity_for_others(db, world):
    allocation = open_q1(db, world, 1000)
    with pytest.raises(ledger.CapacityExhausted):
        open_q1(db, world, 100, project=world.other_project)
    ledger.release_to_pool(db, world.pi, allocation.id, 100 * HOUR)
    open_q1(db, world, 100, project=world.other_project)
    db.refresh(allocation)
    assert (allocation.balance, allocation.reserved) == (900 * HOUR, 900 * HOUR)


def test_expiry_debits_what_is_left_and_releases_capacity_once(db, world):
    allocation = open_q1(db, world, 10)
    ledger.charge_usage(db, allocation.id, 4 * HOUR, idempotency_key="job")
    assert ledger.expire(db, allocation.id, now=at(2030, 3, 31)) is None  # not yet over
    entry = ledger.expire(db, allocation.id, now=at(2030, 4, 2))
    assert entry is not None and entry.amount == -6 * HOUR
    assert ledger.expire(db, allocation.id, now=at(2030, 4, 3)) is None
    db.refresh(allocation)
    assert (allocation.state, allocation.balance, allocation.reserved) == (AllocationState.EXPIRED, 0, 0)
    assert (
        db.exec(
            select(sa.func.sum(CapacityReservation.amount)).where(CapacityReservation.allocation_id == allocation.id)
        ).one()
        == 0
    )


def test_adjustments_need_an_admin_and_a_reason(db, world):
    allocation = open_q1(db, world, 10)
    with pytest.raises(NotAuthorised):
        ledger.adjust(db, world.pi, allocation.id, HOUR, reason="I want more")
    boss = admin(db)
    with pytest.raises(InvalidInput, match="Say why"):
        ledger.adjust(db, boss, allocation.id, HOUR, reason="  ")
    entry = ledger.adjust(db, boss, allocation.id, -2 * HOUR, reason="Node outage double-charged job 4711")
    assert (entry.kind, entry.amount, entry.actor_id) == (EntryKind.ADJUSTMENT, -2 * HOUR, boss.id)


def test_a_unit_of_work_that_fails_after_its_first_ledger_call_leaves_nothing_behind(db, world):
    # On SQLite the first call's savepoint would otherwise open (and, on release, commit) the transaction.
    allocation = open_q1(db, world, 10)
    boss = admin(db)
    before = db.exec(select(sa.func.count()).select_from(LedgerEntry)).one()
    with pytest.raises(ledger.CapacityExhausted), ledger.unit_of_work(db):
        ledger.adjust(db, boss, allocation.id, HOUR, reason="First half of a correction")
        ledger.adjust(db, boss, allocation.id, 5000 * HOUR, reason="Second half, refused")
    with Session(db.get_bind()) as fresh:
        assert fresh.exec(select(sa.func.count()).select_from(LedgerEntry)).one() == before
        assert fresh.get(Allocation, allocation.id).balance == 10 * HOUR


def test_ledger_entries_cannot_be_changed_or_deleted(db, world):
    allocation = open_q1(db, world, 10)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.execute(sa.text("UPDATE ledger_entries SET amount = 1 WHERE allocation_id = :a"), {"a": allocation.id})
    db.rollback()
    with pytest.raises(sa.exc.DatabaseError, match="append-only"):
        db.execute(sa.text("DELETE FROM ledger_entries WHERE allocation_id = :a"), {"a": allocation.id})
    db.rollback()


def test_capacity_cannot_be_planned_below_what_is_reserved(db, world):
    open_q1(db, world, 600)
    with pytest.raises(ledger.CapacityExhausted, match="already reserved"):
        ledger.set_capacity(
            db, None, world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=500 * HOUR, reason="test setup"
        )
    ledger.set_capacity(db, None, world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=600 * HOUR, reason="test setup")


def test_only_admins_and_site_operators_plan_capacity(db, world):
    with pytest.raises(NotAuthorised):
        ledger.set_capacity(db, world.pi, world.gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=1, reason="test setup")


def test_the_factory_sites_are_seeded_with_quarterly_capacity(db):
    from portal.ledger.catalogue import SITES, ensure_sites
    from portal.ledger.models import Resource

    sites = ensure_sites(db, plan_quarters_from=at(2031, 1, 1).date(), quarters=2, reason="test setup")
    ensure_sites(db, plan_quarters_from=at(2031, 1, 1).date(), quarters=2, reason="test setup")  # again: nothing new
    assert [s.city for s in sites] == ["Warsaw", "Kraków", "Poznań", "Gdańsk", "Wrocław", "Vilnius", "Riga", "Tallinn"]
    assert len(db.exec(select(Resource)).all()) == sum(len(s.resources) for s in SITES)
    waw_h200 = db.exec(select(Resource).where(Resource.code == "h200", Resource.site_id == sites[0].id)).one()
    q = period(db, waw_h200, at(2031, 1, 1).date())
    assert q.capacity == 512 * 90 * 86_400 * 80 // 100  # GPUs × seconds in Q1 2031 × 80 %


def test_a_charge_in_an_apps_context_runs_that_apps_enforcement_hooks_only(app, db, world):
    allocation = open_q1(db, world, 1)
    told_app, told_process = [], []
    ledger.install_enforcement_hooks(ledger.EnforcementHooks(test=lambda a: told_app.append(a.id)), app)
    ledger.register_enforcement_hook("test", lambda a: told_process.append(a.id))  # no app context: the process's
    try:
        with app.app_context():
            ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="in-app")
    finally:
        ledger.register_enforcement_hook("test", None)
    assert (told_app, told_process) == ([allocation.id], [])


def test_exhaustion_where_no_enforcement_hooks_are_installed_is_logged_as_an_error(db, world, caplog, monkeypatch):
    monkeypatch.setattr(enforcement, "_process_hooks", None)  # a process that never built an app nor installed any
    allocation = open_q1(db, world, 1)
    with caplog.at_level("ERROR", logger="portal.ledger"):
        ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="no-hooks")
    db.refresh(allocation)
    assert (allocation.balance, allocation.state) == (-HOUR, AllocationState.EXHAUSTED)  # charged all the same
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert f"allocation {allocation.id} is exhausted but no enforcement hooks" in caplog.text


def test_the_apps_enforcement_hooks_follow_its_settings(app, settings):
    assert list(app.extensions[ledger.EXTENSION]) == list(enforcement_hooks(settings)) == ["notebook_stop"]
    without_hub = enforcement_hooks(settings.model_copy(update={"hub_api_token": "", "slurm_clusters": []}))
    assert without_hub == {}  # no hub, no Slurm cluster: nothing to stop or hold
