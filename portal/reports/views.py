"""The operators' dashboards: usage (capacity, utilisation, sectors, countries, public/private, top
projects), revenue and the applications funnel, each table also as CSV."""

from __future__ import annotations

import csv
import io

from flask import Blueprint, Response, render_template, request
from flask_login import login_required

from portal.db import get_db, utcnow
from portal.formatting import csv_safe, quantity
from portal.market.invoice_pdf import money
from portal.reports import services
from portal.reports.charts import chart_for
from portal.web import actor

bp = Blueprint("reports", __name__, url_prefix="/reports")

PAGES = {"usage": "Capacity and use", "revenue": "Revenue", "calls": "Applications"}


def _filter() -> services.ReportFilter:
    return services.parse_filter(request.args.get("quarter"), request.args.get("site"))


def _page(page: str):  # type: ignore[no-untyped-def]
    report_filter = _filter()
    db = get_db()
    scope, tables = services.page_tables(db, actor(), page, report_filter)
    return render_template(
        "reports/dashboard.html",
        page=page,
        pages=PAGES,
        scope=scope,
        tables=[(t, chart_for(t)) for t in tables],
        quarters=services.quarter_choices(db, scope, utcnow().date()),
        query={k: v for k, v in request.args.items() if k in ("quarter", "site") and v},
    )


@bp.get("")
@login_required
def usage():  # type: ignore[no-untyped-def]
    return _page("usage")


@bp.get("/revenue")
@login_required
def revenue():  # type: ignore[no-untyped-def]
    return _page("revenue")


@bp.get("/calls")
@login_required
def calls():  # type: ignore[no-untyped-def]
    return _page("calls")


@bp.get("/<name>.csv")
@login_required
def table_csv(name: str):  # type: ignore[no-untyped-def]
    """One table as CSV: the same values as the JSON API (base units, cents), one column per key."""
    report_filter = _filter()
    _scope, table = services.report_table(get_db(), actor(), name, report_filter)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow([csv_safe("" if row[c.key] is None else row[c.key]) for c in table.columns])
    filename = f"{name}-{report_filter.label}" + (f"-site{report_filter.site_id}" if report_filter.site_id else "")
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


@bp.app_template_filter("report_cell")
def report_cell(value: object, column: services.Column, row: dict) -> str:  # type: ignore[type-arg]
    """A table cell as people read it: quantities in display units, cents in euros, percentages."""
    if value is None:
        return "–"
    if column.format == "quantity":
        return quantity(value, row["kind"])  # type: ignore[arg-type]
    if column.format == "cents":
        return money(value, row.get("currency", services.CURRENCY))  # type: ignore[arg-type]
    if column.format == "percent":
        return f"{value:,.1f} %"
    if column.format == "int":
        return f"{value:,}"
    return str(value)
