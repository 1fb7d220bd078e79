"""Starting, stopping and metering notebook servers at the hub, on behalf of the portal's users.

- ``launch_notebook`` checks quickly that the user may use the allocation, then asks the hub to start a
  named server ``a<allocation>-<n>`` with ``user_options`` ``{allocation, profile, hours}``. The hub asks the
  portal's spawn check (``check_spawn``) before it starts anything, so every rule is enforced there again,
  and the spawn check records the ``NotebookSession``.
- ``meter_notebooks`` (a periodic worker job: ``meter_job``) notices when the hub reports a server ready
  (``started_at``), charges the running time since the last charge to the allocation (GPUs × seconds, or
  cores × seconds for a CPU profile; once per session and interval end), and stops servers whose allocation
  is exhausted or whose hours are up. A server that runs as a Slurm job (``slurm_cluster``) is never charged
  here: ``portal usage pull-sacct`` charges its job, once, from Slurm's accounting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal import observability
from portal.classroom.services import course_stop_reason, record_seat_usage, student_seat
from portal.compute.hub_client import HubClient, HubError, HubRefused, HubServer, ServerStatus
from portal.compute.services import SpawnRefused, hub_username
from portal.config import Settings
from portal.db import find, utcnow
from portal.errors import InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationState, LedgerEntry
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership

log = logging.getLogger(__name__)

#: A session the spawn check accepted whose server the hub never reported is closed after this long.
NEVER_STARTED_AFTER = timedelta(minutes=10)

EXHAUSTED = "allocation exhausted"
TIME_LIMIT = "time limit reached"
BY_USER = "stopped by user"
AT_HUB = "stopped at the hub"
NOT_STARTED = "not started"
REPLACED = "replaced"


@dataclass(frozen=True)
class Launch:
    hub_user: str
    server_name: str
    #: READY when the hub answered 201, PENDING while it is still spawning (202).
    status: ServerStatus
    #: The spawn check's record of this server.
    session: NotebookSession | None


@dataclass
class MeterReport:
    started: list[int] = field(default_factory=list)
    #: Session id -> base units charged in this run.
    charged: dict[int, int] = field(default_factory=dict)
    #: Session id -> stop reason.
    stopped: dict[int, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.started) + len(self.charged) + len(self.stopped)


class _MeteredMeanwhile(Exception):
    """Another worker charged this session first; this run's charge is rolled back."""


# --- launching and stopping ----------------------------------------------------------------------------------


def _member_allocation(db: Session, actor: User, allocation_id: int) -> Allocation:
    allocation = find(db, Allocation, allocation_id)
    member = (
        allocation is not None
        and db.exec(
            select(ProjectMembership.id).where(
                ProjectMembership.project_id == allocation.project_id, ProjectMembership.user_id == actor.id
            )
        ).first()
        is not None
    )
    if allocation is not None and not member:  # a course's student uses the course's allocation
        member = student_seat(db, actor, allocation.id) is not None  # type: ignore[arg-type]
    if allocation is None or not member or not actor.is_active:
        raise NotFound(f"Allocation {allocation_id} is not one of your projects' allocations.")
    return allocation


def _next_server_name(db: Session, client: HubClient, hub_user: str, allocation_id: int) -> str:
    prefix = f"a{allocation_id}-"
    taken = set(
        db.exec(
            select(NotebookSession.server_name).where(
                NotebookSession.hub_user == hub_user, col(NotebookSession.server_name).startswith(prefix)
            )
        ).all()
    )
    taken |= set(((client.get_user(hub_user) or {}).get("servers") or {}).keys())
    numbers = [int(name[len(prefix) :]) for name in taken if name[len(prefix) :].isdigit()]
    return f"{prefix}{max(numbers, default=0) + 1}"


def _latest_session(db: Session, hub_user: str, server_name: str) -> NotebookSession | None:
    return db.exec(
        select(NotebookSession)
        .where(NotebookSession.hub_user == hub_user, NotebookSession.server_name == server_name)
        .order_by(col(NotebookSession.id).desc())
    ).first()


def launch_notebook(
    db: Session,
    settings: Settings,
    client: HubClient,
    actor: User,
    *,
    allocation_id: int,
    profile: str,
    hours: float,
) -> Launch:
    """Start a notebook server for ``actor`` on ``allocation_id``; the hub's spawn check decides the rest.

    Raises ``NotFound`` (not the actor's allocation), ``InvalidInput`` (unknown profile, hours), ``SpawnRefused``
    (the portal's spawn check refused it, with its message) or ``HubUnavailable``.
    """
    allocation = _member_allocation(db, actor, allocation_id)
    if settings.notebook_profile(profile) is None:
        raise InvalidInput(f"There is no notebook profile {profile!r}.", errors={"profile": "unknown profile"})
    if not hours > 0:
        raise InvalidInput("Ask for a positive number of hours.", errors={"hours": "must be positive"})
    if allocation.state != AllocationState.ACTIVE:
        raise SpawnRefused(f"Allocation {allocation.title!r} is {allocation.state}, so nothing can run on it.")
    hub_user = hub_username(actor)
    client.ensure_user(hub_user)
    server_name = _next_server_name(db, client, hub_user, allocation_id)
    db.rollback()  # hold no read transaction while the spawn check writes to the database
    options = {"allocation": allocation_id, "profile": profile, "hours": hours}
    try:
        status = client.start_server(hub_user, server_name, options)
    except HubRefused as exc:
        with suppress(HubError):  # forget the refused server, which counts against the named-server limit
            client.stop_server(hub_user, server_name)
        raise SpawnRefused(exc.message) from exc
    return Launch(hub_user, server_name, status, _latest_session(db, hub_user, server_name))


def start_notebook(
    db: Session, settings: Settings, actor: User, *, allocation_id: int, profile: str, hours: float
) -> int | None:
    """``launch_notebook`` through the hub the settings name: the started session's id (None: the hub started
    a server the portal has no record of). The course pages receive it (``create_app``), so that ``classroom``
    imports nothing of ``compute``; a ``HubError`` is a ``portal.errors.ServiceUnavailable``."""
    client = HubClient.from_settings(settings)
    started = launch_notebook(db, settings, client, actor, allocation_id=allocation_id, profile=profile, hours=hours)
    return started.session.id if started.session is not None else None


def stop_notebook(
    db: Session,
    settings: Settings,
    client: HubClient,
    actor: User,
    *,
    session_id: int,
    now: datetime | None = None,
) -> NotebookSession:
    """The owner stops a notebook: its time is charged up to now, then the hub stops (and forgets) it."""
    session = db.get(NotebookSession, session_id)
    if session is None or session.user_id != actor.id:
        raise NotFound(f"Notebook session {session_id} is not one of yours.")
    if session.stopped_at is not None:
        return session
    now = now or utcnow()
    _charge_and_stop(db, client, session, now)
    _close(db, session, now, BY_USER)
    return session


def _charge_and_stop(db: Session, client: HubClient, session: NotebookSession, now: datetime) -> None:
    """Charge the session's running time up to ``now`` (noting its start if the hub reports it ready and
    metering has not yet), then stop its server at the hub; the caller closes the session with its reason."""
    if session.started_at is None:
        found = client.server(session.hub_user, session.server_name)
        if found is not None and found.ready:
            _mark_started(db, session, found, now)
    _charge(db, session, now)
    client.stop_server(session.hub_user, session.server_name)


# --- metering -------------------------------------------------------------------------------------------------


def _mark_started(db: Session, session: NotebookSession, server: HubServer, now: datetime) -> None:
    started = server.started or now
    started = min(max(started, session.requested_at), now)
    session.started_at = started
    db.add(session)
    db.commit()
    observability.hub_server_started(session.profile, now - session.requested_at)  # first seen ready now


def _close(db: Session, session: NotebookSession, now: datetime, reason: str) -> None:
    session.stopped_at = now
    session.stop_reason = reason
    db.add(session)
    db.commit()


def _elapsed(session: NotebookSession, now: datetime) -> int:
    """Whole seconds the server has run by ``now``, at most its ``max_seconds``."""
    assert session.started_at is not None
    end = min(now, session.started_at + timedelta(seconds=session.max_seconds))
    return max(0, int((end - session.started_at).total_seconds()))


def _charge(db: Session, session: NotebookSession, now: datetime) -> int:
    """Charges the running time since the last charge; returns the base units charged (0: nothing new).

    The key ``hub:<session>:<interval end, epoch seconds>`` makes each interval's charge happen once, and the
    session's ``charged_seconds`` moves in the same transaction as the ledger entry, only from the value this
    run read (another worker that charged first makes this run's charge roll back).
    """
    if session.started_at is None or session.charged_from_slurm:
        return 0  # a Slurm job is charged from sacct, with what the job really held (one source of truth)
    elapsed = _elapsed(session, now)
    previous = session.charged_seconds
    seconds = elapsed - previous
    if seconds <= 0:
        return 0
    units = session.gpus if session.gpus > 0 else session.cpus
    interval_end = int(session.started_at.timestamp()) + elapsed
    charge = ledger.UsageCharge(
        allocation_id=session.allocation_id,
        amount=seconds * units,
        key=f"hub:{session.id}:{interval_end}",
        reason=f"notebook {session.hub_user}/{session.server_name} ({session.profile}): {seconds} s",
    )
    table = NotebookSession.__table__  # type: ignore[attr-defined]

    def record(_charged: Sequence[tuple[ledger.UsageCharge, LedgerEntry]]) -> None:
        moved = db.execute(
            sa.update(table)
            .where(table.c.id == session.id, table.c.charged_seconds == previous)
            .values(charged_seconds=elapsed)
        )
        if moved.rowcount != 1:
            raise _MeteredMeanwhile
        if session.course_seat_id is not None:
            record_seat_usage(db, session.course_seat_id, charge.amount, now=now)

    try:
        charged = ledger.charge_usage_batch(db, [charge], record=record)  # type: ignore[arg-type]
    except _MeteredMeanwhile:
        charged = []
    db.refresh(session)
    if charged:
        observability.usage_charged("hub", session.started_at + timedelta(seconds=elapsed))  # type: ignore[operator]
    return charge.amount if charged else 0


def _stop_reason(db: Session, session: NotebookSession, now: datetime) -> str | None:
    if session.course_seat_id is not None:
        reason = course_stop_reason(db, session.course_seat_id, now)
        if reason is not None:
            return reason
    allocation = db.get(Allocation, session.allocation_id)
    assert allocation is not None
    db.refresh(allocation)
    if allocation.state == AllocationState.EXHAUSTED or allocation.balance <= 0:
        return EXHAUSTED
    if allocation.state != AllocationState.ACTIVE:
        return f"allocation {allocation.state}"
    if now >= allocation.ends_at:
        return "allocation ended"
    if session.started_at is not None and _elapsed(session, now) >= session.max_seconds:
        return TIME_LIMIT
    return None


#: Sessions one claim takes: small enough that several workers share a round, large enough to keep statements few.
CLAIM_BATCH = 50


def _claim_sessions(db: Session, now: datetime, after: int, fresh_for: timedelta, batch: int) -> list[int]:
    """Claim the next open sessions (id above ``after``) that no worker metered in the last ``fresh_for``: one
    ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, so concurrent workers take disjoint sessions
    (SQLite, with one writer at a time, ignores the clause)."""
    table = NotebookSession.__table__  # type: ignore[attr-defined]
    due = (
        sa.select(table.c.id)
        .where(
            table.c.stopped_at.is_(None),
            table.c.id > after,
            sa.or_(table.c.metered_at.is_(None), table.c.metered_at <= now - fresh_for),
        )
        .order_by(table.c.id)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    claimed = db.execute(
        sa.update(table).where(table.c.id.in_(due.scalar_subquery())).values(metered_at=now).returning(table.c.id)
    )
    ids = sorted(claimed.scalars().all())
    db.commit()
    return ids


def _release_sessions(db: Session, ids: Sequence[int]) -> None:
    """Claimed sessions left unmetered (the worker is stopping): the next worker's round takes them."""
    if ids:
        table = NotebookSession.__table__  # type: ignore[attr-defined]
        db.execute(sa.update(table).where(table.c.id.in_(ids)).values(metered_at=None))
        db.commit()


def _newest_open(db: Session, sessions: Sequence[NotebookSession]) -> dict[tuple[str, str], int]:
    """The newest open session of each (hub user, server) among ``sessions``'s, whichever worker claimed it."""
    users = sorted({s.hub_user for s in sessions})
    newest: dict[tuple[str, str], int] = {}
    for session_id, user, name in db.exec(
        select(NotebookSession.id, NotebookSession.hub_user, NotebookSession.server_name).where(
            col(NotebookSession.stopped_at).is_(None), col(NotebookSession.hub_user).in_(users)
        )
    ).all():
        newest[(user, name)] = max(session_id, newest.get((user, name), 0))  # type: ignore[arg-type]
    return newest


def meter_notebooks(
    db: Session,
    settings: Settings,
    client: HubClient,
    now: datetime | None = None,
    *,
    keep_going: Callable[[], bool] | None = None,
    fresh_for: timedelta = timedelta(0),
    batch: int = CLAIM_BATCH,
) -> MeterReport:
    """One round of metering: start times from the hub, charges, and stops (see the module's docstring).

    The open sessions are claimed in batches (``_claim_sessions``), so several workers share a round: a session
    metered by any worker within ``fresh_for`` is left alone. ``keep_going`` is asked before each session; when it
    says no, the round ends after the session in hand and hands the rest of its claim back. Raises
    ``HubUnavailable`` when the hub does not answer (nothing is charged or stopped then).
    """
    now = now or utcnow()
    report = MeterReport()
    servers = {(s.user, s.name): s for s in client.active_servers()}
    after = 0
    while True:
        ids = _claim_sessions(db, now, after, fresh_for, batch)
        if not ids:
            return report
        after = ids[-1]
        claimed = db.exec(
            select(NotebookSession).where(col(NotebookSession.id).in_(ids)).order_by(col(NotebookSession.id))
        ).all()
        newest = _newest_open(db, claimed)
        db.rollback()
        for position, session in enumerate(claimed):
            if keep_going is not None and not keep_going():
                _release_sessions(db, ids[position:])
                return report
            _meter_session(db, settings, client, session, servers, newest, now, report)


def _meter_session(
    db: Session,
    settings: Settings,
    client: HubClient,
    session: NotebookSession,
    servers: dict[tuple[str, str], HubServer],
    newest: dict[tuple[str, str], int],
    now: datetime,
    report: MeterReport,
) -> None:
    key = (session.hub_user, session.server_name)
    if session.stopped_at is not None:  # stopped by the enforcement hook when an earlier charge exhausted
        report.stopped[session.id] = session.stop_reason  # type: ignore[index]
        return
    if newest.get(key, 0) > session.id:  # type: ignore[operator]
        _charge(db, session, now)  # the server was spawned again: this older record is over
        _close(db, session, now, REPLACED)
        report.stopped[session.id] = REPLACED  # type: ignore[index]
        return
    server = servers.get(key)
    if session.started_at is None:
        if server is not None and server.ready:
            _mark_started(db, session, server, now)
            report.started.append(session.id)  # type: ignore[arg-type]
        elif server is None and now - session.requested_at > NEVER_STARTED_AFTER:
            _close(db, session, now, NOT_STARTED)
            observability.hub_server_never_started(session.profile)
            report.stopped[session.id] = NOT_STARTED  # type: ignore[index]
            return
        else:
            return
    if server is None:
        # Stopped at the hub (by its user or the idle culler) since the last round: its time after the
        # last charge is not known, so it is not charged.
        _close(db, session, now, AT_HUB)
        report.stopped[session.id] = AT_HUB  # type: ignore[index]
        return
    amount = _charge(db, session, now)
    if amount:
        report.charged[session.id] = amount  # type: ignore[index]
    if session.stopped_at is not None:  # this charge exhausted the allocation: the hook stopped it
        report.stopped[session.id] = session.stop_reason  # type: ignore[index]
        return
    reason = _stop_reason(db, session, now)
    if reason is None:
        return
    try:
        client.stop_server(session.hub_user, session.server_name)
    except HubError:
        log.exception("could not stop %s/%s (%s); trying again next round", *key, reason)
        return
    _close(db, session, now, reason)
    _tell_owner(db, settings, session, reason)
    report.stopped[session.id] = reason  # type: ignore[index]


def meter_job(db: Session, settings: Settings, keep_going: Callable[[], bool] | None = None) -> int:
    """``portal worker``'s job: one metering round against ``settings.hub_url``; returns how much it did.

    An unreachable hub fails the run (``HubUnavailable``): nothing is charged or stopped, and the worker counts
    the run as failed, so the metrics and alerts show it. Sessions another worker metered in the last half
    interval are left to it."""
    fresh_for = timedelta(seconds=settings.worker_interval_seconds / 2)
    client = HubClient.from_settings(settings)
    return meter_notebooks(db, settings, client, keep_going=keep_going, fresh_for=fresh_for).total


# --- telling the owner; stopping at the moment of exhaustion ----------------------------------------------------

#: Stops the portal decides on (not the owner's own): the owner gets a notice saying why.
_TOLD = {
    EXHAUSTED: "its allocation has no hours left",
    TIME_LIMIT: "it reached the number of hours you chose when you started it",
}


def _tell_owner(db: Session, settings: Settings, session: NotebookSession, reason: str) -> None:
    """An inbox entry (and e-mail) for a server the portal stopped, saying why; committed here."""
    from portal.notifications.services import notify

    owner = db.get(User, session.user_id)
    if owner is None:
        return
    why = _TOLD.get(reason, reason)
    charged = session.charged_seconds
    if session.charged_from_slurm:
        cost = (
            f"It ran as a job on the cluster {session.slurm_cluster}, which charges the allocation for the time "
            "and GPUs the job really held once the job has ended."
        )
    else:
        cost = f"It ran for {charged // 3600} h {charged % 3600 // 60} min, all of which is charged to the allocation."
    notify(
        db,
        settings,
        owner,
        subject=f"Your notebook {session.server_name} was stopped: {reason}",
        body=(
            f"The portal stopped your notebook server {session.server_name} ({session.profile}) because {why}. "
            f"{cost} "
            "Files in your home directory are kept; start a new notebook from the project page."
        ),
        link=f"/notebooks/{session.id}",
    )
    db.commit()


def stop_notebooks_of_exhausted(
    settings: Settings, allocation: Allocation, *, client: HubClient | None = None, now: datetime | None = None
) -> list[int]:
    """Enforcement hook: the moment ``allocation`` is exhausted, its open notebook sessions are charged up to
    now and their servers stopped at the hub (reason ``EXHAUSTED``; their owners are told). Returns the
    sessions stopped. An unreachable hub leaves them open: the worker's next round stops them."""
    db = Session.object_session(allocation)
    if db is None:
        return []
    sessions = db.exec(
        select(NotebookSession)
        .where(NotebookSession.allocation_id == allocation.id, col(NotebookSession.stopped_at).is_(None))
        .order_by(col(NotebookSession.id))
    ).all()
    if not sessions:
        return []
    client = client or HubClient.from_settings(settings, timeout=5.0)
    now = now or utcnow()
    stopped: list[int] = []
    for session in sessions:
        try:
            _charge_and_stop(db, client, session, now)
        except HubError as exc:
            log.warning(
                "could not stop %s/%s at exhaustion (%s); the next round will",
                session.hub_user,
                session.server_name,
                exc,
            )
            continue
        _close(db, session, now, EXHAUSTED)
        _tell_owner(db, settings, session, EXHAUSTED)
        stopped.append(session.id)  # type: ignore[arg-type]
    return stopped
