"""The dashboards' figures over the JSON API: ``GET /api/v1/reports/<name>``, the same rows as the CSV."""

from __future__ import annotations

from enum import StrEnum

from flask import jsonify, request
from flask_babel import gettext
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.db import get_db
from portal.identity.models import ApiScope
from portal.reports import services

ReportName = StrEnum("ReportName", {name: name for name in services.TABLES})


class ReportQuery(BaseModel):
    quarter: str | None = Field(default=None, description="A quarter like 2026-Q3; today's by default")
    site: int | None = Field(default=None, description="A site id; every site the caller sees by default")


class ColumnOut(BaseModel):
    key: str
    label: str = Field(description="The column's heading, in the language of `Accept-Language`")
    format: str = Field(description="text, int, quantity (base units of the row's kind), cents or percent")


class ReportOut(BaseModel):
    report: str
    title: str = Field(description="The table's heading, in the language of `Accept-Language`")
    quarter: str
    site_id: int | None
    columns: list[ColumnOut]
    rows: list[dict[str, str | int | float | None]]


@bp.get("/reports/<name>")
@token_required(ApiScope.REPORTS_READ)
@spec.validate(
    query=ReportQuery,
    resp=Response(HTTP_200=ReportOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["reports"],
)
def report(name: str):
    """One table of the operators' dashboards. Names: capacity, utilisation, sectors, countries,
    public_private, top_projects, funnel, outputs, revenue_by_month, revenue_by_offering, revenue_public_private.
    Quantities are base units (GPU-seconds, core-seconds, GB-days) of the row's ``kind``; money is cents."""
    report_filter = services.parse_filter(request.args.get("quarter"), request.args.get("site"))
    _scope, table = services.report_table(get_db(), api_user(), name, report_filter)
    body = ReportOut(
        report=table.name,
        title=gettext(table.title),
        quarter=report_filter.label,
        site_id=report_filter.site_id,
        columns=[ColumnOut(key=c.key, label=gettext(c.label), format=c.format) for c in table.columns],
        rows=table.rows,
    )
    return jsonify(body.model_dump(mode="json"))
