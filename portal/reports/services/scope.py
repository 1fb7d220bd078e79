"""What is asked and who asks: the quarter and site of a report (``ReportFilter``, parsed from the page's query),
and the sites and resources one viewer sees for it (``Scope``: admins and finance every site, a site operator
the sites assigned to them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlmodel import Session, col, func, select

from portal.authz import Action, allowed, factory_roles, require
from portal.db import utcnow
from portal.errors import InvalidInput, NotFound
from portal.identity.models import FactoryRole, User
from portal.ledger.models import CapacityPeriod, Resource, Site
from portal.messages import N_, Message
from portal.reports.models import OperatorSite

#: The years a quarter may be asked for (a series reaches a year back; dates end at 9999).
FIRST_YEAR, LAST_YEAR = 2000, 2999
#: Months shown by the time series (utilisation, revenue by month), ending with the chosen quarter.
SERIES_MONTHS = 12


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


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
                Message(
                    N_("Choose a quarter like 2026-Q3, of a year from %(first)s to %(last)s."),
                    first=str(FIRST_YEAR),
                    last=str(LAST_YEAR),
                ),
                errors={"quarter": Message(N_("A quarter like 2026-Q3."))},
            )
        start = date(int(year), 3 * int(number) - 2, 1)
    site_id = None
    if site not in (None, ""):
        if not (str(site).isascii() and str(site).isdigit()):
            message = Message(N_("Choose a site from the list."))
            raise InvalidInput(message, errors={"site": Message(N_("Unknown site."))})
        site_id = int(site)
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
        return [r.id for r, _s in self.resources]


def scope_for(db: Session, actor: User, report_filter: ReportFilter) -> Scope:
    """Admins and finance see every site; a site operator sees the sites assigned to them (``OperatorSite``)."""
    require(db, actor, Action.VIEW_REPORTS)
    roles = factory_roles(db, actor)
    stmt = select(Site).order_by(Site.name)
    if not roles & {FactoryRole.ADMIN, FactoryRole.FINANCE}:
        stmt = stmt.join(OperatorSite, OperatorSite.site_id == Site.id).where(OperatorSite.user_id == actor.id)
    visible = list(db.exec(stmt))
    chosen = visible
    if report_filter.site_id is not None:
        chosen = [s for s in visible if s.id == report_filter.site_id]
        if not chosen:
            raise NotFound(Message(N_("No such site among those you see.")))
    resources = db.exec(
        select(Resource, Site)
        .join(Site, Site.id == Resource.site_id)
        .where(col(Site.id).in_([s.id for s in chosen]))
        .order_by(Site.name, Resource.name)
    ).all()
    return Scope(
        report_filter,
        visible,
        chosen,
        list(resources),
        allowed(db, actor, Action.VIEW_REVENUE_REPORTS),
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
