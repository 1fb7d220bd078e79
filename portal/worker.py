"""``portal worker``: periodic jobs, each safe to run from several workers at once.

Several workers scale out: metering (a shared job) claims its sessions in batches with ``SKIP LOCKED``, so
N workers each meter a part of the servers; every other job runs once per due time across all workers under
a lease in the shared schedule (``worker_jobs``), so a daily job runs once a day however often workers start,
and a failed run is retried with backoff (``retry_delay``)."""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import click
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from portal import DOMAINS, observability
from portal.config import Settings
from portal.db import session_scope, utcnow
from portal.ledger import jobs as ledger_jobs  # capacity in use, for the metrics
from portal.worker_models import WorkerJob

log = logging.getLogger("portal.worker")


@dataclass(frozen=True)
class Job:
    name: str
    #: Seconds between two runs.
    every: int
    run: Callable[..., int]
    #: Every worker runs it each round and the workers share its items (metering claims sessions with
    #: ``SKIP LOCKED``); the other jobs run in one worker per due time, under a lease in ``worker_jobs``.
    shared: bool = False
    #: ``run`` takes ``keep_going`` and ends after the item in hand once it says no (SIGTERM).
    stoppable: bool = False


#: A failed run is tried again after 1, 2, 4, ... minutes, at most an hour and at most the job's interval.
RETRY_FIRST_SECONDS = 60
RETRY_MAX_SECONDS = 3600
#: A worker that dies mid-run leaves its lease; another worker takes the job this long after the run began.
LEASE_SECONDS = 1800


def retry_delay(job: Job, failures: int) -> int:
    """Seconds until a job that failed ``failures`` times in a row is tried again."""
    return min(RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1), RETRY_MAX_SECONDS, job.every)


class JobsFailed(click.ClickException):
    """``portal worker --once``: some jobs failed (exit status 1, naming them)."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"{len(names)} job(s) failed: {', '.join(names)} (the log says why)")


class RoundResults(dict[str, int]):
    """What each job that ran in a round returned, by name; ``failed`` names the jobs that raised."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: list[str] = []


class AddJob(Protocol):
    """What a package's ``register_jobs(add_job)`` is given: ``add_job(name, every=..., run=...)`` adds a ``Job``."""

    def __call__(
        self, name: str, *, every: int, run: Callable[..., int], shared: bool = False, stoppable: bool = False
    ) -> None: ...


def _registered_jobs() -> list[Job]:
    """Every package's jobs (``register_jobs`` beside its ``init_app``): the leased ones in the order of
    ``portal.DOMAINS``, then the shared ones. Metering, the shared job, is the long one that a stop (SIGTERM)
    cuts short after the item in hand: last, so that a stop during it leaves no other job of the round undone.

    A hook of its own rather than ``init_app``'s work: ``run_due_jobs(engine, settings)`` needs no application."""
    jobs: list[Job] = []

    def add_job(
        name: str, *, every: int, run: Callable[..., int], shared: bool = False, stoppable: bool = False
    ) -> None:
        jobs.append(Job(name, every=every, run=run, shared=shared, stoppable=stoppable))

    for package in DOMAINS:
        register = getattr(importlib.import_module(package), "register_jobs", None)
        if register is not None:
            register(add_job)
    return sorted(jobs, key=lambda job: job.shared)


JOBS: list[Job] = _registered_jobs()

_SCHEDULE = WorkerJob.__table__


def _ensure_scheduled(engine: Engine, at: datetime) -> None:
    """A row per job in the shared schedule, due now when new (so a new job runs at the first round)."""
    with session_scope(engine) as db:
        known = set(db.exec(select(WorkerJob.name)).all())
        for job in JOBS:
            if job.name in known:
                continue
            db.add(WorkerJob(name=job.name, next_run_at=at))
            try:
                db.commit()
            except IntegrityError:  # another worker added it at the same moment
                db.rollback()


def _claim(db: Session, job: Job, at: datetime) -> bool:
    """Take the job's lease when it is due and nobody holds it: a conditional UPDATE, so of several workers
    exactly one gets it (on PostgreSQL the others wait for its commit, then find it leased)."""
    claimed = db.execute(
        sa.update(_SCHEDULE)
        .where(
            _SCHEDULE.c.name == job.name,
            _SCHEDULE.c.next_run_at <= at,
            sa.or_(_SCHEDULE.c.leased_until.is_(None), _SCHEDULE.c.leased_until <= at),
        )
        .values(leased_until=at + timedelta(seconds=LEASE_SECONDS))
    )
    db.commit()
    return claimed.rowcount == 1


def _record(db: Session, job: Job, started: datetime, error: BaseException | None) -> None:
    """Write the run's outcome: after a success the job is due its interval after the round that ran it began
    (``started``), after a failure the backoff after it; the lease ends either way."""
    finished = utcnow()
    if error is None:
        values: dict[str, object] = {
            "next_run_at": started + timedelta(seconds=job.every),
            "last_success_at": finished,
            "failures": 0,
            "last_error": "",
        }
    else:
        failures = (db.exec(select(WorkerJob.failures).where(WorkerJob.name == job.name)).first() or 0) + 1
        values = {
            "next_run_at": started + timedelta(seconds=retry_delay(job, failures)),
            "last_failure_at": finished,
            "failures": failures,
            "last_error": (str(error) or type(error).__name__)[:500],
        }
    db.execute(sa.update(_SCHEDULE).where(_SCHEDULE.c.name == job.name).values(leased_until=None, **values))
    db.commit()


def _export_state(engine: Engine) -> None:
    """Per job its last success (in any worker), and each resource's capacity in use, for ``/metrics``."""
    every = {job.name: job.every for job in JOBS}
    with session_scope(engine) as db:
        for name, last_success in db.exec(select(WorkerJob.name, WorkerJob.last_success_at)).all():
            if name in every:
                observability.worker_job_schedule(name, every[name], last_success)
        for site, resource, capacity, reserved in ledger_jobs.capacity_in_use(db, utcnow().date()):
            observability.capacity_in_use(site, resource, capacity, reserved)


def run_due_jobs(
    engine: Engine,
    settings: Settings,
    last_run: dict[str, float],
    now: float,
    *,
    at: datetime | None = None,
    stop: threading.Event | None = None,
) -> RoundResults:
    """Run every due job; a failing job is logged, counted and retried with backoff, and stops no other.

    Shared jobs are due by this worker's clock (``now``, monotonic, against ``last_run``); the others by the
    shared schedule at ``at`` (default: the current time), which one worker claims per due time. ``stop`` ends
    the round after the job (or the metering item) in hand."""
    at = at or utcnow()
    stop = stop or threading.Event()
    _ensure_scheduled(engine, at)
    results = RoundResults()

    def keep_going() -> bool:
        observability.worker_alive()
        return not stop.is_set()

    for job in JOBS:
        if not keep_going():
            break
        if job.shared:
            if now - last_run.get(job.name, float("-inf")) < job.every:
                continue
            last_run[job.name] = now
        else:
            with session_scope(engine) as db:
                if not _claim(db, job, at):
                    continue
        clock, error = time.perf_counter(), None
        try:
            with session_scope(engine) as db:
                extra = {"keep_going": keep_going} if job.stoppable else {}
                results[job.name] = job.run(db, settings, **extra)
            log.info("job %s done: %s", job.name, results[job.name])
        except Exception as exc:
            error = exc
            results.failed.append(job.name)
            log.exception("job %s failed", job.name)
        observability.worker_job_ran(job.name, time.perf_counter() - clock, failed=error is not None)
        try:
            with session_scope(engine) as db:
                _record(db, job, at, error)
        except Exception:
            log.exception("could not record the run of job %s", job.name)
    observability.worker_alive()
    try:
        _export_state(engine)
    except Exception:
        log.exception("could not read the worker's schedule for the metrics")
    return results


#: The cyclic collector's thresholds in a worker process: a collection of the youngest objects after 10,000 more
#: allocations than deallocations instead of Python's 700, and of the older generations as Python does. A round
#: allocates hundreds of thousands of short-lived objects (rows, ORM instances, JSON), freed by reference counting.
WORKER_GC_THRESHOLDS = (10_000, 20, 20)


def tune_collector() -> None:
    """For a process that runs ``run_worker`` alone (``portal worker``; not ``portal demo``'s thread beside the web
    server): what start-up loaded (modules, the application, the mappers) is frozen out of every later collection
    (``gc.freeze``), and the youngest generation is collected less often (``WORKER_GC_THRESHOLDS``). Measured in
    benchmarks/bench_metering.py: 15–25 % less of the worker's CPU per metering round."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLDS)


def run_worker(engine: Engine, settings: Settings, *, once: bool = False, stop: threading.Event | None = None) -> None:
    """Run the due jobs, then every ``worker_interval_seconds`` until SIGTERM/SIGINT, or until ``stop`` is set
    when the caller passes one (``portal demo`` runs the worker in a thread beside the web server). A stop ends
    the round after the item in hand (a metered server, or the job that has no items). ``once``: one round,
    raising ``JobsFailed`` (exit status 1) if any job failed."""
    if stop is None:
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
    last_run: dict[str, float] = {}
    observability.worker_alive()
    metrics_server = None if once else observability.serve_worker_metrics(settings)
    while True:
        results = run_due_jobs(engine, settings, last_run, time.monotonic(), stop=stop)
        if once or stop.wait(settings.worker_interval_seconds):
            break
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("worker stopped")
    if once and results.failed:
        raise JobsFailed(results.failed)
