"""Courses: a teacher's course carved from their allocation, joining with a code, per-student caps, the
spawn check for students, metering against the caps, the end of term, and the course pages."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal.classroom import services as classroom
from portal.classroom.models import Course, CourseSeat, CourseState
from portal.compute.hub_client import HubError, HubServer
from portal.compute.launch import launch_notebook, meter_notebooks
from portal.compute.notebook_charges import _charge, _stop_reason
from portal.compute.notebook_charges import _close as close_session
from portal.compute.services import SpawnRefused, check_spawn, hub_username
from portal.config import Settings
from portal.db import utcnow
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger.jobs import start_and_expire_allocations
from portal.ledger.models import Allocation, AllocationSource, AllocationState, LedgerEntry, Resource, ResourceKind
from portal.notebook_models import NotebookSession
from portal.notifications.models import Notification
from portal.projects.models import ProjectMembership, ProjectRole
from tests.conftest import LoginAttempt, post_form
from tests.factories import cpu_project, open_now, plan_capacity_around_now, running_course
from tests.ledger_world import HOUR, World, make_world, person

# --- builders --------------------------------------------------------------------------------------------


@dataclass
class Classroom:
    world: World
    cpu: Resource
    #: The teacher's (world.pi's) CPU allocation: 1000 core-hours.
    parent: Allocation


@pytest.fixture
def room(db: Session) -> Classroom:
    world = make_world(db)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    plan_capacity_around_now(db, world.gpu, 100_000 * HOUR)
    return Classroom(world, cpu, open_now(db, world.project, cpu, 1000, days=30))


def open_course(db: Session, settings: Settings, room: Classroom, **overrides: Any) -> Course:
    parent = overrides.pop("parent_allocation_id", room.parent.id)
    return running_course(db, settings, room.world.pi, parent, **overrides)


def student_login(user: User, *affiliations: str, entitlements: tuple[str, ...] = ()) -> Login:
    """A login as the session holds it: the attributes the provider asserted."""
    attributes: dict[str, Any] = {}
    if affiliations:
        attributes["external_affiliation"] = list(affiliations)
    if entitlements:
        attributes["entitlement"] = list(entitlements)
    return Login(user_id=user.id, provider="academic", subject="s", level="low", attributes=attributes)


def enrol(db: Session, course: Course, name: str = "Student") -> tuple[User, CourseSeat]:
    student = person(db, name)
    return student, classroom.join_course(db, student, student_login(student), course.join_code)


def fresh(db: Session, obj: Any) -> Any:
    db.expire_all()
    return db.get(type(obj), obj.id)


def spawn_as(db: Session, settings: Settings, user: User, course: Course, *, hours: float = 1, server: str = "n1"):
    options = {"allocation": course.allocation_id, "profile": "cpu", "hours": hours}
    return check_spawn(db, settings, hub_username(user), server, options)


def run_for(db: Session, session: NotebookSession, seconds: int) -> int:
    """The server ran ``seconds`` since it started: the metering charge for that (the real ``_charge``)."""
    session = fresh(db, session)
    if session.started_at is None:
        session.started_at = utcnow() - timedelta(seconds=seconds)
        db.add(session)
        db.commit()
    return _charge(db, session, session.started_at + timedelta(seconds=seconds))


@dataclass
class HubRunning:
    """The hub as the metering round sees it: these servers are up; stopping one is recorded."""

    servers: list[HubServer]
    stopped: list[tuple[str, str]] = field(default_factory=list)

    def active_servers(self) -> list[HubServer]:
        return [s for s in self.servers if (s.user, s.name) not in self.stopped]

    def stop_server(self, user: str, name: str) -> None:
        self.stopped.append((user, name))


def up(session: NotebookSession) -> HubServer:
    return HubServer(session.hub_user, session.server_name, True, None, session.started_at, "/user/x/")


# --- creating a course -------------------------------------------------------------------------------------


def test_creating_a_course_moves_its_hours_from_the_teachers_allocation(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, student_cap=10 * HOUR, max_seats=3)
    parent, share = fresh(db, room.parent), db.get(Allocation, course.allocation_id)
    assert share is not None
    assert (share.source, share.state, share.project_id, share.resource_id) == (
        AllocationSource.COURSE,
        AllocationState.ACTIVE,
        room.world.project.id,
        room.cpu.id,
    )
    assert share.balance == 30 * HOUR and parent.balance == 970 * HOUR
    # capacity-neutral: the parent's reservation already holds the course's hours
    assert share.reserved == 0 and parent.reserved == 1000 * HOUR
    kinds = {e.kind for e in db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == share.id))}
    assert kinds == {"course_share"}
    assert ledger.balance_mismatches(db) == []
    assert re.fullmatch(r"[A-Z2-9]{10}", course.join_code)
    assert course.join_code != open_course(db, settings, room).join_code


def test_a_course_is_refused_beyond_the_allocation_its_dates_or_its_resource(
    db: Session, settings: Settings, room: Classroom
) -> None:
    with pytest.raises(ledger.InsufficientBalance):
        open_course(db, settings, room, student_cap=500 * HOUR, max_seats=3)  # 1500 of 1000 core-hours
    with pytest.raises(InvalidInput, match="within the allocation's dates"):
        open_course(db, settings, room, ends_at=utcnow() + timedelta(days=45))
    with pytest.raises(InvalidInput, match="cannot run on CPU core-hours"):
        open_course(db, settings, room, profiles=["cpu", "1x-h100"])
    with pytest.raises(InvalidInput):
        open_course(db, settings, room, max_seats=0)
    assert fresh(db, room.parent).balance == 1000 * HOUR
    assert db.exec(select(Course)).all() == []


def test_only_the_projects_pi_or_managers_open_courses_from_its_allocations(
    db: Session, settings: Settings, room: Classroom
) -> None:
    member = person(db, "Member")
    db.add(ProjectMembership(project_id=room.world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    now = utcnow()
    arguments: dict[str, Any] = {
        "parent_allocation_id": room.parent.id,
        "title": "Sneaky",
        "starts_at": now,
        "ends_at": now + timedelta(days=3),
        "student_cap": HOUR,
        "max_seats": 1,
        "profiles": ["cpu"],
    }
    with pytest.raises(NotAuthorised):
        classroom.create_course(db, settings, member, **arguments)
    with pytest.raises(NotFound):
        classroom.create_course(db, settings, room.world.other_pi, **arguments)
    assert [o.allocation.id for o in classroom.funding_options(db, room.world.pi)] == [room.parent.id]
    assert classroom.funding_options(db, member) == []


def test_hours_awarded_through_a_call_fund_the_applicants_course(db: Session, settings: Settings) -> None:
    from portal.grants import services as grants
    from portal.grants.models import ReviewMode
    from tests.grants_world import complete_draft, login_of, make_grant_world

    g = make_grant_world(db, mode=ReviewMode.AUTOMATIC, title="Teaching allocations")
    grants.submit(
        db, settings, g.pi, login_of(g.pi), complete_draft(db, g, hours=40)
    )  # a playground call: accepted at once
    award = db.exec(select(Allocation).where(Allocation.project_id == g.project.id)).one()
    assert (award.source, award.balance) == (AllocationSource.AWARD, 40 * HOUR)
    assert [o.allocation.id for o in classroom.funding_options(db, g.pi)] == [award.id]
    course = classroom.create_course(
        db,
        settings,
        g.pi,
        parent_allocation_id=award.id,
        title="GPU programming",
        starts_at=award.starts_at,
        ends_at=award.starts_at + timedelta(days=30),
        student_cap=4 * HOUR,
        max_seats=10,
        profiles=["1x-h100"],
    )
    assert fresh(db, award).balance == 0 and db.get(Allocation, course.allocation_id).balance == 40 * HOUR


def test_a_plain_member_is_told_to_ask_the_projects_pi_or_a_manager(app: Flask, db: Session, login) -> None:
    client = app.test_client()
    member = login(client, given_name="Maris")
    world = make_world(db)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    open_now(db, world.project, cpu, 100)
    db.add(ProjectMembership(project_id=world.project.id, user_id=member.id, role=ProjectRole.MEMBER))
    db.commit()
    assert classroom.projects_to_ask(db, member) == [world.project]
    for page in ("/courses", "/courses/new"):
        html = client.get(page).get_data(as_text=True)
        assert "only a project's PI or a manager can create a course" in html
        assert world.project.title in html and f"/projects/{world.project.id}" in html
        assert "Create course" not in html
    refused = post_form(client, "/courses/new", {"title": "Mine", "allocation_id": "1"}, page="/courses/new")
    assert refused.status_code == 422 and not db.exec(select(Course)).all()


# --- joining -----------------------------------------------------------------------------------------------


def test_students_join_with_the_code_in_any_spelling_and_joining_twice_keeps_one_seat(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room)
    student = person(db, "Student")
    code = course.join_code
    seat = classroom.join_course(db, student, None, f"  {code[:5].lower()}-{code[5:]} ")
    assert (seat.course_id, seat.user_id, seat.cap, seat.used) == (course.id, student.id, 10 * HOUR, 0)
    assert classroom.join_course(db, student, None, code).id == seat.id
    assert fresh(db, course).seats_taken == 1


def test_joining_is_refused_with_a_wrong_code_a_full_or_closed_course(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, max_seats=2)
    with pytest.raises(InvalidInput, match="No course has this code"):
        classroom.join_course(db, person(db), None, "WRONGCODE1")
    enrol(db, course, "First")
    enrol(db, course, "Second")
    with pytest.raises(classroom.CourseFull, match="all 2 seats are taken"):
        enrol(db, course, "Third")
    assert fresh(db, course).seats_taken == 2

    other = open_course(db, settings, room)
    classroom.close_course(db, room.world.pi, other)
    with pytest.raises(classroom.CourseClosed, match="closed"):
        enrol(db, other, "Late")


def test_guessing_codes_is_stopped_after_ten_wrong_ones(db: Session, settings: Settings, room: Classroom) -> None:
    course = open_course(db, settings, room)
    guesser = person(db, "Guesser")
    for i in range(classroom.MAX_JOIN_FAILURES):
        with pytest.raises(InvalidInput):
            classroom.join_course(db, guesser, None, f"GUESS{i:05d}")
    with pytest.raises(classroom.TooManyAttempts, match="Wait 15 minutes"):
        classroom.join_course(db, guesser, None, course.join_code)  # even the right code, for now
    later = utcnow() + classroom.JOIN_FAILURE_WINDOW + timedelta(seconds=1)
    assert classroom.join_course(db, guesser, None, course.join_code, now=later).course_id == course.id
    # someone else is not affected
    assert enrol(db, course, "Honest")[1].course_id == course.id


def test_a_course_can_require_an_affiliation_or_an_entitlement(
    db: Session, settings: Settings, room: Classroom
) -> None:
    for_students = open_course(db, settings, room, required_affiliation="student")
    at_tartu = open_course(db, settings, room, required_affiliation="student@ut.ee")
    entitled = open_course(db, settings, room, required_entitlement="urn:mace:ut.ee:course:dask")
    staff, student, tartu = person(db, "Staff"), person(db, "Stud"), person(db, "Tartu")
    with pytest.raises(classroom.NotEligibleForCourse, match="affiliation “student”"):
        classroom.join_course(db, staff, student_login(staff, "staff@uni.lv"), for_students.join_code)
    with pytest.raises(classroom.NotEligibleForCourse):
        classroom.join_course(db, staff, None, for_students.join_code)  # no login attributes at all
    assert classroom.join_course(db, student, student_login(student, "Student@uni.lv"), for_students.join_code)
    with pytest.raises(classroom.NotEligibleForCourse):
        classroom.join_course(db, student, student_login(student, "student@uni.lv"), at_tartu.join_code)
    assert classroom.join_course(db, tartu, student_login(tartu, "student@ut.ee"), at_tartu.join_code)
    with pytest.raises(classroom.NotEligibleForCourse, match="entitlement"):
        classroom.join_course(db, tartu, student_login(tartu, "student@ut.ee"), entitled.join_code)
    login = student_login(tartu, entitlements=("urn:mace:ut.ee:course:dask",))
    assert classroom.join_course(db, tartu, login, entitled.join_code)


def test_a_removed_student_cannot_rejoin(db: Session, settings: Settings, room: Classroom) -> None:
    course = open_course(db, settings, room)
    student, seat = enrol(db, course)
    classroom.remove_student(db, room.world.pi, course, seat.id)
    with pytest.raises(NotAuthorised, match="removed you"):
        classroom.join_course(db, student, None, course.join_code)


def test_removing_a_student_frees_the_seat_once_their_notebook_stopped_and_covers_a_newcomers_cap_again(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, max_seats=2)  # 10 core-hours each: 20 in the course
    first, first_seat = enrol(db, course, "First")
    enrol(db, course, "Second")
    session = spawn_as(db, settings, first, course).session
    run_for(db, session, 1800)  # the first used 1 core-hour so far, and their notebook runs on
    removal = classroom.remove_student(db, room.world.pi, course, first_seat.id)
    assert removal.waiting and not removal.seat_freed and removal.seat.removed_at is not None
    assert fresh(db, course).seats_taken == 2  # not before the notebook's last minutes are charged
    with pytest.raises(classroom.CourseFull):
        enrol(db, course, "Too early")
    assert classroom.settle_removed_students(db, settings) == 0

    # the next metering round charges the last 15 minutes and stops it; then the seat settles
    session = fresh(db, session)
    hub = HubRunning([up(session)])
    report = meter_notebooks(db, settings, hub, session.started_at + timedelta(seconds=2700))
    assert report.charged == {session.id: 1800} and report.stopped == {session.id: classroom.REMOVED}
    assert classroom.settle_removed_students(db, settings) == 1
    assert classroom.settle_removed_students(db, settings) == 0
    assert fresh(db, course).seats_taken == 1 and fresh(db, first_seat).seat_freed
    # the 1.5 core-hours the first student used moved again from the teacher's allocation: 10 + 10 are covered
    assert db.get(Allocation, course.allocation_id).balance == 20 * HOUR
    assert fresh(db, room.parent).balance == 1000 * HOUR - 20 * HOUR - 5400
    _newcomer, seat = enrol(db, course, "Newcomer")
    assert seat.cap == 10 * HOUR
    with pytest.raises(classroom.CourseFull):
        enrol(db, course, "Late")
    assert not classroom.remove_student(db, room.world.pi, course, first_seat.id).seat_freed
    assert fresh(db, course).seats_taken == 2
    assert ledger.balance_mismatches(db) == []


def test_a_removed_student_without_running_notebooks_frees_the_seat_at_once(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, max_seats=1)
    _student, seat = enrol(db, course)
    removal = classroom.remove_student(db, room.world.pi, course, seat.id)
    assert removal.seat_freed and not removal.waiting
    assert enrol(db, course, "Next")[1].cap == 10 * HOUR


def test_a_removed_students_seat_stays_taken_when_the_teachers_allocation_cannot_cover_it(
    db: Session, settings: Settings, room: Classroom
) -> None:
    small = open_now(db, room.world.project, room.cpu, 20, days=30)
    course = open_course(db, settings, room, parent_allocation_id=small.id, max_seats=2)  # all 20 core-hours
    student, seat = enrol(db, course)
    session = spawn_as(db, settings, student, course).session
    run_for(db, session, 1800)
    close_session(db, fresh(db, session), utcnow(), "stopped by its owner")  # stopped (and charged) before the removal
    removal = classroom.remove_student(db, room.world.pi, course, seat.id)
    assert not removal.seat_freed and not removal.waiting and fresh(db, seat).removed_at is not None
    assert fresh(db, course).seats_taken == 1 and fresh(db, small).balance == 0
    assert ledger.balance_mismatches(db) == []


# --- the spawn check and metering against the cap ------------------------------------------------------------


def test_a_student_spawns_on_the_course_within_the_cap_and_allowed_profiles(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room)  # 10 core-hours each: 5 hours of the 2-core profile
    student, seat = enrol(db, course)
    decision = spawn_as(db, settings, student, course, hours=2)
    assert decision.session.course_seat_id == seat.id
    assert decision.environment["PORTAL_COURSE"] == str(course.id)
    # the first notebook may still run 2 hours (4 core-hours): 6 core-hours, 3 hours, are left
    with pytest.raises(SpawnRefused, match="at most 3 hours"):
        spawn_as(db, settings, student, course, hours=3.5, server="n2")
    spawn_as(db, settings, student, course, hours=3, server="n2")
    with pytest.raises(SpawnRefused, match="used your cap"):
        spawn_as(db, settings, student, course, hours=0.5, server="n3")
    # a GPU course allows the small GPU profile only
    gpu_parent = open_now(db, room.world.project, room.world.gpu, 100)
    gpu_course = open_course(db, settings, room, parent_allocation_id=gpu_parent.id, profiles=["1x-h100"])
    gpu_student, _gpu_seat = enrol(db, gpu_course, "Gpu")
    options = {"allocation": gpu_course.allocation_id, "profile": "2x-h100", "hours": 1}
    with pytest.raises(SpawnRefused, match="only these profiles: 1x-h100"):
        check_spawn(db, settings, hub_username(gpu_student), "g", options)
    assert (
        check_spawn(db, settings, hub_username(gpu_student), "g", {**options, "profile": "1x-h100"}).profile.gpus == 1
    )
    # the teacher's project members are no students: course hours are not theirs to compute with
    with pytest.raises(SpawnRefused, match="only its students"):
        spawn_as(db, settings, room.world.pi, course)
    with pytest.raises(SpawnRefused, match="not one of your projects' allocations"):
        spawn_as(db, settings, person(db, "Stranger"), course)


def test_metering_counts_every_students_use_against_their_cap_and_stops_them_there(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, student_cap=2 * HOUR)  # 1 hour of the 2-core profile
    student, seat = enrol(db, course)
    _other, other_seat = enrol(db, course, "Other")
    first = spawn_as(db, settings, student, course, hours=0.5).session
    second = spawn_as(db, settings, student, course, hours=0.5, server="n2").session
    assert run_for(db, first, 600) == 1200  # 2 cores × 600 s
    assert run_for(db, second, 900) == 1800
    seat = fresh(db, seat)
    assert seat.used == 3000 and seat.capped_at is None
    assert _stop_reason(db, fresh(db, first), utcnow()) is None
    assert run_for(db, first, 1800) == 2400  # 1200 s more
    assert fresh(db, seat).used == 5400
    assert run_for(db, second, 1800) == 1800
    seat = fresh(db, seat)
    assert seat.used == 7200 == seat.cap and seat.capped_at is not None
    assert _stop_reason(db, fresh(db, first), utcnow()) == classroom.CAP_REACHED
    # the course allocation was charged the same, and the other student is untouched
    share = db.get(Allocation, course.allocation_id)
    assert share is not None and share.used == 7200
    assert fresh(db, other_seat).used == 0
    with pytest.raises(SpawnRefused, match="used your cap"):
        spawn_as(db, settings, student, course, hours=0.1, server="n3")

    # the teacher is told once, and a raised cap lets the student go on
    assert classroom.notify_capped_students(db, settings) == 1
    assert classroom.notify_capped_students(db, settings) == 0
    notice = db.exec(select(Notification).where(Notification.user_id == room.world.pi.id)).one()
    assert "reached the cap" in notice.subject and notice.link == f"/courses/{course.id}"
    classroom.raise_cap(db, room.world.pi, course, seat.id, 4 * HOUR)
    seat = fresh(db, seat)
    assert seat.cap == 4 * HOUR and seat.capped_at is None
    assert db.get(Allocation, course.allocation_id).credited == 3 * 2 * HOUR + 2 * HOUR
    assert fresh(db, room.parent).balance == 1000 * HOUR - 8 * HOUR
    assert _stop_reason(db, fresh(db, first), utcnow()) is None
    assert ledger.balance_mismatches(db) == []


def test_removed_students_and_closed_courses_stop_running_notebooks(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room)
    student, seat = enrol(db, course)
    session = spawn_as(db, settings, student, course).session
    run_for(db, session, 60)
    classroom.remove_student(db, room.world.pi, course, seat.id)
    assert _stop_reason(db, fresh(db, session), utcnow()) == classroom.REMOVED
    with pytest.raises(SpawnRefused, match="removed you"):
        spawn_as(db, settings, student, course, server="n2")

    other, _seat = enrol(db, course, "Other")
    running = spawn_as(db, settings, other, course).session
    classroom.close_course(db, room.world.pi, course)
    assert _stop_reason(db, fresh(db, running), utcnow()) == classroom.COURSE_CLOSED
    with pytest.raises(SpawnRefused):
        spawn_as(db, settings, other, course, server="n2")


def test_the_launcher_lets_a_student_use_the_course_allocation(
    db: Session, settings: Settings, room: Classroom
) -> None:
    from portal.compute.hub_client import HubClient

    course = open_course(db, settings, room)
    stranger = person(db, "Stranger")
    unreachable = HubClient("http://127.0.0.1:9", "token", timeout=0.5)
    with pytest.raises(NotFound):
        launch_notebook(db, settings, unreachable, stranger, allocation_id=course.allocation_id, profile="cpu", hours=1)
    student, _seat = enrol(db, course)
    from portal.compute.hub_client import HubUnavailable

    # past the portal's own check, the launcher goes on to the hub (here unreachable)
    with pytest.raises(HubUnavailable):
        launch_notebook(db, settings, unreachable, student, allocation_id=course.allocation_id, profile="cpu", hours=1)


# --- the end of the term -----------------------------------------------------------------------------------


def test_the_end_of_term_returns_unused_hours_once_the_students_notebooks_are_charged_and_stopped(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room, student_cap=10 * HOUR, max_seats=3)  # 30 core-hours
    student, _seat = enrol(db, course)
    session = spawn_as(db, settings, student, course, hours=2).session
    run_for(db, session, 1800)  # 2 cores × 1800 s: 1 core-hour so far
    course.ends_at = utcnow() - timedelta(seconds=1)
    db.add(course)
    db.commit()

    # the ledger's expiry leaves course allocations to the course's own closing
    start_and_expire_allocations(db, settings)
    assert db.get(Allocation, course.allocation_id).state != AllocationState.EXPIRED

    # closed at once, but its hours wait for the running notebook's last charge
    assert classroom.close_ended_courses(db, settings) == 1
    assert fresh(db, course).state == CourseState.CLOSED and fresh(db, room.parent).balance == 970 * HOUR
    session = fresh(db, session)
    hub = HubRunning([up(session)])
    report = meter_notebooks(db, settings, hub, session.started_at + timedelta(seconds=2700))
    assert report.charged == {session.id: 1800} and report.stopped == {session.id: classroom.COURSE_CLOSED}
    assert hub.stopped == [(session.hub_user, session.server_name)]

    assert classroom.close_ended_courses(db, settings) == 0
    course, share, parent = fresh(db, course), db.get(Allocation, course.allocation_id), fresh(db, room.parent)
    assert course.returned == 30 * HOUR - 5400  # 1.5 core-hours used
    assert share is not None and share.state == AllocationState.EXPIRED and share.balance == 0
    assert parent.balance == 970 * HOUR + course.returned and parent.reserved == 1000 * HOUR
    classroom.close_ended_courses(db, settings)
    assert classroom.close_course(db, None, course).returned == 30 * HOUR - 5400  # again: nothing moves
    assert fresh(db, room.parent).balance == parent.balance
    assert ledger.balance_mismatches(db) == []
    with pytest.raises(SpawnRefused):
        spawn_as(db, settings, student, course, server="after")


@dataclass
class HubThatCannotStop(HubRunning):
    """A hub whose servers run on but which fails every stop (an outage of its API, a stuck spawner)."""

    def stop_server(self, user: str, name: str) -> None:
        raise HubError("the hub did not answer", status=503)


def test_a_closed_course_whose_notebook_the_hub_never_stops_keeps_only_its_promise_and_the_hours_add_up(
    db: Session, settings: Settings, room: Classroom
) -> None:
    with time_machine.travel(utcnow() + timedelta(minutes=1), tick=False) as clock:
        course = open_course(db, settings, room)  # 3 seats × 10 core-hours from the teacher's 1000
        student, _seat = enrol(db, course)
        session = spawn_as(db, settings, student, course).session  # 1 hour of 2 cores: 7200 promised
        hub = HubThatCannotStop([HubServer(session.hub_user, session.server_name, True, None, utcnow(), "/u/")])
        meter_notebooks(db, settings, hub)  # seen running
        clock.shift(timedelta(seconds=600))
        meter_notebooks(db, settings, hub)  # 2 cores × 600 s charged
        classroom.close_course(db, room.world.pi, course)
        assert fresh(db, course).returned == 0 and classroom.running_notebooks(db, course) == 1

        clock.shift(classroom.RETURN_GRACE)  # the hub still cannot stop it; the metering goes on charging it
        meter_notebooks(db, settings, hub)
        assert classroom.close_ended_courses(db, settings) == 0
        used = db.get(Allocation, course.allocation_id).used
        assert used == 2 * (600 + int(classroom.RETURN_GRACE.total_seconds()))
        # what the notebook may still be charged stays in the course; the rest is back with the teacher
        course = fresh(db, course)
        assert course.returned == 30 * HOUR - 7200
        assert db.get(Allocation, course.allocation_id).balance == 7200 - used

        clock.shift(timedelta(hours=1))  # past the notebook's time limit: charged in full, still not stopped
        meter_notebooks(db, settings, hub)
        classroom.close_ended_courses(db, settings)
        share = db.get(Allocation, course.allocation_id)
        assert share is not None and share.state == AllocationState.EXPIRED and share.balance == 0
        assert share.used == 7200
        # the teacher: before = after + what the student used, in this path too
        assert fresh(db, room.parent).balance == 1000 * HOUR - 7200
        assert fresh(db, course).returned == 30 * HOUR - 7200
    assert ledger.balance_mismatches(db) == []


def test_hours_of_a_course_outliving_its_parent_expire_instead(
    db: Session, settings: Settings, room: Classroom
) -> None:
    course = open_course(db, settings, room)
    parent = fresh(db, room.parent)
    parent.ends_at = utcnow() - timedelta(seconds=5)  # the parent ended (and expired) first
    db.add(parent)
    db.commit()
    ledger.expire(db, parent.id)
    classroom.close_course(db, room.world.pi, course)
    assert fresh(db, course).returned == 0
    entries = db.exec(select(LedgerEntry).where(LedgerEntry.allocation_id == course.allocation_id)).all()
    assert sorted(e.kind for e in entries) == ["course_share", "expiry"]
    assert ledger.balance_mismatches(db) == []


# --- the teacher's view ---------------------------------------------------------------------------------


def test_a_teacher_sees_only_their_own_courses_students(db: Session, settings: Settings, room: Classroom) -> None:
    mine = open_course(db, settings, room)
    enrol(db, mine, "Mine")
    other_parent = open_now(db, room.world.other_project, room.cpu, 100)
    theirs = classroom.create_course(
        db,
        settings,
        room.world.other_pi,
        parent_allocation_id=other_parent.id,
        title="Their course",
        starts_at=utcnow(),
        ends_at=utcnow() + timedelta(days=5),
        student_cap=HOUR,
        max_seats=5,
        profiles=["cpu"],
    )
    _student, their_seat = enrol(db, theirs, "Theirs")
    view = classroom.overview(db, room.world.pi, mine)
    assert [row.student.display_name for row in view.students] == ["Mine"]
    with pytest.raises(NotFound):
        classroom.overview(db, room.world.pi, theirs)
    with pytest.raises(NotFound):
        classroom.get_course(db, room.world.pi, theirs.id)
    with pytest.raises(NotFound):
        classroom.remove_student(db, room.world.pi, mine, their_seat.id)
    with pytest.raises(NotFound):
        classroom.raise_cap(db, room.world.pi, theirs, their_seat.id, 5 * HOUR)
    # a student of a course sees it, but not its other students
    student = db.exec(select(User).where(User.display_name == "Mine")).one()
    assert classroom.get_course(db, student, mine.id).id == mine.id
    with pytest.raises(NotAuthorised):
        classroom.overview(db, student, mine)


# --- pages ---------------------------------------------------------------------------------------------------


def test_a_teacher_creates_a_course_and_a_student_joins_by_link_on_the_pages(app: Flask, db: Session, login) -> None:
    teacher_client, student_client = app.test_client(), app.test_client()
    teacher = login(teacher_client, given_name="Tiina", family_name="Teacher")
    _world, _project, parent = cpu_project(
        db, teacher, hours=500, title="Teaching", organisation="Tartu Uni", country="EE", days=30
    )

    form = teacher_client.get("/courses/new").get_data(as_text=True)
    assert "Teaching" in form and 'value="cpu"' in form
    today = utcnow().date()
    fields = {
        "title": "Parallel Python",
        "allocation_id": str(parent.id),
        "starts_on": today.isoformat(),
        "ends_on": (today + timedelta(days=20)).isoformat(),
        "student_hours": "40",
        "max_seats": "2",
        "profiles": "cpu",
        "required_affiliation": "student",
    }
    too_many = post_form(teacher_client, "/courses/new", {**fields, "student_hours": "400"}, page="/courses/new")
    left = "more than cpu award has left: 500.0 core-hours"
    assert too_many.status_code == 409 and left in too_many.get_data(as_text=True)
    absurd = post_form(teacher_client, "/courses/new", {**fields, "student_hours": "1e30"}, page="/courses/new")
    assert absurd.status_code == 409 and left in absurd.get_data(as_text=True)
    created = post_form(teacher_client, "/courses/new", fields, page="/courses/new")
    assert created.status_code == 302, created.get_data(as_text=True)
    page = teacher_client.get(created.headers["Location"]).get_data(as_text=True)
    code = re.search(r'<code id="join-code">([A-Z0-9]+)</code>', page).group(1)
    assert "0 / 2" in page and "80.00 core-hours" in page

    login(student_client, given_name="Sten", family_name="Student", voperson_external_affiliation=["student@ut.ee"])
    link = student_client.get(f"/courses/join?code={code}").get_data(as_text=True)
    assert f'value="{code}"' in link
    joined = post_form(student_client, "/courses/join", {"code": code}, page="/courses/join")
    assert joined.status_code == 302
    mine = student_client.get(joined.headers["Location"]).get_data(as_text=True)
    assert "Parallel Python" in mine and "40.0 core-hours" in mine and "Start a notebook" in mine
    assert "Tiina" not in mine and code not in mine  # a student sees their own use, not the course's
    course_page = joined.headers["Location"]
    for hours in ("inf", "nan", "1e400"):
        launched = post_form(
            student_client, f"{course_page}/notebooks", {"profile": "cpu", "hours": hours}, page=course_page
        )
        assert launched.status_code == 422 and "Enter the hours as a number" in launched.get_data(as_text=True)

    staff = app.test_client()
    login(staff, given_name="Sandra", voperson_external_affiliation=["staff@ut.ee"])
    refused = post_form(staff, "/courses/join", {"code": code}, page="/courses/join")
    assert refused.status_code == 403 and "affiliation" in refused.get_data(as_text=True)
    wrong = post_form(staff, "/courses/join", {"code": "NOPE"}, page="/courses/join")
    assert wrong.status_code == 422 and "No course has this code" in wrong.get_data(as_text=True)

    dashboard = teacher_client.get(created.headers["Location"]).get_data(as_text=True)
    assert "Sten Student" in dashboard and "1 / 2" in dashboard
    assert "course-usage-data" in dashboard and "js/course-chart.js" in dashboard
    course_id = int(created.headers["Location"].rsplit("/", 1)[1])
    exported = teacher_client.get(f"/courses/{course_id}/usage.csv")
    assert exported.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(exported.get_data(as_text=True))))
    assert [(r["student"], r["cap_core-hours"], r["used_core-hours"], r["status"]) for r in rows] == [
        ("Sten Student", "40.00", "0.00", "active")
    ]
    # the student is no teacher: no dashboard data, no export, no closing
    assert student_client.get(f"/courses/{course_id}/usage.csv").status_code == 403
    assert post_form(student_client, f"/courses/{course_id}/close", page="/courses").status_code == 403
    assert "Courses" in student_client.get("/courses").get_data(as_text=True)

    closed = post_form(teacher_client, f"/courses/{course_id}/close", page=f"/courses/{course_id}")
    assert closed.status_code == 302
    db.expire_all()
    assert db.get(Allocation, parent.id).balance == 500 * HOUR
    assert "This course is closed" in student_client.get(f"/courses/{course_id}").get_data(as_text=True)


def test_the_teacher_raises_a_cap_and_removes_a_student_on_the_dashboard(
    app: Flask, client: FlaskClient, db: Session, settings: Settings, login
) -> None:
    from portal.projects import services as projects

    teacher = login(client)
    world = make_world(db)
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    org = projects.create_organisation(db, teacher, name="Riga Uni", kind="university", country="LV")
    parent = open_now(db, projects.create_project(db, teacher, org, title="Teaching"), cpu, 100, days=30)
    course = classroom.create_course(
        db,
        settings,
        teacher,
        parent_allocation_id=parent.id,
        title="Caps",
        starts_at=utcnow(),
        ends_at=utcnow() + timedelta(days=5),
        student_cap=HOUR,
        max_seats=2,
        profiles=["cpu"],
    )
    _student, seat = enrol(db, course)
    page = f"/courses/{course.id}"
    assert post_form(client, f"{page}/seats/{seat.id}/cap", {"hours": "3"}, page=page).status_code == 302
    raised = client.get(page).get_data(as_text=True)
    assert "The student&#39;s cap is raised" in raised
    assert '<dd id="course-remaining">4.00 core-hours</dd>' in raised  # 2 seats × 1 core-hour, + 2 for the raise
    assert fresh(db, seat).cap == 3 * HOUR
    post_form(client, f"{page}/seats/{seat.id}/cap", {"hours": "2"}, page=page)
    assert "more than the current" in client.get(page).get_data(as_text=True)
    for absurd in ("1e30", "99999999999999999"):  # far beyond the allocation: a message, not an overflow
        assert post_form(client, f"{page}/seats/{seat.id}/cap", {"hours": absurd}, page=page).status_code == 302
        assert "more hours than cpu award has left: 96.0 core-hours" in client.get(page).get_data(as_text=True)
    assert fresh(db, seat).cap == 3 * HOUR
    assert post_form(client, f"{page}/seats/{seat.id}/remove", page=page).status_code == 302
    assert fresh(db, seat).removed_at is not None
    dashboard = client.get(page).get_data(as_text=True)
    assert "removed" in dashboard and "their seat is free" in dashboard
    assert '<dd id="seats">0 / 2</dd>' in dashboard

    # a name a spreadsheet would run as a formula is exported as text
    enrol(db, course, '=HYPERLINK("http://evil.example","x")')
    rows = list(csv.reader(io.StringIO(client.get(f"{page}/usage.csv").get_data(as_text=True))))
    assert rows[1][0] == '\'=HYPERLINK("http://evil.example","x")' and rows[1][3:6] == ["1.00", "0.00", "1.00"]


def test_the_demos_course_opens_for_anna_and_for_piotr_who_joins_it(make_settings, oidc_provider, login) -> None:
    from portal_standin.demo import DEMO_PROVIDERS, seed_demo_data

    from portal import create_app
    from tests.conftest import provider_configs

    eidas, academic, tara = provider_configs(oidc_provider)
    settings = make_settings(oidc_providers=[eidas, academic.model_copy(update={"name": "myaccessid"}), tara])
    app = create_app(settings)
    try:
        with Session(app.extensions["portal.engine"], expire_on_commit=False) as db:
            seed_demo_data(db, settings)
            course = db.exec(select(Course)).one()
        anna_claims, _admin, piotr_claims = DEMO_PROVIDERS[0].users
        anna, piotr = app.test_client(), app.test_client()
        # the demo's provider knows Anna already (her sub holds slashes, which the test provider's API cannot take)
        assert LoginAttempt(anna, "eidas").start().authorize(anna_claims["sub"]).finish().status_code == 302
        dashboard = anna.get(f"/courses/{course.id}").get_data(as_text=True)
        assert "Dask for data science (demo course)" in dashboard and '<dd id="seats">0 / 20</dd>' in dashboard
        assert course.join_code in dashboard and "120.00 core-hours" in dashboard

        login(piotr, **{k: piotr_claims[k] for k in ("given_name", "family_name", "email", "acr")})
        link = f"/courses/join?code={course.join_code}"
        assert f'value="{course.join_code}"' in piotr.get(link).get_data(as_text=True)
        joined = post_form(piotr, "/courses/join", {"code": course.join_code}, page=link)
        assert joined.headers["Location"] == f"/courses/{course.id}"
        mine = piotr.get(f"/courses/{course.id}").get_data(as_text=True)
        assert '<dd id="my-left">6.00 core-hours</dd>' in mine and "Start a notebook" in mine
        assert re.findall(r'<option[^>]*value="([^"]+)"', mine) == ["cpu"] and course.join_code not in mine
        assert "Piotr Nowak" in anna.get(f"/courses/{course.id}").get_data(as_text=True)
    finally:
        app.extensions["portal.engine"].dispose()


# --- course materials ---------------------------------------------------------------------------------------


def test_course_materials_are_cloned_into_the_students_home_at_the_first_start_only(
    db: Session, settings: Settings, room: Classroom, tmp_path
) -> None:
    import asyncio
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hub_config"))
    from course_materials import clone_course_materials

    with pytest.raises(InvalidInput, match="https://"):
        open_course(db, settings, room, materials_url="file:///etc")
    course = open_course(db, settings, room, materials_url="https://git.example.eu/teacher/dask-course.git")
    student, _seat = enrol(db, course)
    environment = spawn_as(db, settings, student, course).environment
    assert environment["PORTAL_COURSE_MATERIALS"] == "https://git.example.eu/teacher/dask-course.git"

    # the hub's hook, run on what the spawn check answered; a local repository stands in for the remote one
    origin = tmp_path / "origin"
    git = ["git", "-c", "user.name=T", "-c", "user.email=t@example.eu", "-C", str(origin)]
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    (origin / "lesson1.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "lesson 1"], check=True)
    home = tmp_path / "home" / f"u{student.id}"
    spawner = SimpleNamespace(environment={**environment, "PORTAL_COURSE_MATERIALS": str(origin)}, home_dir=str(home))
    cloned = asyncio.run(clone_course_materials(spawner))
    assert cloned == home / f"course-{course.id}"
    assert (cloned / "lesson1.ipynb").exists()
    (cloned / "lesson1.ipynb").write_text("the student's own work")
    assert asyncio.run(clone_course_materials(spawner)) == cloned  # the second start keeps the student's work
    assert (cloned / "lesson1.ipynb").read_text() == "the student's own work"
    # a course without materials, or a broken address, starts the server without cloning
    assert asyncio.run(clone_course_materials(SimpleNamespace(environment={}, home_dir=str(home)))) is None
    broken = SimpleNamespace(
        environment={"PORTAL_COURSE": "999", "PORTAL_COURSE_MATERIALS": str(tmp_path / "no")}, home_dir=str(home)
    )
    assert asyncio.run(clone_course_materials(broken)) is None


def test_a_students_sessions_page_shows_what_is_left_of_their_cap_not_the_classes_hours(
    app: Flask,
    db: Session,
    settings: Settings,
    room: Classroom,
    login,
) -> None:
    course = open_course(db, settings, room)  # 3 seats x 10 core-hours
    client = app.test_client()
    student = login(client, given_name="Sandra", family_name="Student")
    classroom.join_course(db, student, student_login(student), course.join_code)
    decision = spawn_as(db, settings, student, course)
    run_for(db, decision.session, 1800)  # 2 cores for half an hour: 1 core-hour of her 10

    page = client.get("/notebooks").get_data(as_text=True)
    assert "9.0 core-hours" in page and "of your course cap" in page
    assert "29.0 core-hours" not in page  # the course's own balance is the teacher's business


def test_a_students_dashboard_lists_the_course_and_running_notebooks_first(
    app: Flask, db: Session, settings: Settings, room: Classroom, login
) -> None:
    course = open_course(db, settings, room)
    browser = app.test_client()
    student = login(browser, given_name="Piotr")
    before = browser.get("/").get_data(as_text=True)
    assert "Your courses" not in before
    classroom.join_course(db, student, student_login(student), course.join_code)
    page = browser.get("/").get_data(as_text=True)
    assert f'<a href="/courses/{course.id}">Intro to Dask</a>' in page
    assert page.index("Your courses") < page.index("Your projects")
    assert "you need no project for them" in page
    session = spawn_as(db, settings, student, course).session
    page = browser.get("/").get_data(as_text=True)
    assert f'href="/notebooks/{session.id}"' in page
    assert page.index("Your running notebooks") < page.index("Your courses") < page.index("Your projects")
