"""Organisations, projects, memberships and invitations."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob


def init_app(app: Flask) -> None:
    """The dashboard, organisation and project pages, and their API routes."""
    from portal.projects import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.projects import views

    app.register_blueprint(views.bp)


def register_jobs(add_job: AddJob) -> None:
    from portal.projects import jobs

    add_job("purge_stale_invitations", every=3600, run=jobs.purge_stale_invitations)
