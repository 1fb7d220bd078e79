"""The ledger: the only code that writes allocations, ledger entries and capacity reservations.

Every function is one transaction that either happens completely or not at all. Balances and reserved
capacity change through single SQL ``UPDATE ... SET x = x + :delta`` statements (atomic on SQLite and
PostgreSQL alike) after the rows are locked with ``SELECT ... FOR UPDATE`` on PostgreSQL, so concurrent
calls never lose an update, and capacity checks sit in the UPDATE's WHERE clause, so nothing is ever
oversold. A movement with an ``idempotency_key`` happens at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, func, select

from portal import observability
from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, require
from portal.db import add_to_sums, utcnow
from portal.errors import Conflict, InvalidInput, NotFound
from portal.formatting import quantity
from portal.identity.models import User
from portal.ledger import rollups
from portal.ledger.models import (
    CREDIT_KINDS,
    DEBIT_KINDS,
    Allocation,
    AllocationSource,
    AllocationState,
    CapacityPeriod,
    CapacityReservation,
    DailyUsage,
    EntryKind,
    LedgerEntry,
    Resource,
    ResourceKind,
    Site,
)
from portal.projects.models import Project

log = logging.getLogger("portal.ledger")
T = TypeVar("T")


class CapacityExhausted(Conflict):
    """A resource's capacity (× its overbooking factor) cannot hold the requested amount."""

    title = "Capacity exhausted"


class NoCapacityPlanned(Conflict):
    """Part of the requested dates has no capacity period for the resource."""

    title = "No capacity planned"


class InsufficientBalance(Conflict):
    title = "Insufficient balance"


class AllocationClosed(Conflict):
    """The allocation is expired or suspended and takes no new movements of this kind."""

    title = "Allocation closed"


#: Called after a commit that left an allocation exhausted (notebooks stop sessions, Slurm holds accounts).
EnforcementHook = Callable[[Allocation], None]
ENFORCEMENT_HOOKS: dict[str, EnforcementHook] = {}


def register_enforcement_hook(name: str, hook: EnforcementHook | None) -> None:
    """Install (or, with None, remove) the hook called ``name``; installing again replaces it."""
    if hook is None:
        ENFORCEMENT_HOOKS.pop(name, None)
    else:
        ENFORCEMENT_HOOKS[name] = hook


def _lock_allocation(db: Session, allocation_id: int) -> Allocation:
    allocation = db.exec(select(Allocation).where(Allocation.id == allocation_id).with_for_update()).first()
    if allocation is None:
        raise NotFound("No such allocation.")
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
    table = Allocation.__table__  # type: ignore[attr-defined]
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
            f"The allocation has {quantity(allocation.balance, kind)} left; {quantity(-amount, kind)} were asked for."
        )
    entry = LedgerEntry(
        allocation_id=allocation.id,  # type: ignore[arg-type]
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
        for hook in list(ENFORCEMENT_HOOKS.values()):
            try:
                hook(allocation)
            except Exception:
                log.exception("enforcement hook %r failed for allocation %s", hook, allocation.id)


# --- capacity -------------------------------------------------------------------------------------------


_MICROSECOND = timedelta(microseconds=1)


def _as_datetime(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _split_over_periods(
    periods: list[CapacityPeriod], starts_at: datetime, ends_at: datetime, amount: int
) -> list[tuple[CapacityPeriod, int]]:
    """Divide ``amount`` over the periods in proportion to how much of [starts_at, ends_at) each covers."""
    overlaps = []
    for period in periods:
        start = max(starts_at, _as_datetime(period.starts_on))
        end = min(ends_at, _as_datetime(period.ends_on))
        overlap = (end - start) // _MICROSECOND  # exact, whatever fractions of a second the dates carry
        if overlap > 0:
            overlaps.append((period, overlap))
    total = sum(s for _, s in overlaps)
    covered = total == (ends_at - starts_at) // _MICROSECOND
    if not overlaps or not covered:
        raise NoCapacityPlanned(
            "No capacity is planned for the whole of these dates; ask the site to plan its capacity first."
        )
    shares = [(period, amount * seconds // total) for period, seconds in overlaps]
    remainder = amount - sum(share for _, share in shares)
    last_period, last_share = shares[-1]
    shares[-1] = (last_period, last_share + remainder)
    return shares


def _periods_for(db: Session, resource_id: int, starts_at: datetime, ends_at: datetime) -> list[CapacityPeriod]:
    return list(
        db.exec(
            select(CapacityPeriod)
            .where(
                CapacityPeriod.resource_id == resource_id,
                col(CapacityPeriod.starts_on) < ends_at.date() + timedelta(days=1),
                col(CapacityPeriod.ends_on) > starts_at.date(),
            )
            .order_by(CapacityPeriod.starts_on)
        )
    )


def reserve_capacity(db: Session, allocation: Allocation, amount: int) -> None:
    """Reserve ``amount`` of the allocation's resource over its dates, or raise ``CapacityExhausted``.

    Runs inside the caller's transaction; the check and the increment are one conditional UPDATE per
    period, so concurrent reservations can never together exceed capacity × overbooking.
    """
    if amount <= 0:
        return
    resource = db.get(Resource, allocation.resource_id)
    assert resource is not None
    periods = _periods_for(db, resource.id, allocation.starts_at, allocation.ends_at)  # type: ignore[arg-type]
    table = CapacityPeriod.__table__  # type: ignore[attr-defined]
    resources = Resource.__table__  # type: ignore[attr-defined]
    # read in the statement itself, so a factor changed by someone else a moment ago counts
    overbooking = sa.select(resources.c.overbooking_permille).where(resources.c.id == resource.id).scalar_subquery()
    for period, share in _split_over_periods(periods, allocation.starts_at, allocation.ends_at, amount):
        if share == 0:
            continue
        result = db.execute(
            sa.update(table)
            .where(
                table.c.id == period.id,
                (table.c.reserved + share) * 1000 <= table.c.capacity * overbooking,
            )
            .values(reserved=table.c.reserved + share)
        )
        if result.rowcount != 1:
            raise CapacityExhausted(
                f"{resource.name} has not enough capacity left between {period.starts_on} and "
                f"{period.ends_on}: {share // resource.per_display_unit} {resource.display_unit}s are needed."
            )
        reservation = db.exec(
            select(CapacityReservation).where(
                CapacityReservation.allocation_id == allocation.id, CapacityReservation.period_id == period.id
            )
        ).first()
        if reservation is None:
            db.add(CapacityReservation(allocation_id=allocation.id, period_id=period.id, amount=share))  # type: ignore[arg-type]
        else:
            reservation.amount += share
    _bump_reserved(db, allocation, amount)


def _bump_reserved(db: Session, allocation: Allocation, delta: int) -> None:
    table = Allocation.__table__  # type: ignore[attr-defined]
    db.execute(sa.update(table).where(table.c.id == allocation.id).values(reserved=table.c.reserved + delta))
    db.flush()


def release_capacity(db: Session, allocation: Allocation, amount: int) -> int:
    """Give back up to ``amount`` of the allocation's reserved capacity, latest periods first."""
    reservations = db.exec(
        select(CapacityReservation, CapacityPeriod)
        .join(CapacityPeriod, CapacityPeriod.id == CapacityReservation.period_id)  # type: ignore[arg-type]
        .where(CapacityReservation.allocation_id == allocation.id)
        .order_by(col(CapacityPeriod.starts_on).desc())
    ).all()
    table = CapacityPeriod.__table__  # type: ignore[attr-defined]
    left = amount
    for reservation, period in reservations:
        if left <= 0:
            break
        part = min(left, reservation.amount)
        if part <= 0:
            continue
        reservation.amount -= part
        db.execute(sa.update(table).where(table.c.id == period.id).values(reserved=table.c.reserved - part))
        left -= part
    released = amount - left
    _bump_reserved(db, allocation, -released)
    return released


# --- allocations -----------------------------------------------------------------------------------------


#: More base units than any resource offers in centuries, yet small enough that sums of them fit the ledger's
#: 64-bit columns: a larger amount is garbage, refused before it reaches a query.
LARGEST_AMOUNT = 2**53


def _validate_amount(amount: int, what: str = "amount") -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidInput(f"The {what} must be a positive whole number.", errors={what: "Must be positive."})
    if amount > LARGEST_AMOUNT:
        raise InvalidInput(f"The {what} is more than any resource has.", errors={what: "Far too large."})


def open_allocation(
    db: Session,
    actor: User | None,
    *,
    project: Project,
    resource: Resource,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    source: AllocationSource,
    title: str,
    idempotency_key: str | None = None,
    reason: str = "",
    held_for_later: int = 0,
) -> Allocation:
    """Create an allocation holding ``amount`` base units, reserving capacity; all or nothing.

    ``held_for_later``: capacity reserved now, over the same dates, for hours credited later with
    ``credit(..., capacity_held=True)`` (an award's second tranche), so that crediting them can never fail
    for capacity. ``actor`` None means a trusted caller in the portal (an award decision, a paid order); a
    person opening an allocation by hand must be an admin.
    """
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    _validate_amount(amount)
    if held_for_later:
        _validate_amount(held_for_later, "held_for_later")
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidInput("Allocation dates must be timezone-aware.")
    if ends_at <= starts_at:
        raise InvalidInput("The allocation must end after it starts.", errors={"ends_at": "Before the start."})
    first, last = PLANNING_YEARS
    if not (first <= starts_at.year and ends_at.year <= last):
        message = f"An allocation runs between {first} and {last}."
        raise InvalidInput(message, errors={"ends_at": message})
    kind = {
        AllocationSource.AWARD: EntryKind.AWARD,
        AllocationSource.PURCHASE: EntryKind.PURCHASE,
        AllocationSource.COURSE: EntryKind.COURSE_SHARE,
        AllocationSource.TRANSFER: EntryKind.TRANSFER_IN,
        AllocationSource.ADMIN: EntryKind.ADJUSTMENT,
    }[source]

    def work() -> Allocation:
        now = utcnow()
        allocation = Allocation(
            project_id=project.id,  # type: ignore[arg-type]
            resource_id=resource.id,  # type: ignore[arg-type]
            source=source,
            state=AllocationState.ACTIVE if starts_at <= now else AllocationState.PENDING,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or resource.name,
        )
        db.add(allocation)
        db.flush()
        reserve_capacity(db, allocation, amount + held_for_later)
        _move(db, allocation, kind, amount, key=idempotency_key, actor=actor, reason=reason)
        if actor is not None:  # by hand; awards and purchases are audited where they are decided
            summary = f"opened with {quantity(amount, resource.kind)} for project {project.id}"
            audit.record(db, actor, AuditAction.ALLOCATION_OPENED, allocation, summary=summary, reason=reason)
        return allocation

    return _once(db, idempotency_key, work, lambda e: db.get(Allocation, e.allocation_id))  # type: ignore[arg-type,return-value]


def credit(
    db: Session,
    actor: User | None,
    allocation_id: int,
    amount: int,
    *,
    kind: EntryKind,
    idempotency_key: str | None = None,
    reason: str = "",
    capacity_held: bool = False,
) -> LedgerEntry:
    """Add ``amount`` to an allocation (award tranche, purchase, course share), reserving capacity; with
    ``capacity_held`` the capacity was reserved when the allocation opened (``held_for_later``)."""
    if kind not in CREDIT_KINDS:
        raise InvalidInput(f"{kind} is not a credit.")
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            raise AllocationClosed("This allocation has expired; open a new one instead.")
        if not capacity_held:
            reserve_capacity(db, allocation, amount)
        entry = _move(db, allocation, kind, amount, key=idempotency_key, actor=actor, reason=reason)
        _update_state(db, allocation)
        return entry

    return _once(db, idempotency_key, work, lambda e: e)


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
    charge = UsageCharge(allocation_id, amount, idempotency_key, reason)
    charged = charge_usage_batch(db, [charge])
    if charged:
        return charged[0][1]
    existing = _existing_entry(db, idempotency_key)
    assert existing is not None
    return existing


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
        seen.update(db.exec(select(LedgerEntry.idempotency_key).where(condition)).all())  # type: ignore[arg-type]
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
        raise NotFound("No such allocation.")
    return found  # type: ignore[return-value]


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
    table = Allocation.__table__  # type: ignore[attr-defined]
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
    table = LedgerEntry.__table__  # type: ignore[attr-defined]
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
    return [by_key[row["idempotency_key"]] for row in rows]  # type: ignore[index]


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
    add_to_sums(db, DailyUsage.__table__, ("allocation_id", "day"), ("amount",), rows)  # type: ignore[attr-defined]
    rollups.add_usage(db, totals)  # the monthly rollup beside it, same transaction


def transfer(
    db: Session, actor: User, *, from_id: int, to_id: int, amount: int, idempotency_key: str | None = None
) -> tuple[LedgerEntry, LedgerEntry]:
    """Move unused hours between two allocations of the same project and resource."""
    _validate_amount(amount)
    if from_id == to_id:
        raise InvalidInput("Choose two different allocations.")
    out_key = f"{idempotency_key}:out" if idempotency_key else None
    in_key = f"{idempotency_key}:in" if idempotency_key else None

    def work() -> tuple[LedgerEntry, LedgerEntry]:
        first, second = sorted((from_id, to_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        source, target = locked[from_id], locked[to_id]
        require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, source.project_id))
        if source.project_id != target.project_id or source.resource_id != target.resource_id:
            raise InvalidInput("Hours move only between allocations of the same project and resource.")
        if AllocationState.EXPIRED in (source.state, target.state) or target.state == AllocationState.SUSPENDED:
            raise AllocationClosed("Expired or suspended allocations take no transfers.")
        out = _move(
            db,
            source,
            EntryKind.TRANSFER_OUT,
            -amount,
            actor=actor,
            floor=0,
            key=out_key,
            reason=f"to allocation {target.id}",
        )
        release_capacity(db, source, amount)
        reserve_capacity(db, target, amount)
        incoming = _move(
            db, target, EntryKind.TRANSFER_IN, amount, actor=actor, key=in_key, reason=f"from allocation {source.id}"
        )
        _update_state(db, source)
        _update_state(db, target)
        return out, incoming

    return _once(db, out_key, work, lambda e: (e, _existing_entry(db, in_key)))  # type: ignore[arg-type,return-value]


def release_to_pool(db: Session, actor: User, allocation_id: int, amount: int) -> LedgerEntry:
    """Give unused hours back to the site's pool: the balance and the reserved capacity shrink."""
    return _take_back_unused(
        db,
        allocation_id,
        amount,
        kind=EntryKind.RELEASE,
        key=None,
        actor=actor,
        reason="unused hours given back to the pool",
    )


def _take_back_unused(
    db: Session,
    allocation_id: int,
    amount: int,
    *,
    kind: EntryKind,
    key: str | None,
    actor: User | None,
    reason: str,
) -> LedgerEntry:
    """Debit unused hours (never below zero) and free their capacity; ``actor`` must manage the project."""
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, allocation.project_id))
        entry = _move(db, allocation, kind, -amount, key=key, actor=actor, floor=0, reason=reason)
        release_capacity(db, allocation, min(amount, allocation.reserved))
        _update_state(db, allocation)
        return entry

    return _once(db, key, work, lambda e: e)


def adjust(db: Session, actor: User, allocation_id: int, amount: int, *, reason: str) -> LedgerEntry:
    """An admin's correction, positive or negative, with a mandatory reason."""
    require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    if not isinstance(amount, int) or amount == 0:
        raise InvalidInput("The adjustment must be a non-zero whole number.", errors={"amount": "Not zero."})
    touched: list[tuple[Allocation, str]] = []

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        touched.append((allocation, allocation.state))
        if amount > 0:
            reserve_capacity(db, allocation, amount)
        else:
            release_capacity(db, allocation, min(-amount, allocation.reserved))
        entry = _move(db, allocation, EntryKind.ADJUSTMENT, amount, key=None, actor=actor, reason=reason)
        _update_state(db, allocation)
        summary = f"balance {'+' if amount > 0 else '-'}{quantity(abs(amount), _kind(db, allocation))}"
        details = {"amount": amount, "balance_after": entry.balance_after, "ledger_entry_id": entry.id}
        audit.record(
            db, actor, AuditAction.ALLOCATION_ADJUSTED, allocation, summary=summary, reason=reason, details=details
        )
        return entry

    entry = _once(db, None, work, lambda e: e)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return entry


def expire(db: Session, allocation_id: int, *, now: datetime | None = None) -> LedgerEntry | None:
    """Close an allocation past its end: the remaining balance is debited and its capacity released."""
    now = now or utcnow()

    def work() -> LedgerEntry | None:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED or allocation.ends_at > now:
            return None
        entry = None
        if allocation.balance > 0:
            entry = _move(
                db,
                allocation,
                EntryKind.EXPIRY,
                -allocation.balance,
                key=f"expiry:{allocation.id}",
                actor=None,
                reason="the allocation's end date has passed",
            )
        release_capacity(db, allocation, allocation.reserved)
        allocation.state = AllocationState.EXPIRED
        return entry

    return _once(db, None, work, lambda e: e)


# --- courses ---------------------------------------------------------------------------------------------


def share_to_course(
    db: Session,
    actor: User | None,
    *,
    parent_id: int,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    title: str,
    idempotency_key: str | None = None,
) -> Allocation:
    """Carve a course allocation (source ``course``) out of ``parent_id``: ``amount`` leaves the parent's
    balance and opens a new allocation of the same project and resource over the course's term.

    Capacity-neutral: the parent's reservation already holds these hours, so nothing is reserved or
    released; ``return_course_hours`` gives the unused part back. ``actor`` must manage the parent's project.
    """
    _validate_amount(amount)
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise InvalidInput("Course dates must be timezone-aware.")
    if ends_at <= starts_at:
        raise InvalidInput("The course must end after it starts.", errors={"ends_on": "Before the start."})
    out_key = f"{idempotency_key}:out" if idempotency_key else None
    in_key = f"{idempotency_key}:in" if idempotency_key else None
    touched: list[tuple[Allocation, str]] = []

    def work() -> Allocation:
        parent = _lock_allocation(db, parent_id)
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
        if parent.source == AllocationSource.COURSE:
            raise InvalidInput("A course's hours cannot fund another course.", errors={"allocation_id": "A course's."})
        if parent.state not in (AllocationState.ACTIVE, AllocationState.PENDING):
            raise AllocationClosed(f"The allocation {parent.title!r} is {parent.state}; it cannot fund a course.")
        if starts_at < parent.starts_at or ends_at > parent.ends_at:
            raise InvalidInput(
                f"The course's term must lie within the allocation's dates ({parent.starts_at:%Y-%m-%d} to "
                f"{parent.ends_at:%Y-%m-%d}).",
                errors={"ends_on": "Outside the allocation's dates."},
            )
        touched.append((parent, parent.state))
        course = Allocation(
            project_id=parent.project_id,
            resource_id=parent.resource_id,
            source=AllocationSource.COURSE,
            state=AllocationState.ACTIVE if starts_at <= utcnow() else AllocationState.PENDING,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or parent.title,
        )
        db.add(course)
        db.flush()
        reason = f"to course allocation {course.id}"
        _move(db, parent, EntryKind.TRANSFER_OUT, -amount, key=out_key, actor=actor, floor=0, reason=reason)
        reason = f"from allocation {parent.id}"
        _move(db, course, EntryKind.COURSE_SHARE, amount, key=in_key, actor=actor, reason=reason)
        _update_state(db, parent)
        return course

    def replay(entry: LedgerEntry) -> Allocation:
        incoming = _existing_entry(db, in_key)
        assert incoming is not None
        return db.get(Allocation, incoming.allocation_id)  # type: ignore[return-value]

    course = _once(db, out_key, work, replay)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return course


def top_up_course(
    db: Session, actor: User | None, *, parent_id: int, course_allocation_id: int, amount: int, reason: str
) -> LedgerEntry:
    """Move ``amount`` more from the parent allocation into its course allocation (a raised student cap)."""
    _validate_amount(amount)
    touched: list[tuple[Allocation, str]] = []

    def work() -> LedgerEntry:
        first, second = sorted((parent_id, course_allocation_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        parent, course = locked[parent_id], locked[course_allocation_id]
        if actor is not None:
            require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
        if course.source != AllocationSource.COURSE or course.resource_id != parent.resource_id:
            raise InvalidInput("Hours move only from an allocation into its own course's allocation.")
        if AllocationState.EXPIRED in (parent.state, course.state) or parent.state == AllocationState.SUSPENDED:
            raise AllocationClosed("Expired or suspended allocations take no transfers.")
        touched.append((parent, parent.state))
        _move(db, parent, EntryKind.TRANSFER_OUT, -amount, key=None, actor=actor, floor=0, reason=reason)
        entry = _move(db, course, EntryKind.COURSE_SHARE, amount, key=None, actor=actor, reason=reason)
        _update_state(db, parent)
        _update_state(db, course)
        return entry

    entry = _once(db, None, work, lambda e: e)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return entry


def return_course_hours(
    db: Session, course_allocation_id: int, parent_id: int, *, now: datetime | None = None, keep: int = 0
) -> int:
    """Give a course allocation's unused balance back to the parent allocation (or, when the parent has ended
    meanwhile, let it expire). Returns the base units given back.

    ``keep`` > 0: that much stays for charges still to come (hours promised to notebooks that have not
    stopped); only the rest goes back and the course allocation stays open for those charges. ``keep`` 0:
    the course allocation closes (expired). A balance below zero then (usage beyond what it held) is settled
    from the parent allocation with a recorded reason, so the teacher's hours always add up: what left the
    parent = what the students used + what came back. Idempotent: a closed course allocation moves nothing
    again, and a repeated partial return finds nothing above ``keep``, so two workers may both try."""
    now = now or utcnow()
    if not isinstance(keep, int) or keep < 0:
        raise InvalidInput("What a course keeps is zero or more.")
    touched: list[tuple[Allocation, str]] = []

    def work() -> int:
        first, second = sorted((parent_id, course_allocation_id))
        locked = {first: _lock_allocation(db, first), second: _lock_allocation(db, second)}
        parent, course = locked[parent_id], locked[course_allocation_id]
        if course.source != AllocationSource.COURSE:
            raise InvalidInput("Only a course allocation is closed this way.")
        if course.state == AllocationState.EXPIRED:
            return 0
        touched.append((parent, parent.state))
        amount = max(course.balance - keep, 0)
        returned = 0
        key = None if keep else f"course-return:{course.id}"
        kept = f" ({quantity(keep, _kind(db, course))} kept for running notebooks)" if keep else ""
        if amount and parent.state != AllocationState.EXPIRED and parent.ends_at > now:
            reason = f"unused course hours back to allocation {parent.id}{kept}"
            _move(db, course, EntryKind.TRANSFER_OUT, -amount, key=key and f"{key}:out", actor=None, reason=reason)
            reason = f"unused hours of course allocation {course.id}{kept}"
            _move(db, parent, EntryKind.TRANSFER_IN, amount, key=key and f"{key}:in", actor=None, reason=reason)
            _update_state(db, parent)
            returned = amount
        elif amount:
            reason = "the course ended after its parent allocation"
            _move(db, course, EntryKind.EXPIRY, -amount, key=key and f"{key}:expiry", actor=None, reason=reason)
        if keep:
            _update_state(db, course)
            return returned
        if course.balance < 0:
            overdraft = -course.balance
            reason = f"usage of course allocation {course.id} beyond its hours, settled from allocation {parent.id}"
            _move(db, parent, EntryKind.TRANSFER_OUT, -overdraft, key=f"{key}:settle-out", actor=None, reason=reason)
            reason = f"usage beyond the course's hours, settled from allocation {parent.id}"
            _move(db, course, EntryKind.COURSE_SHARE, overdraft, key=f"{key}:settle-in", actor=None, reason=reason)
            _update_state(db, parent)
        release_capacity(db, course, course.reserved)
        course.state = AllocationState.EXPIRED
        db.flush()
        return returned

    returned = _once(db, None, work, lambda e: 0)
    for allocation, previous in touched:
        _after_commit(allocation, previous)
    return returned


# --- purchases -------------------------------------------------------------------------------------------


def hold_for_purchase(
    db: Session,
    *,
    project: Project,
    resource: Resource,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    title: str,
) -> Allocation:
    """Reserve capacity for an order before it is paid: an allocation awaiting payment, with no hours yet."""
    _validate_amount(amount)

    def work() -> Allocation:
        allocation = Allocation(
            project_id=project.id,  # type: ignore[arg-type]
            resource_id=resource.id,  # type: ignore[arg-type]
            source=AllocationSource.PURCHASE,
            state=AllocationState.AWAITING_PAYMENT,
            starts_at=starts_at,
            ends_at=ends_at,
            title=title.strip()[:200] or resource.name,
        )
        db.add(allocation)
        db.flush()
        reserve_capacity(db, allocation, amount)
        return allocation

    return _once(db, None, work, lambda e: e)  # type: ignore[arg-type,return-value]


def fulfil_purchase(
    db: Session, allocation_id: int, amount: int, *, idempotency_key: str, reason: str = ""
) -> LedgerEntry:
    """Credit a paid purchase, once per key. Its capacity is already held; if the hold was released (a
    late payment after the checkout expired) it is reserved again, or ``CapacityExhausted``."""
    _validate_amount(amount)

    def work() -> LedgerEntry:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            if allocation.ends_at <= utcnow():
                raise AllocationClosed("The purchase's validity ended before it was paid.")
            reserve_capacity(db, allocation, amount)
        elif allocation.state != AllocationState.AWAITING_PAYMENT:
            raise AllocationClosed("This purchase has been paid already.")
        entry = _move(db, allocation, EntryKind.PURCHASE, amount, key=idempotency_key, actor=None, reason=reason)
        allocation.state = AllocationState.ACTIVE
        _update_state(db, allocation)
        return entry

    return _once(db, idempotency_key, work, lambda e: e)


def release_purchase_hold(db: Session, allocation_id: int) -> bool:
    """The checkout expired or was cancelled: give the held capacity back. True if a hold was released."""

    def work() -> bool:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state != AllocationState.AWAITING_PAYMENT:
            return False
        release_capacity(db, allocation, allocation.reserved)
        allocation.state = AllocationState.EXPIRED
        return True

    return _once(db, None, work, lambda e: e)  # type: ignore[arg-type,return-value]


def refund_unused(db: Session, allocation_id: int, amount: int, *, idempotency_key: str, reason: str) -> LedgerEntry:
    """Debit refunded hours (never more than the unused balance) and free their capacity, once per key."""
    return _take_back_unused(
        db, allocation_id, amount, kind=EntryKind.REFUND, key=idempotency_key, actor=None, reason=reason
    )


def set_suspended(db: Session, actor: User, allocation_id: int, suspended: bool, *, reason: str) -> Allocation:
    require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)

    def work() -> Allocation:
        allocation = _lock_allocation(db, allocation_id)
        if allocation.state == AllocationState.EXPIRED:
            raise AllocationClosed("This allocation has expired.")
        before = allocation.state
        if suspended:
            allocation.state = AllocationState.SUSPENDED
        else:
            allocation.state = AllocationState.ACTIVE
            _update_state(db, allocation)
        action = AuditAction.ALLOCATION_SUSPENDED if suspended else AuditAction.ALLOCATION_RESUMED
        summary = f"state {before} -> {allocation.state}"
        details = {"before": before, "after": allocation.state}
        audit.record(db, actor, action, allocation, summary=summary, reason=reason, details=details)
        return allocation

    return _once(db, None, work, lambda e: e)  # type: ignore[arg-type,return-value]


# --- sites, resources and capacity -----------------------------------------------------------------


def create_site(db: Session, actor: User | None, *, code: str, name: str, city: str, country: str, reason: str) -> Site:
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    code = code.strip().lower()
    if not code.isalnum() or len(code) > 16:
        raise InvalidInput("A site code is up to 16 letters or digits.", errors={"code": "Letters and digits."})
    if db.exec(select(Site.id).where(Site.code == code)).first() is not None:
        raise InvalidInput("This site code is taken.", errors={"code": "Already used."})
    site = Site(code=code, name=name.strip(), city=city.strip(), country=country.strip().upper())
    db.add(site)
    summary = f"site {site.code}: {site.name}, {site.city}"
    audit.record(db, actor, AuditAction.SITE_CREATED, site, summary=summary, reason=reason)
    db.commit()
    return site


def create_resource(
    db: Session,
    actor: User | None,
    site: Site,
    *,
    code: str,
    name: str,
    kind: ResourceKind,
    gpu_model: str | None = None,
    overbooking_permille: int = 1000,
    reason: str,
) -> Resource:
    if actor is not None:
        require(db, actor, Action.MANAGE_ALLOCATIONS)
    reason = audit.require_reason(reason)
    if overbooking_permille < 1000:
        raise InvalidInput("Overbooking is a factor of at least 1.0.", errors={"overbooking": "At least 1.0."})
    if kind == ResourceKind.GPU and not gpu_model:
        raise InvalidInput("A GPU resource names its GPU model.", errors={"gpu_model": "Required for GPUs."})
    resource = Resource(
        site_id=site.id,
        code=code.strip().lower(),
        name=name.strip(),
        kind=kind,  # type: ignore[arg-type]
        gpu_model=gpu_model,
        overbooking_permille=overbooking_permille,
    )
    db.add(resource)
    try:
        summary = f"resource {resource.code} ({resource.name}) at site {site.code}"
        audit.record(db, actor, AuditAction.RESOURCE_CREATED, resource, summary=summary, reason=reason)
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise InvalidInput("This site already has a resource with that code.", errors={"code": "Taken."}) from exc
    return resource


def set_overbooking(db: Session, actor: User | None, resource: Resource, permille: int, *, reason: str) -> Resource:
    """Change how far reservations may exceed capacity (1000 = none); never below what is reserved."""
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if not isinstance(permille, int) or not 1000 <= permille <= 3000:
        raise InvalidInput("Overbooking is a factor from 1.0 to 3.0.", errors={"overbooking": "From 1.0 to 3.0."})

    def work() -> Resource:
        periods = db.exec(
            select(CapacityPeriod).where(CapacityPeriod.resource_id == resource.id).with_for_update()
        ).all()
        for period in periods:
            if period.reserved * 1000 > period.capacity * permille:
                raise CapacityExhausted(
                    f"{period.starts_on} to {period.ends_on} already has more reserved than that factor allows."
                )
        locked = db.get(Resource, resource.id)
        assert locked is not None
        before, locked.overbooking_permille = locked.overbooking_permille, permille
        summary = f"overbooking of {locked.name} {before / 1000:.3f}x -> {permille / 1000:.3f}x"
        details = {"before_permille": before, "after_permille": permille}
        audit.record(
            db, actor, AuditAction.OVERBOOKING_CHANGED, locked, summary=summary, reason=reason, details=details
        )
        return locked

    return _once(db, None, work, lambda e: e)  # type: ignore[arg-type,return-value]


#: The years the ledger plans for: capacity quarters and allocations lie within them (the last days of
#: ``date``'s range have no next quarter, nor a next day).
PLANNING_YEARS = (2000, 2999)


def quarter_of(day: date) -> tuple[date, date]:
    """The calendar quarter containing ``day``: (first day, first day of the next quarter)."""
    first_month = 3 * ((day.month - 1) // 3) + 1
    start = date(day.year, first_month, 1)
    end = date(day.year + (first_month + 3 > 12), (first_month + 2) % 12 + 1, 1)
    return start, end


def capacity_from_gpus(units: int, starts_on: date, ends_on: date, utilisation_percent: int) -> int:
    """Base units a period offers: devices (GPUs or cores) × seconds × target utilisation, in integers."""
    seconds = (ends_on - starts_on).days * 86_400
    return units * seconds * utilisation_percent // 100


def set_capacity(
    db: Session,
    actor: User | None,
    resource: Resource,
    *,
    starts_on: date,
    ends_on: date,
    capacity: int,
    reason: str,
) -> CapacityPeriod:
    """Plan (or re-plan) a resource's capacity for a period; never below what is already reserved."""
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if ends_on <= starts_on:
        raise InvalidInput("The period must end after it starts.", errors={"ends_on": "Before the start."})
    if not isinstance(capacity, int) or capacity < 0:
        raise InvalidInput("Capacity is a whole number, zero or more.", errors={"capacity": "Not negative."})
    if capacity > LARGEST_AMOUNT:
        raise InvalidInput("That is more than any resource has.", errors={"capacity": "Far too large."})

    def work() -> CapacityPeriod:
        period = db.exec(
            select(CapacityPeriod)
            .where(CapacityPeriod.resource_id == resource.id, CapacityPeriod.starts_on == starts_on)
            .with_for_update()
        ).first()
        if period is None:
            overlapping = db.exec(
                select(CapacityPeriod.id).where(
                    CapacityPeriod.resource_id == resource.id,
                    col(CapacityPeriod.starts_on) < ends_on,
                    col(CapacityPeriod.ends_on) > starts_on,
                )
            ).first()
            if overlapping is not None:
                raise InvalidInput(
                    "This period overlaps another planned period of the resource.",
                    errors={"starts_on": "Overlaps another period."},
                )
            period = CapacityPeriod(
                resource_id=resource.id,
                starts_on=starts_on,
                ends_on=ends_on,  # type: ignore[arg-type]
                capacity=capacity,
            )
            db.add(period)
            before = None
        else:
            if ends_on != period.ends_on:
                raise InvalidInput(
                    "A planned period keeps its dates; change only its capacity.",
                    errors={"ends_on": f"This period ends on {period.ends_on}."},
                )
            if capacity * resource.overbooking_permille < period.reserved * 1000:
                raise CapacityExhausted(
                    f"{period.reserved // resource.per_display_unit} {resource.display_unit}s are already "
                    "reserved in this period; capacity cannot go below that."
                )
            before, period.capacity = period.capacity, capacity
        db.flush()
        was = "nothing planned" if before is None else quantity(before, resource.kind)
        summary = f"{resource.name}, {starts_on} to {ends_on}: {was} -> {quantity(capacity, resource.kind)}"
        details = {"resource_id": resource.id, "before": before, "after": capacity}
        audit.record(db, actor, AuditAction.CAPACITY_CHANGED, period, summary=summary, reason=reason, details=details)
        return period

    return _once(db, None, work, lambda e: e)  # type: ignore[arg-type,return-value]


# --- reading ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceMismatch:
    allocation_id: int
    balance: int
    entries_sum: int


def balance_mismatches(db: Session) -> list[BalanceMismatch]:
    """Allocations whose balance differs from the sum of their entries (should always be empty)."""
    sums = (
        select(LedgerEntry.allocation_id, func.coalesce(func.sum(LedgerEntry.amount), 0).label("total"))
        .group_by(LedgerEntry.allocation_id)
        .subquery()
    )
    rows = db.exec(
        select(Allocation.id, Allocation.balance, func.coalesce(sums.c.total, 0))
        .outerjoin(sums, sums.c.allocation_id == Allocation.id)
        .where(Allocation.balance != func.coalesce(sums.c.total, 0))
    ).all()
    return [BalanceMismatch(int(a), int(b), int(s)) for a, b, s in rows]


__all__ = [
    "DEBIT_KINDS",
    "AllocationClosed",
    "CapacityExhausted",
    "InsufficientBalance",
    "NoCapacityPlanned",
    "UsageCharge",
    "adjust",
    "charge_usage",
    "charge_usage_batch",
    "credit",
    "expire",
    "open_allocation",
    "release_to_pool",
    "reserve_capacity",
    "return_course_hours",
    "share_to_course",
    "top_up_course",
    "transfer",
]
