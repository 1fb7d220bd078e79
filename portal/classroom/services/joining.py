"""Joining a course with its code: the wrong codes counted (and too many refused), the course's affiliation and
entitlement checked against the login, and a seat taken by a conditional UPDATE, so concurrent joins never take
more seats than there are.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from portal.classroom.models import Course, CourseJoinFailure, CourseSeat, CourseState
from portal.classroom.services.creating import normalise_code
from portal.classroom.services.errors import CourseClosed, CourseFull, NotEligibleForCourse, TooManyAttempts
from portal.classroom.services.promised_hours import _funds_the_course, _in_teachers_project
from portal.classroom.services.reading import seat_of
from portal.db import utcnow
from portal.errors import InvalidInput, NotAuthorised
from portal.identity.models import Login, User
from portal.messages import N_, Message

#: Wrong codes a user may try within ``JOIN_FAILURE_WINDOW`` before being asked to wait.
MAX_JOIN_FAILURES = 10
JOIN_FAILURE_WINDOW = timedelta(minutes=15)


def _affiliated(login: Login | None, required: str) -> bool:
    """``required`` "student" matches "student@ut.ee"; "student@ut.ee" only itself (case-insensitive)."""
    if login is None:
        return False
    values = [str(v).casefold() for v in login.attributes.get("external_affiliation") or []]
    wanted = required.casefold()
    return any(v == wanted or ("@" not in wanted and v.split("@", 1)[0] == wanted) for v in values)


def _entitled(login: Login | None, required: str) -> bool:
    return login is not None and required in [str(v) for v in login.attributes.get("entitlement") or []]


def _claim_attempt(db: Session, actor: User, now: datetime) -> CourseJoinFailure:
    """Record this attempt before the code is looked at, then count: of concurrent attempts, each sees at
    least those committed before it, so no more than ``MAX_JOIN_FAILURES`` are ever looked at. A refused
    attempt is not kept (the wait runs from the wrong codes, not from the refusals)."""
    attempt = CourseJoinFailure(user_id=actor.id, attempted_at=now)
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
        raise TooManyAttempts(
            Message(N_("Too many wrong codes. Wait %(minutes)s minutes and try again."), minutes=minutes)
        )
    return attempt


def find_course_by_code(db: Session, actor: User, code: str, *, now: datetime | None = None) -> Course:
    """The course with this join code; a wrong code is recorded (and too many of them refused, atomically)."""
    now = now or utcnow()
    attempt = _claim_attempt(db, actor, now)
    code = normalise_code(code)
    course = db.exec(select(Course).where(Course.join_code == code)).first() if code else None
    if course is None:
        message = Message(N_("No course has this code. Check it with your teacher."))
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
            raise NotAuthorised(
                Message(N_("Your teacher removed you from this course; ask them if this is a mistake."))
            )
        return existing
    if course.teacher_id == actor.id:
        raise InvalidInput(
            Message(N_("You teach this course; students join it with the code.")),
            errors={"code": Message(N_("Yours."))},
        )
    if _in_teachers_project(db, actor.id, course):
        raise NotEligibleForCourse(_funds_the_course(course))
    if course.state != CourseState.OPEN or now >= course.ends_at:
        raise CourseClosed(
            Message(N_("The course “%(title)s” is closed; joining it is no longer possible."), title=course.title)
        )
    if course.required_affiliation and not _affiliated(login, course.required_affiliation):
        raise NotEligibleForCourse(
            Message(
                N_(
                    "The course “%(title)s” is for people with the affiliation “%(affiliation)s”. "
                    "Log in with your institution's account (academic federation) and try again."
                ),
                title=course.title,
                affiliation=course.required_affiliation,
            )
        )
    if course.required_entitlement and not _entitled(login, course.required_entitlement):
        raise NotEligibleForCourse(
            Message(
                N_(
                    "The course “%(title)s” needs the entitlement “%(entitlement)s” from your login. "
                    "Log in with the account your institution registered for this course."
                ),
                title=course.title,
                entitlement=course.required_entitlement,
            )
        )
    table = Course.__table__
    taken = db.execute(
        sa.update(table)
        .where(table.c.id == course.id, table.c.seats_taken < table.c.max_seats, table.c.state == CourseState.OPEN)
        .values(seats_taken=table.c.seats_taken + 1)
    )
    if taken.rowcount != 1:
        db.rollback()
        raise CourseFull(
            Message(
                N_("The course “%(title)s” is full: all %(seats)s seats are taken."),
                title=course.title,
                seats=str(course.max_seats),
            )
        )
    seat = CourseSeat(course_id=course.id, user_id=actor.id, cap=course.student_cap, joined_at=now)
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
