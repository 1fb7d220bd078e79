"""The operators' dashboards and exports; reads the producers' rollups, rebuilds and checks them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob

#: Its ``portal`` command groups: name -> (``module:group``, the group's summary); see ``portal.cli``.
CLI_GROUPS: dict[str, tuple[str, str]] = {
    "reports": ("portal.reports.cli:reports", "The operators' dashboards."),
}


def init_app(app: Flask) -> None:
    """The dashboards and their API routes."""
    from portal.reports import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.reports import views

    app.register_blueprint(views.bp)


def register_jobs(add_job: AddJob) -> None:
    from portal.reports import jobs

    add_job("check_report_rollups", every=86_400, run=jobs.check_report_rollups)
