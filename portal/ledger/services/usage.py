"""Charging usage: many pieces at once, each at most once per key, with the daily and monthly rollups."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date
from typing import NoReturn

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlmodel import Session, col, select

from portal import observability
from portal.db import add_to_sums, utcnow
from portal.errors import NotFound
from portal.ledger import rollups
from portal.ledger.models import (
    Allocation,
    AllocationState,
    DailyUsage,
    EntryKind,
    LedgerEntry,
)
from portal.ledger.services.posting import (
    _after_commit,
    _existing_entry,
    _update_state,
    _validate_amount,
)
from portal.messages import N_, Message


@dataclass(frozen=True)
class UsageCharge:
    """One piece of usage to debit: ``amount`` base units, at most once per ``key``."""

    allocation_id: int
    amount: int
    key: str
    reason: str = ""
    #: The UTC day the usage counts for in charts and burn rates (its end); today when not given.
    day: date | None = None


def charge_usage(
    db: Session, allocation_id: int, amount: int, *, idempotency_key: str, reason: str = ""
) -> LedgerEntry:
    """Debit ``amount`` base units of usage, once per ``idempotency_key``.

    Usage is recorded in full even when it takes the balance below zero (it happened); the allocation
    then becomes exhausted and the enforcement hooks run after the commit.
    """
    _validate_amount(amount)
    charge = UsageCharge(allocation_id, amount, idempotency_key, reason)
    if db.get_bind().dialect.name == "postgresql":
        return _charge_one_postgresql(db, charge)
    charged = charge_usage_batch(db, [charge])
    if charged:
        return charged[0][1]
    existing = _existing_entry(db, idempotency_key)
    assert existing is not None
    return existing


#: One usage charge on PostgreSQL in one statement: unless the key was charged before (``prior``), lock the
#: allocation, move its balance and state, append the entry, add to the daily and monthly rollups. It returns
#: the new entry's id and balance with the allocation's usage, state and previous state (the entry's other values
#: are the charge's own), or the earlier entry of the key, whole (a repeat: no lock taken, nothing written), or
#: nothing (no such allocation). ``locked`` takes the row lock first, so ``previous_state`` is the state this
#: charge found. A concurrent transaction that committed the same key while this one waited for the lock is not
#: seen by ``prior`` (the statement's snapshot is older) but by the unique index: the entry's INSERT fails, the
#: whole statement with it, and running it again replays the committed entry.
_CHARGE_ONE = """
    WITH prior AS (
        SELECT id, balance_after, allocation_id, kind, amount, actor_id, reason, created_at
        FROM ledger_entries WHERE idempotency_key = %(key)s
    ), locked AS (
        SELECT id, state AS previous_state FROM allocations
        WHERE id = %(allocation_id)s AND NOT EXISTS (SELECT FROM prior)
        FOR UPDATE
    ), moved AS (
        UPDATE allocations AS a
        SET balance = a.balance - %(amount)s,
            used = a.used + %(amount)s,
            state = CASE
                WHEN a.state IN ('expired', 'suspended',
                                 'awaiting_payment') THEN a.state
                WHEN a.balance - %(amount)s <= 0 AND a.credited > 0 THEN 'exhausted'
                WHEN a.starts_at > %(now)s THEN 'pending'
                ELSE 'active'
            END
        FROM locked
        WHERE a.id = locked.id
        RETURNING a.id, a.balance, a.used, a.state, locked.previous_state
    ), entry AS (
        INSERT INTO ledger_entries (allocation_id, kind, amount, balance_after, idempotency_key, actor_id, reason,
                                    created_at)
        SELECT id, 'usage', -%(amount)s, balance, %(key)s, NULL, %(reason)s, %(now)s FROM moved
        RETURNING id
    ), daily AS (
        INSERT INTO daily_usage (allocation_id, day, amount) SELECT id, %(day)s, %(amount)s FROM moved
        ON CONFLICT (allocation_id, day) DO UPDATE SET amount = daily_usage.amount + excluded.amount
    ), monthly AS (
        INSERT INTO report_usage_months (allocation_id, month, amount) SELECT id, %(month)s, %(amount)s FROM moved
        ON CONFLICT (allocation_id, month) DO UPDATE SET amount = report_usage_months.amount + excluded.amount
    )
    SELECT entry.id, moved.balance, moved.used, moved.state, moved.previous_state,
           NULL::integer, NULL::text, NULL::bigint, NULL::integer, NULL::text, NULL::timestamptz
    FROM entry, moved
    UNION ALL
    SELECT prior.id, prior.balance_after, NULL, NULL, NULL,
           prior.allocation_id, prior.kind, prior.amount, prior.actor_id, prior.reason, prior.created_at
    FROM prior
"""

_ALLOCATION = sa.inspect(Allocation)
_ENTRY = sa.inspect(LedgerEntry)


def _charge_one_postgresql(db: Session, charge: UsageCharge) -> LedgerEntry:
    """``charge_usage`` on PostgreSQL: the same rows as ``charge_usage_batch`` with one charge, written by
    ``_CHARGE_ONE`` as a prepared statement sent by the driver itself (SQLAlchemy's statement handling, the
    ORM's flush and building the entry through its constructor cost more CPU than the statement's work on the
    server). When the session has no transaction in progress, the statement runs alone on a connection from
    the engine's pool, in autocommit: a single statement is a transaction of its own, so the charge is one
    round trip (no BEGIN, no COMMIT) and the session is not involved. Otherwise it runs in the session's
    transaction, which it commits with the charge. The entry returned is detached, with all its values (adding
    it to the session would begin a transaction there); the allocation, when this session holds it, shows the
    new balance, usage and state."""
    now = utcnow()
    day = charge.day or now.date()
    params = {
        "allocation_id": charge.allocation_id,
        "amount": charge.amount,
        "key": charge.key,
        "reason": charge.reason,
        "now": now,
        "day": day,
        "month": rollups.month_of(day),
    }
    db.flush()  # what the caller left pending is committed with the charge, as by ``charge_usage_batch``
    bind = db.get_bind()
    alone = isinstance(bind, sa.Engine) and not db.in_transaction()
    dbapi = bind.dialect.loaded_dbapi
    for attempt in range(2):
        try:
            row = _execute_alone(bind, params) if alone else _execute_in_session(db, params)
            break
        except dbapi.IntegrityError as exc:
            # the key was charged by a concurrent transaction that committed first: run again, to replay it
            if attempt == 1:
                raise sa.exc.DBAPIError.instance(_CHARGE_ONE, params, exc, dbapi.Error) from exc
    if row is None:
        raise NotFound(Message(N_("No such allocation.")))
    entry_id, balance, used, state, previous, *earlier = row
    if state is None:  # the key was charged before: nothing changed
        allocation_id, kind, amount, actor_id, reason, created_at = earlier
        return _detached_entry(
            id=entry_id,
            allocation_id=allocation_id,
            kind=EntryKind(kind),
            amount=amount,
            balance_after=balance,
            idempotency_key=charge.key,
            actor_id=actor_id,
            reason=reason,
            created_at=created_at.astimezone(UTC),
        )
    entry = _detached_entry(
        id=entry_id,
        allocation_id=charge.allocation_id,
        kind=EntryKind.USAGE,
        amount=-charge.amount,
        balance_after=balance,
        idempotency_key=charge.key,
        actor_id=None,
        reason=charge.reason,
        created_at=now,
    )
    observability.ledger_entries_written(EntryKind.USAGE)
    allocation = db.identity_map.get(_ALLOCATION.identity_key_from_primary_key([charge.allocation_id]))
    if allocation is not None:
        set_committed_value(allocation, "balance", balance)
        set_committed_value(allocation, "used", used)
        set_committed_value(allocation, "state", AllocationState(state))
    if state == AllocationState.EXHAUSTED and previous != AllocationState.EXHAUSTED:
        exhausted = db.get(Allocation, charge.allocation_id, populate_existing=True)
        assert exhausted is not None
        _after_commit(exhausted, previous)
    return entry


def _detached_entry(**values: object) -> LedgerEntry:
    """A ledger entry that exists in the database, as the ORM builds a loaded row (no constructor, no
    validation), detached: ``db.add`` attaches it and never inserts it. Its identity key is set as
    ``make_transient_to_detached`` sets it, without that function's bookkeeping (a third of a charge's Python:
    it commits and expires attributes, and a new instance whose every column is given has none of either;
    ``LedgerEntry`` has no relationships to expire)."""
    if not _ENTRY.configured:
        sa.orm.configure_mappers()  # a process whose first ORM work is this charge
    entry = _ENTRY.class_manager.new_instance()
    entry.__dict__.update(values)
    instance_state(entry).key = _ENTRY.identity_key_from_primary_key((values["id"],))
    return entry


def _execute_alone(engine: sa.Engine, params: dict[str, object]) -> tuple | None:
    """``_CHARGE_ONE`` in autocommit on a pooled connection: one round trip, committed when it returns."""
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    try:
        driver.autocommit = True
        return driver.execute(_CHARGE_ONE, params, prepare=True).fetchone()
    except engine.dialect.loaded_dbapi.IntegrityError:
        raise
    except engine.dialect.loaded_dbapi.Error as exc:
        _raise_as_sqlalchemy(engine.dialect, pooled, driver, params, exc)
    finally:
        try:
            driver.autocommit = False  # as the pool hands connections out
        except engine.dialect.loaded_dbapi.Error as exc:
            pooled.invalidate(exc)  # it is still busy or broken (an interrupt): not for the next user
        pooled.close()


def _execute_in_session(db: Session, params: dict[str, object]) -> tuple | None:
    """``_CHARGE_ONE`` in the session's transaction, then the COMMIT; rolled back on any error."""
    connection = db.connection()
    driver = connection.connection.driver_connection
    try:
        row = driver.execute(_CHARGE_ONE, params, prepare=True).fetchone()
        driver.commit()
        db.commit()  # the session's side; the driver has committed
        return row
    except connection.dialect.loaded_dbapi.IntegrityError:
        db.rollback()
        raise
    except connection.dialect.loaded_dbapi.Error as exc:
        db.rollback()
        _raise_as_sqlalchemy(connection.dialect, connection, driver, params, exc)
    except BaseException:
        db.rollback()
        raise


def _raise_as_sqlalchemy(dialect, connection, driver, params: dict[str, object], exc: Exception) -> NoReturn:
    """Raise a driver's error as SQLAlchemy raises it (``OperationalError``: the web answers 503), with the
    pool told of a lost server."""
    lost = dialect.is_disconnect(exc, driver, None)
    if lost:
        connection.invalidate(exc)
    raise sa.exc.DBAPIError.instance(
        _CHARGE_ONE, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=lost
    ) from exc


KEY_CHUNK = 500


def charge_usage_batch(
    db: Session,
    charges: list[UsageCharge],
    *,
    record: Callable[[list[tuple[UsageCharge, LedgerEntry]]], None] | None = None,
) -> list[tuple[UsageCharge, LedgerEntry]]:
    """Charge many pieces of usage in one transaction; those whose key was charged before are skipped.

    ``record`` runs once inside the transaction with all the new charges and their entries (metering adds
    its usage records there), so charges and their records exist together or not at all. Returns the new
    charges with their entries.
    """
    for charge in charges:
        _validate_amount(charge.amount)
    for attempt in range(2):
        try:
            charged, touched = _charge_batch_once(db, charges, record)
            db.commit()
        except IntegrityError:
            # A concurrent transaction charged one of these keys first; the retry skips it.
            db.rollback()
            if attempt == 1:
                raise
            continue
        except BaseException:
            db.rollback()
            raise
        for allocation, previous in touched:
            _after_commit(allocation, previous)
        return charged
    raise AssertionError("unreachable")


def _charged_keys(db: Session, keys: list[str]) -> set[str]:
    """Which of ``keys`` already have a ledger entry, in a few look-ups on the unique index.

    On PostgreSQL the keys go as one array (``= ANY(:keys)``), not as an ``IN`` list of 500 parameters: the
    driver prepares statements it sees often, and without fresh statistics PostgreSQL's generic plan for
    such an ``IN`` list is a sequential scan comparing every row with every parameter (1.5 s a look-up at
    200,000 entries), kept until the next ANALYZE. The array's generic plan uses the unique index.
    """
    column = col(LedgerEntry.idempotency_key)
    postgres = db.get_bind().dialect.name == "postgresql"
    seen: set[str] = set()
    for i in range(0, len(keys), KEY_CHUNK):
        chunk = keys[i : i + KEY_CHUNK]
        condition = (
            column == sa.any_(sa.bindparam("keys", chunk, type_=postgresql.ARRAY(sa.String)))
            if postgres
            else column.in_(chunk)
        )
        seen.update(db.exec(select(LedgerEntry.idempotency_key).where(condition)).all())
    return seen


def _lock_allocations(db: Session, allocation_ids: list[int]) -> dict[int, Allocation]:
    """Lock the allocations in one statement, in id order (the order every locker uses), freshly loaded."""
    allocations = db.exec(
        select(Allocation)
        .where(col(Allocation.id).in_(allocation_ids))
        .order_by(col(Allocation.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    found = {a.id: a for a in allocations}
    if len(found) != len(set(allocation_ids)):
        raise NotFound(Message(N_("No such allocation.")))
    return found


def _charge_batch_once(
    db: Session,
    charges: list[UsageCharge],
    record: Callable[[list[tuple[UsageCharge, LedgerEntry]]], None] | None,
) -> tuple[list[tuple[UsageCharge, LedgerEntry]], list[tuple[Allocation, str]]]:
    unique: dict[str, UsageCharge] = {}
    for charge in charges:
        unique.setdefault(charge.key, charge)
    seen = _charged_keys(db, list(unique))
    new = [c for k, c in unique.items() if k not in seen]
    if not new:
        return [], []
    by_allocation: dict[int, list[UsageCharge]] = {}
    for charge in new:
        by_allocation.setdefault(charge.allocation_id, []).append(charge)
    ids = sorted(by_allocation)
    allocations = _lock_allocations(db, ids)
    table = Allocation.__table__
    now = utcnow()
    ordered: list[UsageCharge] = []
    rows: list[dict[str, object]] = []
    touched: list[tuple[Allocation, str]] = []
    moves: list[dict[str, int]] = []
    for allocation_id in ids:
        allocation = allocations[allocation_id]
        previous = allocation.state
        group = by_allocation[allocation_id]
        total = sum(c.amount for c in group)
        # The row is locked and was loaded after the lock, so its balance is the current one.
        running = allocation.balance
        moves.append({"allocation_id": allocation_id, "total": total})
        set_committed_value(allocation, "balance", allocation.balance - total)
        set_committed_value(allocation, "used", allocation.used + total)
        for charge in group:
            running -= charge.amount
            ordered.append(charge)
            rows.append(
                {
                    "allocation_id": allocation_id,
                    "kind": EntryKind.USAGE,
                    "amount": -charge.amount,
                    "balance_after": running,
                    "idempotency_key": charge.key,
                    "actor_id": None,
                    "reason": charge.reason,
                    "created_at": now,
                }
            )
        _update_state(db, allocation, flush=False)  # flushed with the batch's other writes
        touched.append((allocation, previous))
    # One executemany moves every balance by its total, relative to the row as every movement does.
    db.execute(
        sa.update(table)
        .where(table.c.id == sa.bindparam("allocation_id"))
        .values(balance=table.c.balance - sa.bindparam("total"), used=table.c.used + sa.bindparam("total")),
        moves,
    )
    charged = list(zip(ordered, _insert_entries(db, rows), strict=True))
    _add_daily_usage(db, ordered)
    if record is not None:
        record(charged)
        db.flush()
    return charged, touched


#: The columns ``_insert_entries`` sends to PostgreSQL as arrays, with their element types.
_ENTRY_ARRAYS = (
    ("allocation_id", sa.Integer),
    ("amount", sa.BigInteger),
    ("balance_after", sa.BigInteger),
    ("idempotency_key", sa.String),
    ("reason", sa.String),
)


def _insert_entries(db: Session, rows: list[dict[str, object]]) -> list[LedgerEntry]:
    """Insert usage entries (all of the same ``kind`` and ``created_at``, without actor) in one statement;
    the entries in the rows' order, their ids ascending in that order.

    On PostgreSQL the rows travel as one array per column (``INSERT ... SELECT FROM unnest(...) WITH
    ORDINALITY ... ORDER BY``), which costs a fraction of a multi-row VALUES list of the same rows.
    """
    observability.ledger_entries_written(rows[0]["kind"], len(rows))
    if db.get_bind().dialect.name != "postgresql":
        return list(db.scalars(sa.insert(LedgerEntry).returning(LedgerEntry, sort_by_parameter_order=True), rows))
    table = LedgerEntry.__table__
    names = [name for name, _element in _ENTRY_ARRAYS]
    arrays = [
        sa.bindparam(name, [row[name] for row in rows], type_=postgresql.ARRAY(element))
        for name, element in _ENTRY_ARRAYS
    ]
    source = sa.func.unnest(*arrays).table_valued(*names, with_ordinality="n").render_derived()
    constants = [
        sa.literal(rows[0]["kind"], table.c.kind.type),
        sa.literal(rows[0]["created_at"], table.c.created_at.type),
    ]
    statement = (
        sa.insert(LedgerEntry)
        .from_select(
            [*names, "kind", "created_at"],
            sa.select(*(source.c[name] for name in names), *constants).order_by(source.c.n),
        )
        .returning(LedgerEntry)
    )
    by_key = {entry.idempotency_key: entry for entry in db.scalars(statement)}
    return [by_key[row["idempotency_key"]] for row in rows]


def _add_daily_usage(db: Session, charges: list[UsageCharge]) -> None:
    """Add charges to the per-day aggregates with one upsert per (allocation, day), executed as one batch
    (atomic on SQLite and PostgreSQL), in key order."""
    today = utcnow().date()
    totals: dict[tuple[int, date], int] = {}
    for charge in charges:
        key = (charge.allocation_id, charge.day or today)
        totals[key] = totals.get(key, 0) + charge.amount
    if not totals:
        return
    rows = [{"allocation_id": a, "day": d, "amount": amount} for (a, d), amount in sorted(totals.items())]
    add_to_sums(db, DailyUsage.__table__, ("allocation_id", "day"), ("amount",), rows)
    rollups.add_usage(db, totals)  # the monthly rollup beside it, same transaction
