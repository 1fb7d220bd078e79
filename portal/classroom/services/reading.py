"""Reading courses: one course for an actor allowed to see it, a user's seat, the courses a user teaches and
attends, and the teacher's overview of a course (students, running notebooks, the use per student as a table).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from portal.authz import Action, require
from portal.classroom.models import Course, CourseSeat
from portal.errors import NotFound
from portal.formatting import display_amount
from portal.identity.models import User
from portal.ledger.models import Allocation, Resource
from portal.messages import N_, Message
from portal.notebook_models import NotebookSession


def get_course(db: Session, actor: User, course_id: int, action: Action = Action.VIEW_COURSE) -> Course:
    """The course, if the actor may ``action`` it; otherwise ``NotFound`` (not theirs) or ``NotAuthorised``."""
    course = db.get(Course, course_id)
    if course is None:
        raise NotFound(Message(N_("No such course.")))
    require(db, actor, action, course)
    return course


def seat_of(db: Session, user: User, course: Course) -> CourseSeat | None:
    return db.exec(select(CourseSeat).where(CourseSeat.course_id == course.id, CourseSeat.user_id == user.id)).first()


def student_seat(db: Session, user: User, allocation_id: int) -> tuple[Course, CourseSeat] | None:
    """The course whose allocation this is, and the user's seat in it (also a removed one), if any."""
    row = db.exec(
        select(Course, CourseSeat)
        .join(CourseSeat, CourseSeat.course_id == Course.id)
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
        .join(Allocation, Allocation.id == Course.allocation_id)
        .join(Resource, Resource.id == Allocation.resource_id)
        .where(Course.teacher_id == actor.id)
        .order_by(col(Course.starts_at).desc(), col(Course.id).desc())
    ).all()
    attending = db.exec(
        select(Course, CourseSeat, Resource)
        .join(CourseSeat, CourseSeat.course_id == Course.id)
        .join(Allocation, Allocation.id == Course.allocation_id)
        .join(Resource, Resource.id == Allocation.resource_id)
        .where(CourseSeat.user_id == actor.id)
        .order_by(col(Course.starts_at).desc(), col(Course.id).desc())
    ).all()
    return MyCourses(list(teaching), list(attending))


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
        .join(Resource, Resource.id == Allocation.resource_id)
        .where(Allocation.id == course.allocation_id)
    ).one()
    seats = db.exec(
        select(CourseSeat, User)
        .join(User, User.id == CourseSeat.user_id)
        .where(CourseSeat.course_id == course.id)
        .order_by(col(User.display_name), col(CourseSeat.id))
    ).all()
    running = db.exec(
        select(NotebookSession, User)
        .join(CourseSeat, CourseSeat.id == NotebookSession.course_seat_id)
        .join(User, User.id == NotebookSession.user_id)
        .where(CourseSeat.course_id == course.id, col(NotebookSession.stopped_at).is_(None))
        .order_by(col(NotebookSession.requested_at))
    ).all()
    per_seat: dict[int, int] = {}
    for session, _user in running:
        per_seat[session.course_seat_id] = per_seat.get(session.course_seat_id, 0) + 1
    students = [StudentRow(seat, user, per_seat.get(seat.id, 0)) for seat, user in seats]
    return CourseOverview(course, allocation, resource, students, list(running))


def usage_table(db: Session, actor: User, course: Course) -> tuple[list[str], list[list[str]]]:
    """Use per student, in display units of the course's resource (hours, exact to two places): the header and
    one row per student (``web.csv_response`` sends it as CSV)."""
    view = overview(db, actor, course)
    unit, kind = view.resource.display_unit, view.resource.kind
    header = ["student", "email", "joined_at", f"cap_{unit}s", f"used_{unit}s", f"remaining_{unit}s", "status"]
    rows = []
    for row in view.students:
        status = "removed" if row.seat.removed_at else ("capped" if row.seat.used >= row.seat.cap else "active")
        rows.append(
            [
                row.student.display_name,
                row.student.email or "",
                row.seat.joined_at.isoformat(timespec="seconds"),
                *(
                    display_amount(v, kind, places=2).replace(",", "")
                    for v in (row.seat.cap, row.seat.used, row.remaining)
                ),
                status,
            ]
        )
    return header, rows
