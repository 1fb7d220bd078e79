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

The package is cut along the course's life: ``creating``, ``reading``, ``joining``, ``promised_hours`` (what
running notebooks may still be charged, and who may compute on the students' hours), ``managing`` (the
teacher's changes: caps, removals, closing and returning the hours), ``metering`` (what the metering round and
the worker ask of courses) and ``errors``. Import from here; the course models and errors that the single module
had in its namespace are named here too (``classroom.Conflict``, ``classroom.CourseJoinFailure``).
"""

from __future__ import annotations

from portal.classroom.models import Course, CourseJoinFailure, CourseSeat, CourseState
from portal.classroom.services.creating import (
    CODE_ALPHABET,
    CODE_LENGTH,
    MAX_SEATS,
    FundingOption,
    create_course,
    funding_options,
    new_join_code,
    normalise_code,
    profile_fits,
    projects_to_ask,
)
from portal.classroom.services.errors import (
    CourseClosed,
    CourseFull,
    NotEligibleForCourse,
    TooManyAttempts,
)
from portal.classroom.services.joining import (
    JOIN_FAILURE_WINDOW,
    MAX_JOIN_FAILURES,
    find_course_by_code,
    join_course,
)
from portal.classroom.services.managing import (
    RETURN_GRACE,
    Removal,
    close_course,
    raise_cap,
    remove_student,
    return_unused_hours,
    running_notebooks,
    settle_removal,
    settle_removed_students,
)
from portal.classroom.services.metering import (
    CAP_REACHED,
    COURSE_CLOSED,
    REMOVED,
    close_ended_courses,
    course_stop_reason,
    notify_capped_students,
    record_seat_usage,
)
from portal.classroom.services.promised_hours import (
    course_hours_promised,
    course_spawn_refusal,
    hours_promised,
)
from portal.classroom.services.reading import (
    CourseOverview,
    MyCourses,
    StudentRow,
    courses_of,
    get_course,
    overview,
    seat_of,
    student_seat,
    usage_table,
)
from portal.errors import Conflict, DomainError, InvalidInput, NotAuthorised, NotFound

__all__ = [
    "CAP_REACHED",
    "CODE_ALPHABET",
    "CODE_LENGTH",
    "COURSE_CLOSED",
    "JOIN_FAILURE_WINDOW",
    "MAX_JOIN_FAILURES",
    "MAX_SEATS",
    "REMOVED",
    "RETURN_GRACE",
    "Conflict",
    "Course",
    "CourseClosed",
    "CourseFull",
    "CourseJoinFailure",
    "CourseOverview",
    "CourseSeat",
    "CourseState",
    "DomainError",
    "FundingOption",
    "InvalidInput",
    "MyCourses",
    "NotAuthorised",
    "NotEligibleForCourse",
    "NotFound",
    "Removal",
    "StudentRow",
    "TooManyAttempts",
    "close_course",
    "close_ended_courses",
    "course_hours_promised",
    "course_spawn_refusal",
    "course_stop_reason",
    "courses_of",
    "create_course",
    "find_course_by_code",
    "funding_options",
    "get_course",
    "hours_promised",
    "join_course",
    "new_join_code",
    "normalise_code",
    "notify_capped_students",
    "overview",
    "profile_fits",
    "projects_to_ask",
    "raise_cap",
    "record_seat_usage",
    "remove_student",
    "return_unused_hours",
    "running_notebooks",
    "seat_of",
    "settle_removal",
    "settle_removed_students",
    "student_seat",
    "usage_table",
]
