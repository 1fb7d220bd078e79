"""Keeping Slurm in step with the portal: accounts, users and limits, and pulling usage with sacct.

``sync_cluster`` (``portal slurm sync``) reads what the cluster's slurmdbd holds with
``sacctmgr --parsable2 --noheader show ...`` and changes only what differs from the portal:

- **Accounts.** One Slurm account per allocation of a CPU or GPU resource at the cluster's site, named
  ``<site code>-<allocation id>`` (``waw-123``; lower case, as sacctmgr stores it), a child of ``root``.
  It is recorded in ``slurm_accounts`` (``map_slurm_account``) before it is created, so that every job
  run under it is charged to the allocation. Allocations that expired before they ever got an account get
  none; accounts are never deleted (their jobs stay in sacct's history).
- **Users.** The project's members who have a login name on the cluster (``slurm_users``, set with
  ``portal slurm set-username``) and are active in the portal are the account's users; users that are
  no longer members are removed (a removed user's default account moves to another of theirs first).
  The cluster's ``notebook_user`` (the login the JupyterHub submits notebook and Dask Gateway jobs as) is a
  user of every account, so a notebook's job runs, and is charged, under its allocation's account.
  The sync owns the user lists of the accounts it names and touches no other account.
- **Limit.** Each account carries ``GrpTRESMins`` on the allocation's TRES: ``gres/gpu`` for GPU
  resources, ``cpu`` for CPU resources. For an active allocation within its dates it is

      minutes = floor((charged_here + balance) / 60)

  where ``balance`` is the allocation's remaining balance (GPU- or core-seconds) and ``charged_here``
  what the portal already charged it for jobs of this cluster. Slurm counts an account's usage from the
  moment the account exists (with no decay and no reset, see below), so Slurm's own usage is
  ``charged_here`` plus the jobs not imported yet, and Slurm stops (holds new jobs with reason
  ``AssocGrpGRESMinutes``/``AssocGrpCPUMinutes`` and ends running ones) exactly when those jobs have
  spent the balance. Importing usage moves ``charged_here`` up and ``balance`` down by the same amount, so
  the limit changes only when hours are credited, transferred, released or adjusted: a sync with
  nothing new to do issues no modification. Rounding down never lets Slurm run past the balance.
- **Holds.** An allocation that is exhausted, expired, suspended or pending (or outside its dates) is
  held with a limit of 0: its pending jobs wait, its running jobs end. When hours are added (the
  allocation is active again) the next sync sets the limit above and releases the hold.

What a site must configure for the limit to mean this: ``PriorityType=priority/multifactor`` (Slurm
accumulates usage only there), ``PriorityDecayHalfLife=0`` and ``PriorityUsageResetPeriod=NONE`` (usage
must neither decay nor reset), ``AccountingStorageEnforce=associations,limits`` (and ``qos``; not
``safe``, which would refuse any job whose time limit × GPUs does not fit the remaining minutes),
``AccountingStorageTRES=gres/gpu`` for GPU clusters, and ``portal slurm sync`` run as a Slurm
administrator (root or ``AdminLevel=Administrator``) from a host whose ``sacctmgr`` reaches the slurmdbd.

``pull_sacct`` (``portal usage pull-sacct``, and ``portal worker``) runs ``sacct`` for the window since
the last pull (minus ``PULL_OVERLAP``; charging is idempotent, so the overlap costs nothing but reading)
and charges the finished jobs with ``import_sacct``. On PostgreSQL each cluster's pull and sync run under
an advisory lock, so several workers never do the same work at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.config import Settings, SlurmClusterConfig
from portal.db import utcnow
from portal.errors import DomainError, InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger.models import Allocation, AllocationState, Resource, ResourceKind, Site
from portal.metering.models import SlurmAccount, SlurmPull, SlurmUser, UsageRecord, UsageSource
from portal.metering.sacct import SACCT_FORMAT
from portal.metering.services import ImportReport, import_sacct, map_slurm_account
from portal.projects.models import ProjectMembership

log = logging.getLogger("portal.slurm")

#: The TRES an account's ``GrpTRESMins`` limits, per resource kind.
LIMITED_TRES = {ResourceKind.GPU: "gres/gpu", ResourceKind.CPU: "cpu"}
#: Each pull reads this much before the end of the previous window again (late accounting records).
PULL_OVERLAP = timedelta(hours=1)
USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
#: Advisory lock namespace (PostgreSQL ``pg_try_advisory_lock(int, int)``'s first key).
_LOCK_NAMESPACE = 0x5C0A


class SlurmCommandFailed(DomainError):
    """A Slurm command exited non-zero."""

    status = 502
    title = "Slurm command failed"


def account_name(site: Site, allocation: Allocation) -> str:
    """The Slurm account of an allocation: ``<site code>-<allocation id>``."""
    return f"{site.code}-{allocation.id}".lower()


def limit_minutes(allocation: Allocation, charged_here: int, now: datetime) -> int:
    """``GrpTRESMins`` for the allocation's account: 0 holds it (see the module's docstring)."""
    if allocation.state != AllocationState.ACTIVE or not allocation.starts_at <= now < allocation.ends_at:
        return 0
    return max(0, (charged_here + allocation.balance) // 60)


def parse_tres_minutes(value: str) -> dict[str, int]:
    """``gres/gpu=60,cpu=10`` -> {"gres/gpu": 60, "cpu": 10}; empty for no limit."""
    limits: dict[str, int] = {}
    for part in filter(None, value.split(",")):
        name, _, amount = part.partition("=")
        with contextlib.suppress(ValueError):
            limits[name] = int(amount)
    return limits


# --- running Slurm's commands ------------------------------------------------------------------------


def slurm_env(cluster: SlurmClusterConfig) -> dict[str, str]:
    env = {**os.environ, "TZ": "UTC"}
    if cluster.slurm_conf:
        env["SLURM_CONF"] = cluster.slurm_conf
    return env


def _run(cluster: SlurmClusterConfig, args: list[str], timeout: float = 120) -> str:
    try:
        result = subprocess.run(
            args, env=slurm_env(cluster), capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmCommandFailed(f"{shlex.join(args)}: {exc}") from exc
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip())[-1000:]
        raise SlurmCommandFailed(f"{shlex.join(args)} exited with {result.returncode}: {message}")
    return result.stdout


def _show(cluster: SlurmClusterConfig, *args: str) -> list[list[str]]:
    output = _run(cluster, [cluster.sacctmgr, "--parsable2", "--noheader", "show", *args])
    return [line.split("|") for line in output.splitlines() if line.strip()]


@dataclass
class SlurmState:
    """What the cluster's slurmdbd holds, as far as the sync cares."""

    #: Account -> its ``GrpTRESMins`` (account association on this cluster).
    limits: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Account -> users with an association in it on this cluster.
    users: dict[str, set[str]] = field(default_factory=dict)
    #: User -> default account on this cluster.
    defaults: dict[str, str] = field(default_factory=dict)


def read_state(cluster: SlurmClusterConfig) -> SlurmState:
    state = SlurmState()
    where = ["where", f"cluster={cluster.name}"]
    for row in _show(cluster, "assoc", *where, "format=Account,User,GrpTRESMins"):
        account, user, limits = [*row, "", "", ""][:3]
        if user:
            state.users.setdefault(account, set()).add(user)
        else:
            state.limits[account] = parse_tres_minutes(limits)
            state.users.setdefault(account, set())
    for row in _show(cluster, "user", "withassoc", *where, "format=User,DefaultAccount"):
        user, default = [*row, "", ""][:2]
        state.defaults[user] = default
    return state


# --- what the portal wants -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WantedAccount:
    allocation_id: int
    account: str
    tres: str
    minutes: int
    users: frozenset[str]
    #: False for an allocation that expired: its account is held if it exists, never created.
    create: bool
    description: str


def wanted_accounts(db: Session, cluster: SlurmClusterConfig, now: datetime | None = None) -> list[WantedAccount]:
    """The accounts, users and limits the portal's allocations call for on this cluster."""
    now = now or utcnow()
    site = db.exec(select(Site).where(Site.code == cluster.site)).first()
    if site is None:
        raise NotFound(f"Cluster {cluster.name} belongs to site '{cluster.site}', which does not exist.")
    rows = db.exec(
        select(Allocation, Resource.kind)
        .join(Resource, Resource.id == Allocation.resource_id)
        .where(Resource.site_id == site.id, col(Resource.kind).in_(list(LIMITED_TRES)))
        .order_by(Allocation.id)
    ).all()
    charged = dict(
        db.exec(
            select(UsageRecord.allocation_id, func.sum(UsageRecord.quantity))
            .where(UsageRecord.source == UsageSource.SLURM, UsageRecord.origin == cluster.name)
            .group_by(UsageRecord.allocation_id)
        ).all()
    )
    members: dict[int, set[str]] = {}
    for project_id, username in db.exec(
        select(ProjectMembership.project_id, SlurmUser.username)
        .join(SlurmUser, SlurmUser.user_id == ProjectMembership.user_id)
        .join(User, User.id == ProjectMembership.user_id)
        .where(SlurmUser.cluster == cluster.name, col(User.is_active).is_(True))
    ).all():
        members.setdefault(project_id, set()).add(username)
    # The hub submits notebook and Dask Gateway jobs as one service login, under the allocation's account.
    hub_submitter = {cluster.notebook_user} if cluster.notebook_user else set()
    wanted = []
    for allocation, kind in rows:
        wanted.append(
            WantedAccount(
                allocation_id=allocation.id,
                account=account_name(site, allocation),
                tres=LIMITED_TRES[ResourceKind(kind)],
                minutes=limit_minutes(allocation, int(charged.get(allocation.id, 0)), now),
                users=frozenset(members.get(allocation.project_id, set()) | hub_submitter),
                create=allocation.state != AllocationState.EXPIRED,
                description=f"portal allocation {allocation.id} of project {allocation.project_id}",
            )
        )
    return wanted


# --- the sync --------------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    cluster: str
    dry_run: bool
    #: sacctmgr commands run (or, in a dry run, that would run), in order.
    commands: list[list[str]] = field(default_factory=list)
    #: What failed, one line each; the rest was done.
    problems: list[str] = field(default_factory=list)
    accounts: int = 0
    held: int = 0
    #: Another worker held the cluster's lock: nothing was done.
    locked_out: bool = False


def _plan(cluster: SlurmClusterConfig, want: WantedAccount, state: SlurmState) -> list[list[str]]:
    """sacctmgr commands that bring one account in line; empty when it already is."""
    base = [cluster.sacctmgr, "-i"]
    where_cluster = f"cluster={cluster.name}"
    commands: list[list[str]] = []
    account = want.account
    limit = f"GrpTRESMins={want.tres}={want.minutes}"
    if account not in state.limits:
        if not want.create:
            return []
        commands.append(
            [*base, "add", "account", f"name={account}", where_cluster, f"description={want.description}", limit]
        )
        present: set[str] = set()
    else:
        if state.limits[account].get(want.tres) != want.minutes:
            commands.append([*base, "modify", "account", "where", f"name={account}", where_cluster, "set", limit])
        present = state.users.get(account, set())
    for user in sorted(want.users - present):
        commands.append([*base, "add", "user", f"name={user}", f"account={account}", where_cluster])
    for user in sorted(present - want.users):
        if state.defaults.get(user) == account:
            others = sorted(a for a, users in state.users.items() if user in users and a != account)
            if others:
                new_default = f"DefaultAccount={others[0]}"
                commands.append([*base, "modify", "user", "where", f"name={user}", where_cluster, "set", new_default])
        commands.append([*base, "remove", "user", "where", f"name={user}", f"account={account}", where_cluster])
    return commands


@contextlib.contextmanager
def cluster_lock(db: Session, purpose: str, cluster: str) -> Iterator[bool]:
    """Hold a PostgreSQL advisory lock for (purpose, cluster) on a connection of its own (the work commits
    in between, which would release a row lock); yields whether it was obtained, without waiting.
    Elsewhere (SQLite: one process) it always yields True."""
    engine = db.get_bind()
    if engine.dialect.name != "postgresql":
        yield True
        return
    keys = {"ns": _LOCK_NAMESPACE, "key": zlib.crc32(f"{purpose}:{cluster}".encode()) - 2**31}
    with engine.connect() as connection:
        got = bool(
            connection.execute(
                sa.text("SELECT pg_try_advisory_lock(CAST(:ns AS integer), CAST(:key AS integer))"), keys
            ).scalar()
        )
        connection.commit()
        try:
            yield got
        finally:
            if got:
                connection.execute(
                    sa.text("SELECT pg_advisory_unlock(CAST(:ns AS integer), CAST(:key AS integer))"), keys
                )
                connection.commit()


def sync_cluster(
    db: Session, cluster: SlurmClusterConfig, *, dry_run: bool = False, now: datetime | None = None
) -> SyncReport:
    """Bring the cluster's accounts, users and limits in line with the portal (see the module docstring).

    With ``dry_run`` nothing changes, in Slurm or in the portal: the report lists the commands instead.
    """
    report = SyncReport(cluster.name, dry_run)
    with cluster_lock(db, "sync", cluster.name) as got:
        if not got:
            report.locked_out = True
            return report
        wanted = wanted_accounts(db, cluster, now)
        state = read_state(cluster)
        for want in wanted:
            if want.account not in state.limits and not want.create:
                continue
            report.accounts += 1
            report.held += want.minutes == 0
            commands = _plan(cluster, want, state)
            if not dry_run:
                try:
                    # recorded before the account exists, so no job under it goes uncharged
                    map_slurm_account(
                        db,
                        None,
                        cluster=cluster.name,
                        account=want.account,
                        allocation_id=want.allocation_id,
                        reason="created by the Slurm sync for the allocation",
                        site=cluster.site,
                    )
                except DomainError as exc:
                    db.rollback()
                    report.problems.append(f"{want.account}: {exc.detail}")
                    continue
            for command in commands:
                report.commands.append(command)
                if dry_run:
                    continue
                try:
                    _run(cluster, command)
                except SlurmCommandFailed as exc:
                    report.problems.append(exc.detail)
                    if command[2] == "add" and command[3] == "account":
                        break  # its users cannot be added either
    return report


def sync_all(db: Session, clusters: list[SlurmClusterConfig]) -> int:
    """``portal worker``'s job: sync every configured cluster; returns the number of changes made."""
    changes, failed = 0, []
    for cluster in clusters:
        try:
            report = sync_cluster(db, cluster)
        except Exception:
            db.rollback()
            log.exception("Slurm sync of %s failed", cluster.name)
            failed.append(cluster.name)
            continue
        changes += len(report.commands)
        for problem in report.problems:
            log.error("Slurm sync of %s: %s", cluster.name, problem)
    if failed:
        raise RuntimeError(f"Slurm sync failed for {', '.join(failed)}")
    return changes


# --- a job's place in the queue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    #: squeue's long state: PENDING, CONFIGURING, RUNNING, COMPLETING, ...
    state: str
    #: Why a pending job waits (``Resources``, ``Priority``, ``AssocGrpGRESMinutes``, ...); "None" when running.
    reason: str


def queued_job(cluster: SlurmClusterConfig, job_name: str) -> QueuedJob | None:
    """The newest job named ``job_name`` in the cluster's queue (squeue), or None when there is none or
    squeue does not answer: for showing users where their job is, never for charging."""
    try:
        output = _run(cluster, ["squeue", "--noheader", "--name", job_name, "--format", "%i|%T|%r"], timeout=5)
    except SlurmCommandFailed:
        return None
    rows = [line.split("|") for line in output.splitlines() if line.count("|") == 2]
    if not rows:
        return None
    job_id, state, reason = max(rows, key=lambda row: int(row[0]) if row[0].isdigit() else -1)
    return QueuedJob(job_id, state, reason)


# --- user names ------------------------------------------------------------------------------------------


def set_slurm_username(
    db: Session, actor: User | None, *, cluster: str, user: User, username: str, reason: str
) -> SlurmUser:
    """Record ``user``'s login name on ``cluster`` (admins; the command line as None)."""
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    username = username.strip().lower()
    if not USERNAME.match(username):
        raise InvalidInput(
            "A cluster login is 1 to 32 lower-case letters, digits, '_', '.' or '-', starting with a letter or '_'.",
            errors={"username": "Not a login name."},
        )
    taken = db.exec(select(SlurmUser).where(SlurmUser.cluster == cluster, SlurmUser.username == username)).first()
    if taken is not None and taken.user_id != user.id:
        raise InvalidInput(f"'{username}' on {cluster} belongs to another user.", errors={"username": "Taken."})
    row = db.exec(select(SlurmUser).where(SlurmUser.cluster == cluster, SlurmUser.user_id == user.id)).first()
    before = row.username if row is not None else None
    if row is None:
        row = SlurmUser(cluster=cluster, user_id=user.id, username=username)
        db.add(row)
    else:
        row.username = username
    if before != username:
        summary = f"{audit.actor_label(user)} is {username} on {cluster}"
        details = {"user_id": user.id, "before": before, "after": username}
        audit.record(db, actor, AuditAction.SLURM_USER_SET, row, summary=summary, reason=reason, details=details)
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise InvalidInput(f"'{username}' on {cluster} was given to another user at the same moment.") from exc
    return row


# --- pulling usage ---------------------------------------------------------------------------------------


@dataclass
class PullReport:
    cluster: str
    #: The window read with sacct (-S/-E); None when nothing was read.
    window: tuple[datetime, datetime] | None = None
    imported: ImportReport | None = None
    #: Another worker was pulling this cluster: nothing was done.
    locked_out: bool = False
    #: Why nothing was read, when nothing was.
    note: str = ""

    @property
    def charged(self) -> int:
        return self.imported.charged if self.imported else 0


def _sacct_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


#: Final job states, as ``sacct --state`` spells them: everything ``import_sacct`` charges or reports.
ENDED_STATES = ("CA", "CD", "DL", "F", "NF", "BF", "OOM", "PR", "TO")


def sacct_command(cluster: SlurmClusterConfig, start: datetime, end: datetime) -> list[str]:
    """sacct for the jobs that ended in [start, end], with the fields ``import_sacct`` reads (run with TZ=UTC).

    With ``--state`` sacct selects by end time. Without it, it selects jobs eligible in the window, and
    misses jobs whose accounting record has no eligible time, which Slurm 22.05's slurmdbd writes for
    some jobs that start at once (seen in the tests: empty Partition, ``time_eligible`` 0); charging
    needs ended jobs only anyway. ``-X`` leaves out job steps (import_sacct would skip them)."""
    return [
        cluster.sacct,
        "--parsable2",
        "--noheader",
        "--allusers",
        "-X",
        f"--clusters={cluster.name}",
        f"--state={','.join(ENDED_STATES)}",
        f"--format={SACCT_FORMAT}",
        f"--starttime={_sacct_time(start)}",
        f"--endtime={_sacct_time(end)}",
    ]


def _first_start(db: Session, cluster: str) -> datetime | None:
    """Where the first pull begins: when the cluster's first account was mapped (nothing earlier is charged)."""
    first = db.exec(select(func.min(SlurmAccount.created_at)).where(SlurmAccount.cluster == cluster)).first()
    if first is None:
        return None
    return first.replace(tzinfo=UTC) if first.tzinfo is None else first


def _record_pull(db: Session, cluster: str, end: datetime) -> None:
    row = db.get(SlurmPull, cluster)
    if row is None:
        db.add(SlurmPull(cluster=cluster, pulled_until=end))
    elif row.pulled_until < end:
        row.pulled_until = end
    try:
        db.commit()
    except IntegrityError:  # a concurrent first pull (SQLite has no advisory lock): keep the later end
        db.rollback()
        _record_pull(db, cluster, end)


def pull_sacct(
    db: Session,
    cluster: SlurmClusterConfig,
    *,
    now: datetime | None = None,
    since: datetime | None = None,
) -> PullReport:
    """Run sacct for the window since the last pull and charge its finished jobs, each once.

    The window starts ``PULL_OVERLAP`` before the previous window's end (or at ``since``, or, the first
    time, when the cluster's first account was mapped) and ends now. The window's end is recorded in
    ``slurm_pulls`` only when sacct succeeded; charges already committed stay (they are idempotent).
    """
    report = PullReport(cluster.name)
    with cluster_lock(db, "pull", cluster.name) as got:
        if not got:
            report.locked_out = True
            return report
        end = (now or utcnow()).replace(microsecond=0)
        if since is None:
            previous = db.get(SlurmPull, cluster.name)
            if previous is not None:
                since = previous.pulled_until - PULL_OVERLAP
            else:
                since = _first_start(db, cluster.name)
                if since is None:
                    report.note = "no Slurm account is mapped on this cluster yet; nothing to charge"
                    return report
                since -= PULL_OVERLAP
        report.window = (since, end)
        args = sacct_command(cluster, since, end)
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen(
                    args, env=slurm_env(cluster), stdout=subprocess.PIPE, stderr=errors, text=True
                )
            except OSError as exc:
                raise SlurmCommandFailed(f"{shlex.join(args)}: {exc}") from exc
            assert process.stdout is not None
            try:
                report.imported = import_sacct(db, process.stdout, cluster=cluster.name)
            finally:
                process.stdout.close()
                returncode = process.wait()
            if returncode != 0:
                errors.seek(0)
                message = errors.read().decode(errors="replace").strip()[-1000:]
                raise SlurmCommandFailed(f"{shlex.join(args)} exited with {returncode}: {message}")
        _record_pull(db, cluster.name, end)
    return report


def pull_all(db: Session, clusters: list[SlurmClusterConfig]) -> int:
    """``portal worker``'s job: pull every configured cluster; returns the number of jobs charged."""
    charged, failed = 0, []
    for cluster in clusters:
        try:
            report = pull_sacct(db, cluster)
        except Exception:
            db.rollback()
            log.exception("sacct pull of %s failed", cluster.name)
            failed.append(cluster.name)
            continue
        charged += report.charged
        if report.imported is not None:
            for problem in report.imported.problems:
                log.warning("sacct pull of %s: line %s: %s", cluster.name, problem.line_number, problem.reason)
    if failed:
        raise RuntimeError(f"sacct pull failed for {', '.join(failed)}")
    return charged


def hold_allocation_now(settings: Settings, allocation: Allocation) -> int:
    """Enforcement hook: the moment an allocation is exhausted, set its accounts' limit to 0 on every
    configured cluster of its site, without waiting for the next sync. Returns the accounts held."""
    db = Session.object_session(allocation)
    if db is None:
        return 0
    row = db.exec(
        select(Site.code, Resource.kind)
        .join(Resource, Resource.site_id == Site.id)
        .where(Resource.id == allocation.resource_id)
    ).first()
    if row is None or row[1] not in LIMITED_TRES:
        return 0
    site_code, kind = row
    held = 0
    for cluster in settings.slurm_clusters:
        if cluster.site != site_code:
            continue
        accounts = db.exec(
            select(SlurmAccount.account).where(
                SlurmAccount.cluster == cluster.name, SlurmAccount.allocation_id == allocation.id
            )
        ).all()
        for account in accounts:
            _run(
                cluster,
                [
                    cluster.sacctmgr,
                    "-i",
                    "modify",
                    "account",
                    "where",
                    f"name={account}",
                    f"cluster={cluster.name}",
                    "set",
                    f"GrpTRESMins={LIMITED_TRES[kind]}=0",
                ],
            )
            held += 1
    return held
