"""Sites, resources and their capacity; allocations, their append-only ledger and capacity reservations.

Only ``portal.ledger.services`` writes these tables. Quantities are integers of the resource's base unit
(GPU-seconds, core-seconds, GB-days), never floats.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class ResourceKind(StrEnum):
    GPU = "gpu"
    CPU = "cpu"
    STORAGE = "storage"


#: kind -> (base unit, display unit, base units per display unit)
UNITS: dict[ResourceKind, tuple[str, str, int]] = {
    ResourceKind.GPU: ("GPU-second", "GPU-hour", 3600),
    ResourceKind.CPU: ("core-second", "core-hour", 3600),
    ResourceKind.STORAGE: ("GB-day", "TB-month", 30_000),
}


class Site(SQLModel, table=True):
    __tablename__ = "sites"

    id: int | None = Field(default=None, primary_key=True)
    #: Short lower-case code used in Slurm cluster names and agent tokens (``waw``, ``vno``).
    code: str = Field(max_length=16, unique=True)
    name: str = Field(max_length=200)
    city: str = Field(max_length=100)
    #: ISO 3166-1 alpha-2.
    country: str = Field(max_length=2)


class Resource(SQLModel, table=True):
    """Something a site offers in a countable unit: H200 GPU-hours at Warsaw, CPU core-hours at Riga."""

    __tablename__ = "resources"
    __table_args__ = (
        sa.UniqueConstraint("site_id", "code"),
        sa.CheckConstraint("overbooking_permille >= 1000", name="overbooking_at_least_one"),
    )

    id: int | None = Field(default=None, primary_key=True)
    site_id: int = Field(foreign_key="sites.id", index=True)
    #: Unique within the site (``h200``, ``h100``, ``cpu``, ``storage``).
    code: str = Field(max_length=32)
    name: str = Field(max_length=200)
    kind: ResourceKind = Field(sa_type=StrEnumType(ResourceKind, 16))
    #: GPU model for GPU resources (``H200``), used by notebook profiles and Slurm's gres type.
    gpu_model: str | None = Field(default=None, max_length=32)
    #: Reservations may exceed a period's capacity by this factor, in thousandths (1100 = 1.1×).
    overbooking_permille: int = Field(default=1000)

    @property
    def base_unit(self) -> str:
        return UNITS[self.kind][0]

    @property
    def display_unit(self) -> str:
        return UNITS[self.kind][1]

    @property
    def per_display_unit(self) -> int:
        return UNITS[self.kind][2]


class CapacityPeriod(SQLModel, table=True):
    """How much of a resource can be allocated over one period (usually a quarter)."""

    __tablename__ = "capacity_periods"
    __table_args__ = (
        sa.UniqueConstraint("resource_id", "starts_on"),
        sa.CheckConstraint("ends_on > starts_on", name="period_not_empty"),
        sa.CheckConstraint("capacity >= 0", name="capacity_not_negative"),
        sa.CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    )

    id: int | None = Field(default=None, primary_key=True)
    resource_id: int = Field(foreign_key="resources.id", index=True)
    #: First day of the period, inclusive.
    starts_on: date
    #: Day after the period's last day (exclusive end).
    ends_on: date
    #: Base units available, e.g. GPUs × seconds × target utilisation.
    capacity: int = Field(sa_type=sa.BigInteger)
    #: Base units reserved by allocations, kept equal to the sum of this period's reservations.
    reserved: int = Field(default=0, sa_type=sa.BigInteger)


class AllocationSource(StrEnum):
    AWARD = "award"
    PURCHASE = "purchase"
    COURSE = "course"
    TRANSFER = "transfer"
    ADMIN = "admin"


class AllocationState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXHAUSTED = "exhausted"
    EXPIRED = "expired"
    SUSPENDED = "suspended"
    #: A purchase whose capacity is held until the payment arrives (or the checkout expires).
    AWAITING_PAYMENT = "awaiting_payment"


class Allocation(SQLModel, table=True):
    """A project's right to consume an amount of one resource between two instants."""

    __tablename__ = "allocations"
    __table_args__ = (sa.CheckConstraint("ends_at > starts_at", name="dates_ordered"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    resource_id: int = Field(foreign_key="resources.id", index=True)
    source: AllocationSource = Field(sa_type=StrEnumType(AllocationSource, 16))
    state: AllocationState = Field(sa_type=StrEnumType(AllocationState, 16), index=True)
    starts_at: datetime = Field(sa_type=UTCDateTime)
    ends_at: datetime = Field(sa_type=UTCDateTime)
    #: What the allocation is called on the project page.
    title: str = Field(max_length=200)
    #: Remaining base units: always the sum of this allocation's ledger entries.
    balance: int = Field(default=0, sa_type=sa.BigInteger)
    #: Base units credited so far (awards, purchases, course shares, transfers in, and the opening hours of one
    #: opened by an operator, though their entry is an adjustment); the denominator of "% used".
    credited: int = Field(default=0, sa_type=sa.BigInteger)
    #: Base units charged as usage so far.
    used: int = Field(default=0, sa_type=sa.BigInteger)
    #: Base units of capacity this allocation holds reserved.
    reserved: int = Field(default=0, sa_type=sa.BigInteger)
    #: Highest threshold (75, 90, 100 % used) already notified.
    notified_threshold: int = Field(default=0)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class EntryKind(StrEnum):
    AWARD = "award"
    PURCHASE = "purchase"
    COURSE_SHARE = "course_share"
    TRANSFER_IN = "transfer_in"
    USAGE = "usage"
    REFUND = "refund"
    TRANSFER_OUT = "transfer_out"
    RELEASE = "release"
    EXPIRY = "expiry"
    ADJUSTMENT = "adjustment"


CREDIT_KINDS = frozenset({EntryKind.AWARD, EntryKind.PURCHASE, EntryKind.COURSE_SHARE, EntryKind.TRANSFER_IN})
DEBIT_KINDS = frozenset(
    {EntryKind.USAGE, EntryKind.REFUND, EntryKind.TRANSFER_OUT, EntryKind.RELEASE, EntryKind.EXPIRY}
)


class LedgerEntry(SQLModel, table=True):
    """One append-only movement of an allocation's balance; credits are positive, debits negative."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        sa.Index("ix_ledger_entries_allocation_id_id", "allocation_id", "id"),
        sa.CheckConstraint("amount <> 0", name="amount_not_zero"),
    )

    id: int | None = Field(default=None, primary_key=True)
    allocation_id: int = Field(foreign_key="allocations.id")
    kind: EntryKind = Field(sa_type=StrEnumType(EntryKind, 16))
    amount: int = Field(sa_type=sa.BigInteger)
    #: The allocation's balance right after this entry.
    balance_after: int = Field(sa_type=sa.BigInteger)
    #: A caller-chosen key that makes the movement happen at most once (webhook event, usage record).
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True)
    #: Who caused it; None for automatic movements (usage, expiry).
    actor_id: int | None = Field(default=None, foreign_key="users.id")
    #: Why; mandatory for adjustments.
    reason: str = Field(default="", max_length=1000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class CapacityReservation(SQLModel, table=True):
    """The part of a capacity period an allocation holds."""

    __tablename__ = "capacity_reservations"
    __table_args__ = (
        sa.UniqueConstraint("allocation_id", "period_id"),
        sa.CheckConstraint("amount >= 0", name="amount_not_negative"),
    )

    id: int | None = Field(default=None, primary_key=True)
    allocation_id: int = Field(foreign_key="allocations.id", index=True)
    period_id: int = Field(foreign_key="capacity_periods.id", index=True)
    amount: int = Field(sa_type=sa.BigInteger)


class DailyUsage(SQLModel, table=True):
    """Usage per allocation and UTC day, kept up to date in the charge's transaction, so that charts and
    burn rates read a few rows instead of the whole ledger."""

    __tablename__ = "daily_usage"

    allocation_id: int = Field(foreign_key="allocations.id", primary_key=True)
    day: date = Field(primary_key=True)
    #: Base units charged as usage on that day (by the usage's end time).
    amount: int = Field(default=0, sa_type=sa.BigInteger)


class UsageMonth(SQLModel, table=True):
    """Usage of one allocation in one calendar month (UTC), by the usage's day as ``DailyUsage`` counts it;
    written with the daily usage in the charge's transaction, read by the operators' dashboards."""

    __tablename__ = "report_usage_months"

    allocation_id: int = Field(foreign_key="allocations.id", primary_key=True)
    #: First day of the month.
    month: date = Field(primary_key=True, index=True)
    #: Base units charged as usage in that month.
    amount: int = Field(default=0, sa_type=sa.BigInteger)
