"""The heart: sites, resources, capacity, allocations and their append-only entries; usage rollups."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from portal.worker import AddJob

#: Its ``portal`` command groups: name -> (``module:group``, the group's summary); see ``portal.cli``.
CLI_GROUPS: dict[str, tuple[str, str]] = {
    "sites": ("portal.ledger.cli:sites", "Sites, resources and capacity."),
    "resources": ("portal.ledger.cli:resources", "Resources of the sites."),
    "capacity": ("portal.ledger.cli:capacity", "Capacity of the resources per quarter."),
    "allocations": ("portal.ledger.cli:allocations", "Allocations opened by hand."),
}


def init_app(app: Flask) -> None:
    """The allocation and capacity pages, the project page's allocations section (``portal.project_allocations``:
    ``projects`` may not import the ledger, which reads projects), and the templates' filters that show what the
    portal wrote on an allocation or an entry in the reader's language (``portal.ledger.wording``)."""
    from portal.ledger import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.ledger import views

    app.register_blueprint(views.bp)
    app.add_template_filter(views.allocation_title, "allocation_title")
    app.add_template_filter(views.entry_reason, "entry_reason")
    app.extensions["portal.project_allocations"] = views.project_allocations


def register_jobs(add_job: AddJob) -> None:
    from portal.ledger import jobs

    add_job("start_and_expire_allocations", every=300, run=jobs.start_and_expire_allocations)
    add_job("notify_usage_thresholds", every=600, run=jobs.notify_usage_thresholds)
    add_job("check_balances", every=86_400, run=jobs.check_balances)
