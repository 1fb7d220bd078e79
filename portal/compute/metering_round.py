"""The metering round (``meter_notebooks``; the worker's ``meter_job``): the hub's active servers read once, the
open sessions claimed in batches, each batch's starts noted, its charges made in one ledger transaction, and
the servers whose allocation, course seat or hours say so stopped, their owners told why.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col, select

from portal import observability
from portal.compute.hub_client import HubClient, HubError, HubServer
from portal.compute.metering_batches import (
    _among,
    _charge_all,
    _claim_sessions,
    _load_sessions,
    _newest_open,
    _release_sessions,
)
from portal.compute.models import HubListing
from portal.compute.notebook_charges import AT_HUB, NOT_STARTED, REPLACED, _charge, _close, _stop_reason
from portal.compute.stop_notices import _tell_owner
from portal.config import Settings
from portal.db import utcnow
from portal.ledger.models import Allocation, AllocationState
from portal.notebook_models import NotebookSession

log = logging.getLogger(__name__)

#: A session the spawn check accepted whose server the hub never reported is closed after this long.
NEVER_STARTED_AFTER = timedelta(minutes=10)


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


#: Sessions one claim takes: small enough that several workers share a round, large enough that a batch's few
#: statements (load, charge, record) carry many sessions.
CLAIM_BATCH = 200


#: Batches a worker claims at most while another lists the hub (it meters them as one batch, in one transaction):
#: enough to fill the listing of 10,000 servers (in bench_metering, 10 batches held two workers back: 1.86-1.91x
#: against 1.94-2.00x with 20), and a slow hub's listing does not hand one worker every session.
PREPARED_AT_MOST = 20


class MeteringIncomplete(Exception):
    """Some sessions' charges failed in a round whose other sessions were metered; the worker counts the run as
    failed (the log names the sessions) and the next round tries them again."""

    def __init__(self, failed: Sequence[int], report: MeterReport) -> None:
        super().__init__(f"{len(failed)} notebook session(s) could not be charged: {', '.join(map(str, failed[:20]))}")
        self.failed = list(failed)
        self.report = report


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

    The hub's list of active servers is read once per round, by one worker: a worker that starts within
    ``fresh_for`` after another began its round joins that round, its time and its list (``_round_servers``);
    while the other still lists the hub, it claims and loads sessions, and meters them as its first batch.
    The open sessions are claimed in batches (``_claim_sessions``), so several workers share a round: a session
    metered by any worker within ``fresh_for`` is left alone. A batch costs a few statements whatever its size:
    its sessions are loaded in one query and charged in one ledger transaction (``_charge_all``); only starts,
    stops and course seats are per session.
    ``keep_going`` is asked before each claim and before each session's stop decision; when it says no, the
    round ends after the session in hand and hands the rest of its claim back. Raises ``HubUnavailable`` when
    the hub does not answer (nothing is charged or stopped then), and ``MeteringIncomplete`` at the end of a
    round in which some sessions' charges failed (the others are metered).
    """
    now = now or utcnow()
    # While another worker lists the hub for this round, claim and load sessions meanwhile (not their metering,
    # which needs the list): they are metered as the first batch, and the listing is no longer time lost.
    prepared: list[NotebookSession] = []
    after = 0
    try:
        while len(prepared) < PREPARED_AT_MOST * batch and _sharing(db, fresh_for) and not _listing_free(db, client):
            if keep_going is not None and not keep_going():
                db.rollback()  # hands back what was claimed meanwhile
                return MeterReport()
            ids = _claim_sessions(db, now, after, fresh_for, batch)
            if not ids:
                break
            after = ids[-1]
            prepared += _load_sessions(db, ids)
    except BaseException:
        db.rollback()
        raise
    now, servers = _round_servers(db, client, now, fresh_for, hold=bool(prepared))
    report = MeterReport()
    failed: list[int] = []
    if prepared:  # one batch: its claims stay locked until it commits, as every batch's do
        newest = _newest_open(db, prepared)
        if not _meter_batch(db, settings, client, prepared, servers, newest, now, report, keep_going, failed):
            return _finished(report, failed)
    while keep_going is None or keep_going():
        ids = _claim_sessions(db, now, after, fresh_for, batch)
        if not ids:
            db.commit()
            break
        after = ids[-1]
        claimed = _load_sessions(db, ids)
        newest = _newest_open(db, claimed)
        if not _meter_batch(db, settings, client, claimed, servers, newest, now, report, keep_going, failed):
            break
    return _finished(report, failed)


def _finished(report: MeterReport, failed: list[int]) -> MeterReport:
    if failed:
        raise MeteringIncomplete(failed, report)
    return report


def _sharing(db: Session, share_for: timedelta) -> bool:
    """Whether workers share the round's list of the hub (on PostgreSQL, where several workers run)."""
    return share_for > timedelta(0) and db.get_bind().dialect.name == "postgresql"


def _listing_free(db: Session, client: HubClient) -> bool:
    """Takes the hub's listing row unless another worker holds it (listing the hub, or reading the list): True
    when this worker now holds it (``_round_servers`` goes on in the same transaction), False when it is taken."""
    return _locked_round(db, client, skip_locked=True) is not None


def _locked_round(db: Session, client: HubClient, *, skip_locked: bool = False) -> datetime | None:
    """The round time of the hub's listing row (made when missing), locked by this worker; ``skip_locked``: None
    when another worker holds it, instead of waiting."""
    first_listing = postgresql.insert(HubListing).values(hub=client.api_url, round_at=EPOCH, servers=[])
    db.execute(first_listing.on_conflict_do_nothing())
    this_hub = HubListing.hub == client.api_url
    return db.exec(select(HubListing.round_at).where(this_hub).with_for_update(skip_locked=skip_locked)).first()


def _round_servers(
    db: Session, client: HubClient, now: datetime, share_for: timedelta, *, hold: bool = False
) -> tuple[datetime, dict[tuple[str, str], HubServer]]:
    """The round's time and the hub's active servers by (user, server name). With ``share_for``, a round that
    another worker began at most that long before ``now`` is joined: its time and the list it read (stored in
    ``HubListing``), so that N workers ask the hub once per round, not N times. Otherwise the hub is listed
    now, while this worker holds the listing's row lock (a worker starting meanwhile waits, then joins), and the
    list is stored for the others. The list is read after the round's time, as a worker's own list is, so
    joining changes no charge: a server on it ran at least until the time the round charges to. On PostgreSQL
    only, where several workers run.

    The cyclic garbage collector waits meanwhile: the hub's answer and the list are tens of thousands of fresh
    dicts, lists and strings, none in a cycle, whose allocation would otherwise set off collections that walk the
    whole heap and find nothing (a third of the listing's time in a worker; this part of the round is the one
    that the others wait for).

    ``hold``: the transaction is left open (the caller's claims made meanwhile commit with their batch)."""
    with _collector_paused():
        return _list_or_join(db, client, now, share_for, hold=hold)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block (left as it was found); reference counting still frees."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _list_or_join(
    db: Session, client: HubClient, now: datetime, share_for: timedelta, *, hold: bool
) -> tuple[datetime, dict[tuple[str, str], HubServer]]:
    if not _sharing(db, share_for):
        # one worker (SQLite is for one): its own list; SQLite would hold its single write lock over the hub's answer
        return now, {(s.user, s.name): s for s in client.active_servers()}
    try:
        began = _locked_round(db, client)
        assert began is not None  # made when missing, and waited for when locked
        this_hub = HubListing.hub == client.api_url
        if now - share_for <= began <= now:
            now, servers = began, [_listed(row) for row in db.exec(select(HubListing.servers).where(this_hub)).one()]
        else:  # the earlier list is not read: it is replaced
            servers = client.active_servers()
            db.execute(
                sa.update(HubListing).where(this_hub).values(round_at=now, servers=[_listing_row(s) for s in servers])
            )
        if not hold:
            db.commit()
    except BaseException:
        db.rollback()
        raise
    return now, {(s.user, s.name): s for s in servers}


#: The round time of a hub never listed: any round is newer.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _listing_row(server: HubServer) -> list[Any]:
    started = None if server.started is None else server.started.isoformat()
    return [server.user, server.name, server.ready, server.pending, started]


def _listed(row: list[Any]) -> HubServer:
    user, name, ready, pending, started = row
    return HubServer(
        user=user,
        name=name,
        ready=ready,
        pending=pending,
        started=None if started is None else datetime.fromisoformat(started),
        url="",  # not stored: the round does not use it
    )


def _meter_batch(
    db: Session,
    settings: Settings,
    client: HubClient,
    claimed: Sequence[NotebookSession],
    servers: dict[tuple[str, str], HubServer],
    newest: dict[tuple[str, str], int],
    now: datetime,
    report: MeterReport,
    keep_going: Callable[[], bool] | None,
    failed: list[int],
) -> bool:
    """Meter one claimed batch; False when ``keep_going`` said no (the rest of the claim is handed back)."""
    to_start: list[tuple[NotebookSession, HubServer]] = []
    running: list[NotebookSession] = []
    for session in claimed:
        key = (session.hub_user, session.server_name)
        if session.stopped_at is not None:  # stopped by the enforcement hook when an earlier charge exhausted
            report.stopped[session.id] = session.stop_reason
            continue
        if newest.get(key, 0) > session.id:
            _charge(db, session, now)  # the server was spawned again: this older record is over
            _close(db, session, now, REPLACED)
            report.stopped[session.id] = REPLACED
            continue
        server = servers.get(key)
        if session.started_at is None:
            if server is not None and server.ready:
                to_start.append((session, server))
            elif server is None and now - session.requested_at > NEVER_STARTED_AFTER:
                _close(db, session, now, NOT_STARTED)
                observability.hub_server_never_started(session.profile)
                report.stopped[session.id] = NOT_STARTED
                continue
            else:
                continue
        elif server is None:
            # Stopped at the hub (by its user or the idle culler) since the last round: its time after the
            # last charge is not known, so it is not charged.
            _close(db, session, now, AT_HUB)
            report.stopped[session.id] = AT_HUB
            continue
        running.append(session)
    _mark_all_started(db, to_start, now, report)
    charged, failures = _charge_all(db, running, now)
    db.commit()  # the claim, when there was nothing to charge; no transaction is held while the hub is asked
    report.charged.update(charged)
    failed.extend(failures)
    left = [s for s in running if s.id not in failures]
    if not left:
        return True
    allocations = {
        a.id: a
        for a in db.exec(
            select(Allocation)
            .where(_among(db, col(Allocation.id), sorted({s.allocation_id for s in left}), sa.Integer))
            .execution_options(populate_existing=True)
        ).all()
    }
    # A charge that exhausted an allocation ran the enforcement hook, which may have stopped its sessions.
    ended = {a.id for a in allocations.values() if a.state != AllocationState.ACTIVE or a.balance <= 0}
    if ended:
        fresh = {s.id: s for s in _load_sessions(db, [s.id for s in left if s.allocation_id in ended])}
        left = [fresh.get(s.id, s) for s in left]
    db.commit()  # a commit, unlike a rollback, leaves the loaded rows usable
    for position, session in enumerate(left):
        if keep_going is not None and not keep_going():
            _release_sessions(db, [s.id for s in left[position:]])
            return False
        _stop_if_due(db, settings, client, session, allocations.get(session.allocation_id), now, report)
    return True


def _mark_all_started(
    db: Session, to_start: Sequence[tuple[NotebookSession, HubServer]], now: datetime, report: MeterReport
) -> None:
    """``_mark_started`` for many sessions, in one commit."""
    if not to_start:
        return
    for session, server in to_start:
        session.started_at = min(max(server.started or now, session.requested_at), now)
        db.add(session)
    db.commit()
    for session, _server in to_start:
        observability.hub_server_started(session.profile, now - session.requested_at)  # first seen ready now
        report.started.append(session.id)


def _stop_if_due(
    db: Session,
    settings: Settings,
    client: HubClient,
    session: NotebookSession,
    allocation: Allocation | None,
    now: datetime,
    report: MeterReport,
) -> None:
    """Stop the session's server when its allocation, course seat or hours say so; the owner is told why."""
    if session.stopped_at is not None:  # a charge exhausted the allocation: the enforcement hook stopped it
        report.stopped[session.id] = session.stop_reason
        return
    reason = _stop_reason(db, session, now, allocation=allocation)
    if reason is None:
        return
    try:
        client.stop_server(session.hub_user, session.server_name)
    except HubError:
        log.exception(
            "could not stop %s/%s (%s); trying again next round", session.hub_user, session.server_name, reason
        )
        return
    _close(db, session, now, reason)
    _tell_owner(db, settings, session, reason)
    report.stopped[session.id] = reason


def meter_job(db: Session, settings: Settings, keep_going: Callable[[], bool] | None = None) -> int:
    """``portal worker``'s job: one metering round against ``settings.hub_url``; returns how much it did.

    An unreachable hub fails the run (``HubUnavailable``): nothing is charged or stopped, and the worker counts
    the run as failed, so the metrics and alerts show it. Sessions another worker metered in the last half
    interval are left to it."""
    fresh_for = timedelta(seconds=settings.worker_interval_seconds / 2)
    client = HubClient.from_settings(settings)
    return meter_notebooks(db, settings, client, keep_going=keep_going, fresh_for=fresh_for).total
