"""Courses, their students' seats and failed join attempts.

Quantities are integers of the course allocation's resource base unit (GPU-seconds or core-seconds).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class CourseState(StrEnum):
    #: Students may join (while seats are left) and compute within the term.
    OPEN = "open"
    #: The teacher closed it, or its term ended: no joining, no computing; unused hours go back once the
    #: students' notebooks have stopped.
    CLOSED = "closed"


class Course(SQLModel, table=True):
    """A course: its own allocation, funded from a teacher's allocation, shared out as per-student caps."""

    __tablename__ = "courses"
    __table_args__ = (
        sa.CheckConstraint("ends_at > starts_at", name="term_ordered"),
        sa.CheckConstraint("max_seats > 0", name="seats_positive"),
        sa.CheckConstraint("seats_taken >= 0 AND seats_taken <= max_seats", name="seats_within_max"),
        sa.CheckConstraint("student_cap > 0", name="cap_positive"),
    )

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    #: The teacher: the only one who sees the course's students and their use.
    teacher_id: int = Field(foreign_key="users.id", index=True)
    #: The teacher's project; the course allocation belongs to it.
    project_id: int = Field(foreign_key="projects.id", index=True)
    #: The allocation the course's hours came from, and go back to at the term's end.
    parent_allocation_id: int = Field(foreign_key="allocations.id", index=True)
    #: The course's own allocation (source ``course``), which students' notebooks are charged to.
    allocation_id: int = Field(foreign_key="allocations.id", unique=True)
    #: Term, UTC: students compute from ``starts_at`` until ``ends_at``.
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime)
    #: A new student's cap, in base units.
    student_cap: int = Field(sa_type=sa.BigInteger)
    max_seats: int
    #: Seats taken (removing a student frees theirs, see ``remove_student``); moved by conditional UPDATEs.
    seats_taken: int = Field(default=0)
    #: Notebook profile names students may start.
    profiles: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    #: The code students join with: random and unguessable, shown to the teacher only.
    join_code: str = Field(max_length=32, unique=True)
    #: An academic affiliation the student's login must carry ("student", "student@ut.ee"); "" for none.
    required_affiliation: str = Field(default="", max_length=200)
    #: An entitlement the student's login must carry (``eduperson_entitlement``); "" for none.
    required_entitlement: str = Field(default="", max_length=500)
    #: A public git repository cloned into each student's server at its first start; "" for none.
    materials_url: str = Field(default="", max_length=500)
    state: CourseState = Field(default=CourseState.OPEN, sa_type=StrEnumType(CourseState, 16), index=True)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Base units returned to the parent allocation after the course closed.
    returned: int = Field(default=0, sa_type=sa.BigInteger)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CourseSeat(SQLModel, table=True):
    """A student's place in a course, with their cap and what they used of it."""

    __tablename__ = "course_seats"
    __table_args__ = (
        sa.UniqueConstraint("course_id", "user_id"),
        sa.CheckConstraint("cap > 0", name="cap_positive"),
        sa.CheckConstraint("used >= 0", name="used_not_negative"),
    )

    id: int | None = Field(default=None, primary_key=True)
    course_id: int = Field(foreign_key="courses.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: Base units this student may use.
    cap: int = Field(sa_type=sa.BigInteger)
    #: Base units charged for this student's notebooks; moved in the charge's transaction.
    used: int = Field(default=0, sa_type=sa.BigInteger)
    joined_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: When the teacher removed the student (who then cannot start or rejoin).
    removed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: When the removal settled: once none of the student's notebooks can be charged any more (stopped, or
    #: charged to their time limit), so that their last charges land before their seat is given away.
    settled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Whether the settled removal freed the seat for another student (the hours the student used moved
    #: again from the teacher's allocation); false when the course had closed or the teacher's allocation
    #: could not cover them.
    seat_freed: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    #: When a charge first took ``used`` to the cap; the teacher is told once.
    capped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cap_notified_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class CourseJoinFailure(SQLModel, table=True):
    """A join attempt with a wrong code; too many in a short time and the user must wait. The row is written
    (and committed) before the code is looked at and removed when the code was right, so that concurrent
    attempts count each other: no more than the limit are ever looked at."""

    __tablename__ = "course_join_failures"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    attempted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
