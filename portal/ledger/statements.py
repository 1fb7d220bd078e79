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


def get_statement(db: Session, actor: User, project: Project, allocation_id: int) -> AllocationStatement:
    require(db, actor, Action.VIEW_PROJECT, project)
    row = db.exec(
        select(Allocation, Resource, Site)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(Allocation.id == allocation_id, Allocation.project_id == project.id)
    ).first()
    if row is None:
        raise NotFound(Message(N_("No such allocation.")))
    allocation, resource, site = row
    today = utcnow().date()
    return _statement(allocation, resource, site, _burn_rates(db, [allocation_id], today).get(allocation_id, 0), today)


def usage_series(db: Session, statement: AllocationStatement) -> list[tuple[date, int]]:
    """Usage per day from the allocation's start to today (or its end), days without usage as zero."""
    allocation = statement.allocation
    first = allocation.starts_at.date()
    last = min(utcnow().date(), allocation.ends_at.date())
    rows = dict(
        db.exec(
            select(DailyUsage.day, DailyUsage.amount).where(
                DailyUsage.allocation_id == allocation.id, col(DailyUsage.day) >= first, col(DailyUsage.day) <= last
            )
        ).all()
    )
    if last < first:
        return []
    return [
        (first + timedelta(days=i), int(rows.get(first + timedelta(days=i), 0))) for i in range((last - first).days + 1)
    ]


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
