"""Every table by name (``TABLES``: the dashboard page it is on and how it is computed), one table for the CSV
and the API (``report_table``), and the tables of one page in order (``page_tables``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import Session

from portal.errors import NotFound
from portal.identity.models import User
from portal.messages import N_, Message
from portal.reports.services.calls import funnel_table, outputs_table
from portal.reports.services.revenue import (
    require_revenue,
    revenue_by_month_table,
    revenue_by_offering_table,
    revenue_public_private_table,
)
from portal.reports.services.scope import ReportFilter, Scope, scope_for
from portal.reports.services.table import Table
from portal.reports.services.usage import (
    capacity_table,
    countries_table,
    public_private_table,
    sectors_table,
    top_projects_table,
    utilisation_table,
)

#: Every table by name: the page it is on, and how it is computed.
TABLES: dict[str, tuple[str, Callable[[Session, Scope], Table]]] = {
    "capacity": ("usage", capacity_table),
    "utilisation": ("usage", utilisation_table),
    "sectors": ("usage", sectors_table),
    "countries": ("usage", countries_table),
    "public_private": ("usage", public_private_table),
    "top_projects": ("usage", top_projects_table),
    "funnel": ("calls", funnel_table),
    "outputs": ("calls", outputs_table),
    "revenue_by_month": ("revenue", revenue_by_month_table),
    "revenue_by_offering": ("revenue", revenue_by_offering_table),
    "revenue_public_private": ("revenue", revenue_public_private_table),
}


def report_table(db: Session, actor: User, name: str, report_filter: ReportFilter) -> tuple[Scope, Table]:
    """One table by name, for ``actor`` (``NotFound`` for an unknown name)."""
    if name not in TABLES:
        raise NotFound(Message(N_("No such report.")))
    scope = scope_for(db, actor, report_filter)
    return scope, TABLES[name][1](db, scope)


def page_tables(db: Session, actor: User, page: str, report_filter: ReportFilter) -> tuple[Scope, list[Table]]:
    """The tables of one dashboard page (``usage``, ``revenue`` or ``calls``), in order."""
    scope = scope_for(db, actor, report_filter)
    if page == "revenue":
        require_revenue(scope)
    return scope, [build(db, scope) for on, build in TABLES.values() if on == page]
