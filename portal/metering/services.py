"""Turning usage from Slurm and site agents into ledger charges, each exactly once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from portal import observability
from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.db import find, utcnow
from portal.errors import InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger import wording
from portal.ledger.models import Allocation, LedgerEntry, Resource, ResourceKind, Site
from portal.ledger.services import UsageCharge, charge_usage_batch
from portal.messages import N_, Message
from portal.metering.models import SlurmAccount, UsageRecord, UsageSource
from portal.metering.sacct import SacctJob, SacctProblem, read_sacct, why_not_charged

#: Charges committed per transaction while importing.
BATCH_SIZE = 1000


@dataclass
class ImportReport:
    lines: int = 0
    charged: int = 0
    #: Jobs charged by an earlier import (or twice in this file): nothing happened.
    already_charged: int = 0
    #: Reason -> how many jobs were skipped for it (steps, unfinished, ...).
    skipped: dict[str, int] = field(default_factory=dict)
    #: Lines that could not be read, with their numbers and why.
    problems: list[SacctProblem] = field(default_factory=list)
    #: Base units charged, per allocation.
    charged_per_allocation: dict[int, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class _Pending:
    charge: UsageCharge
    origin: str
    external_id: str
    username: str
    started_at: datetime
    ended_at: datetime


def _record_usage(db: Session, source: UsageSource, pending: dict[str, _Pending]):
    """The usage records of a batch's new charges, written with one ``executemany``."""

    def record(charged: list[tuple[UsageCharge, LedgerEntry]]) -> None:
        now = utcnow()
        rows = []
        for charge, entry in charged:
            item = pending[charge.key]
            rows.append(
                {
                    "source": source,
                    "origin": item.origin,
                    "external_id": item.external_id,
                    "allocation_id": charge.allocation_id,
                    "ledger_entry_id": entry.id,
                    "username": item.username,
                    "started_at": item.started_at,
                    "ended_at": item.ended_at,
                    "quantity": charge.amount,
                    "recorded_at": now,
                }
            )
        db.execute(sa.insert(UsageRecord.__table__), rows)
        observability.usage_charged(source, max(row["ended_at"] for row in rows))

    return record


def _flush_batch(db: Session, source: UsageSource, batch: dict[str, _Pending], report: ImportReport) -> None:
    if not batch:
        return
    charged = charge_usage_batch(db, [p.charge for p in batch.values()], record=_record_usage(db, source, batch))
    report.charged += len(charged)
    report.already_charged += len(batch) - len(charged)
    for charge, _entry in charged:
        report.charged_per_allocation[charge.allocation_id] = (
            report.charged_per_allocation.get(charge.allocation_id, 0) + charge.amount
        )
    batch.clear()


@dataclass(frozen=True)
class MappedAccount:
    """What a Slurm account's jobs are charged to."""

    allocation_id: int
    kind: ResourceKind
    #: Jobs that ended before this moment are not the allocation's (see README "Slurm").
    starts_at: datetime


def slurm_account_map(db: Session, cluster: str) -> dict[str, MappedAccount]:
    """Account (lower case) -> the allocation it draws from, for one cluster."""
    rows = db.exec(
        select(SlurmAccount.account, Allocation.id, Resource.kind, Allocation.starts_at)
        .join(Allocation, Allocation.id == SlurmAccount.allocation_id)
        .join(Resource, Resource.id == Allocation.resource_id)
        .where(SlurmAccount.cluster == cluster)
    ).all()
    return {
        account: MappedAccount(int(allocation_id), ResourceKind(kind), starts_at)
        for account, allocation_id, kind, starts_at in rows
    }


def import_sacct(db: Session, lines: Iterable[str], *, cluster: str) -> ImportReport:
    """Charge every finished job in sacct output once; unreadable lines are reported, the rest committed."""
    accounts = slurm_account_map(db, cluster)
    report = ImportReport()
    batch: dict[str, _Pending] = {}
    for item in read_sacct(lines):
        report.lines = item.line_number
        if isinstance(item, SacctProblem):
            report.problems.append(item)
            continue
        job: SacctJob = item
        if job.cluster and job.cluster != cluster:
            report.problems.append(
                SacctProblem(job.line_number, job.job_id, f"belongs to cluster '{job.cluster}', not '{cluster}'")
            )
            continue
        reason = why_not_charged(job)
        if reason is not None:
            report.skip(reason)
            continue
        mapped = accounts.get(job.account)
        if mapped is None:
            report.skip(f"account '{job.account}' is not mapped to an allocation")
            continue
        allocation_id, kind = mapped.allocation_id, mapped.kind
        units = job.gpus if kind == ResourceKind.GPU else job.cpus
        if units == 0:
            report.skip(f"no {'GPUs' if kind == ResourceKind.GPU else 'CPUs'} allocated for a {kind} allocation")
            continue
        assert job.start is not None and job.end is not None
        if job.end < mapped.starts_at:
            report.skip("ended before its allocation started")
            continue
        key = f"slurm:{cluster}:{job.job_id_raw}"
        if key in batch:
            report.already_charged += 1
            continue
        batch[key] = _Pending(
            UsageCharge(
                allocation_id,
                units * job.elapsed_seconds,
                key,
                reason=wording.SLURM_JOB.english(job=job.job_id),
                day=job.end.date(),
            ),
            origin=cluster,
            external_id=job.job_id_raw,
            username=job.user,
            started_at=job.start,
            ended_at=job.end,
        )
        if len(batch) >= BATCH_SIZE:
            _flush_batch(db, UsageSource.SLURM, batch, report)
    _flush_batch(db, UsageSource.SLURM, batch, report)
    return report


def map_slurm_account(
    db: Session,
    actor: User | None,
    *,
    cluster: str,
    account: str,
    allocation_id: int,
    reason: str,
    site: str | None = None,
) -> SlurmAccount:
    """Let a Slurm account on a cluster draw from an allocation (admins; ``portal slurm sync`` as None).

    Only a CPU or GPU allocation: a cluster's jobs are charged in core- or GPU-seconds. ``site`` is the
    code of the cluster's site (its ``slurm_clusters`` entry); the allocation must be at that site.
    """
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    account = account.strip().lower()
    if not account or len(account) > 64:
        raise InvalidInput(
            Message(N_("A Slurm account name is 1 to 64 characters.")),
            errors={"account": Message(N_("1 to %(most)s characters."), most=64)},
        )
    allocation = find(db, Allocation, allocation_id)
    if allocation is None:
        raise NotFound(Message(N_("No such allocation.")))
    resource = db.get(Resource, allocation.resource_id)
    allocation_site = db.get(Site, resource.site_id) if resource is not None else None
    assert resource is not None and allocation_site is not None
    if resource.kind not in (ResourceKind.CPU, ResourceKind.GPU):
        raise InvalidInput(
            Message(
                N_(
                    "Allocation %(allocation)s is of %(resource)s (%(kind)s): a Slurm account draws only from a CPU "
                    "or GPU allocation, whose hours its jobs use."
                ),
                allocation=str(allocation_id),
                resource=resource.name,
                kind=str(resource.kind),
            ),
            errors={"allocation": Message(N_("Not a CPU or GPU allocation."))},
        )
    if site is not None and allocation_site.code != site:
        raise InvalidInput(
            Message(
                N_(
                    "Allocation %(allocation)s is at site %(site)s; the cluster %(cluster)s runs the allocations of "
                    "site %(cluster_site)s."
                ),
                allocation=str(allocation_id),
                site=allocation_site.code,
                cluster=cluster,
                cluster_site=site,
            ),
            errors={"allocation": Message(N_("Not at site %(site)s."), site=site)},
        )
    existing = db.exec(
        select(SlurmAccount).where(SlurmAccount.cluster == cluster, SlurmAccount.account == account)
    ).first()
    if existing is not None:
        if existing.allocation_id != allocation_id:
            raise InvalidInput(
                Message(
                    N_("Account '%(account)s' on %(cluster)s already draws from allocation %(allocation)s."),
                    account=account,
                    cluster=cluster,
                    allocation=str(existing.allocation_id),
                ),
                errors={"account": Message(N_("Already mapped."))},
            )
        return existing
    mapping = SlurmAccount(cluster=cluster, account=account, allocation_id=allocation_id)
    db.add(mapping)
    summary = f"Slurm account {account} on {cluster} draws from allocation {allocation_id}"
    audit.record(db, actor, AuditAction.SLURM_ACCOUNT_MAPPED, mapping, summary=summary, reason=reason)
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise InvalidInput(
            Message(
                N_("Account '%(account)s' on %(cluster)s was mapped at the same moment."),
                account=account,
                cluster=cluster,
            )
        ) from exc
    return mapping


@dataclass(frozen=True)
class AgentRecord:
    """One usage record as a site agent reports it; ``quantity`` in the allocation's base unit."""

    record_id: str
    allocation_id: int
    quantity: int
    started_at: datetime
    ended_at: datetime
    username: str = ""


@dataclass(frozen=True)
class AgentResult:
    accepted: int
    duplicates: int


MAX_AGENT_BATCH = 1000
#: How far past the portal's clock a site agent's record may end: agents' clocks drift a little, usage from
#: the future does not exist.
AGENT_CLOCK_SKEW = timedelta(minutes=5)


def record_agent_usage(db: Session, *, site_id: int, records: list[AgentRecord]) -> AgentResult:
    """Charge a site agent's batch, all or nothing; a record id seen before from this site changes nothing.

    Every record must name an allocation of a resource at the agent's own site, and have ended by now
    (give or take ``AGENT_CLOCK_SKEW``).
    """
    site = db.get(Site, site_id)
    if site is None:
        raise NotFound(Message(N_("The token's site no longer exists.")))
    if not 1 <= len(records) <= MAX_AGENT_BATCH:
        raise InvalidInput(Message(N_("Send between 1 and %(most)s records at a time."), most=str(MAX_AGENT_BATCH)))
    allocation_ids = {r.allocation_id for r in records}
    sites_of = dict(
        db.exec(
            select(Allocation.id, Resource.site_id)
            .join(Resource, Resource.id == Allocation.resource_id)
            .where(col(Allocation.id).in_(allocation_ids))
        ).all()
    )
    errors: dict[str, Message] = {}
    latest = utcnow() + AGENT_CLOCK_SKEW
    for index, record in enumerate(records):
        where = f"records[{index}]"
        if record.allocation_id not in sites_of:
            errors[where] = Message(
                N_("allocation %(allocation)s does not exist"), allocation=str(record.allocation_id)
            )
        elif sites_of[record.allocation_id] != site_id:
            errors[where] = Message(
                N_("allocation %(allocation)s is not at site %(site)s"),
                allocation=str(record.allocation_id),
                site=site.code,
            )
        elif record.ended_at < record.started_at:
            errors[where] = Message(N_("ended_at is before started_at"))
        elif record.ended_at > latest:
            errors[where] = Message(
                N_(
                    "ended_at %(ended_at)s is in the future: the portal's clock says %(now)s; report usage once it "
                    "has happened"
                ),
                ended_at=record.ended_at.isoformat(),
                now=(latest - AGENT_CLOCK_SKEW).isoformat(timespec="seconds"),
            )
        elif record.quantity <= 0:
            errors[where] = Message(N_("quantity must be positive"))
    if errors:
        raise InvalidInput(
            Message(
                N_("%(invalid)s of %(total)s records are invalid; nothing was recorded."),
                invalid=str(len(errors)),
                total=str(len(records)),
            ),
            errors=errors,
        )
    pending: dict[str, _Pending] = {}
    duplicates = 0
    for record in records:
        key = f"agent:{site.code}:{record.record_id}"
        if key in pending:
            duplicates += 1
            continue
        pending[key] = _Pending(
            UsageCharge(
                record.allocation_id,
                record.quantity,
                key,
                reason=wording.AGENT_RECORD.english(site=site.code, record=record.record_id),
                day=record.ended_at.date(),
            ),
            origin=site.code,
            external_id=record.record_id,
            username=record.username,
            started_at=record.started_at,
            ended_at=record.ended_at,
        )
    charged = charge_usage_batch(
        db, [p.charge for p in pending.values()], record=_record_usage(db, UsageSource.AGENT, pending)
    )
    return AgentResult(accepted=len(charged), duplicates=duplicates + len(pending) - len(charged))
