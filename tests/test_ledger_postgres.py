"""The ledger under real concurrency on PostgreSQL: no lost updates, no overselling, no double charges."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.ledger import services as ledger
from portal.ledger.models import Allocation, CapacityPeriod, EntryKind, LedgerEntry
from portal.migrations import upgrade
from tests.ledger_world import HOUR, Q1, make_world, open_q1

pytestmark = pytest.mark.postgres
THREADS = 32


@pytest.fixture(scope="module")
def engine(postgres_url: str):  # type: ignore[no-untyped-def]
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url, pool_size=THREADS + 4, max_overflow=0)
    yield engine
    engine.dispose()


def all_at_once(count: int, work):  # type: ignore[no-untyped-def]
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
        assert fresh.used == expected_usage  # type: ignore[union-attr]
        assert fresh.balance == 1000 * HOUR - expected_usage  # type: ignore[union-attr]
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

    def open_one(i: int):  # type: ignore[no-untyped-def]
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

    def open_award(_i: int):  # type: ignore[no-untyped-def]
        with Session(engine, expire_on_commit=False) as db:
            return open_q1(db, world, 50, key=f"award:{world.gpu.id}:same")

    results = all_at_once(THREADS, open_award)
    assert all(isinstance(r, Allocation) for r in results), results
    assert len({r.id for r in results}) == 1  # type: ignore[union-attr]
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
