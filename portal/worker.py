"""``portal worker``: periodic jobs, each safe to run from several workers at once."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete

from portal import observability
from portal.classroom import services as classroom
from portal.compute.launch import meter_job
from portal.config import Settings
from portal.db import session_scope, utcnow
from portal.grants import jobs as grants_jobs
from portal.ledger import jobs as ledger_jobs
from portal.projects.models import Invitation
from portal.reports import jobs as reports_jobs

log = logging.getLogger("portal.worker")

#: Invitations that were never accepted are deleted this long after they expired (the invitee's
#: address is personal data the factory has no reason to keep).
INVITATION_RETENTION = timedelta(days=90)


@dataclass(frozen=True)
class Job:
    name: str
    #: Seconds between two runs.
    every: int
    run: Callable[[Session, Settings], int]


def purge_stale_invitations(db: Session, _settings: Settings) -> int:
    """Delete unaccepted invitations that expired more than the retention period ago; returns the count."""
    cutoff = utcnow() - INVITATION_RETENTION
    result = db.exec(
        delete(Invitation).where(col(Invitation.accepted_at).is_(None), col(Invitation.expires_at) < cutoff)
    )
    db.commit()
    return int(result.rowcount or 0)


def pull_slurm_usage(db: Session, settings: Settings) -> int:
    """Charge the finished jobs of every configured Slurm cluster (``portal usage pull-sacct``); returns
    how many jobs were charged. Several workers may run it: each cluster is pulled under a lock."""
    from portal.metering.slurm import pull_all

    return pull_all(db, settings.slurm_clusters)


def sync_slurm_accounts(db: Session, settings: Settings) -> int:
    """Bring every configured cluster's accounts and limits in line (``portal slurm sync``): holds
    exhausted allocations soon after their usage is charged; returns the number of sacctmgr changes."""
    from portal.metering.slurm import sync_all

    return sync_all(db, settings.slurm_clusters)


JOBS: list[Job] = [
    Job("purge_stale_invitations", every=3600, run=purge_stale_invitations),
    Job("pull_slurm_usage", every=300, run=pull_slurm_usage),
    Job("sync_slurm_accounts", every=300, run=sync_slurm_accounts),
    Job("start_and_expire_allocations", every=300, run=ledger_jobs.start_and_expire_allocations),
    Job("notify_usage_thresholds", every=600, run=ledger_jobs.notify_usage_thresholds),
    Job("check_balances", every=86_400, run=ledger_jobs.check_balances),
    Job("check_report_rollups", every=86_400, run=reports_jobs.check_report_rollups),
    Job("remind_due_reviews", every=3600, run=grants_jobs.remind_due_reviews),
    Job("meter_notebooks", every=60, run=meter_job),
    Job("close_ended_courses", every=300, run=classroom.close_ended_courses),
    Job("settle_removed_students", every=60, run=classroom.settle_removed_students),
    Job("notify_capped_students", every=60, run=classroom.notify_capped_students),
]


def run_due_jobs(engine: Engine, settings: Settings, last_run: dict[str, float], now: float) -> dict[str, int]:
    """Run every job whose interval has passed; a failing job is logged and does not stop the others."""
    results: dict[str, int] = {}
    for job in JOBS:
        if now - last_run.get(job.name, float("-inf")) < job.every:
            continue
        started, failed = time.perf_counter(), False
        try:
            with session_scope(engine) as db:
                results[job.name] = job.run(db, settings)
            log.info("job %s done: %s", job.name, results[job.name])
        except Exception:
            failed = True
            log.exception("job %s failed", job.name)
        observability.worker_job_ran(job.name, time.perf_counter() - started, failed=failed)
        last_run[job.name] = now
    return results


def run_worker(engine: Engine, settings: Settings, *, once: bool = False, stop: threading.Event | None = None) -> None:
    """Run the due jobs, then every ``worker_interval_seconds`` until SIGTERM/SIGINT, or until ``stop`` is set
    when the caller passes one (``portal demo`` runs the worker in a thread beside the web server)."""
    if stop is None:
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
    last_run: dict[str, float] = {}
    metrics_server = None if once else observability.serve_worker_metrics(settings)
    while True:
        run_due_jobs(engine, settings, last_run, time.monotonic())
        if once or stop.wait(settings.worker_interval_seconds):
            break
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("worker stopped")
