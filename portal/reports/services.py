"""The figures of the operators' dashboards, each a ``Table`` that the pages, CSV exports and JSON API share.

Every table costs a fixed number of queries over small tables whatever the length of the ledger: usage
comes from the monthly rollup (``report_usage_months``), revenue from ``report_revenue_months``,
capacity and allocations from the capacity periods and reservations. The words, as the README defines them:

- *capacity*: what the capacity periods that start in the quarter offer (``CapacityPeriod.capacity``);
- *allocated*: what allocations hold reserved in those periods (awards, purchases including those awaiting
  payment, course shares, transfers; hours given back, refunded or expired no longer count);
- *used*: usage charged to allocations of the resource, counted in the month of the usage's day;
- *public*: universities, research institutes and public bodies; *private*: SMEs, startups, large companies;
- *revenue*: invoiced net amounts (VAT apart), credit notes subtracted, by month of issue.

Sector and country are the allocation's project's organisation's (as they are now).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, allowed, factory_roles, require
from portal.db import utcnow
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.grants.models import Application, ApplicationState, Call
from portal.identity.models import FactoryRole, User
from portal.ledger.models import Allocation, CapacityPeriod, CapacityReservation, Resource, Site, UsageMonth
from portal.market.models import Offering, RevenueMonth
from portal.projects.models import Organisation, OrganisationKind, Project
from portal.reports.models import OperatorSite

PUBLIC_KINDS = frozenset({OrganisationKind.UNIVERSITY, OrganisationKind.PUBLIC_BODY})
#: Projects listed per resource kind in "top projects by use".
TOP_PROJECTS = 10
#: The years a quarter may be asked for (a series reaches a year back; dates end at 9999).
FIRST_YEAR, LAST_YEAR = 2000, 2999
#: Months shown by the time series (utilisation, revenue by month), ending with the chosen quarter.
SERIES_MONTHS = 12
IN_REVIEW = (
    ApplicationState.SUBMITTED,
    ApplicationState.TECHNICAL_ASSESSMENT,
    ApplicationState.PEER_REVIEW,
    ApplicationState.REPLY,
    ApplicationState.RANKED,
)


def side_of(kind: OrganisationKind | str) -> str:
    """``public`` for universities, research institutes and public bodies; ``private`` otherwise."""
    return "public" if OrganisationKind(kind) in PUBLIC_KINDS else "private"


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


# --- what is asked and who asks ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFilter:
    #: First day of the quarter.
    quarter: date
    site_id: int | None = None

    @property
    def quarter_end(self) -> date:
        return add_months(self.quarter, 3)

    @property
    def label(self) -> str:
        return f"{self.quarter.year}-Q{(self.quarter.month - 1) // 3 + 1}"

    @property
    def series_start(self) -> date:
        return add_months(self.quarter_end, -SERIES_MONTHS)

    def months(self) -> list[date]:
        return [add_months(self.series_start, i) for i in range(SERIES_MONTHS)]


def parse_filter(
    quarter: str | None = None, site: str | int | None = None, *, today: date | None = None
) -> ReportFilter:
    """``quarter`` like ``2026-Q3`` (default: today's), ``site`` a site id or empty for every site in view."""
    today = today or utcnow().date()
    text = (quarter or "").strip().upper().replace(" ", "")
    if not text:
        start = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    else:
        year, _, number = text.partition("-Q")
        if not (
            year.isascii()
            and year.isdigit()
            and FIRST_YEAR <= int(year) <= LAST_YEAR
            and number in ("1", "2", "3", "4")
        ):
            raise InvalidInput(
                f"Choose a quarter like 2026-Q3, of a year from {FIRST_YEAR} to {LAST_YEAR}.",
                errors={"quarter": "A quarter like 2026-Q3."},
            )
        start = date(int(year), 3 * int(number) - 2, 1)
    site_id = None
    if site not in (None, ""):
        if not (str(site).isascii() and str(site).isdigit()):
            raise InvalidInput("Choose a site from the list.", errors={"site": "Unknown site."})
        site_id = int(site)  # type: ignore[arg-type]
    return ReportFilter(start, site_id)


@dataclass(frozen=True)
class Scope:
    """What one viewer sees for one filter: the chosen sites (among those they may see) and their resources."""

    filter: ReportFilter
    #: Every site the viewer may see, for the site filter.
    visible_sites: list[Site]
    #: The sites the figures are about.
    sites: list[Site]
    resources: list[tuple[Resource, Site]]
    may_see_revenue: bool

    @property
    def resource_ids(self) -> list[int]:
        return [r.id for r, _s in self.resources]  # type: ignore[misc]


def scope_for(db: Session, actor: User, report_filter: ReportFilter) -> Scope:
    """Admins and finance see every site; a site operator sees the sites assigned to them (``OperatorSite``)."""
    require(db, actor, Action.VIEW_REPORTS)
    roles = factory_roles(db, actor)
    stmt = select(Site).order_by(Site.name)
    if not roles & {FactoryRole.ADMIN, FactoryRole.FINANCE}:
        stmt = stmt.join(OperatorSite, OperatorSite.site_id == Site.id).where(OperatorSite.user_id == actor.id)  # type: ignore[arg-type]
    visible = list(db.exec(stmt))
    chosen = visible
    if report_filter.site_id is not None:
        chosen = [s for s in visible if s.id == report_filter.site_id]
        if not chosen:
            raise NotFound("No such site among those you see.")
    resources = db.exec(
        select(Resource, Site)
        .join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
        .where(col(Site.id).in_([s.id for s in chosen]))
        .order_by(Site.name, Resource.name)
    ).all()
    return Scope(
        report_filter,
        visible,
        chosen,
        list(resources),
        allowed(db, actor, Action.VIEW_REVENUE_REPORTS),  # type: ignore[arg-type]
    )


def quarter_choices(db: Session, scope: Scope, today: date) -> list[str]:
    """Quarters an operator can pick, newest first: from the first to the last quarter with capacity at the
    sites in view (past and planned), and at least two years back and one ahead of today."""
    this = parse_filter(None, today=today).quarter
    first, last = db.exec(
        select(func.min(CapacityPeriod.starts_on), func.max(CapacityPeriod.starts_on)).where(
            col(CapacityPeriod.resource_id).in_(scope.resource_ids)
        )
    ).one()
    first = min(add_months(this, -12 * 2), parse_filter(None, today=first).quarter if first else this)
    last = max(add_months(this, 12), parse_filter(None, today=last).quarter if last else this)
    first = max(first, date(FIRST_YEAR, 1, 1))
    last = min(last, date(LAST_YEAR, 10, 1))
    count = ((last.year - first.year) * 12 + last.month - first.month) // 3
    return [ReportFilter(add_months(last, -3 * i)).label for i in range(count + 1)]


# --- tables ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    #: ``text``; ``int``; ``quantity`` (base units of the row's resource ``kind``); ``cents``; ``percent``.
    format: str = "text"


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)


#: The portal's own currency (offerings' default), shown where nothing was invoiced.
CURRENCY = "EUR"
SIDES = ("public", "private")
#: Columns that several tables share.
SITE, RESOURCE, KIND = Column("site", "Site"), Column("resource", "Resource"), Column("kind", "Kind")
MONTH, SIDE = Column("month", "Month"), Column("side", "Side")
CAPACITY, ALLOCATED = Column("capacity", "Capacity", "quantity"), Column("allocated", "Allocated", "quantity")
USED, USED_PERCENT = Column("used", "Used", "quantity"), Column("used_percent", "Used of capacity", "percent")
USED_SHARE = Column("used_share_percent", "Share of use", "percent")
CURRENCY_COLUMN = Column("currency", "Currency")
MONEY_COLUMNS = (
    Column("net_cents", "Net", "cents"),
    Column("vat_cents", "VAT", "cents"),
    Column("gross_cents", "Gross", "cents"),
)
NET_SHARE = Column("net_share_percent", "Share of net", "percent")


def percent(part: int, whole: int) -> float | None:
    """``part`` of ``whole`` in percent with one decimal, None when the whole is zero."""
    return round(part * 100 / whole, 1) if whole else None


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
        capacity, allocated = planned.get(resource.id, (0, 0))  # type: ignore[arg-type]
        amount = used.get(resource.id, 0)  # type: ignore[arg-type]
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
    """``stmt`` (which selects from allocations) joined to the allocation's project and its organisation."""
    return stmt.join(Project, Project.id == Allocation.project_id).join(  # type: ignore[arg-type]
        Organisation,
        Organisation.id == Project.organisation_id,  # type: ignore[arg-type]
    )


def _used_by(db: Session, scope: Scope, *group: Any, start: date | None = None, end: date | None = None) -> dict:  # type: ignore[type-arg]
    """Usage in [start, end) (default: the quarter) of the scope's resources, summed by ``group`` columns."""
    start = start or scope.filter.quarter
    end = end or scope.filter.quarter_end
    stmt = (
        _with_organisation(
            select(*group, func.sum(UsageMonth.amount))
            .join(Allocation, Allocation.id == UsageMonth.allocation_id)  # type: ignore[arg-type]
            .join(Resource, Resource.id == Allocation.resource_id)  # type: ignore[arg-type]
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
            .join(CapacityPeriod, CapacityPeriod.id == CapacityReservation.period_id)  # type: ignore[arg-type]
            .join(Resource, Resource.id == CapacityPeriod.resource_id)  # type: ignore[arg-type]
            .join(Allocation, Allocation.id == CapacityReservation.allocation_id)  # type: ignore[arg-type]
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
    db: Session, scope: Scope, name: str, title: str, column: Any, label: str, name_of: Callable[[Any], str]
) -> Table:
    """Allocated and used in the quarter per (group, resource kind); the share of the kind's use."""
    allocated = _allocated_by(db, scope, column, col(Resource.kind))
    used = _used_by(db, scope, column, col(Resource.kind))
    folded_allocated: dict[tuple[str, str], int] = {}
    folded_used: dict[tuple[str, str], int] = {}
    for source, target in ((allocated, folded_allocated), (used, folded_used)):
        for (group, kind), amount in source.items():
            key = (name_of(group), str(kind))
            target[key] = target.get(key, 0) + amount
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
        return {k.label for k in OrganisationKind}
    if name == "public_private":
        return set(SIDES)
    return set()


def sectors_table(db: Session, scope: Scope) -> Table:
    return _grouped_table(
        db, scope, "sectors", "Allocations and use by sector", col(Organisation.kind), "Sector",
        lambda kind: OrganisationKind(kind).label,
    )  # fmt: skip


def countries_table(db: Session, scope: Scope) -> Table:
    return _grouped_table(
        db, scope, "countries", "Allocations and use by country", col(Organisation.country), "Country", str
    )


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
            .join(Organisation, Organisation.id == Project.organisation_id)  # type: ignore[arg-type]
            .where(col(Project.id).in_(ids))
        ).all()
    }
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
                    "organisation": organisation.name,
                    "sector": OrganisationKind(organisation.kind).label,
                    "country": organisation.country,
                    "used": amount,
                    "used_share_percent": percent(amount, total),
                }
            )
    return table


def funnel_table(db: Session, scope: Scope) -> Table:
    """Per call, newest first: applications started, submitted (ever), in review, accepted, rejected,
    withdrawn, and the share of submitted ones accepted. Calls are not tied to sites: every call is listed."""
    calls = db.exec(select(Call).order_by(col(Call.opens_at).desc(), col(Call.id).desc())).all()
    by_state: dict[tuple[int, str], int] = {
        (int(c), str(s)): int(n)
        for c, s, n in db.exec(
            select(Application.call_id, Application.state, func.count()).group_by(
                Application.call_id, Application.state
            )
        ).all()
    }
    submitted = dict(
        db.exec(
            select(Application.call_id, func.count())
            .where(col(Application.submitted_at).is_not(None))
            .group_by(Application.call_id)
        ).all()
    )
    table = Table(
        "funnel",
        "Applications per call",
        [
            Column("call_id", "Call id", "int"),
            Column("call", "Call"),
            Column("call_state", "Call state"),
            Column("started", "Started", "int"),
            Column("submitted", "Submitted", "int"),
            Column("in_review", "In review", "int"),
            Column("accepted", "Accepted", "int"),
            Column("rejected", "Rejected", "int"),
            Column("withdrawn", "Withdrawn", "int"),
            Column("accepted_percent", "Accepted of submitted", "percent"),
        ],
    )
    for call in calls:
        count = _state_counter(by_state, call.id)  # type: ignore[arg-type]
        accepted = count(ApplicationState.ACCEPTED)
        sent = int(submitted.get(call.id, 0))
        table.rows.append(
            {
                "call_id": call.id,
                "call": call.title,
                "call_state": str(call.state),
                "started": count(*ApplicationState),
                "submitted": sent,
                "in_review": count(*IN_REVIEW),
                "accepted": accepted,
                "rejected": count(ApplicationState.REJECTED),
                "withdrawn": count(ApplicationState.WITHDRAWN),
                "accepted_percent": percent(accepted, sent),
            }
        )
    return table


def _state_counter(by_state: dict[tuple[int, str], int], call_id: int) -> Callable[..., int]:
    def count(*states: ApplicationState) -> int:
        return sum(by_state.get((call_id, str(s)), 0) for s in states)

    return count


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
        .join(Offering, Offering.id == RevenueMonth.offering_id)  # type: ignore[arg-type]
        .join(Organisation, Organisation.id == RevenueMonth.organisation_id)  # type: ignore[arg-type]
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
    """Net, VAT and gross invoiced in the quarter to public and to private organisations, per currency."""
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
        raise NotAuthorised("Revenue figures are for finance staff and admins.")


#: Every table by name: the page it is on, and how it is computed.
TABLES: dict[str, tuple[str, Callable[[Session, Scope], Table]]] = {
    "capacity": ("usage", capacity_table),
    "utilisation": ("usage", utilisation_table),
    "sectors": ("usage", sectors_table),
    "countries": ("usage", countries_table),
    "public_private": ("usage", public_private_table),
    "top_projects": ("usage", top_projects_table),
    "funnel": ("calls", funnel_table),
    "revenue_by_month": ("revenue", revenue_by_month_table),
    "revenue_by_offering": ("revenue", revenue_by_offering_table),
    "revenue_public_private": ("revenue", revenue_public_private_table),
}


def report_table(db: Session, actor: User, name: str, report_filter: ReportFilter) -> tuple[Scope, Table]:
    """One table by name, for ``actor`` (``NotFound`` for an unknown name)."""
    if name not in TABLES:
        raise NotFound("No such report.")
    scope = scope_for(db, actor, report_filter)
    return scope, TABLES[name][1](db, scope)


def page_tables(db: Session, actor: User, page: str, report_filter: ReportFilter) -> tuple[Scope, list[Table]]:
    """The tables of one dashboard page (``usage``, ``revenue`` or ``calls``), in order."""
    scope = scope_for(db, actor, report_filter)
    if page == "revenue":
        require_revenue(scope)
    return scope, [build(db, scope) for on, build in TABLES.values() if on == page]


# --- site operators' sites -----------------------------------------------------------------------------


def assign_site(db: Session, actor: User | None, operator: User, site: Site, *, reason: str) -> OperatorSite:
    """Let a site operator see ``site``'s figures; ``actor`` None is the command line."""
    if actor is not None:
        require(db, actor, Action.GRANT_ROLES)
    reason = audit.require_reason(reason)
    if FactoryRole.SITE_OPERATOR not in factory_roles(db, operator):
        raise InvalidInput(f"{operator.display_name} is not a site operator.")
    existing = db.get(OperatorSite, (operator.id, site.id))
    if existing is not None:
        return existing
    assignment = OperatorSite(user_id=operator.id, site_id=site.id)  # type: ignore[arg-type]
    db.add(assignment)
    summary = f"{audit.actor_label(operator)} sees the reports of {site.name} ({site.code})"
    details = {"site_id": site.id, "site": site.code}
    audit.record(
        db,
        actor or "cli",
        AuditAction.OPERATOR_SITE_ASSIGNED,
        operator,
        summary=summary,
        reason=reason,
        details=details,
    )
    db.commit()
    return assignment


def find_site(db: Session, code: str) -> Site:
    site = db.exec(select(Site).where(Site.code == code.strip().lower())).first()
    if site is None:
        raise NotFound(f"No site with code {code!r}.")
    return site
