"""The figures of the operators' dashboards, each a ``Table`` that the pages, CSV exports and JSON API share.

Every table costs a fixed number of queries over small tables whatever the length of the ledger: usage
comes from the monthly rollup (``report_usage_months``), revenue from ``report_revenue_months``,
capacity and allocations from the capacity periods and reservations. The words, as the README defines them:

- *capacity*: what the capacity periods that start in the quarter offer (``CapacityPeriod.capacity``);
- *allocated*: what allocations hold reserved in those periods (awards, purchases including those awaiting
  payment, course shares, transfers; hours given back, refunded or expired no longer count);
- *used*: usage charged to allocations of the resource, counted in the month of the usage's day;
- *public*: universities, research institutes and public bodies; *private*: SMEs, startups, large companies
  and private buyers (persons buying hours for their personal project);
- *revenue*: invoiced net amounts (VAT apart), credit notes subtracted, by month of issue.

Sector and country are the allocation's project's organisation's (as they are now). A personal project has no
organisation: its hours and revenue count under the sector ``PRIVATE_BUYERS_LABEL``, on the private side, and in
the country of its owner's latest billing address (``PRIVATE_BUYERS_LABEL`` where they never gave one), so that
every table adds up to the same totals.

The package: ``scope`` (what is asked and who asks), ``sectors`` (the sides, sectors and private buyers),
``table`` (``Table``, ``Column`` and the shared columns), one module per dashboard page (``usage``, ``calls``,
``revenue``), ``dashboards`` (every table by name) and ``operators`` (site operators' sites). Import from here.
"""

from __future__ import annotations

from portal.reports.services.calls import (
    IN_REVIEW,
    funnel_table,
    outputs_table,
)
from portal.reports.services.dashboards import (
    TABLES,
    page_tables,
    report_table,
)
from portal.reports.services.operators import (
    assign_site,
    find_site,
)
from portal.reports.services.revenue import (
    require_revenue,
    revenue_by_month_table,
    revenue_by_offering_table,
    revenue_public_private_table,
)
from portal.reports.services.scope import (
    FIRST_YEAR,
    LAST_YEAR,
    SERIES_MONTHS,
    ReportFilter,
    Scope,
    add_months,
    parse_filter,
    quarter_choices,
    scope_for,
)
from portal.reports.services.sectors import (
    PRIVATE_BUYERS_LABEL,
    PUBLIC_KINDS,
    private_buyer_countries,
    sector_of,
    side_of,
)
from portal.reports.services.table import (
    ALLOCATED,
    CAPACITY,
    CURRENCY,
    CURRENCY_COLUMN,
    KIND,
    MONEY_COLUMNS,
    MONTH,
    NET_SHARE,
    RESOURCE,
    SIDE,
    SIDES,
    SITE,
    USED,
    USED_PERCENT,
    USED_SHARE,
    Column,
    Table,
    percent,
)
from portal.reports.services.usage import (
    PERSONAL_PROJECT,
    TOP_PROJECTS,
    capacity_table,
    countries_table,
    month_capacity,
    public_private_table,
    sectors_table,
    top_projects_table,
    utilisation_table,
)

__all__ = [
    "ALLOCATED",
    "CAPACITY",
    "CURRENCY",
    "CURRENCY_COLUMN",
    "FIRST_YEAR",
    "IN_REVIEW",
    "KIND",
    "LAST_YEAR",
    "MONEY_COLUMNS",
    "MONTH",
    "NET_SHARE",
    "PERSONAL_PROJECT",
    "PRIVATE_BUYERS_LABEL",
    "PUBLIC_KINDS",
    "RESOURCE",
    "SERIES_MONTHS",
    "SIDE",
    "SIDES",
    "SITE",
    "TABLES",
    "TOP_PROJECTS",
    "USED",
    "USED_PERCENT",
    "USED_SHARE",
    "Column",
    "ReportFilter",
    "Scope",
    "Table",
    "add_months",
    "assign_site",
    "capacity_table",
    "countries_table",
    "find_site",
    "funnel_table",
    "month_capacity",
    "outputs_table",
    "page_tables",
    "parse_filter",
    "percent",
    "private_buyer_countries",
    "public_private_table",
    "quarter_choices",
    "report_table",
    "require_revenue",
    "revenue_by_month_table",
    "revenue_by_offering_table",
    "revenue_public_private_table",
    "scope_for",
    "sector_of",
    "sectors_table",
    "side_of",
    "top_projects_table",
    "utilisation_table",
]
