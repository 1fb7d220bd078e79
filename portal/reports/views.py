"""The operators' dashboards: usage (capacity, utilisation, sectors, countries, public/private, top
projects), revenue, the applications funnel and the research outputs per call, each table also as CSV."""

from __future__ import annotations

from decimal import Decimal

from flask import Blueprint, render_template, request
from flask_babel import gettext as _
from flask_babel import pgettext
from flask_login import login_required
from jinja2 import pass_context
from jinja2.runtime import Context

from portal import formatting
from portal.db import get_db, utcnow
from portal.i18n import N_, page_language
from portal.projects.forms import ORGANISATION_KINDS
from portal.projects.models import OrganisationKind
from portal.reports import services
from portal.reports.charts import chart_for
from portal.web import actor, csv_response

bp = Blueprint("reports", __name__, url_prefix="/reports")

PAGES = {"usage": N_("Capacity and use"), "revenue": N_("Revenue"), "calls": N_("Applications")}
#: The tables' titles and columns' headings, which ``portal.reports.services`` writes in English: the page shows
#: each through the catalogue (``_(table.title)``, ``_(column.label)``), and so does the JSON API (in the language of
#: ``Accept-Language``); the CSV keeps them in English, and both keep the columns' keys.
REPORT_WORDS = (
    N_("Capacity, allocated and used"),
    N_("Utilisation by month"),
    N_("Allocations and use by sector"),
    N_("Allocations and use by country"),
    N_("Public and private use of hours"),
    N_("Top projects by use"),
    N_("Applications per call"),
    N_("Research outputs per call, site and country"),
    N_("Revenue by month"),
    N_("Revenue by offering"),
    N_("Public and private revenue"),
    N_("Site"),
    N_("Resource"),
    N_("Kind"),
    N_("Month"),
    N_("Side"),
    N_("Capacity"),
    N_("Allocated"),
    N_("Used"),
    N_("Used of capacity"),
    N_("Share of use"),
    N_("Currency"),
    N_("Net"),
    N_("VAT"),
    N_("Gross"),
    N_("Share of net"),
    N_("Allocated of capacity"),
    N_("Used of allocated"),
    N_("Rank"),
    N_("Project id"),
    N_("Project"),
    N_("Organisation"),
    N_("Sector"),
    N_("Country"),
    N_("Call id"),
    N_("Call"),
    N_("Call state"),
    N_("Started"),
    N_("Submitted"),
    N_("In review"),
    N_("Accepted"),
    N_("Rejected"),
    N_("Withdrawn"),
    N_("Accepted of submitted"),
    N_("All outputs"),
    N_("Offering id"),
    N_("Offering"),
    N_("Hours invoiced"),
    N_("Private buyers"),
)


def _filter() -> services.ReportFilter:
    return services.parse_filter(request.args.get("quarter"), request.args.get("site"))


def _page(page: str):
    report_filter = _filter()
    db = get_db()
    scope, tables = services.page_tables(db, actor(), page, report_filter)
    return render_template(
        "reports/dashboard.html",
        page=page,
        pages=PAGES,
        scope=scope,
        tables=[(t, chart_for(t, stored_word)) for t in tables],
        quarters=services.quarter_choices(db, scope, utcnow().date()),
        query={k: v for k, v in request.args.items() if k in ("quarter", "site") and v},
    )


@bp.get("")
@login_required
def usage():
    return _page("usage")


@bp.get("/revenue")
@login_required
def revenue():
    return _page("revenue")


@bp.get("/calls")
@login_required
def calls():
    return _page("calls")


@bp.get("/<name>.csv")
@login_required
def table_csv(name: str):
    """One table as CSV: the same values as the JSON API (base units, cents), one column per key."""
    report_filter = _filter()
    _scope, table = services.report_table(get_db(), actor(), name, report_filter)
    filename = f"{name}-{report_filter.label}" + (f"-site{report_filter.site_id}" if report_filter.site_id else "")
    rows = ([row[c.key] for c in table.columns] for row in table.rows)
    return csv_response(f"{filename}.csv", [c.key for c in table.columns], rows)


@bp.app_template_filter("report_cell")
@pass_context
def report_cell(context: Context, value: object, column: services.Column, row: dict) -> str:
    """A table cell as people read it, in the page's language: quantities in display units, cents as money,
    percentages; the stored words (kinds, sides, sectors, states) in the reader's words."""
    locale = page_language(context)
    if value is None:
        return "–"
    if column.format == "quantity":
        return formatting.quantity(value, row["kind"], locale=locale)
    if column.format == "cents":
        return formatting.money(value, row.get("currency", services.CURRENCY), locale=locale)
    if column.format == "percent":
        return f"{formatting.number(Decimal(f'{value:.1f}'), places=1, locale=locale)} %"
    if column.format == "int":
        return formatting.number(value, locale=locale)
    return stored_word(column.key, str(value))


_KINDS = {
    "gpu": lambda: pgettext("resource kind", "gpu"),
    "cpu": lambda: pgettext("resource kind", "cpu"),
    "storage": lambda: pgettext("resource kind", "storage"),
}
_SIDES = {"public": lambda: pgettext("sector side", "public"), "private": lambda: pgettext("sector side", "private")}
_SECTORS = {kind.label: (lambda kind=kind: str(ORGANISATION_KINDS[kind])) for kind in OrganisationKind}
_SECTORS[services.PRIVATE_BUYERS_LABEL] = lambda: _("Private buyers")
_CALL_STATES = {
    "draft": lambda: pgettext("call state", "draft"),
    "open": lambda: pgettext("call state", "open"),
    "closed": lambda: pgettext("call state", "closed"),
}
#: The words the reports store in their rows, by column; each looked up in the catalogue only when shown (a
#: table asks once per cell).
_STORED_WORDS = {
    "kind": _KINDS,
    "side": _SIDES,
    "sector": _SECTORS,
    "group": _SIDES | _SECTORS,
    "call_state": _CALL_STATES,
}


def stored_word(key: str, value: str) -> str:
    """The words the reports store in their rows (``kind``, ``side``, ``sector``, ``call_state``, a group of a
    sector or side), in the page's language; names, codes and months as they are."""
    word = _STORED_WORDS.get(key, {}).get(value)
    return word() if word is not None else value
