"""The tables of the usage page: capacity, allocated and used per resource, utilisation by month, allocations
and use by sector, country and side, and the top projects by use; usage from the monthly rollup, allocations
from the capacity reservations of the quarter's periods.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.ledger.models import Allocation, CapacityPeriod, CapacityReservation, Resource, UsageMonth
from portal.projects.models import Organisation, OrganisationKind, Project
from portal.reports.services.scope import ReportFilter, Scope, add_months
from portal.reports.services.sectors import PRIVATE_BUYERS_LABEL, private_buyer_countries, sector_of, side_of
from portal.reports.services.table import (
    ALLOCATED,
    CAPACITY,
    KIND,
    MONTH,
    RESOURCE,
    SIDES,
    SITE,
    USED,
    USED_PERCENT,
    USED_SHARE,
    Column,
    Table,
    percent,
)

#: Projects listed per resource kind in "top projects by use".
TOP_PROJECTS = 10


def _in_quarter(column: Any, report_filter: ReportFilter) -> Any:
    return sa.and_(column >= report_filter.quarter, column < report_filter.quarter_end)


def capacity_table(db: Session, scope: Scope) -> Table:
    """Per resource, for the quarter: capacity, allocated and used, and their ratios."""
    f = scope.filter
    periods = db.exec(
        select(CapacityPeriod.resource_id, func.sum(CapacityPeriod.capacity), func.sum(CapacityPeriod.reserved))
        .where(col(CapacityPeriod.resource_id).in_(scope.resource_ids), _in_quarter(col(CapacityPeriod.starts_on), f))
        .group_by(CapacityPeriod.resource_id)
    ).all()
    planned = {int(r): (int(c), int(a)) for r, c, a in periods}
    used = _used_by(db, scope, col(Allocation.resource_id))
    table = Table(
        "capacity",
        "Capacity, allocated and used",
        [
            SITE,
            RESOURCE,
            KIND,
            CAPACITY,
            ALLOCATED,
            USED,
            Column("allocated_percent", "Allocated of capacity", "percent"),
            USED_PERCENT,
            Column("used_of_allocated_percent", "Used of allocated", "percent"),
        ],
    )
    for resource, site in scope.resources:
        capacity, allocated = planned.get(resource.id, (0, 0))
        amount = used.get(resource.id, 0)
        table.rows.append(
            {
                "site": site.name,
                "resource": resource.name,
                "kind": str(resource.kind),
                "capacity": capacity,
                "allocated": allocated,
                "used": amount,
                "allocated_percent": percent(allocated, capacity),
                "used_percent": percent(amount, capacity),
                "used_of_allocated_percent": percent(amount, allocated),
            }
        )
    return table


def _with_organisation(stmt: Any) -> Any:
    """``stmt`` (which selects from allocations) joined to the allocation's project and its organisation, if it
    has one: a personal project's rows have NULL organisation columns, never drop out."""
    return stmt.join(Project, Project.id == Allocation.project_id).outerjoin(
        Organisation,
        Organisation.id == Project.organisation_id,
    )


#: A personal project's id, NULL for an organisation's: grouped by, it keeps private buyers apart.
PERSONAL_PROJECT = sa.case((col(Project.organisation_id).is_(None), col(Project.id)))


def _used_by(db: Session, scope: Scope, *group: Any, start: date | None = None, end: date | None = None) -> dict:
    """Usage in [start, end) (default: the quarter) of the scope's resources, summed by ``group`` columns."""
    start = start or scope.filter.quarter
    end = end or scope.filter.quarter_end
    stmt = (
        _with_organisation(
            select(*group, func.sum(UsageMonth.amount))
            .join(Allocation, Allocation.id == UsageMonth.allocation_id)
            .join(Resource, Resource.id == Allocation.resource_id)
        )
        .where(
            col(Allocation.resource_id).in_(scope.resource_ids),
            col(UsageMonth.month) >= start,
            col(UsageMonth.month) < end,
        )
        .group_by(*group)
    )
    rows = db.exec(stmt).all()
    if len(group) == 1:
        return {row[0]: int(row[1]) for row in rows}
    return {tuple(row[:-1]): int(row[-1]) for row in rows}


def _allocated_by(db: Session, scope: Scope, *group: Any) -> dict[tuple[Any, ...], int]:
    """Capacity reserved in the quarter's periods of the scope's resources, summed by ``group`` columns."""
    rows = db.exec(
        _with_organisation(
            select(*group, func.sum(CapacityReservation.amount))
            .join(CapacityPeriod, CapacityPeriod.id == CapacityReservation.period_id)
            .join(Resource, Resource.id == CapacityPeriod.resource_id)
            .join(Allocation, Allocation.id == CapacityReservation.allocation_id)
        )
        .where(
            col(CapacityPeriod.resource_id).in_(scope.resource_ids),
            _in_quarter(col(CapacityPeriod.starts_on), scope.filter),
        )
        .group_by(*group)
    ).all()
    return {tuple(row[:-1]): int(row[-1]) for row in rows if row[-1]}


def utilisation_table(db: Session, scope: Scope) -> Table:
    """Per resource and month, the twelve months up to the quarter's end: capacity, used and their ratio.

    A month's capacity is the share of each overlapping period's capacity in proportion to the days of
    the period that fall in the month (integer division)."""
    f = scope.filter
    months = f.months()
    periods = db.exec(
        select(CapacityPeriod).where(
            col(CapacityPeriod.resource_id).in_(scope.resource_ids),
            col(CapacityPeriod.starts_on) < f.quarter_end,
            col(CapacityPeriod.ends_on) > f.series_start,
        )
    ).all()
    used = _used_by(db, scope, col(Allocation.resource_id), col(UsageMonth.month), start=f.series_start)
    table = Table(
        "utilisation",
        "Utilisation by month",
        [
            MONTH,
            SITE,
            RESOURCE,
            KIND,
            CAPACITY,
            USED,
            USED_PERCENT,
        ],
    )
    for resource, site in scope.resources:
        own = [p for p in periods if p.resource_id == resource.id]
        for month in months:
            capacity = sum(month_capacity(p.capacity, p.starts_on, p.ends_on, month) for p in own)
            amount = used.get((resource.id, month), 0)
            table.rows.append(
                {
                    "month": month.strftime("%Y-%m"),
                    "site": site.name,
                    "resource": resource.name,
                    "kind": str(resource.kind),
                    "capacity": capacity,
                    "used": amount,
                    "used_percent": percent(amount, capacity),
                }
            )
    return table


def month_capacity(capacity: int, starts_on: date, ends_on: date, month: date) -> int:
    """The part of a period's capacity that falls in ``month``, by days."""
    first, after = max(starts_on, month), min(ends_on, add_months(month, 1))
    days = (after - first).days
    return capacity * days // (ends_on - starts_on).days if days > 0 else 0


def _grouped_table(
    db: Session,
    scope: Scope,
    name: str,
    title: str,
    column: Any,
    label: str,
    name_of: Callable[[Any], str],
    *,
    by_buyer_country: bool = False,
) -> Table:
    """Allocated and used in the quarter per (group, resource kind); the share of the kind's use. ``name_of``
    names the group of an organisation's ``column`` value (None for a personal project); ``by_buyer_country``
    puts each personal project under its owner's country instead."""
    group = (column, PERSONAL_PROJECT) if by_buyer_country else (column,)
    allocated = _allocated_by(db, scope, *group, col(Resource.kind))
    used = _used_by(db, scope, *group, col(Resource.kind))
    personal = sorted({int(k[1]) for k in (*allocated, *used) if by_buyer_country and k[1] is not None})
    countries = private_buyer_countries(db, personal)

    def group_name(key: tuple[Any, ...]) -> str:
        if by_buyer_country and key[1] is not None:
            return countries.get(int(key[1]), PRIVATE_BUYERS_LABEL)
        return name_of(key[0])

    folded_allocated: dict[tuple[str, str], int] = {}
    folded_used: dict[tuple[str, str], int] = {}
    for source, target in ((allocated, folded_allocated), (used, folded_used)):
        for key, amount in source.items():
            folded = (group_name(key), str(key[-1]))
            target[folded] = target.get(folded, 0) + amount
    kinds = sorted({str(r.kind) for r, _s in scope.resources})
    used_per_kind = {k: sum(v for (_g, kk), v in folded_used.items() if kk == k) for k in kinds}
    groups = sorted({g for g, _k in (*folded_allocated, *folded_used)} | _always_listed(name))
    table = Table(
        name,
        title,
        [
            Column("group", label),
            KIND,
            ALLOCATED,
            USED,
            USED_SHARE,
        ],
    )
    for kind in kinds:
        for group in groups:
            amount = folded_used.get((group, kind), 0)
            table.rows.append(
                {
                    "group": group,
                    "kind": kind,
                    "allocated": folded_allocated.get((group, kind), 0),
                    "used": amount,
                    "used_share_percent": percent(amount, used_per_kind[kind]),
                }
            )
    return table


def _always_listed(name: str) -> set[str]:
    if name == "sectors":
        return {k.label for k in OrganisationKind} | {PRIVATE_BUYERS_LABEL}
    if name == "public_private":
        return set(SIDES)
    return set()


def sectors_table(db: Session, scope: Scope) -> Table:
    return _grouped_table(
        db, scope, "sectors", "Allocations and use by sector", col(Organisation.kind), "Sector", sector_of
    )


def countries_table(db: Session, scope: Scope) -> Table:
    return _grouped_table(
        db, scope, "countries", "Allocations and use by country", col(Organisation.country), "Country", str,
        by_buyer_country=True,
    )  # fmt: skip


def public_private_table(db: Session, scope: Scope) -> Table:
    return _grouped_table(
        db, scope, "public_private", "Public and private use of hours", col(Organisation.kind), "Side", side_of
    )


def top_projects_table(db: Session, scope: Scope) -> Table:
    """The projects that used most in the quarter, ``TOP_PROJECTS`` per resource kind."""
    used = _used_by(db, scope, col(Allocation.project_id), col(Resource.kind))
    per_kind: dict[str, list[tuple[int, int]]] = {}
    for (project_id, kind), amount in used.items():
        per_kind.setdefault(str(kind), []).append((int(project_id), amount))
    top = {k: sorted(v, key=lambda p: (-p[1], p[0]))[:TOP_PROJECTS] for k, v in sorted(per_kind.items())}
    ids = [p for ranked in top.values() for p, _a in ranked]
    projects = {
        p.id: (p, o)
        for p, o in db.exec(
            select(Project, Organisation)
            .outerjoin(Organisation, Organisation.id == Project.organisation_id)
            .where(col(Project.id).in_(ids))
        ).all()
    }
    countries = private_buyer_countries(db, [p for p, (_p, o) in projects.items() if o is None])
    table = Table(
        "top_projects",
        "Top projects by use",
        [
            KIND,
            Column("rank", "Rank", "int"),
            Column("project_id", "Project id", "int"),
            Column("project", "Project"),
            Column("organisation", "Organisation"),
            Column("sector", "Sector"),
            Column("country", "Country"),
            USED,
            USED_SHARE,
        ],
    )
    for kind, ranked in top.items():
        total = sum(a for _p, a in per_kind[kind])
        for rank, (project_id, amount) in enumerate(ranked, start=1):
            project, organisation = projects[project_id]
            table.rows.append(
                {
                    "kind": kind,
                    "rank": rank,
                    "project_id": project_id,
                    "project": project.title,
                    "organisation": organisation.name if organisation else "",
                    "sector": sector_of(organisation.kind if organisation else None),
                    "country": organisation.country if organisation else countries.get(project_id, ""),
                    "used": amount,
                    "used_share_percent": percent(amount, total),
                }
            )
    return table
