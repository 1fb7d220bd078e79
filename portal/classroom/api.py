"""Courses over the JSON API: the courses the token's owner teaches and attends, and for a course's teacher its
seats and what its students used, through the same services as the course pages."""

from __future__ import annotations

from datetime import datetime

from flask import jsonify
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.classroom import services as classroom
from portal.classroom.models import Course, CourseSeat, CourseState
from portal.db import get_db
from portal.errors import NotAuthorised, NotFound
from portal.identity.models import ApiScope
from portal.ledger.models import Resource
from portal.messages import N_, Message

TAGS = ["courses"]


class CourseOut(BaseModel):
    id: int
    title: str
    state: CourseState
    project_id: int
    allocation_id: int = Field(description="The course's own allocation, which its students' notebooks use")
    starts_at: datetime
    ends_at: datetime
    student_cap: int = Field(description="Base units each student may use")
    max_seats: int
    seats_taken: int
    profiles: list[str] = Field(description="The notebook profiles students may start")
    materials_url: str
    base_unit: str = Field(description="The unit of every amount (GPU-second, core-second)")
    display_unit: str

    @classmethod
    def of(cls, course: Course, resource: Resource) -> CourseOut:
        return cls(
            id=course.id,
            title=course.title,
            state=course.state,
            project_id=course.project_id,
            allocation_id=course.allocation_id,
            starts_at=course.starts_at,
            ends_at=course.ends_at,
            student_cap=course.student_cap,
            max_seats=course.max_seats,
            seats_taken=course.seats_taken,
            profiles=list(course.profiles),
            materials_url=course.materials_url,
            base_unit=resource.base_unit,
            display_unit=resource.display_unit,
        )


class MySeatOut(BaseModel):
    cap: int = Field(description="Base units the student may use")
    used: int
    remaining: int
    joined_at: datetime
    removed_at: datetime | None

    @classmethod
    def of(cls, seat: CourseSeat) -> MySeatOut:
        return cls(
            cap=seat.cap,
            used=seat.used,
            remaining=max(0, seat.cap - seat.used),
            joined_at=seat.joined_at,
            removed_at=seat.removed_at,
        )


class AttendedCourseOut(CourseOut):
    seat: MySeatOut = Field(description="The caller's own seat: cap, use and what is left")


class MyCoursesOut(BaseModel):
    teaching: list[CourseOut] = Field(description="Courses the caller teaches, latest start first")
    attending: list[AttendedCourseOut] = Field(description="Courses the caller joined, latest start first")


class SeatOut(BaseModel):
    seat_id: int
    student_id: int
    student_name: str
    cap: int = Field(description="Base units the student may use")
    used: int = Field(description="Base units the student has used")
    remaining: int
    running_notebooks: int
    joined_at: datetime
    removed_at: datetime | None
    status: str = Field(description="active, capped (used up the cap) or removed")


class CourseSeatsOut(BaseModel):
    course: CourseOut
    balance: int = Field(description="Base units left on the course's allocation")
    credited: int = Field(description="Base units the course's allocation was given (its share and top-ups)")
    used: int = Field(description="Base units the students used, in all")
    seats: list[SeatOut] = Field(description="By student name")


def _taught(course_id: int) -> classroom.CourseOverview:
    """The teacher's overview of a course; a course the caller neither teaches nor attends reads as missing."""
    db, user = get_db(), api_user()
    try:
        course = classroom.get_course(db, user, course_id)
    except NotAuthorised:
        raise NotFound(Message(N_("No such course."))) from None
    return classroom.overview(db, user, course)


@bp.get("/courses")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=MyCoursesOut, HTTP_401=Problem, HTTP_403=Problem),
    tags=TAGS,
    operation_id="list_courses",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_courses():
    """The courses the token's owner teaches, and those they joined with their own seat."""
    mine = classroom.courses_of(get_db(), api_user())
    body = MyCoursesOut(
        teaching=[CourseOut.of(course, resource) for course, resource, _allocation in mine.teaching],
        attending=[
            AttendedCourseOut(**CourseOut.of(course, resource).model_dump(), seat=MySeatOut.of(seat))
            for course, seat, resource in mine.attending
        ],
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/courses/<int:course_id>/seats")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=CourseSeatsOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=TAGS,
    operation_id="list_course_seats",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_course_seats(course_id: int):
    """For the course's teacher: every seat with its cap, use and running notebooks, and the course's balance.
    A student of the course: 403; anyone else: 404."""
    view = _taught(course_id)
    body = CourseSeatsOut(
        course=CourseOut.of(view.course, view.resource),
        balance=view.allocation.balance,
        credited=view.allocation.credited,
        used=view.used,
        seats=[
            SeatOut(
                seat_id=row.seat.id,
                student_id=row.student.id,
                student_name=row.student.display_name,
                cap=row.seat.cap,
                used=row.seat.used,
                remaining=row.remaining,
                running_notebooks=row.running,
                joined_at=row.seat.joined_at,
                removed_at=row.seat.removed_at,
                status="removed" if row.seat.removed_at else ("capped" if row.seat.used >= row.seat.cap else "active"),
            )
            for row in view.students
        ],
    )
    return jsonify(body.model_dump(mode="json"))
