"""Property-based tests (issue 19): any sequence of course actions (join, spawn, meter, remove, close, return,
with a hub that sometimes cannot stop servers) and of award decisions with tranches keeps the hours straight:
no allocation goes below zero without a recorded reason, the teacher's hours add up (what left their
allocation = what the students used + what is still in the course), and a held tranche is always released."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlmodel import Session, select

from portal.classroom import services as classroom
from portal.classroom.models import CourseState
from portal.compute.hub_client import HubError, HubServer
from portal.compute.launch import meter_notebooks
from portal.compute.services import SpawnRefused, check_spawn, hub_username
from portal.config import load_settings
from portal.db import make_engine, utcnow
from portal.errors import DomainError
from portal.grants import services as grants
from portal.grants.models import Award, ReviewKind, ReviewMode
from portal.identity.models import FactoryRole
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, CapacityPeriod, LedgerEntry, ResourceKind
from tests.factories import open_now, plan_capacity_around_now
from tests.grants_world import complete_draft, login_of, make_grant_world, staff
from tests.ledger_world import HOUR, make_world, person

SETTINGS = load_settings(env="test", mail_backend="log")


@dataclass
class FlakyHub:
    """The hub as the metering round sees it: the servers spawned and not stopped; while ``stuck`` (an
    outage of its API) every stop fails and the servers run on."""

    servers: dict[tuple[str, str], HubServer] = field(default_factory=dict)
    stuck: bool = False

    def active_servers(self) -> list[HubServer]:
        return list(self.servers.values())

    def stop_server(self, user: str, name: str) -> None:
        if self.stuck:
            raise HubError("the hub did not answer", status=503)
        self.servers.pop((user, name), None)


class CourseMachine(RuleBasedStateMachine):
    def __init__(self, template: Path) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        shutil.copy(template, self.folder / "portal.db")
        self.engine = make_engine(f"sqlite:///{self.folder / 'portal.db'}")
        self.db = Session(self.engine, expire_on_commit=False)
        world = make_world(self.db)
        cpu = ledger.create_resource(
            self.db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test"
        )
        plan_capacity_around_now(self.db, cpu, 100_000 * HOUR)
        self.teacher = world.pi
        self.parent = open_now(self.db, world.project, cpu, 40, days=30)
        self.before = self.parent.balance
        self.course = classroom.create_course(
            self.db,
            SETTINGS,
            self.teacher,
            parent_allocation_id=self.parent.id,
            title="Properties",
            starts_at=utcnow() - timedelta(hours=1),
            ends_at=utcnow() + timedelta(days=10),
            student_cap=2 * HOUR,  # one hour of the 2-core profile each
            max_seats=3,
            profiles=["cpu"],
        )
        self.students: list = []
        self.hub = FlakyHub()
        self.now = utcnow()
        self.servers = 0

    def teardown(self) -> None:
        self.db.close()
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule()
    def join(self) -> None:
        student = person(self.db, f"S{len(self.students)}")
        try:
            classroom.join_course(self.db, student, None, self.course.join_code)
        except DomainError:
            return
        self.students.append(student)

    @rule(index=st.integers(0, 20), hours=st.sampled_from([0.05, 0.25, 0.5, 1.0]))
    def spawn(self, index: int, hours: float) -> None:
        if not self.students:
            return
        student = self.students[index % len(self.students)]
        self.servers += 1
        name = f"n{self.servers}"
        options = {"allocation": self.course.allocation_id, "profile": "cpu", "hours": hours}
        try:
            decision = check_spawn(self.db, SETTINGS, hub_username(student), name, options)
        except SpawnRefused:
            return
        session = decision.session
        self.hub.servers[(session.hub_user, name)] = HubServer(session.hub_user, name, True, None, self.now, "/u/")

    @rule(minutes=st.integers(1, 90), stuck=st.booleans())
    def meter(self, minutes: int, stuck: bool) -> None:
        self.hub.stuck = stuck
        self.now += timedelta(minutes=minutes)
        meter_notebooks(self.db, SETTINGS, self.hub, self.now)

    @rule(index=st.integers(0, 20))
    def remove(self, index: int) -> None:
        if not self.students:
            return
        student = self.students[index % len(self.students)]
        seat = classroom.seat_of(self.db, student, self.course)
        if seat is not None:
            classroom.remove_student(self.db, self.teacher, self.course, seat.id, now=self.now)

    @rule()
    def settle(self) -> None:
        classroom.settle_removed_students(self.db, SETTINGS)

    @rule()
    def close(self) -> None:
        classroom.close_course(self.db, self.teacher, self.course, now=self.now)

    @rule(force=st.booleans())
    def give_back(self, force: bool) -> None:
        self.db.refresh(self.course)
        classroom.return_unused_hours(self.db, self.course, now=self.now, force=force)

    @invariant()
    def no_allocation_goes_below_zero_without_a_recorded_reason(self) -> None:
        for allocation in self.db.exec(select(Allocation)).all():
            self.db.refresh(allocation)
            if allocation.balance < 0:
                reasons = self.db.exec(
                    select(LedgerEntry.reason).where(LedgerEntry.allocation_id == allocation.id)
                ).all()
                assert any("settled" in r for r in reasons), (allocation.id, allocation.balance)
        share = self.db.get(Allocation, self.course.allocation_id)
        assert share is not None and share.balance >= 0  # the spawn checks and the settling keep it so

    @invariant()
    def the_teachers_hours_add_up(self) -> None:
        parent = self.db.get(Allocation, self.parent.id)
        share = self.db.get(Allocation, self.course.allocation_id)
        assert parent is not None and share is not None
        self.db.refresh(parent)
        self.db.refresh(share)
        assert self.before - parent.balance == share.used + share.balance
        assert ledger.balance_mismatches(self.db) == []

    @invariant()
    def seats_add_up(self) -> None:
        self.db.refresh(self.course)
        seats = classroom.overview(self.db, self.teacher, self.course).students
        freed = sum(1 for row in seats if row.seat.seat_freed)
        assert self.course.seats_taken == len(seats) - freed
        share = self.db.get(Allocation, self.course.allocation_id)
        if self.course.state == CourseState.OPEN and share is not None:
            assert sum(row.seat.used for row in seats) == share.used


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_any_sequence_of_course_actions_keeps_the_hours_straight(migrated_sqlite):
    run_state_machine_as_test(
        lambda: CourseMachine(migrated_sqlite),
        settings=settings(
            max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


class AwardMachine(RuleBasedStateMachine):
    """Decisions with tranches on one scarce resource: a held tranche is always released."""

    def __init__(self, template: Path) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp())
        shutil.copy(template, self.folder / "portal.db")
        self.engine = make_engine(f"sqlite:///{self.folder / 'portal.db'}")
        self.db = Session(self.engine, expire_on_commit=False)
        self.g = make_grant_world(self.db, mode=ReviewMode.TECHNICAL, capacity_hours=600, budget_hours=5000)
        self.quarter = ledger.quarter_of(ledger.quarter_of(utcnow().date())[1])[0]
        self.ranked: list = []

    def teardown(self) -> None:
        self.db.close()
        self.engine.dispose()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(hours=st.integers(10, 300))
    def apply(self, hours: int) -> None:
        application = complete_draft(self.db, self.g, hours=hours)
        grants.submit(self.db, SETTINGS, self.g.pi, login_of(self.g.pi), application)
        grants.administrative_check(self.db, SETTINGS, self.g.manager, application, passed=True)
        operator = staff(self.db, FactoryRole.SITE_OPERATOR, f"Op{application.id}")
        review = grants.assign_reviewer(
            self.db, SETTINGS, self.g.manager, application, operator, kind=ReviewKind.TECHNICAL
        )
        grants.submit_review(self.db, operator, review.id, comment_to_applicant="ok", feasible=True)
        grants.complete_technical_assessment(self.db, SETTINGS, self.g.manager, application)
        self.ranked.append((application, hours))

    @rule(index=st.integers(0, 20), percent=st.sampled_from([10, 50, 70, 100]))
    def decide(self, index: int, percent: int) -> None:
        if not self.ranked:
            return
        application, hours = self.ranked.pop(index % len(self.ranked))
        try:
            grants.decide_accept(
                self.db,
                SETTINGS,
                self.g.manager,
                application,
                awarded={self.g.ledger.gpu.id: hours * HOUR},
                first_tranche_percent=percent,
                starts_on=self.quarter,
            )
        except (ledger.CapacityExhausted, grants.BudgetExhausted):
            return  # refused as a whole: nothing happened

    @rule(index=st.integers(0, 20))
    def release(self, index: int) -> None:
        held = self.db.exec(select(Award).where(Award.released_at.is_(None))).all()
        if held:
            award = held[index % len(held)]
            grants.release_tranche(self.db, SETTINGS, self.g.manager, award.id)  # never CapacityExhausted

    @invariant()
    def capacity_holds_every_tranche_and_is_never_exceeded(self) -> None:
        for period in self.db.exec(select(CapacityPeriod)).all():
            self.db.refresh(period)
            assert period.reserved <= period.capacity
        for allocation in self.db.exec(select(Allocation)).all():
            self.db.refresh(allocation)
            held = self.db.exec(select(Award).where(Award.allocation_id == allocation.id)).all()
            assert allocation.reserved == sum(a.amount for a in held)
            assert allocation.balance == sum(a.amount for a in held if a.released_at is not None)
            assert allocation.balance >= 0 and allocation.state != AllocationState.EXPIRED
        assert ledger.balance_mismatches(self.db) == []


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_any_sequence_of_award_decisions_with_tranches_releases_every_tranche(migrated_sqlite):
    run_state_machine_as_test(
        lambda: AwardMachine(migrated_sqlite),
        settings=settings(
            max_examples=15, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
