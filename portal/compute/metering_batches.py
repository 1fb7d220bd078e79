"""A metering round's batches: claiming open sessions so that several workers share a round (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), handing back a claim, loading a batch in one query, and charging it in one ledger
transaction (``_charge_all``), one session at a time when the batch as a whole fails.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from portal import observability
from portal.classroom.services import record_seat_usage
from portal.compute.notebook_charges import _charge, _elapsed, _MeteredMeanwhile, _usage_charge
from portal.ledger import services as ledger
from portal.notebook_models import NotebookSession

log = logging.getLogger(__name__)


def _among(db: Session, column: sa.ColumnElement, values: Sequence[object], element: type) -> sa.ColumnElement[bool]:
    """``column IN values``; on PostgreSQL one array (``= ANY``), whose generic plan uses the index (see
    ``ledger._charged_keys``)."""
    if db.get_bind().dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=postgresql.ARRAY(element)))
    return column.in_(list(values))


def _claim_sessions(db: Session, now: datetime, after: int, fresh_for: timedelta, batch: int) -> list[int]:
    """Claim the next open sessions (id above ``after``) that no worker metered in the last ``fresh_for``: one
    ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)``, so concurrent workers take disjoint sessions
    (SQLite, with one writer at a time, ignores the clause). Not committed: the claim commits with the batch's
    charges (one commit a batch); until then its row locks keep other workers off."""
    table = NotebookSession.__table__
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
    chosen = due.scalar_subquery()
    # On PostgreSQL the chosen ids as one array (evaluated once), so the rows are found by their key: ``IN
    # (subquery)`` is planned as a hash join over a scan of the whole table, in every claim.
    postgres = db.get_bind().dialect.name == "postgresql"
    condition = table.c.id == sa.any_(sa.func.array(chosen)) if postgres else table.c.id.in_(chosen)
    claimed = db.execute(sa.update(table).where(condition).values(metered_at=now).returning(table.c.id))
    return sorted(claimed.scalars().all())


def _release_sessions(db: Session, ids: Sequence[int]) -> None:
    """Claimed sessions left unmetered (the worker is stopping): the next worker's round takes them."""
    if ids:
        table = NotebookSession.__table__
        db.execute(sa.update(table).where(_among(db, table.c.id, ids, sa.Integer)).values(metered_at=None))
        db.commit()


def _load_sessions(db: Session, ids: Sequence[int]) -> list[NotebookSession]:
    """The sessions ``ids``, as the database has them now, in id order (one query)."""
    return list(
        db.exec(
            select(NotebookSession)
            .where(_among(db, col(NotebookSession.id), ids, sa.Integer))
            .order_by(col(NotebookSession.id))
            .execution_options(populate_existing=True)
        ).all()
    )


def _newest_open(db: Session, sessions: Sequence[NotebookSession]) -> dict[tuple[str, str], int]:
    """The newest open session of each (hub user, server) among ``sessions``'s, whichever worker claimed it."""
    users = sorted({s.hub_user for s in sessions})
    newest: dict[tuple[str, str], int] = {}
    if not users:
        return newest
    for session_id, user, name in db.exec(
        select(NotebookSession.id, NotebookSession.hub_user, NotebookSession.server_name).where(
            col(NotebookSession.stopped_at).is_(None), _among(db, col(NotebookSession.hub_user), users, sa.String)
        )
    ).all():
        newest[(user, name)] = max(session_id, newest.get((user, name), 0))
    return newest


@dataclass(frozen=True)
class _Due:
    """A session's charge in a batch, and the ``charged_seconds`` it moves from and to."""

    session: NotebookSession
    previous: int
    elapsed: int
    charge: ledger.UsageCharge

    @property
    def session_id(self) -> int:
        assert self.session.id is not None
        return self.session.id

    @property
    def ends(self) -> datetime:
        """The end of the charged interval."""
        assert self.session.started_at is not None
        return self.session.started_at + timedelta(seconds=self.elapsed)


def _move_charged_seconds(db: Session, due: Sequence[_Due], now: datetime) -> None:
    """In the charge's transaction: each session's ``charged_seconds`` from the value the round read to the
    interval end (one statement on PostgreSQL), and its course seat's use; ``_MeteredMeanwhile`` when another
    worker moved one first (the whole batch rolls back)."""
    table = NotebookSession.__table__
    if db.get_bind().dialect.name == "postgresql":
        moves = (
            sa.func.unnest(
                sa.bindparam(None, [d.session.id for d in due], type_=postgresql.ARRAY(sa.Integer)),
                sa.bindparam(None, [d.previous for d in due], type_=postgresql.ARRAY(sa.BigInteger)),
                sa.bindparam(None, [d.elapsed for d in due], type_=postgresql.ARRAY(sa.BigInteger)),
            )
            .table_valued("id", "previous", "elapsed")
            .render_derived()
        )
        moved = len(
            db.execute(
                sa.update(table)
                .where(table.c.id == moves.c.id, table.c.charged_seconds == moves.c.previous)
                .values(charged_seconds=moves.c.elapsed)
                .returning(table.c.id)
            ).all()
        )
    else:  # one executemany; SQLite sums the rows it changed
        moved = db.execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"), table.c.charged_seconds == sa.bindparam("b_previous"))
            .values(charged_seconds=sa.bindparam("b_elapsed")),
            [{"b_id": d.session_id, "b_previous": d.previous, "b_elapsed": d.elapsed} for d in due],
        ).rowcount
    if moved != len(due):
        raise _MeteredMeanwhile
    seats: dict[int, int] = {}
    for d in due:
        if d.session.course_seat_id is not None:
            seats[d.session.course_seat_id] = seats.get(d.session.course_seat_id, 0) + d.charge.amount
        set_committed_value(d.session, "charged_seconds", d.elapsed)
    for seat_id, amount in sorted(seats.items()):  # in id order, as every batch takes them
        record_seat_usage(db, seat_id, amount, now=now)


def _charge_all(db: Session, sessions: Sequence[NotebookSession], now: datetime) -> tuple[dict[int, int], list[int]]:
    """``_charge`` for many sessions in one ledger transaction (``charge_usage_batch``): the charged base units by
    session, and the sessions whose charge failed. When the batch fails as a whole (another worker charged one
    of them meanwhile, or one charge is refused), each session is charged on its own, so one session's failure
    neither loses nor doubles the others' charges."""
    due: list[_Due] = []
    for session in sessions:
        if session.started_at is None or session.charged_from_slurm:
            continue  # a Slurm job is charged from sacct, with what the job really held (one source of truth)
        elapsed = _elapsed(session, now)
        seconds = elapsed - session.charged_seconds
        if seconds > 0:
            due.append(_Due(session, session.charged_seconds, elapsed, _usage_charge(session, seconds, elapsed)))
    if not due:
        return {}, []
    by_key = {d.charge.key: d for d in due}
    try:
        done = ledger.charge_usage_batch(
            db,
            [d.charge for d in due],
            record=lambda charged: _move_charged_seconds(db, [by_key[c.key] for c, _ in charged], now),
        )
    except Exception as exc:
        if not isinstance(exc, _MeteredMeanwhile):
            log.warning("charging %d notebook sessions at once failed (%s); charging them one by one", len(due), exc)
        # The rollback took the claim back too: take it again, so no other worker meters these meanwhile.
        table = NotebookSession.__table__
        ids = [d.session_id for d in due]
        db.execute(sa.update(table).where(_among(db, table.c.id, ids, sa.Integer)).values(metered_at=now))
        db.commit()
        return _charge_each(db, [d.session for d in due], now)
    if done:
        observability.usage_charged("hub", max(by_key[c.key].ends for c, _ in done))
    return {by_key[c.key].session_id: c.amount for c, _ in done}, []


def _charge_each(db: Session, sessions: Sequence[NotebookSession], now: datetime) -> tuple[dict[int, int], list[int]]:
    charged: dict[int, int] = {}
    failed: list[int] = []
    for session in sessions:
        session_id = session.id
        assert session_id is not None
        try:
            amount = _charge(db, session, now)
        except Exception:
            db.rollback()
            log.exception("could not charge notebook session %s; trying again next round", session_id)
            failed.append(session_id)
            continue
        if amount:
            charged[session_id] = amount
    return charged, failed
