"""Hours promised to running notebooks: what notebooks not yet stopped may still be charged (on an allocation, a
seat or a whole course), whether a student may start another notebook on the course's hours, and the rule that
members of the teacher's project compute on its own allocations, never on the students' hours.
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.classroom.models import Course, CourseSeat
from portal.ledger.models import Allocation, ResourceKind
from portal.messages import N_, Amount, Message
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership


def _in_teachers_project(db: Session, user_id: int | None, course: Course) -> bool:
    """Members of the teacher's project compute on its own allocations, never on the students' hours."""
    member = select(ProjectMembership.id).where(
        ProjectMembership.project_id == course.project_id, ProjectMembership.user_id == user_id
    )
    return db.exec(member).first() is not None


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
        return str(_funds_the_course(course))
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
        return str(
            Message(
                N_(
                    "The course “%(title)s” has no hours left for another notebook now (counting the notebooks "
                    "running). Ask your teacher."
                ),
                title=course.title,
            )
        )
    return str(
        Message(
            N_(
                "The course “%(title)s” has %(left)s left for notebooks (counting the notebooks running): "
                "ask for at most %(hours)s hours."
            ),
            title=course.title,
            left=Amount(left, kind),
            hours=f"{math.floor(left / per_second / 36) / 100:g}",
        )
    )


def _funds_the_course(course: Course) -> Message:
    return Message(
        N_(
            "You are a member of the project that funds “%(title)s”: its hours are the students'. "
            "Compute on your project's own allocations instead."
        ),
        title=course.title,
    )
