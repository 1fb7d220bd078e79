"""The tables of the revenue page, for finance staff and admins only (``require_revenue``): net, VAT and gross
invoiced by month, by offering and to the public and private sides, from the monthly revenue rollup, per
currency.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlmodel import Session, col, func, select

from portal.errors import NotAuthorised
from portal.market.models import Offering, RevenueMonth
from portal.messages import N_, Message
from portal.projects.models import Organisation
from portal.reports.services.scope import Scope
from portal.reports.services.sectors import side_of
from portal.reports.services.table import (
    CURRENCY,
    CURRENCY_COLUMN,
    MONEY_COLUMNS,
    MONTH,
    NET_SHARE,
    RESOURCE,
    SIDE,
    SIDES,
    SITE,
    Column,
    Table,
    percent,
)


def _revenue(db: Session, scope: Scope, *group: Any, start: date, end: date) -> dict[tuple[Any, ...], list[int]]:
    """Invoiced [quantity, net, VAT, gross] in [start, end) of the scope's offerings, summed by ``group``
    columns and the offering's currency (the key's last item): amounts in different currencies never add up."""
    rows = db.exec(
        select(
            *group,
            col(Offering.currency),
            func.sum(RevenueMonth.quantity),
            func.sum(RevenueMonth.net_cents),
            func.sum(RevenueMonth.vat_cents),
            func.sum(RevenueMonth.gross_cents),
        )
        .join(Offering, Offering.id == RevenueMonth.offering_id)
        .outerjoin(Organisation, Organisation.id == RevenueMonth.organisation_id)  # none: ``PRIVATE_BUYERS``
        .where(
            col(Offering.resource_id).in_(scope.resource_ids),
            col(RevenueMonth.month) >= start,
            col(RevenueMonth.month) < end,
        )
        .group_by(*group, col(Offering.currency))
    ).all()
    return {tuple(row[:-4]): [int(x) for x in row[-4:]] for row in rows}


def _currencies(sums: dict[tuple[Any, ...], list[int]]) -> list[str]:
    """The currencies invoiced, or the portal's own where nothing was."""
    return sorted({key[-1] for key in sums}) or [CURRENCY]


def revenue_by_month_table(db: Session, scope: Scope) -> Table:
    """Net, VAT and gross invoiced per month (and currency), the twelve months up to the quarter's end."""
    require_revenue(scope)
    f = scope.filter
    sums = _revenue(db, scope, col(RevenueMonth.month), start=f.series_start, end=f.quarter_end)
    table = Table("revenue_by_month", "Revenue by month", [MONTH, CURRENCY_COLUMN, *MONEY_COLUMNS])
    for currency in _currencies(sums):
        for month in f.months():
            _quantity, net, vat, gross = sums.get((month, currency), [0, 0, 0, 0])
            table.rows.append(
                {
                    "month": month.strftime("%Y-%m"),
                    "currency": currency,
                    "net_cents": net,
                    "vat_cents": vat,
                    "gross_cents": gross,
                }
            )
    return table


def revenue_by_offering_table(db: Session, scope: Scope) -> Table:
    """Per offering of the sites in view, for the quarter: hours invoiced, net, VAT and gross, share of net
    (of the offering's currency)."""
    require_revenue(scope)
    f = scope.filter
    sums = {
        o: v
        for (o, _c), v in _revenue(db, scope, col(RevenueMonth.offering_id), start=f.quarter, end=f.quarter_end).items()
    }
    offerings = db.exec(
        select(Offering).where(col(Offering.resource_id).in_(scope.resource_ids)).order_by(Offering.title, Offering.id)
    ).all()
    where = {r.id: (r, s) for r, s in scope.resources}
    totals: dict[str, int] = {}
    for offering in offerings:
        totals[offering.currency] = totals.get(offering.currency, 0) + sums.get(offering.id, [0, 0])[1]
    table = Table(
        "revenue_by_offering",
        "Revenue by offering",
        [
            Column("offering_id", "Offering id", "int"),
            Column("offering", "Offering"),
            SITE,
            RESOURCE,
            Column("hours", "Hours invoiced", "int"),
            CURRENCY_COLUMN,
            *MONEY_COLUMNS,
            NET_SHARE,
        ],
    )
    for offering in offerings:
        quantity, net, vat, gross = sums.get(offering.id, [0, 0, 0, 0])
        resource, site = where[offering.resource_id]
        table.rows.append(
            {
                "offering_id": offering.id,
                "offering": offering.title,
                "site": site.name,
                "resource": resource.name,
                "hours": quantity,
                "currency": offering.currency,
                "net_cents": net,
                "vat_cents": vat,
                "gross_cents": gross,
                "net_share_percent": percent(net, totals[offering.currency]),
            }
        )
    return table


def revenue_public_private_table(db: Session, scope: Scope) -> Table:
    """Net, VAT and gross invoiced in the quarter to public and to private organisations (and private buyers),
    per currency."""
    require_revenue(scope)
    f = scope.filter
    found = _revenue(db, scope, col(Organisation.kind), start=f.quarter, end=f.quarter_end)
    sums: dict[tuple[str, str], list[int]] = {}
    for (kind, currency), amounts in found.items():
        into = sums.setdefault((side_of(kind), currency), [0, 0, 0, 0])
        for i, amount in enumerate(amounts):
            into[i] += amount
    table = Table(
        "revenue_public_private", "Public and private revenue", [SIDE, CURRENCY_COLUMN, *MONEY_COLUMNS, NET_SHARE]
    )
    for currency in _currencies(found):
        total = sum(v[1] for (_side, c), v in sums.items() if c == currency)
        for side in SIDES:
            _quantity, net, vat, gross = sums.get((side, currency), [0, 0, 0, 0])
            table.rows.append(
                {
                    "side": side,
                    "currency": currency,
                    "net_cents": net,
                    "vat_cents": vat,
                    "gross_cents": gross,
                    "net_share_percent": percent(net, total),
                }
            )
    return table


def require_revenue(scope: Scope) -> None:
    if not scope.may_see_revenue:
        raise NotAuthorised(Message(N_("Revenue figures are for finance staff and admins.")))
