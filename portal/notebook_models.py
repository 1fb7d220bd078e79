"""The notebook servers the portal let the hub start: ``compute`` writes them (launch, spawn check, metering);
``classroom`` reads them (its students' running notebooks, the hours they may still be charged). Below both, so
that neither imports the other to reach this table; ``compute`` imports ``classroom`` for its seats."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime, utcnow


class NotebookSession(SQLModel, table=True):
    """A notebook server the spawn check accepted; the metering worker charges its running time from here."""

    __tablename__ = "notebook_sessions"
    __table_args__ = (sa.Index("ix_notebook_sessions_hub_user_server_name", "hub_user", "server_name"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    project_id: int = Field(foreign_key="projects.id", index=True)
    allocation_id: int = Field(foreign_key="allocations.id", index=True)
    #: The user's name at the hub (``u<user id>``) and the named server ("" for the default server).
    hub_user: str = Field(max_length=100)
    server_name: str = Field(default="", max_length=255)
    #: The notebook profile's name, and its size at the time of the spawn.
    profile: str = Field(max_length=32)
    gpus: int = Field(default=0)
    cpus: int = Field(default=0)
    #: The longest the server may run (the hours asked for), in seconds.
    max_seconds: int = Field(sa_type=sa.BigInteger)
    requested_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    stopped_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Why it stopped: ``user``, ``exhausted``, ``time_limit``, ... ("" while it runs).
    stop_reason: str = Field(default="", max_length=32)
    #: Seconds of running time charged to the allocation so far.
    charged_seconds: int = Field(default=0, sa_type=sa.BigInteger)
    #: The student's seat when the allocation is a course's; its use counts against the seat's cap.
    course_seat_id: int | None = Field(default=None, foreign_key="course_seats.id", index=True)
    #: The Slurm cluster the server runs on as a job, and the account it runs under; None for a server on the
    #: hub's own machine. A Slurm job is charged once, from sacct (its real AllocTRES and elapsed time), never
    #: by the portal's metering.
    slurm_cluster: str | None = Field(default=None, max_length=64)
    slurm_account: str | None = Field(default=None, max_length=64)
    #: When a worker last claimed the session for metering (``SKIP LOCKED``): the other workers leave it to that
    #: worker for the rest of the round, so N workers share the sessions instead of each walking all of them.
    metered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    @property
    def charged_from_slurm(self) -> bool:
        return self.slurm_cluster is not None
