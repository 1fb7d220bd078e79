"""Courses: a teacher carves a course allocation out of a project's allocation; students join with a code and
compute on it under a per-student cap; at the term's end the unused hours go back through the ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob


def init_app(app: Flask) -> None:
    """The course pages."""
    from portal.classroom import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.classroom import views

    app.register_blueprint(views.bp)


def register_jobs(add_job: AddJob) -> None:
    from portal.classroom import services

    add_job("close_ended_courses", every=300, run=services.close_ended_courses)
    add_job("settle_removed_students", every=60, run=services.settle_removed_students)
    add_job("notify_capped_students", every=60, run=services.notify_capped_students)
