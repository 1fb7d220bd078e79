"""The teacher's changes: raising a student's cap, removing a student (and settling the removal once their
notebooks can no longer be charged), closing the course and returning its unused hours to the teacher's
allocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.authz import Action, require
from portal.classroom.models import Course, CourseSeat, CourseState
from portal.classroom.services.errors import CourseClosed
from portal.classroom.services.promised_hours import course_hours_promised, hours_promised
from portal.config import Settings
from portal.db import utcnow
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, EntryKind, LedgerEntry, Resource
from portal.messages import N_, Amount, Message
from portal.notebook_models import NotebookSession

#: How long a closed course's hours wait for its notebooks to stop (an unreachable hub) before going back anyway.
RETURN_GRACE = timedelta(minutes=30)


def _seat_in(db: Session, course: Course, seat_id: int) -> CourseSeat:
    seat = db.get(CourseSeat, seat_id)
    if seat is None or seat.course_id != course.id:
        raise NotFound(Message(N_("No such student in this course.")))
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
        raise CourseClosed(Message(N_("The course is closed.")))
    parent = db.get(Allocation, course.parent_allocation_id)
    assert parent is not None
    kind = db.get(Resource, parent.resource_id).kind
    if new_cap <= seat.cap:
        message = Message(N_("The new cap must be more than the current %(cap)s."), cap=Amount(seat.cap, kind))
        raise InvalidInput(message, errors={"hours": message})
    if new_cap - seat.cap > parent.balance:
        raise ledger.InsufficientBalance(
            Message(
                N_("The new cap needs more hours than %(allocation)s has left: %(left)s."),
                allocation=wording.title_of(parent),
                left=Amount(parent.balance, kind),
            )
        )
    table = CourseSeat.__table__
    with ledger.unit_of_work(db):
        _fund_more(db, actor, course, new_cap - seat.cap, wording.CAP_RAISED.english(title=course.title))
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
    seats = CourseSeat.__table__
    db.execute(sa.update(seats).where(seats.c.id == seat.id, seats.c.removed_at.is_(None)).values(removed_at=now))
    db.commit()
    freed = settle_removal(db, course, seat.id, teacher=actor, now=now)
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
    seats, courses = CourseSeat.__table__, Course.__table__
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
                    _fund_more(db, teacher, course, missing, wording.SEAT_FREED.english(title=course.title))
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
        .join(Course, Course.id == CourseSeat.course_id)
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
    table = Course.__table__
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
            .join(CourseSeat, CourseSeat.id == NotebookSession.course_seat_id)
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
    table = Course.__table__
    db.execute(sa.update(table).where(table.c.id == course.id).values(returned=-int(returned)))
    db.commit()
    db.refresh(course)
    return not keep
