"""The ledger under real concurrency on PostgreSQL: no lost updates, no overselling, no double charges."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.errors import InvalidInput, NotFound
from portal.ledger import services as ledger
from portal.ledger.models import (
    Allocation,
    AllocationState,
    CapacityPeriod,
    DailyUsage,
    EntryKind,
    LedgerEntry,
    UsageMonth,
)
from portal.migrations import upgrade
from tests.ledger_world import HOUR, Q1, admin, make_world, open_q1

pytestmark = pytest.mark.postgres
THREADS = 32


@pytest.fixture(scope="module")
def engine(postgres_url: str):
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url, pool_size=THREADS + 4, max_overflow=0)
    yield engine
    engine.dispose()


def all_at_once(count: int, work):
    """Run ``work(i)`` in ``count`` threads released together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_32_threads_charging_one_allocation_lose_no_update(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=10_000)
        allocation = open_q1(db, world, 1000)

    def charge(i: int) -> None:
        with Session(engine, expire_on_commit=False) as db:
            for j in range(5):
                # each record twice: the second delivery must change nothing
                ledger.charge_usage(db, allocation.id, (i + 1) * 60, idempotency_key=f"pg-job-{i}-{j}")
                ledger.charge_usage(db, allocation.id, (i + 1) * 60, idempotency_key=f"pg-job-{i}-{j}")

    results = all_at_once(THREADS, charge)
    assert [r for r in results if r is not None] == []
    expected_usage = sum((i + 1) * 60 * 5 for i in range(THREADS))
    with Session(engine) as db:
        fresh = db.get(Allocation, allocation.id)
        assert fresh.used == expected_usage
        assert fresh.balance == 1000 * HOUR - expected_usage
        usage_entries = db.exec(
            select(func.count()).where(LedgerEntry.allocation_id == allocation.id, LedgerEntry.kind == EntryKind.USAGE)
        ).one()
        assert usage_entries == THREADS * 5
        assert ledger.balance_mismatches(db) == []
        # balance_after forms one unbroken chain: every entry starts where the previous one ended
        chain = db.exec(
            select(LedgerEntry.amount, LedgerEntry.balance_after)
            .where(LedgerEntry.allocation_id == allocation.id)
            .order_by(LedgerEntry.id)
        ).all()
        running = 0
        for amount, after in chain:
            running += amount
            assert after == running


def test_32_threads_opening_allocations_against_the_last_capacity_never_oversell(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        open_q1(db, world, 900)  # 100 GPU-hours are left: room for exactly ten 10-hour allocations

    def open_one(i: int):
        with Session(engine, expire_on_commit=False) as db:
            return open_q1(db, world, 10, title=f"small {i}")

    results = all_at_once(THREADS, open_one)
    opened = [r for r in results if isinstance(r, Allocation)]
    refused = [r for r in results if isinstance(r, ledger.CapacityExhausted)]
    assert (len(opened), len(refused)) == (10, THREADS - 10), results
    with Session(engine) as db:
        period = db.exec(
            select(CapacityPeriod).where(CapacityPeriod.resource_id == world.gpu.id, CapacityPeriod.starts_on == Q1[0])
        ).one()
        assert period.reserved == period.capacity == 1000 * HOUR
        allocations = db.exec(select(func.count()).where(Allocation.resource_id == world.gpu.id)).one()
        assert allocations == 11  # nothing half-made by the refused ones


def test_one_award_delivered_by_32_threads_at_once_opens_one_allocation(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)

    def open_award(_i: int):
        with Session(engine, expire_on_commit=False) as db:
            return open_q1(db, world, 50, key=f"award:{world.gpu.id}:same")

    results = all_at_once(THREADS, open_award)
    assert all(isinstance(r, Allocation) for r in results), results
    assert len({r.id for r in results}) == 1
    with Session(engine) as db:
        period = db.exec(
            select(CapacityPeriod).where(CapacityPeriod.resource_id == world.gpu.id, CapacityPeriod.starts_on == Q1[0])
        ).one()
        assert period.reserved == 50 * HOUR


def test_concurrent_transfers_in_both_directions_neither_deadlock_nor_lose_hours(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        a = open_q1(db, world, 100, title="A")
        b = open_q1(db, world, 100, title="B")

    def move(i: int) -> None:
        source, target = (a, b) if i % 2 else (b, a)
        with Session(engine, expire_on_commit=False) as db:
            ledger.transfer(db, world.pi, from_id=source.id, to_id=target.id, amount=HOUR)

    results = all_at_once(THREADS, move)
    assert [r for r in results if r is not None] == []
    with Session(engine) as db:
        total = db.exec(select(func.sum(Allocation.balance)).where(col(Allocation.id).in_([a.id, b.id]))).one()
        assert total == 200 * HOUR
        assert ledger.balance_mismatches(db) == []


def test_the_same_charge_sent_by_32_threads_at_once_is_charged_once(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        allocation = open_q1(db, world, 10)

    def charge(_i: int) -> LedgerEntry:
        with Session(engine, expire_on_commit=False) as db:
            return ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="pg-same-record")

    results = all_at_once(THREADS, charge)
    assert all(isinstance(r, LedgerEntry) for r in results), results
    assert {(r.id, r.amount, r.balance_after) for r in results} == {(results[0].id, -HOUR, 9 * HOUR)}
    with Session(engine) as db:
        fresh = db.get(Allocation, allocation.id)
        assert (fresh.balance, fresh.used) == (9 * HOUR, HOUR)
        daily = db.exec(select(func.sum(DailyUsage.amount)).where(DailyUsage.allocation_id == allocation.id)).one()
        monthly = db.exec(select(func.sum(UsageMonth.amount)).where(UsageMonth.allocation_id == allocation.id)).one()
        assert daily == monthly == HOUR
        assert ledger.balance_mismatches(db) == []


def test_parallel_releases_never_take_a_balance_below_zero(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        allocation = open_q1(db, world, 10)

    def release(_i: int):
        with Session(engine, expire_on_commit=False) as db:
            return ledger.release_to_pool(db, world.pi, allocation.id, HOUR)

    results = all_at_once(THREADS, release)
    released = [r for r in results if isinstance(r, LedgerEntry)]
    refused = [r for r in results if isinstance(r, ledger.InsufficientBalance)]
    assert (len(released), len(refused)) == (10, THREADS - 10), results
    with Session(engine) as db:
        fresh = db.get(Allocation, allocation.id)
        assert (fresh.balance, fresh.reserved) == (0, 0)
        assert ledger.balance_mismatches(db) == []


def test_a_single_charge_on_postgresql_writes_what_a_batch_of_one_writes(engine):
    """``charge_usage`` takes its one-statement path on PostgreSQL; ``charge_usage_batch`` the general one."""
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        single, batched = open_q1(db, world, 2, title="single"), open_q1(db, world, 2, title="batched")
        exhausted: list[int] = []
        ledger.register_enforcement_hook("pg-test", lambda a: exhausted.append(a.id))
        try:
            for n, amount in enumerate([HOUR, 2 * HOUR, HOUR]):
                entry = ledger.charge_usage(db, single.id, amount, idempotency_key=f"pg-single-{n}", reason="job")
                stored = db.get(LedgerEntry, entry.id)
                assert stored is not None and stored.model_dump() == entry.model_dump()  # what was written
                ledger.charge_usage_batch(db, [ledger.UsageCharge(batched.id, amount, f"pg-batched-{n}", "job")])
        finally:
            ledger.register_enforcement_hook("pg-test", None)
        assert exhausted == [single.id, batched.id]  # each told once, when it became exhausted
        assert (single.balance, single.used, single.state) == (-2 * HOUR, 4 * HOUR, AllocationState.EXHAUSTED)

    def written(db: Session, allocation_id: int):
        allocation = db.get(Allocation, allocation_id)
        rows = db.exec(
            select(LedgerEntry.kind, LedgerEntry.amount, LedgerEntry.balance_after, LedgerEntry.reason)
            .where(LedgerEntry.allocation_id == allocation_id)
            .order_by(LedgerEntry.id)
        ).all()
        daily = db.exec(select(DailyUsage.day, DailyUsage.amount).where(DailyUsage.allocation_id == allocation_id))
        months = db.exec(select(UsageMonth.month, UsageMonth.amount).where(UsageMonth.allocation_id == allocation_id))
        state = (allocation.balance, allocation.used, allocation.credited, allocation.state)
        return state, [tuple(r) for r in rows], sorted(daily.all()), sorted(months.all())

    with Session(engine) as db:
        assert written(db, single.id) == written(db, batched.id)
        with pytest.raises(NotFound):
            ledger.charge_usage(db, 10**9, HOUR, idempotency_key="pg-no-such-allocation")
        assert db.exec(select(LedgerEntry).where(LedgerEntry.idempotency_key == "pg-no-such-allocation")).all() == []


def test_a_charge_to_a_suspended_allocation_is_recorded_and_leaves_it_suspended(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        allocation = open_q1(db, world, 1)
        ledger.set_suspended(db, admin(db), allocation.id, True, reason="security incident")
        ledger.charge_usage(db, allocation.id, 2 * HOUR, idempotency_key="pg-suspended-1")
    with Session(engine) as db:
        fresh = db.get(Allocation, allocation.id)
        assert (fresh.balance, fresh.state) == (-HOUR, AllocationState.SUSPENDED)


def test_a_bad_charge_on_postgresql_is_refused_as_on_sqlite_and_a_database_error_is_sqlalchemys(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        allocation = open_q1(db, world, 10)
        for amount in (0, -HOUR):
            with pytest.raises(InvalidInput):
                ledger.charge_usage(db, allocation.id, amount, idempotency_key=f"pg-bad-{amount}")
        with pytest.raises(sa.exc.DataError):  # longer than the column: the caller sees SQLAlchemy's error
            ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="pg-long-reason", reason="x" * 1001)
        entry = ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="pg-after-the-error")
        assert entry.balance_after == 9 * HOUR  # the session is usable again; nothing of the refused ones stayed


def test_a_charge_in_a_session_with_work_in_progress_commits_that_work_with_it_and_charges_once(engine):
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=1000)
        allocation = open_q1(db, world, 10)
        db.refresh(allocation)  # a read: the session now has a transaction in progress, which the charge joins
        allocation.title = "renamed in the charge's transaction"
        db.add(allocation)
        entry = ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="pg-in-session")
        assert not db.in_transaction()
        db.refresh(allocation)
        again = ledger.charge_usage(db, allocation.id, HOUR, idempotency_key="pg-in-session")
        assert (again.id, again.balance_after) == (entry.id, 9 * HOUR)
        assert (allocation.balance, allocation.used) == (9 * HOUR, HOUR)
    with Session(engine) as db:
        fresh = db.get(Allocation, allocation.id)
        assert (fresh.title, fresh.balance, fresh.used) == ("renamed in the charge's transaction", 9 * HOUR, HOUR)
        assert ledger.balance_mismatches(db) == []
