"""The dashboards' rollups under real concurrency on PostgreSQL: charges committed while a rebuild runs are
neither lost nor counted twice."""

from __future__ import annotations

import threading
from datetime import date

import pytest
from sqlmodel import Session, func, select

from portal.ledger import services as ledger
from portal.ledger.models import UsageMonth
from portal.ledger.services import UsageCharge
from portal.reports import rollups
from tests.ledger import test_ledger_postgres
from tests.ledger_world import HOUR
from tests.reports.test_reports import USAGE, seed

pytestmark = pytest.mark.postgres
THREADS = 8
CHARGES = 25


#: The ledger's PostgreSQL fixture: a migrated engine with a connection for each thread.
engine = test_ledger_postgres.engine


def test_charges_during_a_rebuild_all_end_up_in_the_rollup_once(engine):
    with Session(engine, expire_on_commit=False) as db:
        factory = seed(db)
    allocation = factory.allocations["uni-h200"]
    barrier = threading.Barrier(THREADS + 1)
    failures: list[BaseException] = []

    def charge(i: int) -> None:
        barrier.wait()
        try:
            with Session(engine) as db:
                for j in range(CHARGES):
                    day = date(2030, 1 + (i + j) % 6, 10)
                    charge = UsageCharge(allocation.id, 60, f"pg-report-{i}-{j}", "job", day)
                    ledger.charge_usage_batch(db, [charge])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    rebuilds = 0
    while any(t.is_alive() for t in threads):
        with Session(engine) as db:
            rollups.rebuild(db)
        rebuilds += 1
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    assert rebuilds >= 1
    with Session(engine) as db:
        assert rollups.rollup_differences(db) == []
        total = db.exec(select(func.sum(UsageMonth.amount)).where(UsageMonth.allocation_id == allocation.id)).one()
    seeded = sum(h * HOUR for key, h, _day in USAGE if key == "uni-h200")
    assert total == seeded + THREADS * CHARGES * 60
