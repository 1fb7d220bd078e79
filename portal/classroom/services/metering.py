"""What metering and the worker ask of courses: a charge moving a seat's ``used``, why a student's notebook must
stop, closing courses at the term's end, and telling the teacher once when a student reaches their cap.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.classroom.models import Course, CourseSeat, CourseState
from portal.classroom.services.managing import RETURN_GRACE, close_course, return_unused_hours
from portal.config import Settings
from portal.db import utcnow
from portal.identity.models import User
from portal.ledger.models import Allocation, AllocationState
from portal.messages import N_, Message
from portal.notifications.services import notify

CAP_REACHED = "course cap reached"
REMOVED = "removed from course"
COURSE_CLOSED = "course closed"


def record_seat_usage(db: Session, seat_id: int, amount: int, *, now: datetime | None = None) -> None:
    """Add a charge to the seat's ``used``, inside the charge's transaction (one atomic UPDATE, so concurrent
    charges of one student's sessions all count); the first charge reaching the cap stamps ``capped_at``."""
    table = CourseSeat.__table__
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
        .join(Course, Course.id == CourseSeat.course_id)
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
        .join(Allocation, Allocation.id == Course.allocation_id)
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
    table = CourseSeat.__table__
    rows = db.exec(
        select(CourseSeat, Course, User)
        .join(Course, Course.id == CourseSeat.course_id)
        .join(User, User.id == CourseSeat.user_id)
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
                subject=Message(
                    N_("%(student)s reached the cap in “%(course)s”"), student=student.display_name, course=course.title
                ),
                body=Message(
                    N_(
                        "%(student)s has used all the hours of their cap in the course “%(course)s”; their notebooks "
                        "are stopped. You can raise their cap on the course's page."
                    ),
                    student=student.display_name,
                    course=course.title,
                ),
                link=f"/courses/{course.id}",
            )
        db.commit()
        sent += 1
    return sent
