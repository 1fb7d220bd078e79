"""Calls for proposals, applications, reviews, decisions and the awards they make."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob

#: Its ``portal`` command groups: name -> (``module:group``, the group's summary); see ``portal.cli``.
CLI_GROUPS: dict[str, tuple[str, str]] = {
    "calls": ("portal.grants.cli:calls", "Calls for proposals."),
}


def init_app(app: Flask) -> None:
    """The calls' pages."""
    from portal.grants import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.grants import views

    app.register_blueprint(views.bp)


def register_jobs(add_job: AddJob) -> None:
    from portal.grants import jobs

    add_job("remind_due_reviews", every=3600, run=jobs.remind_due_reviews)
    add_job("request_award_reports", every=3600, run=jobs.request_award_reports)
