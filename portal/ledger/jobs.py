"""Periodic ledger work for ``portal worker``: every job is safe to run from several workers at once."""

from __future__ import annotations

import logging
from datetime import date

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.config import Settings
from portal.db import utcnow
from portal.identity.models import FactoryRole, RoleGrant, User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, CapacityPeriod, Resource, Site
from portal.mail import MailNotSent, send_mail_to_each
from portal.messages import N_, Amount, Message, language_of, paragraphs, render
from portal.projects.models import Project, ProjectMembership, ProjectRole

log = logging.getLogger("portal.ledger.jobs")

#: Percentages of an allocation's credited hours at which its PI and managers are told.
THRESHOLDS = (75, 90, 100)


def start_and_expire_allocations(db: Session, _settings: Settings) -> int:
    """Activate allocations whose start has come and expire those past their end; returns how many changed."""
    now = utcnow()
    changed = 0
    # course allocations are closed by the classroom's job, which returns their unused hours to the teacher
    due = db.exec(
        select(Allocation.id).where(
            col(Allocation.state) != AllocationState.EXPIRED,
            Allocation.ends_at <= now,
            col(Allocation.source) != AllocationSource.COURSE,
        )
    ).all()
    db.rollback()
    for allocation_id in due:
        # expire() locks the row and is idempotent: a second worker finds it expired and does nothing
        if ledger.expire(db, allocation_id, now=now) is not None:
            changed += 1
    table = Allocation.__table__
    started = db.execute(
        sa.update(table)
        .where(table.c.state == AllocationState.PENDING.value, table.c.starts_at <= now, table.c.ends_at > now)
        .values(
            state=sa.case((table.c.balance <= 0, AllocationState.EXHAUSTED.value), else_=AllocationState.ACTIVE.value)
        )
    )
    db.commit()
    return changed + int(started.rowcount or 0)


def _threshold_reached(allocation: Allocation) -> int:
    if allocation.credited <= 0:
        return 0
    percent = allocation.used * 100 // allocation.credited
    return max((t for t in THRESHOLDS if percent >= t), default=0)


def notify_usage_thresholds(db: Session, settings: Settings) -> int:
    """E-mail the PI and managers once when an allocation passes 75 %, 90 % and 100 % used.

    The claim is a conditional UPDATE held until the mail is sent: a second worker waits on the row and
    then finds the threshold already claimed; a failed send rolls back and is retried next round.
    """
    table = Allocation.__table__
    # hours added since a warning: lower the mark so the next crossing is told again
    for allocation in db.exec(select(Allocation).where(col(Allocation.notified_threshold) > 0)).all():
        reached = _threshold_reached(allocation)
        if reached < allocation.notified_threshold:
            db.execute(sa.update(table).where(table.c.id == allocation.id).values(notified_threshold=reached))
    db.commit()
    candidates = db.exec(
        select(Allocation, Resource, Project)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Project, Project.id == Allocation.project_id)
        .where(
            col(Allocation.state).in_([AllocationState.ACTIVE, AllocationState.EXHAUSTED]),
            col(Allocation.credited) > 0,
            Allocation.used * 100 >= Allocation.credited * THRESHOLDS[0],
        )
    ).all()
    sent = 0
    for allocation, resource, project in candidates:
        reached = _threshold_reached(allocation)
        if reached <= allocation.notified_threshold:
            continue
        claimed = db.execute(
            sa.update(table)
            .where(table.c.id == allocation.id, table.c.notified_threshold < reached)
            .values(notified_threshold=reached)
        )
        if claimed.rowcount != 1:
            db.rollback()
            continue
        try:
            _send_threshold_mail(db, settings, allocation, resource, project, reached)
        except Exception:
            db.rollback()
            log.exception("could not send the %s %% notice of allocation %s", reached, allocation.id)
            continue
        db.commit()
        sent += 1
    return sent


def _send_threshold_mail(
    db: Session, settings: Settings, allocation: Allocation, resource: Resource, project: Project, reached: int
) -> None:
    readers = db.exec(
        select(User)
        .join(ProjectMembership, ProjectMembership.user_id == User.id)
        .where(
            ProjectMembership.project_id == project.id,
            col(ProjectMembership.role).in_([ProjectRole.PI, ProjectRole.MANAGER]),
            col(User.email).is_not(None),
        )
    ).all()
    link = f"{settings.base_url}/projects/{project.id}/allocations/{allocation.id}"
    named = {"project": project.title, "allocation": wording.title_of(allocation), "resource": resource.name}
    if reached >= 100:
        subject = Message(N_("%(project)s: the allocation “%(allocation)s” is used up"), **named)
        lead = Message(
            N_(
                "The allocation “%(allocation)s” (%(resource)s) of the project “%(project)s” has used all its hours. "
                "Running work is being stopped; ask for more hours to continue."
            ),
            **named,
        )
    else:
        subject = Message(N_("%(project)s: %(percent)s %% of “%(allocation)s” used"), percent=str(reached), **named)
        lead = Message(
            N_(
                "The allocation “%(allocation)s” (%(resource)s) of the project “%(project)s” has used %(percent)s %% "
                "of its hours."
            ),
            percent=str(reached),
            **named,
        )
    kind = resource.kind
    figures = Message(
        N_("Used: %(used)s of %(credited)s\nRemaining: %(balance)s\nEnds: %(ends)s"),
        used=Amount(allocation.used, kind),
        credited=Amount(allocation.credited, kind),
        balance=Amount(allocation.balance, kind),
        ends=allocation.ends_at.date(),
    )
    body = paragraphs(lead, figures, link)
    by_language: dict[str, list[str]] = {}
    for reader in readers:
        by_language.setdefault(language_of(settings, reader), []).append(reader.email or "")
    recipients = [address for addresses in by_language.values() for address in addresses]
    failed = [
        address
        for language, addresses in by_language.items()
        for address in send_mail_to_each(
            settings, addresses, subject=render(subject, language), body=render(body, language)
        )
    ]
    if recipients and len(failed) == len(recipients):
        raise MailNotSent(f"nobody could be told about allocation {allocation.id}")  # retried next round


def check_balances(db: Session, settings: Settings) -> int:
    """Compare every balance with the sum of its entries; mismatches are logged and mailed to the admins."""
    mismatches = ledger.balance_mismatches(db)
    db.rollback()
    if not mismatches:
        return 0
    lines = [f"allocation {m.allocation_id}: balance {m.balance}, entries sum to {m.entries_sum}" for m in mismatches]
    log.error("ledger balances differ from their entries:\n%s", "\n".join(lines))
    admins = db.exec(
        select(User.email)
        .join(RoleGrant, RoleGrant.user_id == User.id)
        .where(RoleGrant.role == FactoryRole.ADMIN, col(User.email).is_not(None))
    ).all()
    send_mail_to_each(
        settings,
        admins,
        subject=f"Ledger check: {len(mismatches)} balances differ from their entries",
        body="The daily ledger check found:\n\n" + "\n".join(lines) + "\n",
    )
    return len(mismatches)


def capacity_in_use(db: Session, today: date) -> list[tuple[str, str, int, int]]:
    """Each resource's current capacity period as ``(site code, resource code, capacity, reserved)``: what the
    worker exports for the "capacity near full" alert."""
    rows = db.exec(
        select(Site.code, Resource.code, CapacityPeriod.capacity, CapacityPeriod.reserved)
        .join(Resource, Resource.id == CapacityPeriod.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(CapacityPeriod.starts_on <= today, CapacityPeriod.ends_on > today)
        .order_by(Site.code, Resource.code)
    ).all()
    db.rollback()
    return [(site, resource, int(capacity), int(reserved)) for site, resource, capacity, reserved in rows]
