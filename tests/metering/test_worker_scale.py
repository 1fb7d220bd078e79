"""Several ``portal worker`` processes as an operator runs them: they share the metering round, run each daily job
once, retry failures with backoff, say when a job failed or the loop is stuck, and stop after the item in hand."""

from __future__ import annotations

import gc
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
import yaml
from portal_standin.devstack import free_port
from prometheus_client import generate_latest
from sqlmodel import Session, col, func, select

from portal import observability
from portal.compute.hub_client import HubServer
from portal.compute.launch import TIME_LIMIT, meter_notebooks
from portal.config import load_settings
from portal.db import utcnow
from portal.ledger import services as ledger
from portal.ledger.models import EntryKind, LedgerEntry, ResourceKind
from portal.migrations import upgrade
from portal.notebook_models import NotebookSession
from portal.worker import WORKER_GC_THRESHOLDS, run_due_jobs, tune_collector
from portal.worker_models import WorkerJob
from tests.conftest import portal_cli
from tests.factories import open_now, plan_capacity_around_now
from tests.json_server import Answer, Asked, JsonServer
from tests.ledger_world import HOUR, make_world

REPO = Path(__file__).resolve().parents[2]
TOKEN = "worker-metrics-token"


@dataclass
class HubRunning:
    """The hub as a metering round sees it: these servers are up; stopping one is recorded. ``together`` makes
    the workers of a test start their rounds at the same moment."""

    servers: list[HubServer]
    together: threading.Barrier | None = None
    stopped: list[tuple[str, str]] = field(default_factory=list)
    on_stop: Any = None
    #: Each test's hub its own address: the listing a round shares is stored per hub.
    api_url: str = field(default_factory=lambda: f"http://hub-{uuid.uuid4().hex[:8]}.test/hub/api")
    #: How many times the list of active servers was read.
    listings: int = 0

    def active_servers(self) -> list[HubServer]:
        if self.together is not None:
            self.together.wait(30)
        self.listings += 1
        return list(self.servers)

    def stop_server(self, user: str, name: str) -> None:
        self.stopped.append((user, name))
        if self.on_stop is not None:
            self.on_stop()


def running_sessions(db: Session, count: int, *, ran: timedelta, hours: float = 10) -> list[NotebookSession]:
    """``count`` CPU notebooks of one project that started ``ran`` ago, as the spawn check records them."""
    world = make_world(db, code=f"w{uuid.uuid4().hex[:8]}")
    cpu = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, cpu, 100_000 * HOUR)
    allocation = open_now(db, world.project, cpu, 10_000)
    started = utcnow() - ran
    sessions = [
        NotebookSession(
            user_id=world.pi.id,
            project_id=world.project.id,
            allocation_id=allocation.id,
            hub_user=f"u{world.pi.id}",
            server_name=f"a{allocation.id}-{i}",
            profile="cpu",
            cpus=1,
            max_seconds=int(hours * 3600),
            requested_at=started,
            started_at=started,
        )
        for i in range(count)
    ]
    db.add_all(sessions)
    db.commit()
    return sessions


def up(session: NotebookSession) -> HubServer:
    return HubServer(session.hub_user, session.server_name, True, None, session.started_at, "/user/x/")


# --- PostgreSQL: workers share the round, daily jobs run once ------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine(postgres_url: str):
    upgrade(postgres_url)
    engine = sa.create_engine(postgres_url, pool_size=8, max_overflow=0)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_two_workers_meter_disjoint_shares_of_the_servers_and_charge_each_once(pg_engine, tmp_path) -> None:
    settings = load_settings(env="test", database_url=str(pg_engine.url), secret_key="x", instance_path=tmp_path)
    with Session(pg_engine, expire_on_commit=False) as db:
        sessions = running_sessions(db, 60, ran=timedelta(minutes=10))
    hub = HubRunning([up(s) for s in sessions])
    now = utcnow()
    reports: list[Any] = [None, None]
    together = threading.Barrier(2)

    def worker(i: int) -> None:
        with Session(pg_engine, expire_on_commit=False) as db:
            together.wait(30)  # both rounds start at once: one lists the hub, the other waits and joins its round
            reports[i] = meter_notebooks(db, settings, hub, now, fresh_for=timedelta(seconds=30), batch=5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    ids = {s.id for s in sessions}
    assert hub.listings == 1, "the hub was listed once for both workers"
    first, second = (set(r.charged) & ids for r in reports)
    assert first and second, "both workers metered a share of the servers"
    assert not first & second, "no server was metered by both"
    assert first | second == ids
    with Session(pg_engine) as db:
        charged = db.exec(select(NotebookSession.charged_seconds).where(col(NotebookSession.id).in_(ids))).all()
        assert set(charged) == {600}
        entries = db.exec(
            select(func.count()).where(
                LedgerEntry.allocation_id == sessions[0].allocation_id, LedgerEntry.kind == EntryKind.USAGE
            )
        ).one()
        assert entries == 60
        assert ledger.balance_mismatches(db) == []


@pytest.mark.postgres
def test_a_daily_job_runs_once_a_day_however_many_workers_start(pg_engine, tmp_path) -> None:
    settings = load_settings(
        env="test", database_url=str(pg_engine.url), secret_key="x", instance_path=tmp_path,
        hub_url=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    with Session(pg_engine) as db:
        db.execute(sa.delete(WorkerJob.__table__))
        db.commit()
    rounds: list[Any] = []
    together = threading.Barrier(3)

    def start_a_worker() -> None:
        together.wait(30)
        rounds.append(run_due_jobs(pg_engine, settings, {}, time.monotonic()))

    for _restart in range(2):  # three workers start, then all three restart
        threads = [threading.Thread(target=start_a_worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert len(rounds) == 6
    assert sum("check_balances" in r for r in rounds) == 1
    assert sum("check_report_rollups" in r for r in rounds) == 1
    assert sum("purge_stale_invitations" in r for r in rounds) == 1
    # metering is shared: every worker does its part of each round (here: fails, the hub is unreachable)
    assert sum("meter_notebooks" in r.failed for r in rounds) == 6
    with Session(pg_engine) as db:
        daily = db.get(WorkerJob, "check_balances")
        assert daily is not None and daily.last_success_at is not None and daily.leased_until is None
        assert timedelta(hours=23) < daily.next_run_at - utcnow() <= timedelta(days=1)


# --- one database is enough for the rest ----------------------------------------------------------------------


def test_a_failed_job_is_retried_after_1_then_2_minutes_not_at_every_round(make_settings) -> None:
    broken = [{"name": "broken", "site": "nosite", "sacct": "/nonexistent/sacct", "sacctmgr": "/nonexistent/sacctmgr"}]
    settings = make_settings(slurm_clusters=broken, hub_url=f"http://127.0.0.1:{free_port()}")
    engine = sa.create_engine(settings.database_url)
    t0 = utcnow()

    def round_at(seconds: int) -> Any:
        return run_due_jobs(engine, settings, {}, time.monotonic(), at=t0 + timedelta(seconds=seconds))

    assert "sync_slurm_accounts" in round_at(0).failed
    assert "sync_slurm_accounts" not in round_at(59)  # not before the minute's backoff
    assert "sync_slurm_accounts" in round_at(61).failed
    assert "sync_slurm_accounts" not in round_at(61 + 119)
    assert "sync_slurm_accounts" in round_at(61 + 121).failed
    with Session(engine) as db:
        job = db.get(WorkerJob, "sync_slurm_accounts")
        assert job is not None and job.failures == 3 and job.last_success_at is None
        assert job.last_error == "Slurm sync failed for broken"
        assert job.next_run_at == t0 + timedelta(seconds=61 + 121 + 240)
    engine.dispose()


def empty_hub(asked: Asked) -> Answer:
    """A hub with no active servers: ``GET /hub/api/users`` answers an empty page."""
    return Answer(200, {"items": [], "_pagination": {"offset": 0, "limit": 200, "total": 0, "next": None}})


def test_worker_once_exits_1_naming_metering_while_the_hub_is_unreachable_and_0_when_it_answers(app) -> None:
    down = portal_cli(app, "worker", "--once", PORTAL_HUB_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1, down.stderr
    assert re.search(r"Error: 1 job\(s\) failed: meter_notebooks", down.stderr), down.stderr[-2000:]
    with JsonServer(empty_hub) as hub:
        answering = portal_cli(app, "worker", "--once", PORTAL_HUB_URL=hub.url)
    assert answering.returncode == 0, answering.stderr[-2000:]


def test_the_health_check_fails_while_the_loop_is_stuck_though_metrics_still_answer(make_settings) -> None:
    settings = make_settings(worker_metrics_port=free_port(), metrics_token=TOKEN)
    server = observability.serve_worker_metrics(settings, "127.0.0.1", stalled_after=1)
    assert server is not None
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        observability.worker_alive()
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        time.sleep(1.5)  # the loop hangs in a job: no progress
        stuck = requests.get(f"{base}/healthz", timeout=5)
        metrics = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    finally:
        server.shutdown()
    assert stuck.status_code == 503 and "no progress for" in stuck.text
    assert metrics.status_code == 200 and "portal_worker_heartbeat_timestamp_seconds" in metrics.text


def test_sigterm_ends_the_metering_round_after_the_server_in_hand(db: Session, settings) -> None:
    sessions = running_sessions(db, 5, ran=timedelta(hours=2), hours=1)  # all past their time limit
    stop = threading.Event()
    hub = HubRunning([up(s) for s in sessions], on_stop=stop.set)  # SIGTERM arrives while the first one stops
    report = meter_notebooks(db, settings, hub, keep_going=lambda: not stop.is_set())
    assert report.stopped == {sessions[0].id: TIME_LIMIT}
    db.expire_all()
    left = db.exec(select(NotebookSession).where(col(NotebookSession.id).in_([s.id for s in sessions[1:]]))).all()
    assert [s.stopped_at for s in left] == [None] * 4
    assert [s.metered_at for s in left] == [None] * 4  # handed back: the next worker's round takes them at once
    assert hub.stopped == [(sessions[0].hub_user, sessions[0].server_name)]


def test_a_stop_before_a_job_ends_the_round_there(make_settings) -> None:
    settings = make_settings(hub_url=f"http://127.0.0.1:{free_port()}")
    engine = sa.create_engine(settings.database_url)
    stop = threading.Event()
    stop.set()
    assert run_due_jobs(engine, settings, {}, time.monotonic(), stop=stop) == {}
    engine.dispose()


# --- what ships for operators ----------------------------------------------------------------------------------

#: Metrics the alert rules may name although the portal does not export them yet, each in docs/operator-guide.md.
COMING = {"portal_backup_last_success_timestamp_seconds"}


def exported_metric_names() -> set[str]:
    """Every metric name (with its sample suffixes) the portal's and the worker's ``/metrics`` can show."""
    observability.worker_alive()
    observability.worker_job_schedule("meter_notebooks", 60, utcnow())
    observability.capacity_in_use("waw", "h200", 100, 10)
    observability.usage_charged("hub", utcnow())
    observability.ledger_entries_written("usage")
    observability.stripe_webhook_handled("fulfilled")
    observability.worker_job_ran("meter_notebooks", 0.1, failed=False)
    observability.hub_server_started("cpu", timedelta(seconds=1))
    observability.REQUEST_SECONDS.labels(endpoint="x", method="GET", status="200").observe(0.1)
    observability.HUB_SPAWN_CHECKS.labels(outcome="accepted").inc(0)
    text = generate_latest(observability.registry()).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_alert_rules_parse_and_name_only_metrics_the_portal_exports() -> None:
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert {"PortalWorkerStalled", "PortalNotebookMeteringLag", "PortalStripeWebhookFailures",
            "PortalCapacityNearFull", "PortalBackupMissing"} <= set(alerts)  # fmt: skip
    exported = exported_metric_names()
    readme = (REPO / "docs" / "operator-guide.md").read_text()
    for name, rule in alerts.items():
        expr = rule["expr"]
        assert expr.count("(") == expr.count(")"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), name
        for metric in set(re.findall(r"\bportal_[a-z_]+", expr)):
            assert metric in exported or (metric in COMING and metric in readme), f"{name} names {metric}"


def test_compose_gives_the_worker_longer_than_a_round_to_stop_and_checks_its_loop() -> None:
    worker = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["worker"]
    interval = int(re.search(r"worker_interval_seconds\s*=\s*(\d+)", (REPO / "deploy/portal.toml").read_text())[1])
    grace = re.fullmatch(r"(\d+)([sm])", worker["stop_grace_period"])
    assert grace is not None
    assert int(grace[1]) * (60 if grace[2] == "m" else 1) > interval
    assert (
        "/healthz" in " ".join(worker["healthcheck"]["test"]) and "status != 200" in worker["healthcheck"]["test"][-1]
    )


def test_a_worker_process_freezes_what_start_up_loaded_and_collects_its_young_objects_less_often() -> None:
    thresholds = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_freeze_count() > 10_000  # the modules, the app and the mappers this process loaded
        assert gc.get_threshold() == WORKER_GC_THRESHOLDS
        assert WORKER_GC_THRESHOLDS[0] > thresholds[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
