"""The posting primitives every ledger movement goes through: locks, one entry with its balance move,
the transaction and idempotency rules (``unit_of_work``, ``_once``), the state after a move."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from portal import observability
from portal.db import utcnow
from portal.errors import InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger.models import (
    CREDIT_KINDS,
    Allocation,
    AllocationState,
    EntryKind,
    LedgerEntry,
    Resource,
    ResourceKind,
)
from portal.ledger.services.enforcement import (
    enforce_exhaustion,
)
from portal.ledger.services.errors import (
    NOT_ENOUGH_LEFT,
    InsufficientBalance,
)
from portal.messages import N_, Amount, Message

T = TypeVar("T")


def _lock_allocation(db: Session, allocation_id: int) -> Allocation:
    allocation = db.exec(select(Allocation).where(Allocation.id == allocation_id).with_for_update()).first()
    if allocation is None:
        raise NotFound(Message(N_("No such allocation.")))
    return allocation


def _existing_entry(db: Session, key: str | None) -> LedgerEntry | None:
    if key is None:
        return None
    return db.exec(select(LedgerEntry).where(LedgerEntry.idempotency_key == key)).first()


def _move(
    db: Session,
    allocation: Allocation,
    kind: EntryKind,
    amount: int,
    *,
    key: str | None,
    actor: User | None,
    reason: str = "",
    floor: int | None = None,
) -> LedgerEntry:
    """Append one entry and move the balance by ``amount`` in the same statement order, atomically.

    With ``floor`` the balance must stay at or above it, otherwise ``InsufficientBalance``.
    """
    table = Allocation.__table__
    values: dict[str, object] = {"balance": table.c.balance + amount}
    if kind in CREDIT_KINDS:
        values["credited"] = table.c.credited + amount
    if kind == EntryKind.USAGE:
        values["used"] = table.c.used - amount
    condition = table.c.id == allocation.id
    if floor is not None:
        condition = sa.and_(condition, table.c.balance + amount >= floor)
    row = db.execute(sa.update(table).where(condition).values(**values).returning(table.c.balance)).first()
    if row is None:
        kind = _kind(db, allocation)
        raise InsufficientBalance(
            Message(
                NOT_ENOUGH_LEFT,
                balance=Amount(allocation.balance, kind),
                asked=Amount(-amount, kind),
            )
        )
    entry = LedgerEntry(
        allocation_id=allocation.id,
        kind=kind,
        amount=amount,
        balance_after=int(row[0]),
        idempotency_key=key,
        actor_id=actor.id if actor else None,
        reason=reason,
    )
    db.add(entry)
    db.flush()
    db.refresh(allocation)
    observability.ledger_entries_written(kind)
    return entry


def _kind(db: Session, allocation: Allocation) -> ResourceKind:
    resource = db.get(Resource, allocation.resource_id)
    assert resource is not None
    return resource.kind


def _begin_sqlite_transaction(db: Session) -> None:
    """pysqlite starts a transaction only before a data-changing statement, not before a SAVEPOINT, so a unit
    whose first write is a ledger call's savepoint would be committed when that savepoint is released. On
    SQLite the unit therefore begins its transaction itself: IMMEDIATE, taking the write lock at once (waiting
    up to the connection's timeout), so its reads cannot go stale before its writes."""
    connection = db.connection()
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        raw.execute("BEGIN IMMEDIATE")


@contextmanager
def unit_of_work(db: Session) -> Iterator[None]:
    """Make several ledger calls (and the caller's own writes) one transaction, committed at the end.

    Inside it, ledger functions do not commit; each runs in a savepoint, so a replayed idempotency key
    or a refusal undoes only that call's part until the caller decides. Any exception rolls back all.
    """
    depth = db.info.get("ledger_unit_depth", 0)
    if depth == 0:
        _begin_sqlite_transaction(db)
    db.info["ledger_unit_depth"] = depth + 1
    try:
        yield
        if depth == 0:
            db.commit()
    except BaseException:
        if depth == 0:
            db.rollback()
        raise
    finally:
        db.info["ledger_unit_depth"] = depth


def _in_unit(db: Session) -> bool:
    return bool(db.info.get("ledger_unit_depth"))


def _once(db: Session, key: str | None, work: Callable[[], T], replay: Callable[[LedgerEntry], T]) -> T:
    """Run ``work`` and commit, as one transaction. A key seen before (now, or by a concurrent
    transaction that committed first) replays the earlier result instead; a domain error rolls back.
    Inside ``unit_of_work`` the same happens in a savepoint and the commit is left to the unit."""
    existing = _existing_entry(db, key)
    if existing is not None:
        if not _in_unit(db):
            db.rollback()
        return replay(existing)
    if _in_unit(db):
        try:
            with db.begin_nested():
                return work()
        except IntegrityError:
            existing = _existing_entry(db, key)
            if existing is None:
                raise
            return replay(existing)
    try:
        result = work()
        db.commit()
        return result
    except IntegrityError:
        db.rollback()
        existing = _existing_entry(db, key)
        if existing is None:
            raise
        return replay(existing)
    except BaseException:
        db.rollback()
        raise


def _after_commit(allocation: Allocation, previous_state: str) -> None:
    if allocation.state == AllocationState.EXHAUSTED and previous_state != AllocationState.EXHAUSTED:
        enforce_exhaustion(allocation)


#: More base units than any resource offers in centuries, yet small enough that sums of them fit the ledger's
#: 64-bit columns: a larger amount is garbage, refused before it reaches a query.
LARGEST_AMOUNT = 2**53


#: What an amount a ledger call checks is, in the words of its refusals: (not positive, too large), by field name.
_AMOUNT_REFUSALS = {
    "amount": (
        N_("The amount must be a positive whole number."),
        N_("The amount is more than any resource has."),
    ),
    "held_for_later": (
        N_("The hours held for later must be a positive whole number."),
        N_("The hours held for later are more than any resource has."),
    ),
}


def _validate_amount(amount: int, what: str = "amount") -> None:
    """Refuses an amount that is not a positive whole number of base units, or is garbage-large; ``what`` is the
    field it came from (a key of ``_AMOUNT_REFUSALS``), which the refusal names."""
    not_positive, too_large = _AMOUNT_REFUSALS[what]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidInput(Message(not_positive), errors={what: Message(N_("Must be positive."))})
    if amount > LARGEST_AMOUNT:
        raise InvalidInput(Message(too_large), errors={what: Message(N_("Far too large."))})


def _update_state(db: Session, allocation: Allocation, *, flush: bool = True) -> None:
    now = utcnow()
    if allocation.state in (AllocationState.EXPIRED, AllocationState.SUSPENDED, AllocationState.AWAITING_PAYMENT):
        return
    if allocation.balance <= 0 and allocation.credited > 0:
        allocation.state = AllocationState.EXHAUSTED
    elif allocation.starts_at > now:
        allocation.state = AllocationState.PENDING
    else:
        allocation.state = AllocationState.ACTIVE
    if flush:
        db.flush()
