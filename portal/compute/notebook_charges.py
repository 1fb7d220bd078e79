"""One notebook session's record as metering keeps it: the reasons a server is stopped for, noting its start,
charging its running time since the last charge (once per interval, also on the student's course seat),
closing it, and deciding whether it must stop now.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from portal import observability
from portal.classroom.services import course_stop_reason, record_seat_usage
from portal.compute.hub_client import HubServer
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationState, LedgerEntry
from portal.notebook_models import NotebookSession

EXHAUSTED = "allocation exhausted"
TIME_LIMIT = "time limit reached"
BY_USER = "stopped by user"
AT_HUB = "stopped at the hub"
NOT_STARTED = "not started"
REPLACED = "replaced"


class _MeteredMeanwhile(Exception):
    """Another worker charged this session first; this run's charge is rolled back."""


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
    charge = _usage_charge(session, seconds, elapsed)
    table = NotebookSession.__table__

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
        charged = ledger.charge_usage_batch(db, [charge], record=record)
    except _MeteredMeanwhile:
        charged = []
    db.refresh(session)
    if charged:
        observability.usage_charged("hub", session.started_at + timedelta(seconds=elapsed))
    return charge.amount if charged else 0


def _stop_reason(
    db: Session, session: NotebookSession, now: datetime, *, allocation: Allocation | None = None
) -> str | None:
    """Why the session must stop now, or None; ``allocation`` (the session's, freshly loaded) saves reading it."""
    if session.course_seat_id is not None:
        reason = course_stop_reason(db, session.course_seat_id, now)
        if reason is not None:
            return reason
    if allocation is None:
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


def _usage_charge(session: NotebookSession, seconds: int, elapsed: int) -> ledger.UsageCharge:
    """The charge of ``seconds`` more running time, up to ``elapsed`` seconds after the start; its key
    ``hub:<session>:<interval end, epoch seconds>`` makes each interval's charge happen once."""
    assert session.started_at is not None
    units = session.gpus if session.gpus > 0 else session.cpus
    return ledger.UsageCharge(
        allocation_id=session.allocation_id,
        amount=seconds * units,
        key=f"hub:{session.id}:{int(session.started_at.timestamp()) + elapsed}",
        reason=wording.NOTEBOOK.english(
            server=f"{session.hub_user}/{session.server_name}", profile=session.profile, seconds=seconds
        ),
    )
