"""Usage records from Slurm, site agents and JupyterHub; the Slurm account and user name mappings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import StrEnumType, UTCDateTime, utcnow


class UsageSource(StrEnum):
    SLURM = "slurm"
    AGENT = "agent"
    HUB = "hub"


class UsageRecord(SQLModel, table=True):
    """One charged piece of usage, written in the same transaction as its ledger entry."""

    __tablename__ = "usage_records"
    __table_args__ = (
        sa.UniqueConstraint("source", "origin", "external_id"),
        sa.Index("ix_usage_records_allocation_id_ended_at", "allocation_id", "ended_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: UsageSource = Field(sa_type=StrEnumType(UsageSource, 16))
    #: Where it came from: the Slurm cluster, the agent's site code, the hub.
    origin: str = Field(max_length=64)
    #: The origin's own id: Slurm's JobIDRaw, the agent's record id, the hub server and interval.
    external_id: str = Field(max_length=200)
    allocation_id: int = Field(foreign_key="allocations.id")
    ledger_entry_id: int = Field(foreign_key="ledger_entries.id")
    #: The user name at the origin (Slurm user, hub user), for per-user reports.
    username: str = Field(default="", max_length=100)
    started_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime = Field(sa_type=UTCDateTime)
    #: Base units charged (GPU-seconds, core-seconds).
    quantity: int = Field(sa_type=sa.BigInteger)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SlurmAccount(SQLModel, table=True):
    """Which allocation a Slurm account on a cluster draws from."""

    __tablename__ = "slurm_accounts"
    __table_args__ = (sa.UniqueConstraint("cluster", "account"),)

    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(max_length=64)
    #: Lower case, as sacctmgr stores it.
    account: str = Field(max_length=64)
    allocation_id: int = Field(foreign_key="allocations.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SlurmPull(SQLModel, table=True):
    """The end of the window up to which a cluster's usage was last pulled with sacct."""

    __tablename__ = "slurm_pulls"

    cluster: str = Field(primary_key=True, max_length=64)
    pulled_until: datetime = Field(sa_type=UTCDateTime)


class SlurmUser(SQLModel, table=True):
    """A portal user's login name on a Slurm cluster: whom ``portal slurm sync`` adds to project accounts."""

    __tablename__ = "slurm_users"
    __table_args__ = (sa.UniqueConstraint("cluster", "user_id"), sa.UniqueConstraint("cluster", "username"))

    id: int | None = Field(default=None, primary_key=True)
    cluster: str = Field(max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: The Unix login on the cluster, lower case (as sacctmgr stores it).
    username: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
