"""Courses under real concurrency on PostgreSQL: the last seats, one student's sessions charged at once, and
two workers closing the same course."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from portal.classroom import services as classroom
from portal.classroom.models import Course, CourseSeat, CourseState
from portal.compute.notebook_charges import _charge, _stop_reason
from portal.compute.services import check_spawn, hub_username
from portal.config import load_settings
from portal.db import utcnow
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, ResourceKind
from portal.notebook_models import NotebookSession
from tests.factories import open_now, plan_capacity_around_now
from tests.ledger import test_ledger_postgres
from tests.ledger.test_ledger_postgres import all_at_once
from tests.ledger_world import HOUR, make_world, person

pytestmark = pytest.mark.postgres
THREADS = 24
#: The ledger's PostgreSQL fixture: a migrated engine with a connection for each thread.
engine = test_ledger_postgres.engine


SETTINGS = load_settings(env="test")


def a_course(engine, *, seats: int, cap: int) -> Course:
    with Session(engine, expire_on_commit=False) as db:
        world = make_world(db)
        cpu = ledger.create_resource(
            db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
        )
        plan_capacity_around_now(db, cpu, 100_000 * HOUR)
        parent = open_now(db, world.project, cpu, 1000)
        return classroom.create_course(
            db,
            SETTINGS,
            world.pi,
            parent_allocation_id=parent.id,
            title="Concurrency 101",
            starts_at=utcnow() - timedelta(hours=1),
            ends_at=utcnow() + timedelta(days=10),
            student_cap=cap,
            max_seats=seats,
            profiles=["cpu"],
        )


def test_24_students_racing_for_5_seats_take_exactly_5(engine) -> None:
    course = a_course(engine, seats=5, cap=HOUR)
    with Session(engine, expire_on_commit=False) as db:
        students = [person(db, f"Racer{i}") for i in range(THREADS)]

    def join(i: int) -> CourseSeat:
        with Session(engine, expire_on_commit=False) as db:
            return classroom.join_course(db, students[i], None, course.join_code)

    results = all_at_once(THREADS, join)
    seated = [r for r in results if isinstance(r, CourseSeat)]
    full = [r for r in results if isinstance(r, classroom.CourseFull)]
    assert len(seated) == 5 and len(full) == THREADS - 5, [r for r in results if isinstance(r, Exception)]
    with Session(engine) as db:
        assert db.get(Course, course.id).seats_taken == 5
        count = db.exec(sa.select(sa.func.count()).select_from(CourseSeat).where(CourseSeat.course_id == course.id))
        assert count.scalar_one() == 5


def test_one_students_sessions_charged_at_once_by_two_workers_count_exactly_once_against_the_cap(engine) -> None:
    sessions_per_student = 8
    course = a_course(engine, seats=2, cap=2 * HOUR)  # 7200 core-seconds: 8 sessions × 450 s × 2 cores
    with Session(engine, expire_on_commit=False) as db:
        student = person(db, "Busy")
        seat = classroom.join_course(db, student, None, course.join_code)
        sessions = []
        for n in range(sessions_per_student):
            options = {"allocation": course.allocation_id, "profile": "cpu", "hours": 0.125}
            session = check_spawn(db, SETTINGS, hub_username(student), f"n{n}", options).session
            session.started_at = utcnow() - timedelta(seconds=450)
            db.add(session)
            db.commit()
            sessions.append(session.id)

    def meter(i: int) -> int:
        """Thread i meters session i // 2: two workers per session, three rounds each."""
        charged = 0
        with Session(engine, expire_on_commit=False) as db:
            for seconds in (150, 300, 450):
                session = db.get(NotebookSession, sessions[i // 2], populate_existing=True)
                assert session is not None and session.started_at is not None
                charged += _charge(db, session, session.started_at + timedelta(seconds=seconds))
        return charged

    results = all_at_once(2 * sessions_per_student, meter)
    assert [r for r in results if isinstance(r, Exception)] == []
    assert sum(results) == 7200
    with Session(engine) as db:
        fresh = db.get(CourseSeat, seat.id)
        share = db.get(Allocation, course.allocation_id)
        assert fresh is not None and share is not None
        assert fresh.used == share.used == 7200 == fresh.cap
        assert fresh.capped_at is not None
        assert ledger.balance_mismatches(db) == []
        session = db.get(NotebookSession, sessions[0])
        assert _stop_reason(db, session, utcnow()) == classroom.CAP_REACHED


def test_two_workers_closing_one_ended_course_return_its_hours_once(engine) -> None:
    course = a_course(engine, seats=4, cap=5 * HOUR)
    with Session(engine, expire_on_commit=False) as db:
        parent_before = db.get(Allocation, course.parent_allocation_id).balance
        db.execute(sa.update(Course).where(Course.id == course.id).values(ends_at=utcnow() - timedelta(seconds=1)))
        db.commit()

    def close(_i: int) -> int:
        with Session(engine, expire_on_commit=False) as db:
            return classroom.close_ended_courses(db, SETTINGS)

    results = all_at_once(4, close)
    assert [r for r in results if isinstance(r, Exception)] == []
    with Session(engine) as db:
        closed = db.get(Course, course.id)
        parent = db.get(Allocation, course.parent_allocation_id)
        assert closed is not None and parent is not None
        assert closed.state == CourseState.CLOSED and closed.returned == 20 * HOUR
        assert parent.balance == parent_before + 20 * HOUR
        assert ledger.balance_mismatches(db) == []


def test_30_concurrent_wrong_codes_of_one_user_are_looked_at_no_more_than_the_limit(engine) -> None:
    a_course(engine, seats=1, cap=HOUR)
    with Session(engine, expire_on_commit=False) as db:
        guesser = person(db, "Guesser")

    def guess(i: int) -> object:
        with Session(engine, expire_on_commit=False) as db:
            return classroom.join_course(db, guesser, None, f"WRONG{i:05d}")

    results = all_at_once(THREADS + 6, guess)
    looked_at = [r for r in results if isinstance(r, classroom.InvalidInput)]
    refused = [r for r in results if isinstance(r, classroom.TooManyAttempts)]
    assert len(looked_at) + len(refused) == THREADS + 6, [r for r in results if not isinstance(r, Exception)]
    assert 1 <= len(looked_at) <= classroom.MAX_JOIN_FAILURES
    with Session(engine) as db:
        count = db.exec(
            sa.select(sa.func.count())
            .select_from(classroom.CourseJoinFailure)
            .where(classroom.CourseJoinFailure.user_id == guesser.id)
        )
        assert count.scalar_one() == len(looked_at)  # the wrong codes are recorded, the refusals are not
