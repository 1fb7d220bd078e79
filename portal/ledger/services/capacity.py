"""Reserving and releasing a resource's capacity per period, never beyond capacity x overbooking."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.ledger.models import (
    Allocation,
    CapacityPeriod,
    CapacityReservation,
    Resource,
)
from portal.ledger.services.errors import (
    CapacityExhausted,
    NoCapacityPlanned,
)
from portal.messages import N_, Amount, Message

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
            Message(N_("No capacity is planned for the whole of these dates; ask the site to plan its capacity first."))
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
    periods = _periods_for(db, resource.id, allocation.starts_at, allocation.ends_at)
    table = CapacityPeriod.__table__
    resources = Resource.__table__
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
                Message(
                    N_(
                        "%(resource)s has not enough capacity left between %(starts)s and %(ends)s: "
                        "%(needed)s are needed."
                    ),
                    resource=resource.name,
                    starts=period.starts_on,
                    ends=period.ends_on,
                    needed=Amount(share // resource.per_display_unit * resource.per_display_unit, resource.kind, 0),
                )
            )
        reservation = db.exec(
            select(CapacityReservation).where(
                CapacityReservation.allocation_id == allocation.id, CapacityReservation.period_id == period.id
            )
        ).first()
        if reservation is None:
            db.add(CapacityReservation(allocation_id=allocation.id, period_id=period.id, amount=share))
        else:
            reservation.amount += share
    _bump_reserved(db, allocation, amount)


def _bump_reserved(db: Session, allocation: Allocation, delta: int) -> None:
    table = Allocation.__table__
    db.execute(sa.update(table).where(table.c.id == allocation.id).values(reserved=table.c.reserved + delta))
    db.flush()


def release_capacity(db: Session, allocation: Allocation, amount: int) -> int:
    """Give back up to ``amount`` of the allocation's reserved capacity, latest periods first."""
    reservations = db.exec(
        select(CapacityReservation, CapacityPeriod)
        .join(CapacityPeriod, CapacityPeriod.id == CapacityReservation.period_id)
        .where(CapacityReservation.allocation_id == allocation.id)
        .order_by(col(CapacityPeriod.starts_on).desc())
    ).all()
    table = CapacityPeriod.__table__
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
