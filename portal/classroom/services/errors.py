"""The courses' named refusals: a full course, a closed one, a student not eligible, too many wrong codes."""

from __future__ import annotations

from portal.errors import Conflict, DomainError, NotAuthorised


class CourseFull(Conflict):
    title = "Course full"


class CourseClosed(Conflict):
    title = "Course closed"


class NotEligibleForCourse(NotAuthorised):
    title = "Not eligible for this course"


class TooManyAttempts(DomainError):
    status = 429
    title = "Too many attempts"
