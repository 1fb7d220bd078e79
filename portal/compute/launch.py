"""Starting, stopping and metering notebook servers at the hub, on behalf of the portal's users.

- ``launch_notebook`` checks quickly that the user may use the allocation, then asks the hub to start a
  named server ``a<allocation>-<n>`` with ``user_options`` ``{allocation, profile, hours}``. The hub asks the
  portal's spawn check (``check_spawn``) before it starts anything, so every rule is enforced there again,
  and the spawn check records the ``NotebookSession``.
- ``meter_notebooks`` (a periodic worker job: ``meter_job``) notices when the hub reports a server ready
  (``started_at``), charges the running time since the last charge to the allocation (GPUs × seconds, or
  cores × seconds for a CPU profile; once per session and interval end), and stops servers whose allocation
  is exhausted or whose hours are up. A server that runs as a Slurm job (``slurm_cluster``) is never charged
  here: ``portal usage pull-sacct`` charges its job, once, from Slurm's accounting. A round reads the hub's
  paged list of active servers once and works through the open sessions in claimed batches: each batch is
  loaded in a few queries and charged in one ledger transaction, so a round's statements do not grow with its
  sessions, and several workers (``FOR UPDATE SKIP LOCKED`` claims on PostgreSQL) share a round.

This module holds the entry points: launching, the owner's stop, and the enforcement hook that stops an
exhausted allocation's servers (``stop_notebooks_of_exhausted``); it also names the metering round's, so
callers import them from here. The rest lives beside it: ``notebook_charges`` (one session's start, charge,
close and stop reason), ``metering_round`` (``meter_notebooks``, ``meter_job``), ``metering_batches`` (claims
and batch charges) and ``stop_notices`` (what the owner is told).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from portal.classroom.services import student_seat
from portal.compute.hub_client import HubClient, HubError, HubRefused, ServerStatus
from portal.compute.metering_round import (
    CLAIM_BATCH,
    NEVER_STARTED_AFTER,
    MeteringIncomplete,
    MeterReport,
    meter_job,
    meter_notebooks,
)
from portal.compute.notebook_charges import (
    AT_HUB,
    BY_USER,
    EXHAUSTED,
    NOT_STARTED,
    REPLACED,
    TIME_LIMIT,
    _charge,
    _close,
    _mark_started,
)
from portal.compute.services import SpawnRefused, hub_username, nothing_runs_on
from portal.compute.stop_notices import _tell_owner
from portal.config import Settings
from portal.db import find, utcnow
from portal.errors import InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger.models import Allocation, AllocationState
from portal.messages import N_, Message
from portal.notebook_models import NotebookSession
from portal.projects.models import ProjectMembership

__all__ = [
    "AT_HUB",
    "BY_USER",
    "CLAIM_BATCH",
    "EXHAUSTED",
    "NEVER_STARTED_AFTER",
    "NOT_STARTED",
    "REPLACED",
    "TIME_LIMIT",
    "Launch",
    "MeterReport",
    "MeteringIncomplete",
    "launch_notebook",
    "meter_job",
    "meter_notebooks",
    "start_notebook",
    "stop_notebook",
    "stop_notebooks_of_exhausted",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Launch:
    hub_user: str
    server_name: str
    #: READY when the hub answered 201, PENDING while it is still spawning (202).
    status: ServerStatus
    #: The spawn check's record of this server.
    session: NotebookSession | None


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
        member = student_seat(db, actor, allocation.id) is not None
    if allocation is None or not member or not actor.is_active:
        raise NotFound(
            Message(N_("Allocation %(id)s is not one of your projects' allocations."), id=str(allocation_id))
        )
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
        raise InvalidInput(
            Message(N_("There is no notebook profile %(profile)s."), profile=repr(profile)),
            errors={"profile": Message(N_("unknown profile"))},
        )
    if not hours > 0:
        raise InvalidInput(
            Message(N_("Ask for a positive number of hours.")), errors={"hours": Message(N_("must be positive"))}
        )
    if allocation.state != AllocationState.ACTIVE:
        raise SpawnRefused(nothing_runs_on(allocation))
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
        raise NotFound(Message(N_("Notebook session %(id)s is not one of yours."), id=str(session_id)))
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
        stopped.append(session.id)
    return stopped
