"""Reading allocations for people: balances, burn rates, projected exhaustion, usage series, ledger pages.

Every function here costs a fixed number of queries whatever the length of the ledger: balances come
from the allocation row, usage series and burn rates from the daily aggregates, entries by keyset pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlmodel import Session, col, func, select

from portal.authz import Action, require
from portal.db import utcnow
from portal.errors import NotFound
from portal.identity.models import User
from portal.ledger.models import Allocation, DailyUsage, LedgerEntry, Resource, Site
from portal.messages import N_, Message
from portal.projects.models import Project

#: Days over which the burn rate is averaged.
BURN_WINDOW_DAYS = 7
ENTRIES_PER_PAGE = 50


@dataclass(frozen=True)
class AllocationStatement:
    allocation: Allocation
    resource: Resource
    site: Site
    #: Base units used per day, averaged over the last ``BURN_WINDOW_DAYS`` days.
    burn_per_day: int
    #: The day the balance runs out at that rate; None when nothing is burning or nothing is left.
    projected_exhaustion: date | None

    @property
    def percent_used(self) -> int:
        if self.allocation.credited <= 0:
            return 0
        return min(100, self.allocation.used * 100 // self.allocation.credited)

    @property
    def exhausts_before_end(self) -> bool:
        return self.projected_exhaustion is not None and self.projected_exhaustion < self.allocation.ends_at.date()


def _burn_rates(db: Session, allocation_ids: list[int], today: date) -> dict[int, int]:
    if not allocation_ids:
        return {}
    since = today - timedelta(days=BURN_WINDOW_DAYS)
    rows = db.exec(
        select(DailyUsage.allocation_id, func.sum(DailyUsage.amount))
        .where(col(DailyUsage.allocation_id).in_(allocation_ids), col(DailyUsage.day) > since)
        .group_by(DailyUsage.allocation_id)
    ).all()
    return {int(a): int(total) // BURN_WINDOW_DAYS for a, total in rows}


def _statement(allocation: Allocation, resource: Resource, site: Site, burn: int, today: date) -> AllocationStatement:
    projected = None
    if burn > 0 and allocation.balance > 0:
        days = -(-allocation.balance // burn)
        # beyond a century the rate says nothing useful (and dates would overflow)
        projected = today + timedelta(days=days) if days <= 36_500 else None
    elif allocation.balance <= 0 and allocation.credited > 0:
        projected = today
    return AllocationStatement(allocation, resource, site, burn, projected)


def allocations_of_project(db: Session, actor: User, project: Project) -> list[AllocationStatement]:
    """The project's allocations, newest first, in two queries."""
    require(db, actor, Action.VIEW_PROJECT, project)
    rows = db.exec(
        select(Allocation, Resource, Site)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(Allocation.project_id == project.id)
        .order_by(col(Allocation.ends_at).desc(), col(Allocation.id).desc())
    ).all()
    today = utcnow().date()
    burns = _burn_rates(db, [a.id for a, _r, _s in rows], today)
    return [_statement(a, r, s, burns.get(a.id, 0), today) for a, r, s in rows]


def _allocation_of(db: Session, actor: User, project: Project, allocation_id: int) -> tuple[Allocation, Resource, Site]:
    require(db, actor, Action.VIEW_PROJECT, project)
    row = db.exec(
        select(Allocation, Resource, Site)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(Allocation.id == allocation_id, Allocation.project_id == project.id)
    ).first()
    if row is None:
        raise NotFound(Message(N_("No such allocation.")))
    return row


def get_statement(db: Session, actor: User, project: Project, allocation_id: int) -> AllocationStatement:
    allocation, resource, site = _allocation_of(db, actor, project, allocation_id)
    today = utcnow().date()
    return _statement(allocation, resource, site, _burn_rates(db, [allocation_id], today).get(allocation_id, 0), today)


def _series_days(allocation: Allocation, today: date) -> tuple[date, date]:
    """The days a usage series shows: from the allocation's start to today, or to its end when that is earlier."""
    return allocation.starts_at.date(), min(today, allocation.ends_at.date())


def _series(first: date, last: date, usage: dict[date, int]) -> list[tuple[date, int]]:
    if last < first:
        return []
    return [
        (first + timedelta(days=i), int(usage.get(first + timedelta(days=i), 0)))
        for i in range((last - first).days + 1)
    ]


def usage_series(db: Session, statement: AllocationStatement) -> list[tuple[date, int]]:
    """Usage per day from the allocation's start to today (or its end), days without usage as zero."""
    first, last = _series_days(statement.allocation, utcnow().date())
    rows = db.exec(
        select(DailyUsage.day, DailyUsage.amount).where(
            DailyUsage.allocation_id == statement.allocation.id,
            col(DailyUsage.day) >= first,
            col(DailyUsage.day) <= last,
        )
    ).all()
    return _series(first, last, dict(rows))


def statement_with_series(
    db: Session, actor: User, project: Project, allocation_id: int
) -> tuple[AllocationStatement, list[tuple[date, int]]]:
    """``get_statement`` and ``usage_series`` together (the allocation's page), its daily usage read once: the
    series' days and the burn rate's window."""
    allocation, resource, site = _allocation_of(db, actor, project, allocation_id)
    today = utcnow().date()
    first, last = _series_days(allocation, today)
    since = today - timedelta(days=BURN_WINDOW_DAYS)  # the burn rate counts the days after it
    rows = db.exec(  # the series' days and every day after the burn rate's window opens, as _burn_rates counts
        select(DailyUsage.day, DailyUsage.amount).where(
            DailyUsage.allocation_id == allocation_id, col(DailyUsage.day) >= min(first, since + timedelta(days=1))
        )
    ).all()
    usage = {day: int(amount) for day, amount in rows}
    burn = sum(amount for day, amount in usage.items() if since < day) // BURN_WINDOW_DAYS
    return _statement(allocation, resource, site, burn, today), _series(first, last, usage)


def entries_page(
    db: Session, statement: AllocationStatement, *, before_id: int | None = None
) -> tuple[list[LedgerEntry], int | None]:
    """A page of the allocation's entries, newest first, and the id to ask for the next (older) page."""
    stmt = select(LedgerEntry).where(LedgerEntry.allocation_id == statement.allocation.id)
    if before_id is not None:
        stmt = stmt.where(col(LedgerEntry.id) < before_id)
    entries = list(db.exec(stmt.order_by(col(LedgerEntry.id).desc()).limit(ENTRIES_PER_PAGE + 1)))
    more = len(entries) > ENTRIES_PER_PAGE
    entries = entries[:ENTRIES_PER_PAGE]
    return entries, (entries[-1].id if more and entries else None)
