"""Courses: creating one from a teacher's allocation, joining with a code, caps per student, closing.

The hours: creating a course moves ``student_cap × max_seats`` out of the teacher's allocation into the
course's own allocation (``ledger.share_to_course``, capacity-neutral), so every seat's cap is covered;
raising one student's cap moves the difference the same way. Students' notebooks are charged to the course
allocation, and each charge also moves the seat's ``used`` in the same transaction (``record_seat_usage``).
Closing the course (by the teacher, or by the worker at the term's end) returns the unused balance to the
teacher's allocation (``ledger.return_course_hours``) once the students' notebooks are stopped and charged;
both are idempotent and safe to run concurrently.

Seats: ``seats_taken`` moves only by conditional UPDATEs (``seats_taken < max_seats`` to join), so concurrent
joins never take more seats than there are; removing a student frees their seat, and the hours they used of
it move again from the teacher's allocation so that a newcomer's cap is covered.
"""

from __future__ import annotations

import csv
import io
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from portal.authz import Action, require
from portal.classroom.models import Course, CourseJoinFailure, CourseSeat, CourseState
from portal.config import NotebookProfile, Settings
from portal.db import utcnow
from portal.errors import Conflict, DomainError, InvalidInput, NotAuthorised, NotFound
from portal.formatting import csv_safe, display_amount, quantity
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    EntryKind,
    LedgerEntry,
    Resource,
    ResourceKind,
)
from portal.notebook_models import NotebookSession
from portal.notifications.services import notify
from portal.projects.models import Project, ProjectMembership, ProjectRole

#: Join codes: no look-alike characters (0/O, 1/I/L); 10 of 31 symbols are about 2^49 codes.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10
#: Wrong codes a user may try within ``JOIN_FAILURE_WINDOW`` before being asked to wait.
MAX_JOIN_FAILURES = 10
JOIN_FAILURE_WINDOW = timedelta(minutes=15)
MAX_SEATS = 1000
#: How long a closed course's hours wait for its notebooks to stop (an unreachable hub) before going back anyway.
RETURN_GRACE = timedelta(minutes=30)

CAP_REACHED = "course cap reached"
REMOVED = "removed from course"
COURSE_CLOSED = "course closed"


class CourseFull(Conflict):
    title = "Course full"


class CourseClosed(Conflict):
    title = "Course closed"


class NotEligibleForCourse(NotAuthorised):
    title = "Not eligible for this course"


class TooManyAttempts(DomainError):
    status = 429
    title = "Too many attempts"


# --- creating ------------------------------------------------------------------------------------------


def new_join_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(code: str) -> str:
    """What a person typed (or a link carried) as a code: case, spaces and dashes do not matter."""
    return re.sub(r"[\s-]", "", code or "").upper()[:32]


def profile_fits(profile: NotebookProfile, resource: Resource) -> bool:
    """Whether the profile runs on the resource (the spawn check's rule: GPUs of the model, or CPUs)."""
    if profile.gpus > 0:
        return (
            resource.kind == ResourceKind.GPU
            and (resource.gpu_model or "").casefold() == (profile.gpu_model or "").casefold()
        )
    return resource.kind == ResourceKind.CPU


@dataclass(frozen=True)
class FundingOption:
    """An allocation a teacher may fund a course from."""

    allocation: Allocation
    resource: Resource
    project: Project


def funding_options(db: Session, actor: User) -> list[FundingOption]:
    """Allocations with hours left, of projects the actor leads (PI or manager), that are not courses."""
    rows = db.exec(
        select(Allocation, Resource, Project)
        .join(Resource, Resource.id == Allocation.resource_id)  # type: ignore[arg-type]
        .join(Project, Project.id == Allocation.project_id)  # type: ignore[arg-type]
        .join(ProjectMembership, ProjectMembership.project_id == Project.id)  # type: ignore[arg-type]
        .where(
            ProjectMembership.user_id == actor.id,
            col(ProjectMembership.role).in_([ProjectRole.PI, ProjectRole.MANAGER]),
            col(Allocation.state).in_([AllocationState.ACTIVE, AllocationState.PENDING]),
            col(Allocation.source) != AllocationSource.COURSE,
            col(Allocation.balance) > 0,
            col(Resource.kind) != ResourceKind.STORAGE,
        )
        .order_by(col(Project.title), col(Allocation.id))
    ).all()
    return [FundingOption(a, r, p) for a, r, p in rows]


def projects_to_ask(db: Session, actor: User) -> list[Project]:
    """Projects with hours left where the actor is a plain member: only their PI or a manager can fund a course
    from them (moving a project's hours is theirs to decide), so the actor is told to ask them."""
    return list(
        db.exec(
            select(Project)
            .join(ProjectMembership, ProjectMembership.project_id == Project.id)  # type: ignore[arg-type]
            .where(
                ProjectMembership.user_id == actor.id,
                col(ProjectMembership.role).not_in([ProjectRole.PI, ProjectRole.MANAGER]),
                sa.exists().where(
                    Allocation.project_id == Project.id,
                    col(Allocation.state).in_([AllocationState.ACTIVE, AllocationState.PENDING]),
                    col(Allocation.source) != AllocationSource.COURSE,
                    col(Allocation.balance) > 0,
                    col(Allocation.resource_id).in_(select(Resource.id).where(Resource.kind != ResourceKind.STORAGE)),
                ),
            )
            .order_by(col(Project.title))
        ).all()
    )


def _check_materials(url: str) -> str:
    url = url.strip()
    if url and not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+", url):
        raise InvalidInput(
            "Course materials are a public git repository's https:// address.",
            errors={"materials_url": "An https:// address of a git repository."},
        )
    return url


def create_course(
    db: Session,
    settings: Settings,
    actor: User,
    *,
    parent_allocation_id: int,
    title: str,
    starts_at: datetime,
    ends_at: datetime,
    student_cap: int,
    max_seats: int,
    profiles: list[str],
    required_affiliation: str = "",
    required_entitlement: str = "",
    materials_url: str = "",
) -> Course:
    """Open a course funded from ``parent_allocation_id``, which the actor must manage (PI or manager)."""
    title = title.strip()
    if not title:
        raise InvalidInput("Give the course a title.", errors={"title": "Required."})
    if not isinstance(max_seats, int) or not 1 <= max_seats <= MAX_SEATS:
        raise InvalidInput(f"From 1 to {MAX_SEATS} seats.", errors={"max_seats": f"From 1 to {MAX_SEATS}."})
    if not isinstance(student_cap, int) or student_cap <= 0:
        raise InvalidInput("Each student needs some hours.", errors={"student_hours": "Must be more than zero."})
    parent = db.get(Allocation, parent_allocation_id)
    if parent is None:
        raise NotFound("No such allocation.")
    require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
    resource = db.get(Resource, parent.resource_id)
    assert resource is not None
    chosen = [settings.notebook_profile(name) for name in dict.fromkeys(profiles)]
    if not chosen or None in chosen:
        raise InvalidInput("Choose the notebook profiles students may start.", errors={"profiles": "Choose one."})
    unfit = [p.label for p in chosen if p is not None and not profile_fits(p, resource)]
    if unfit:
        raise InvalidInput(
            f"{', '.join(unfit)} cannot run on {resource.name}.",
            errors={"profiles": f"Not for {resource.name}: {', '.join(unfit)}."},
        )
    materials_url = _check_materials(materials_url)
    budget = student_cap * max_seats
    if budget > parent.balance:
        raise ledger.InsufficientBalance(
            f"The hours per student × {max_seats} seats are more than {parent.title} has left: "
            f"{quantity(parent.balance, resource.kind)}.",
            errors={"student_hours": f"At most {quantity(parent.balance // max_seats, resource.kind)} each."},
        )
    with ledger.unit_of_work(db):
        allocation = ledger.share_to_course(
            db,
            actor,
            parent_id=parent.id,  # type: ignore[arg-type]
            amount=budget,
            starts_at=starts_at,
            ends_at=ends_at,
            title=f"Course: {title}"[:200],
        )
        course = Course(
            title=title[:200],
            teacher_id=actor.id,  # type: ignore[arg-type]
            project_id=parent.project_id,
            parent_allocation_id=parent.id,  # type: ignore[arg-type]
            allocation_id=allocation.id,  # type: ignore[arg-type]
            starts_at=starts_at,
            ends_at=ends_at,
            student_cap=student_cap,
            max_seats=max_seats,
            profiles=[p.name for p in chosen if p is not None],
            join_code=new_join_code(),
            required_affiliation=required_affiliation.strip()[:200],
            required_entitlement=required_entitlement.strip()[:500],
            materials_url=materials_url,
        )
        db.add(course)
        db.flush()
    return course


# --- reading -------------------------------------------------------------------------------------------


def get_course(db: Session, actor: User, course_id: int, action: Action = Action.VIEW_COURSE) -> Course:
    """The course, if the actor may ``action`` it; otherwise ``NotFound`` (not theirs) or ``NotAuthorised``."""
    course = db.get(Course, course_id)
    if course is None:
        raise NotFound("No such course.")
    require(db, actor, action, course)
    return course


def seat_of(db: Session, user: User, course: Course) -> CourseSeat | None:
    return db.exec(select(CourseSeat).where(CourseSeat.course_id == course.id, CourseSeat.user_id == user.id)).first()


def student_seat(db: Session, user: User, allocation_id: int) -> tuple[Course, CourseSeat] | None:
    """The course whose allocation this is, and the user's seat in it (also a removed one), if any."""
    row = db.exec(
        select(Course, CourseSeat)
        .join(CourseSeat, CourseSeat.course_id == Course.id)  # type: ignore[arg-type]
        .where(Course.allocation_id == allocation_id, CourseSeat.user_id == user.id)
    ).first()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True)
class MyCourses:
    teaching: list[tuple[Course, Resource, Allocation]]
    attending: list[tuple[Course, CourseSeat, Resource]]


def courses_of(db: Session, actor: User) -> MyCourses:
    teaching = db.exec(
        select(Course, Resource, Allocation)
        .join(Allocation, Allocation.id == Course.allocation_id)  # type: ignore[arg-type]
        .join(Resource, Resource.id == Allocation.resource_id)  # type: ignore[arg-type]
        .where(Course.teacher_id == actor.id)
        .order_by(col(Course.starts_at).desc(), col(Course.id).desc())
    ).all()
    attending = db.exec(
        select(Course, CourseSeat, Resource)
        .join(CourseSeat, CourseSeat.course_id == Course.id)  # type: ignore[arg-type]
        .join(Allocation, Allocation.id == Course.allocation_id)  # type: ignore[arg-type]
        .join(Resource, Resource.id == Allocation.resource_id)  # type: ignore[arg-type]
        .where(CourseSeat.user_id == actor.id)
        .order_by(col(Course.starts_at).desc(), col(Course.id).desc())
    ).all()
    return MyCourses(list(teaching), list(attending))  # type: ignore[arg-type]


@dataclass(frozen=True)
class StudentRow:
    seat: CourseSeat
    student: User
    #: Notebooks of this student still running.
    running: int

    @property
    def remaining(self) -> int:
        return max(0, self.seat.cap - self.seat.used)


@dataclass(frozen=True)
class CourseOverview:
    """The teacher's view of a course, read in a fixed number of queries."""

    course: Course
    allocation: Allocation
    resource: Resource
    students: list[StudentRow]
    running_sessions: list[tuple[NotebookSession, User]]

    @property
    def used(self) -> int:
        return sum(row.seat.used for row in self.students)


def overview(db: Session, actor: User, course: Course) -> CourseOverview:
    require(db, actor, Action.MANAGE_COURSE, course)
    allocation, resource = db.exec(
        select(Allocation, Resource)
        .join(Resource, Resource.id == Allocation.resource_id)  # type: ignore[arg-type]
        .where(Allocation.id == course.allocation_id)
    ).one()
    seats = db.exec(
        select(CourseSeat, User)
        .join(User, User.id == CourseSeat.user_id)  # type: ignore[arg-type]
        .where(CourseSeat.course_id == course.id)
        .order_by(col(User.display_name), col(CourseSeat.id))
    ).all()
    running = db.exec(
        select(NotebookSession, User)
        .join(CourseSeat, CourseSeat.id == NotebookSession.course_seat_id)  # type: ignore[arg-type]
        .join(User, User.id == NotebookSession.user_id)  # type: ignore[arg-type]
        .where(CourseSeat.course_id == course.id, col(NotebookSession.stopped_at).is_(None))
        .order_by(col(NotebookSession.requested_at))
    ).all()
    per_seat: dict[int, int] = {}
    for session, _user in running:
        per_seat[session.course_seat_id] = per_seat.get(session.course_seat_id, 0) + 1  # type: ignore[index,arg-type]
    students = [StudentRow(seat, user, per_seat.get(seat.id, 0)) for seat, user in seats]  # type: ignore[arg-type]
    return CourseOverview(course, allocation, resource, students, list(running))  # type: ignore[arg-type]


def usage_csv(db: Session, actor: User, course: Course) -> str:
    """Use per student, in display units of the course's resource (hours, exact to two places), one row per
    student; names a spreadsheet would run as a formula are defused."""
    view = overview(db, actor, course)
    unit, kind = view.resource.display_unit, view.resource.kind
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["student", "email", "joined_at", f"cap_{unit}s", f"used_{unit}s", f"remaining_{unit}s", "status"])
    for row in view.students:
        status = "removed" if row.seat.removed_at else ("capped" if row.seat.used >= row.seat.cap else "active")
        writer.writerow(
            [
                csv_safe(row.student.display_name),
                csv_safe(row.student.email or ""),
                row.seat.joined_at.isoformat(timespec="seconds"),
                *(
                    display_amount(v, kind, places=2).replace(",", "")
                    for v in (row.seat.cap, row.seat.used, row.remaining)
                ),
                status,
            ]
        )
    return out.getvalue()


# --- joining -------------------------------------------------------------------------------------------


def _affiliated(login: Login | None, required: str) -> bool:
    """``required`` "student" matches "student@ut.ee"; "student@ut.ee" only itself (case-insensitive)."""
    if login is None:
        return False
    values = [str(v).casefold() for v in login.attributes.get("external_affiliation") or []]
    wanted = required.casefold()
    return any(v == wanted or ("@" not in wanted and v.split("@", 1)[0] == wanted) for v in values)


def _in_teachers_project(db: Session, user_id: int | None, course: Course) -> bool:
    """Members of the teacher's project compute on its own allocations, never on the students' hours."""
    member = select(ProjectMembership.id).where(
        ProjectMembership.project_id == course.project_id, ProjectMembership.user_id == user_id
    )
    return db.exec(member).first() is not None


def _entitled(login: Login | None, required: str) -> bool:
    return login is not None and required in [str(v) for v in login.attributes.get("entitlement") or []]


def _claim_attempt(db: Session, actor: User, now: datetime) -> CourseJoinFailure:
    """Record this attempt before the code is looked at, then count: of concurrent attempts, each sees at
    least those committed before it, so no more than ``MAX_JOIN_FAILURES`` are ever looked at. A refused
    attempt is not kept (the wait runs from the wrong codes, not from the refusals)."""
    attempt = CourseJoinFailure(user_id=actor.id, attempted_at=now)  # type: ignore[arg-type]
    db.add(attempt)
    db.commit()
    recent = db.exec(
        select(func.count()).where(
            CourseJoinFailure.user_id == actor.id, col(CourseJoinFailure.attempted_at) > now - JOIN_FAILURE_WINDOW
        )
    ).one()
    if int(recent) > MAX_JOIN_FAILURES:
        db.delete(attempt)
        db.commit()
        minutes = int(JOIN_FAILURE_WINDOW.total_seconds() // 60)
        raise TooManyAttempts(f"Too many wrong codes. Wait {minutes} minutes and try again.")
    return attempt


def find_course_by_code(db: Session, actor: User, code: str, *, now: datetime | None = None) -> Course:
    """The course with this join code; a wrong code is recorded (and too many of them refused, atomically)."""
    now = now or utcnow()
    attempt = _claim_attempt(db, actor, now)
    code = normalise_code(code)
    course = db.exec(select(Course).where(Course.join_code == code)).first() if code else None
    if course is None:
        message = "No course has this code. Check it with your teacher."
        raise InvalidInput(message, errors={"code": message})
    db.delete(attempt)  # the right code: no failure
    db.commit()
    return course


def join_course(db: Session, actor: User, login: Login | None, code: str, *, now: datetime | None = None) -> CourseSeat:
    """Take a seat in the course with this code; joining again returns the seat already held."""
    now = now or utcnow()
    course = find_course_by_code(db, actor, code, now=now)
    existing = seat_of(db, actor, course)
    if existing is not None:
        if existing.removed_at is not None:
            raise NotAuthorised("Your teacher removed you from this course; ask them if this is a mistake.")
        return existing
    if course.teacher_id == actor.id:
        raise InvalidInput("You teach this course; students join it with the code.", errors={"code": "Yours."})
    if _in_teachers_project(db, actor.id, course):
        raise NotEligibleForCourse(
            f"You are a member of the project that funds “{course.title}”: its hours are the students'. "
            "Compute on your project's own allocations instead."
        )
    if course.state != CourseState.OPEN or now >= course.ends_at:
        raise CourseClosed(f"The course “{course.title}” is closed; joining it is no longer possible.")
    if course.required_affiliation and not _affiliated(login, course.required_affiliation):
        raise NotEligibleForCourse(
            f"The course “{course.title}” is for people with the affiliation “{course.required_affiliation}”. "
            "Log in with your institution's account (academic federation) and try again."
        )
    if course.required_entitlement and not _entitled(login, course.required_entitlement):
        raise NotEligibleForCourse(
            f"The course “{course.title}” needs the entitlement “{course.required_entitlement}” from your login. "
            "Log in with the account your institution registered for this course."
        )
    table = Course.__table__  # type: ignore[attr-defined]
    taken = db.execute(
        sa.update(table)
        .where(table.c.id == course.id, table.c.seats_taken < table.c.max_seats, table.c.state == CourseState.OPEN)
        .values(seats_taken=table.c.seats_taken + 1)
    )
    if taken.rowcount != 1:
        db.rollback()
        raise CourseFull(f"The course “{course.title}” is full: all {course.max_seats} seats are taken.")
    seat = CourseSeat(course_id=course.id, user_id=actor.id, cap=course.student_cap, joined_at=now)  # type: ignore[arg-type]
    db.add(seat)
    try:
        db.commit()
    except IntegrityError:  # the same person joined at the same moment in another request
        db.rollback()
        again = seat_of(db, actor, course)
        if again is None:
            raise
        return again
    return seat


# --- hours promised to running notebooks ------------------------------------------------------------------


def hours_promised(
    db: Session,
    *,
    allocation_id: int | None = None,
    seat_id: int | None = None,
    replacing: tuple[str, str] | None = None,
) -> int:
    """Base units that notebooks not yet stopped may still be charged (each up to the hours it was started
    for), on an allocation or of one student's seat; ``replacing`` (hub user, server name) leaves out the
    server being spawned again, whose earlier record the next metering round closes."""
    units = sa.case((col(NotebookSession.gpus) > 0, col(NotebookSession.gpus)), else_=col(NotebookSession.cpus))
    left = sa.case(
        (
            col(NotebookSession.max_seconds) > col(NotebookSession.charged_seconds),
            col(NotebookSession.max_seconds) - col(NotebookSession.charged_seconds),
        ),
        else_=0,
    )
    stmt = select(func.coalesce(func.sum(left * units), 0)).where(col(NotebookSession.stopped_at).is_(None))
    if allocation_id is not None:
        stmt = stmt.where(NotebookSession.allocation_id == allocation_id)
    if seat_id is not None:
        stmt = stmt.where(NotebookSession.course_seat_id == seat_id)
    if replacing is not None:
        stmt = stmt.where(
            sa.not_(sa.and_(NotebookSession.hub_user == replacing[0], NotebookSession.server_name == replacing[1]))
        )
    return int(db.exec(stmt).one())


def course_hours_promised(db: Session, course: Course, *, replacing: tuple[str, str] | None = None) -> int:
    """What the course's running notebooks (all students') may still be charged."""
    return hours_promised(db, allocation_id=course.allocation_id, replacing=replacing)


def course_spawn_refusal(
    db: Session,
    course: Course,
    seat: CourseSeat,
    amount: int,
    *,
    per_second: int,
    kind: ResourceKind,
    replacing: tuple[str, str] | None = None,
) -> str | None:
    """Why a student may not start a notebook that may be charged ``amount`` (``per_second`` base units a
    second) on the course, beyond their own cap, or None: a member of the teacher's project computes on the
    project's own allocations; and ``amount`` must fit what the course allocation holds after every running
    notebook's promise, whoever started it. The course allocation's row stays locked until the caller
    commits the new notebook, so two spawns cannot both be promised the same hours."""
    if _in_teachers_project(db, seat.user_id, course):
        return (
            f"You are a member of the project that funds “{course.title}”: its hours are the students'. "
            "Compute on your project's own allocations instead."
        )
    allocation = db.exec(
        select(Allocation)
        .where(Allocation.id == course.allocation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    left = allocation.balance - course_hours_promised(db, course, replacing=replacing)
    if amount <= left:
        return None
    if left < per_second:
        return (
            f"The course “{course.title}” has no hours left for another notebook now (counting the notebooks "
            "running). Ask your teacher."
        )
    return (
        f"The course “{course.title}” has {quantity(left, kind)} left for notebooks (counting the notebooks "
        f"running): ask for at most {math.floor(left / per_second / 36) / 100:g} hours."
    )


# --- the teacher's changes -------------------------------------------------------------------------------


def _seat_in(db: Session, course: Course, seat_id: int) -> CourseSeat:
    seat = db.get(CourseSeat, seat_id)
    if seat is None or seat.course_id != course.id:
        raise NotFound("No such student in this course.")
    return seat


def _fund_more(db: Session, actor: User, course: Course, amount: int, reason: str) -> None:
    """Move ``amount`` more from the teacher's allocation into the course's (the actor must manage it)."""
    ledger.top_up_course(
        db,
        actor,
        parent_id=course.parent_allocation_id,
        course_allocation_id=course.allocation_id,
        amount=amount,
        reason=reason[:1000],
    )


def raise_cap(db: Session, actor: User, course: Course, seat_id: int, new_cap: int) -> CourseSeat:
    """Give one student more hours; the difference moves from the teacher's allocation into the course's."""
    require(db, actor, Action.MANAGE_COURSE, course)
    seat = _seat_in(db, course, seat_id)
    if course.state != CourseState.OPEN:
        raise CourseClosed("The course is closed.")
    parent = db.get(Allocation, course.parent_allocation_id)
    assert parent is not None
    kind = db.get(Resource, parent.resource_id).kind  # type: ignore[union-attr]
    if new_cap <= seat.cap:
        message = f"The new cap must be more than the current {quantity(seat.cap, kind)}."
        raise InvalidInput(message, errors={"hours": message})
    if new_cap - seat.cap > parent.balance:
        raise ledger.InsufficientBalance(
            f"The new cap needs more hours than {parent.title} has left: {quantity(parent.balance, kind)}."
        )
    table = CourseSeat.__table__  # type: ignore[attr-defined]
    with ledger.unit_of_work(db):
        _fund_more(db, actor, course, new_cap - seat.cap, f"raised the cap of a student of “{course.title}”")
        db.execute(
            sa.update(table)
            .where(table.c.id == seat.id)
            .values(
                cap=new_cap,
                capped_at=sa.case((table.c.used >= new_cap, table.c.capped_at), else_=None),
                cap_notified_at=sa.case((table.c.used >= new_cap, table.c.cap_notified_at), else_=None),
            )
        )
    db.refresh(seat)
    return seat


@dataclass(frozen=True)
class Removal:
    seat: CourseSeat
    #: Whether the seat went back to the course for another student to take.
    seat_freed: bool
    #: Whether the removal waits for the student's running notebooks (stopped at the next metering round)
    #: before it settles.
    waiting: bool = False


def remove_student(db: Session, actor: User, course: Course, seat_id: int, *, now: datetime | None = None) -> Removal:
    """The student can no longer start notebooks; running ones stop at the next metering round, which charges
    them first. The removal then settles (``settle_removal``, at once when nothing runs, otherwise by the
    worker once nothing more can be charged): while the course is open the seat is freed for another student,
    and the hours the removed student used of it move again from the teacher's allocation so that a
    newcomer's cap is covered. Where they cannot (no hours left there, or the teacher no longer manages it),
    the student is removed but the seat stays taken."""
    require(db, actor, Action.MANAGE_COURSE, course)
    seat = _seat_in(db, course, seat_id)
    if seat.removed_at is not None:
        return Removal(seat, seat_freed=False)
    now = now or utcnow()
    seats = CourseSeat.__table__  # type: ignore[attr-defined]
    db.execute(sa.update(seats).where(seats.c.id == seat.id, seats.c.removed_at.is_(None)).values(removed_at=now))
    db.commit()
    freed = settle_removal(db, course, seat.id, teacher=actor, now=now)  # type: ignore[arg-type]
    db.refresh(seat)
    db.refresh(course)
    return Removal(seat, seat_freed=freed, waiting=seat.settled_at is None)


def settle_removal(db: Session, course: Course, seat_id: int, *, teacher: User, now: datetime) -> bool:
    """Settle a removed student's seat once none of their notebooks can be charged any more (their last
    charges have landed on the seat): claimed by a conditional UPDATE, so it happens once. True if the
    seat was freed for another student."""
    if hours_promised(db, seat_id=seat_id):
        db.rollback()
        return False
    seats, courses = CourseSeat.__table__, Course.__table__  # type: ignore[attr-defined]
    db.rollback()
    freed = False
    with ledger.unit_of_work(db):
        claimed = db.execute(
            sa.update(seats)
            .where(seats.c.id == seat_id, seats.c.removed_at.is_not(None), seats.c.settled_at.is_(None))
            .values(settled_at=now)
        )
        state = db.execute(sa.select(courses.c.state).where(courses.c.id == course.id)).scalar_one()
        if claimed.rowcount == 1 and state == CourseState.OPEN:
            cap, used = db.execute(sa.select(seats.c.cap, seats.c.used).where(seats.c.id == seat_id)).one()
            missing = course.student_cap - max(0, cap - used)
            try:
                if missing > 0:
                    _fund_more(db, teacher, course, missing, f"a seat of “{course.title}” freed for another student")
            except (ledger.InsufficientBalance, ledger.AllocationClosed, NotAuthorised):
                pass
            else:
                db.execute(
                    sa.update(courses)
                    .where(courses.c.id == course.id, courses.c.seats_taken > 0)
                    .values(seats_taken=courses.c.seats_taken - 1)
                )
                db.execute(sa.update(seats).where(seats.c.id == seat_id).values(seat_freed=True))
                freed = True
    return freed


def settle_removed_students(db: Session, _settings: Settings) -> int:
    """``portal worker``'s job: settle the removals that waited for the students' notebooks (see
    ``remove_student``); safe with several workers. Returns the number of seats freed."""
    now = utcnow()
    waiting = db.exec(
        select(CourseSeat.id, Course)
        .join(Course, Course.id == CourseSeat.course_id)  # type: ignore[arg-type]
        .where(col(CourseSeat.removed_at).is_not(None), col(CourseSeat.settled_at).is_(None))
    ).all()
    freed = 0
    for seat_id, course in waiting:
        teacher = db.get(User, course.teacher_id)
        if teacher is not None and settle_removal(db, course, seat_id, teacher=teacher, now=now):
            freed += 1
    return freed


def close_course(db: Session, actor: User | None, course: Course, *, now: datetime | None = None) -> Course:
    """End the course now (``actor`` None: the worker at the term's end): joining and computing stop. The
    unused hours return to the teacher's allocation at once when no student's notebook runs, otherwise as soon
    as the metering round has charged and stopped them (``return_unused_hours``), so that no charge lands on
    the course after its hours went back. Idempotent and safe when two workers close it at once."""
    if actor is not None:
        require(db, actor, Action.MANAGE_COURSE, course)
    now = now or utcnow()
    table = Course.__table__  # type: ignore[attr-defined]
    db.execute(
        sa.update(table)
        .where(table.c.id == course.id, table.c.state == CourseState.OPEN)
        .values(state=CourseState.CLOSED, closed_at=now)
    )
    db.commit()
    db.refresh(course)
    return_unused_hours(db, course, now=now)
    return course


def running_notebooks(db: Session, course: Course) -> int:
    """The course's students' notebooks not yet stopped (and charged) by the metering round."""
    return int(
        db.exec(
            select(func.count())
            .select_from(NotebookSession)
            .join(CourseSeat, CourseSeat.id == NotebookSession.course_seat_id)  # type: ignore[arg-type]
            .where(CourseSeat.course_id == course.id, col(NotebookSession.stopped_at).is_(None))
        ).one()
    )


def return_unused_hours(db: Session, course: Course, *, now: datetime, force: bool = False) -> bool:
    """Give a closed course's unused hours back to the teacher's allocation once nothing more can be charged
    to it (its notebooks stopped, or charged to their time limits). ``force`` (the hub has not let them stop
    for ``RETURN_GRACE``): what is not promised to those notebooks goes back now, the rest when they stop.
    A closing balance below zero is settled from the teacher's allocation (``ledger.return_course_hours``):
    what left the teacher's allocation is always what the students used plus what came back. True once the
    course allocation is closed."""
    if course.state != CourseState.CLOSED:
        return False
    keep = course_hours_promised(db, course)
    if keep and not force:
        db.rollback()
        return False
    course_allocation_id, parent_id = course.allocation_id, course.parent_allocation_id
    db.rollback()
    ledger.return_course_hours(db, course_allocation_id, parent_id, now=now, keep=keep)
    returned = db.exec(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.allocation_id == course_allocation_id, LedgerEntry.kind == EntryKind.TRANSFER_OUT
        )
    ).one()
    table = Course.__table__  # type: ignore[attr-defined]
    db.execute(sa.update(table).where(table.c.id == course.id).values(returned=-int(returned)))
    db.commit()
    db.refresh(course)
    return not keep


# --- metering: seats' use, stops and the teacher's notices --------------------------------------------------


def record_seat_usage(db: Session, seat_id: int, amount: int, *, now: datetime | None = None) -> None:
    """Add a charge to the seat's ``used``, inside the charge's transaction (one atomic UPDATE, so concurrent
    charges of one student's sessions all count); the first charge reaching the cap stamps ``capped_at``."""
    table = CourseSeat.__table__  # type: ignore[attr-defined]
    db.execute(sa.update(table).where(table.c.id == seat_id).values(used=table.c.used + amount))
    db.execute(
        sa.update(table)
        .where(table.c.id == seat_id, table.c.used >= table.c.cap, table.c.capped_at.is_(None))
        .values(capped_at=now or utcnow())
    )


def course_stop_reason(db: Session, seat_id: int, now: datetime) -> str | None:
    """Why a student's running notebook must stop, or None: cap reached, removed, course closed or ended."""
    row = db.exec(
        select(CourseSeat, Course)
        .join(Course, Course.id == CourseSeat.course_id)  # type: ignore[arg-type]
        .where(CourseSeat.id == seat_id)
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        return COURSE_CLOSED
    seat, course = row
    if seat.removed_at is not None:
        return REMOVED
    if course.state != CourseState.OPEN or now >= course.ends_at:
        return COURSE_CLOSED
    if seat.used >= seat.cap:
        return CAP_REACHED
    return None


def close_ended_courses(db: Session, _settings: Settings) -> int:
    """``portal worker``'s job: close courses whose term has ended, and return the unused hours of closed
    courses whose notebooks have stopped since (or that waited ``RETURN_GRACE`` for them). Returns the number
    of courses closed."""
    now = utcnow()
    due = db.exec(select(Course).where(Course.state == CourseState.OPEN, col(Course.ends_at) <= now)).all()
    closed = 0
    for course in due:
        if close_course(db, None, course, now=now).closed_at == now:
            closed += 1
    waiting = db.exec(
        select(Course)
        .join(Allocation, Allocation.id == Course.allocation_id)  # type: ignore[arg-type]
        .where(Course.state == CourseState.CLOSED, Allocation.state != AllocationState.EXPIRED)
    ).all()
    for course in waiting:
        return_unused_hours(
            db, course, now=now, force=course.closed_at is not None and now - course.closed_at >= RETURN_GRACE
        )
    return closed


def notify_capped_students(db: Session, settings: Settings) -> int:
    """``portal worker``'s job: tell each teacher once when a student reaches their cap (claimed by a
    conditional UPDATE, so two workers never tell twice)."""
    table = CourseSeat.__table__  # type: ignore[attr-defined]
    rows = db.exec(
        select(CourseSeat, Course, User)
        .join(Course, Course.id == CourseSeat.course_id)  # type: ignore[arg-type]
        .join(User, User.id == CourseSeat.user_id)  # type: ignore[arg-type]
        .where(col(CourseSeat.capped_at).is_not(None), col(CourseSeat.cap_notified_at).is_(None))
    ).all()
    db.rollback()
    sent = 0
    for seat, course, student in rows:
        claimed = db.execute(
            sa.update(table)
            .where(table.c.id == seat.id, table.c.cap_notified_at.is_(None), table.c.capped_at.is_not(None))
            .values(cap_notified_at=utcnow())
        )
        if claimed.rowcount != 1:
            db.rollback()
            continue
        teacher = db.get(User, course.teacher_id)
        if teacher is not None:
            notify(
                db,
                settings,
                teacher,
                subject=f"{student.display_name} reached the cap in “{course.title}”",
                body=(
                    f"{student.display_name} has used all the hours of their cap in the course “{course.title}”; "
                    "their notebooks are stopped. You can raise their cap on the course's page."
                ),
                link=f"/courses/{course.id}",
            )
        db.commit()
        sent += 1
    return sent
