"""Property-based tests of the ledger: any sequence of credits, usage, transfers, releases and expiries keeps
every balance equal to its entries, charges no usage record twice and never exceeds capacity."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlmodel import Session, func, select

from portal.db import make_engine
from portal.errors import DomainError
from portal.ledger import services as ledger
from portal.ledger.models import (
    Allocation,
    CapacityPeriod,
    CapacityReservation,
    DailyUsage,
    EntryKind,
    LedgerEntry,
    Resource,
)
from tests.ledger_world import HOUR, at, make_world, open_q1


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, template: Path) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        shutil.copy(template, self.folder / "portal.db")
        self.engine = make_engine(f"sqlite:///{self.folder / 'portal.db'}")
        self.db = Session(self.engine, expire_on_commit=False)
        self.world = make_world(self.db, q1_gpu_hours=100, q2_gpu_hours=100)
        self.allocations: list[int] = []
        #: usage key -> amount of the first charge with that key (later ones must change nothing)
        self.usage: dict[str, int] = {}

    def teardown(self) -> None:
        self.db.close()
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pick(self, index: int) -> int:
        return self.allocations[index % len(self.allocations)]

    @rule(hours=st.integers(1, 60), other=st.booleans())
    def open_allocation(self, hours: int, other: bool) -> None:
        project = self.world.other_project if other else self.world.project
        try:
            allocation = open_q1(self.db, self.world, hours, project=project)
        except ledger.CapacityExhausted:
            return
        self.allocations.append(allocation.id)

    @rule(index=st.integers(0, 50), hours=st.integers(1, 40))
    def credit(self, index: int, hours: int) -> None:
        if not self.allocations:
            return
        with contextlib.suppress(ledger.CapacityExhausted, ledger.AllocationClosed):
            ledger.credit(self.db, None, self._pick(index), hours * HOUR, kind=EntryKind.AWARD)

    @rule(index=st.integers(0, 50), seconds=st.integers(1, 30 * HOUR), job=st.integers(0, 30))
    def charge(self, index: int, seconds: int, job: int) -> None:
        if not self.allocations:
            return
        key = f"slurm:test:{job}"
        allocation_id = self._pick(index)
        ledger.charge_usage(self.db, allocation_id, seconds, idempotency_key=key)
        self.usage.setdefault(key, seconds)

    @rule(a=st.integers(0, 50), b=st.integers(0, 50), seconds=st.integers(1, 50 * HOUR))
    def transfer(self, a: int, b: int, seconds: int) -> None:
        if len(self.allocations) < 2:
            return
        source, target = self._pick(a), self._pick(b)
        actor = (
            self.world.pi
            if self.db.get(Allocation, source).project_id == self.world.project.id
            else (self.world.other_pi)
        )
        with contextlib.suppress(DomainError):
            ledger.transfer(self.db, actor, from_id=source, to_id=target, amount=seconds)

    @rule(index=st.integers(0, 50), seconds=st.integers(1, 20 * HOUR))
    def release(self, index: int, seconds: int) -> None:
        if not self.allocations:
            return
        allocation = self.db.get(Allocation, self._pick(index))
        actor = self.world.pi if allocation.project_id == self.world.project.id else self.world.other_pi
        with contextlib.suppress(DomainError):
            ledger.release_to_pool(self.db, actor, allocation.id, seconds)

    @rule(index=st.integers(0, 50))
    def expire(self, index: int) -> None:
        if self.allocations:
            ledger.expire(self.db, self._pick(index), now=at(2030, 4, 2))

    @invariant()
    def balances_equal_their_entries(self) -> None:
        assert ledger.balance_mismatches(self.db) == []

    @invariant()
    def usage_is_charged_once_per_record(self) -> None:
        rows = self.db.exec(
            select(LedgerEntry.idempotency_key, func.count(), func.sum(LedgerEntry.amount))
            .where(LedgerEntry.kind == EntryKind.USAGE)
            .group_by(LedgerEntry.idempotency_key)
        ).all()
        assert {key: (count, -total) for key, count, total in rows} == {k: (1, v) for k, v in self.usage.items()}

    @invariant()
    def daily_usage_adds_up_to_what_each_allocation_used(self) -> None:
        for allocation in self.db.exec(select(Allocation)).all():
            self.db.refresh(allocation)
            daily = self.db.exec(
                select(func.coalesce(func.sum(DailyUsage.amount), 0)).where(DailyUsage.allocation_id == allocation.id)
            ).one()
            assert daily == allocation.used

    @invariant()
    def capacity_is_never_exceeded_and_reservations_add_up(self) -> None:
        resource = self.db.get(Resource, self.world.gpu.id)
        for period in self.db.exec(select(CapacityPeriod)).all():
            self.db.refresh(period)
            held = self.db.exec(
                select(func.coalesce(func.sum(CapacityReservation.amount), 0)).where(
                    CapacityReservation.period_id == period.id
                )
            ).one()
            assert period.reserved == held
            assert period.reserved * 1000 <= period.capacity * resource.overbooking_permille
        for allocation in self.db.exec(select(Allocation)).all():
            self.db.refresh(allocation)
            held = self.db.exec(
                select(func.coalesce(func.sum(CapacityReservation.amount), 0)).where(
                    CapacityReservation.allocation_id == allocation.id
                )
            ).one()
            assert allocation.reserved == held
            assert allocation.reserved >= 0


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_any_sequence_of_ledger_operations_keeps_the_books_straight(migrated_sqlite):
    run_state_machine_as_test(
        lambda: LedgerMachine(migrated_sqlite),
        settings=settings(
            max_examples=40, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
