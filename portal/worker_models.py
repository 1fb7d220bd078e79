"""The schedule ``portal worker`` processes share: one row per job, so that several workers run each job once
per due time (a lease), retry a failed run with backoff, and report when it last succeeded."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from portal.db import UTCDateTime


class WorkerJob(SQLModel, table=True):
    __tablename__ = "worker_jobs"

    #: The job's name (``portal.worker.JOBS``).
    name: str = Field(primary_key=True, max_length=64)
    #: The earliest time the job runs again: after a success its interval later, after a failure the backoff.
    next_run_at: datetime = Field(sa_type=UTCDateTime)
    #: A worker runs it until then (None: nobody); a worker that died mid-run frees it when this passes.
    leased_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: When a run last succeeded, and when one last failed.
    last_success_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    #: Failed runs since the last success (the backoff doubles with each).
    failures: int = Field(default=0)
    #: The last failure's message ("" after a success).
    last_error: str = Field(default="", max_length=500)
