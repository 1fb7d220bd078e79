"""The worker's ledger jobs: expiry, activation, usage notices by e-mail, the nightly balance check."""

from __future__ import annotations

import sqlalchemy as sa
import time_machine
from sqlmodel import select

from portal.ledger import jobs
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, EntryKind, LedgerEntry
from tests.ledger_world import HOUR, at, make_world, open_q1, person


def test_allocations_start_on_their_first_day_and_expire_after_their_last(db, settings):
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    assert allocation.state == AllocationState.PENDING
    with time_machine.travel(at(2030, 2, 1), tick=False):
        assert jobs.start_and_expire_allocations(db, settings) == 1
        db.refresh(allocation)
        assert allocation.state == AllocationState.ACTIVE
        assert jobs.start_and_expire_allocations(db, settings) == 0
    with time_machine.travel(at(2030, 4, 2), tick=False):
        assert jobs.start_and_expire_allocations(db, settings) == 1
        assert jobs.start_and_expire_allocations(db, settings) == 0
    db.refresh(allocation)
    assert (allocation.state, allocation.balance, allocation.reserved) == (AllocationState.EXPIRED, 0, 0)
    expiry = db.exec(select(LedgerEntry).where(LedgerEntry.kind == EntryKind.EXPIRY)).all()
    assert [e.amount for e in expiry] == [-10 * HOUR]


def test_pi_and_managers_are_told_once_at_75_90_and_100_percent(db, make_settings, mailbox):
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    world = make_world(db)
    allocation = open_q1(db, world, 100)
    with time_machine.travel(at(2030, 2, 1), tick=False):
        jobs.start_and_expire_allocations(db, settings)
        ledger.charge_usage(db, allocation.id, 74 * HOUR, idempotency_key="t-1")
        assert jobs.notify_usage_thresholds(db, settings) == 0
        ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="t-2")
        assert jobs.notify_usage_thresholds(db, settings) == 1
        assert jobs.notify_usage_thresholds(db, settings) == 0  # told once
        ledger.charge_usage(db, allocation.id, 30 * HOUR, idempotency_key="t-3")  # straight past 90 to 106 %
        assert jobs.notify_usage_thresholds(db, settings) == 1
    subjects = [m["Subject"] for m in mailbox.messages]
    assert subjects == ["Vision: 75 % of “Q1 award” used", "Vision: the allocation “Q1 award” is used up"]
    assert mailbox.messages[0]["To"] == world.pi.email
    assert "Remaining: 24.0 GPU-hours" in mailbox.messages[0].get_content()


def test_hours_added_after_a_notice_rearm_it(db, make_settings, mailbox):
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    world = make_world(db)
    allocation = open_q1(db, world, 100)
    with time_machine.travel(at(2030, 2, 1), tick=False):
        jobs.start_and_expire_allocations(db, settings)
        ledger.charge_usage(db, allocation.id, 80 * HOUR, idempotency_key="r-1")
        assert jobs.notify_usage_thresholds(db, settings) == 1
        ledger.credit(db, None, allocation.id, 100 * HOUR, kind=EntryKind.AWARD, idempotency_key="top-up")
        assert jobs.notify_usage_thresholds(db, settings) == 0  # 40 % now
        ledger.charge_usage(db, allocation.id, 80 * HOUR, idempotency_key="r-2")  # 80 %
        assert jobs.notify_usage_thresholds(db, settings) == 1
    assert len(mailbox.messages) == 2


def test_the_nightly_check_finds_a_balance_that_differs_from_its_entries(db, make_settings, mailbox):
    settings = make_settings(mail_backend="smtp", smtp_port=mailbox.port)
    world = make_world(db)
    allocation = open_q1(db, world, 10)
    from portal.identity.models import FactoryRole
    from portal.identity.services import grant_role

    admin = person(db, "Admin")
    grant_role(db, None, admin, FactoryRole.ADMIN, reason="test setup")
    assert jobs.check_balances(db, settings) == 0
    db.execute(
        sa.update(Allocation.__table__).where(Allocation.__table__.c.id == allocation.id).values(balance=1)
    )  # what a bug outside the ledger could do
    db.commit()
    assert jobs.check_balances(db, settings) == 1
    (message,) = mailbox.messages
    assert message["To"] == admin.email
    assert f"allocation {allocation.id}: balance 1, entries sum to {10 * HOUR}" in message.get_content()
