"""What operators watch: ``/metrics`` after real traffic, request ids, JSON logs, the worker's metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from portal_standin.devstack import free_port, patience, wait_for_http
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, col, select

from portal import create_app
from portal.compute.hub_client import HubServer
from portal.compute.launch import meter_notebooks
from portal.identity.services import create_agent_token
from portal.ledger import services as ledger
from portal.ledger.models import ResourceKind
from portal.notebook_models import NotebookSession
from tests.factories import open_now, plan_capacity_around_now
from tests.ledger_world import HOUR, make_world, open_q1, person

TOKEN = "metrics-test-token"
PORTAL = str(Path(sys.executable).parent / "portal")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered_app(make_settings) -> Iterator[Flask]:
    app = create_app(make_settings(metrics_token=TOKEN))
    yield app
    app.extensions["portal.engine"].dispose()


def test_metrics_are_not_served_until_a_token_is_configured(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer anything"}).status_code == 404


def test_metrics_refuse_callers_without_the_token(metered_app: Flask) -> None:
    client = metered_app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "portal_http_request_duration_seconds" not in response.get_data(as_text=True)


def signed(payload: bytes, secret: str) -> str:
    stamp = int(time.time())
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def test_metrics_count_what_real_traffic_did(metered_app: Flask, login) -> None:
    client = metered_app.test_client()
    settings = metered_app.extensions["portal.settings"]
    before = scrape(client)

    for _ in range(3):
        assert client.get("/").status_code == 200
    assert client.get("/no-such-page").status_code == 404
    login(client)

    # A site agent reports two pieces of usage: two usage entries, and the agent's metering lag.
    with Session(metered_app.extensions["portal.engine"], expire_on_commit=False) as db:
        world = make_world(db)
        allocation = open_q1(db, world, 10)
        _token, agent_token = create_agent_token(
            db, None, owner=person(db, "Op"), site_id=world.site.id, name="a", reason="test setup"
        )
    # the newest end any test may report: agents' clocks may run up to 5 minutes ahead, never more
    newest_end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=4)
    records = [
        {"id": f"r-{n}", "allocation_id": allocation.id, "quantity": HOUR, "user": "anna",
         "started_at": (newest_end - timedelta(hours=2)).isoformat(),
         "ended_at": (newest_end - timedelta(hours=2 - n)).isoformat()}
        for n in (1, 2)
    ]  # fmt: skip
    response = client.post(
        "/api/v1/usage", json={"records": records}, headers={"Authorization": f"Bearer {agent_token}"}
    )
    assert response.json == {"accepted": 2, "duplicates": 0}

    # Stripe: one forged delivery, one signed event the portal has no use for.
    event = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "customer.created",
                        "data": {"object": {"id": "cus_1", "object": "customer"}}}).encode()  # fmt: skip
    forged = client.post("/market/stripe/webhook", data=event, headers={"Stripe-Signature": "t=1,v1=00"})
    assert forged.status_code == 400
    good = client.post(
        "/market/stripe/webhook",
        data=event,
        headers={"Stripe-Signature": signed(event, settings.stripe_webhook_secret)},
    )
    assert good.status_code == 200

    # The hub's spawn checks: one with a wrong token, one for a user the portal does not know.
    body = {
        "user": "u999999",
        "server_name": "",
        "user_options": {"allocation": allocation.id, "profile": "cpu", "hours": 1},
    }
    assert client.post("/api/v1/hub/spawn-check", json=body, headers={"Authorization": "Bearer no"}).status_code == 401
    hub = {"Authorization": f"Bearer {settings.hub_spawn_check_token}"}
    assert client.post("/api/v1/hub/spawn-check", json=body, headers=hub).status_code == 403

    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    latency = "portal_http_request_duration_seconds_count"
    assert delta(latency, endpoint="projects.dashboard", method="GET", status="200") == 3
    assert delta(latency, endpoint="unmatched", method="GET", status="404") == 1
    assert delta(latency, endpoint="identity.callback", method="GET", status="302") == 1
    assert delta("portal_ledger_entries_written_total", kind="usage") == 2
    assert delta("portal_ledger_entries_written_total", kind="award") >= 1
    assert delta("portal_stripe_webhooks_total", outcome="bad signature") == 1
    assert delta("portal_stripe_webhooks_total", outcome="ignored") == 1
    assert delta("portal_hub_spawn_checks_total", outcome="unauthorised") == 1
    assert delta("portal_hub_spawn_checks_total", outcome="refused") == 1
    newest = newest_end.timestamp()
    assert value(after, "portal_metering_newest_usage_end_timestamp_seconds", source="agent") == newest
    lag = value(after, "portal_metering_lag_seconds", source="agent")
    assert lag == pytest.approx(max(0.0, time.time() - newest), abs=60)


@dataclass
class HubAnswering:
    """The hub's answer to ``GET /hub/api/users``: which servers are up (the real hub runs in test_notebooks)."""

    servers: list[HubServer]

    def active_servers(self) -> list[HubServer]:
        return self.servers


def test_metrics_show_notebook_spawns_their_durations_and_the_hubs_metering_lag(metered_app: Flask) -> None:
    client = metered_app.test_client()
    settings = metered_app.extensions["portal.settings"]
    before = scrape(client)
    with Session(metered_app.extensions["portal.engine"], expire_on_commit=False) as db:
        world = make_world(db)
        cpu = ledger.create_resource(
            db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
        )
        plan_capacity_around_now(db, cpu, 1000 * HOUR)
        allocation = open_now(db, world.project, cpu, 10)
        hub = {"Authorization": f"Bearer {settings.hub_spawn_check_token}"}
        for name in ("a1-1", "a1-2"):  # the hub asks before it spawns each server
            body = {"user": f"u{world.pi.id}", "server_name": name,
                    "user_options": {"allocation": allocation.id, "profile": "cpu", "hours": 1}}  # fmt: skip
            assert client.post("/api/v1/hub/spawn-check", json=body, headers=hub).status_code == 200
        sessions = db.exec(select(NotebookSession).order_by(col(NotebookSession.id))).all()
        requested = sessions[0].requested_at
        # The hub sets a server's `started` as the spawn begins, before it asks the portal; only a1-1 comes up.
        up = HubServer(f"u{world.pi.id}", "a1-1", ready=True, pending=None, started=requested, url="/user/a1-1/")
        first = meter_notebooks(db, settings, HubAnswering([up]), requested + timedelta(seconds=7))
        assert first.started == [sessions[0].id]
        later = requested + timedelta(minutes=11)
        assert meter_notebooks(db, settings, HubAnswering([up]), later).stopped == {sessions[1].id: "not started"}
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("portal_hub_spawn_checks_total", outcome="accepted") == 2
    assert delta("portal_hub_spawns_total", profile="cpu", outcome="started") == 1
    assert delta("portal_hub_spawns_total", profile="cpu", outcome="not started") == 1
    assert delta("portal_hub_spawn_duration_seconds_count", profile="cpu") == 1
    assert delta("portal_hub_spawn_duration_seconds_sum", profile="cpu") == pytest.approx(7, abs=0.01)
    assert delta("portal_hub_spawn_duration_seconds_bucket", profile="cpu", le="5.0") == 0
    assert delta("portal_hub_spawn_duration_seconds_bucket", profile="cpu", le="10.0") == 1
    assert delta("portal_ledger_entries_written_total", kind="usage") == 2  # at 7 s and at 11 min
    # The gauge keeps the newest end seen by this process: an earlier test in it may have metered a later one.
    newest = "portal_metering_newest_usage_end_timestamp_seconds"
    assert value(after, newest, source="hub") == pytest.approx(
        max(later.timestamp(), value(before, newest, source="hub")), abs=1
    )
    assert ("portal_metering_lag_seconds", frozenset({("source", "hub")})) in after


def test_every_response_carries_a_request_id(client: FlaskClient) -> None:
    kept = client.get("/healthz", headers={"X-Request-ID": "lb-4f1c2a9e-0001"})
    assert kept.headers["X-Request-ID"] == "lb-4f1c2a9e-0001"
    for insane in ("short", "has spaces in it", "x" * 200, 'quote"injected<script>'):
        replaced = client.get("/healthz", headers={"X-Request-ID": insane})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["X-Request-ID"]), insane
    first, second = client.get("/healthz"), client.get("/healthz")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def portal_env(app: Flask, **extra: str) -> dict[str, str]:
    settings = app.extensions["portal.settings"]
    return {
        **os.environ,
        "PORTAL_DATABASE_URL": settings.database_url,
        "PORTAL_SECRET_KEY": "x",
        "PORTAL_INSTANCE_PATH": str(settings.instance_path),
        "PORTAL_ENV": "test",
        "PORTAL_METRICS_TOKEN": TOKEN,
        **extra,
    }


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=patience(30))
    return err


def test_gunicorn_workers_share_their_metrics_and_log_json_with_the_request_id(app: Flask, tmp_path: Path) -> None:
    port = free_port()
    env = portal_env(app, PORTAL_LOG_FORMAT="json", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"))
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "counter_99999.db").write_bytes(b"stale from an earlier run")
    process = subprocess.Popen(
        [PORTAL, "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", process=process)
        with requests.Session() as http:
            for n in range(20):
                answer = http.get(
                    f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": f"probe-{n:04d}"}, timeout=10
                )
                assert answer.headers["X-Request-ID"] == f"probe-{n:04d}"
            http.close()
        metrics = requests.get(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        samples = parse(metrics.text)
    finally:
        err = stop(process)
    assert not (tmp_path / "prometheus" / "counter_99999.db").exists()  # emptied at start
    count = value(
        samples, "portal_http_request_duration_seconds_count", endpoint="health.healthz", method="GET", status="200"
    )
    assert count >= 20  # wait_for_http's probes count too; all workers' requests are in one answer
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == len(err.splitlines()), err[:2000]  # every line is JSON
    probe = [line for line in lines if line.get("request_id") == "probe-0007"]
    assert len(probe) == 1
    assert probe[0]["logger"] == "portal.request" and probe[0]["level"] == "INFO"
    assert probe[0]["message"].startswith("GET /healthz 200")
    assert {"time", "status", "path", "method"} <= set(probe[0])


def test_the_worker_serves_its_job_runs_and_failures_and_logs_json(app: Flask) -> None:
    port = free_port()
    broken = [{"name": "broken", "site": "nosite", "sacct": "/nonexistent/sacct", "sacctmgr": "/nonexistent/sacctmgr"}]
    env = portal_env(app, PORTAL_WORKER_METRICS_PORT=str(port), PORTAL_SLURM_CLUSTERS=json.dumps(broken),
                     PORTAL_HUB_URL=f"http://127.0.0.1:{free_port()}", PORTAL_LOG_FORMAT="json")  # fmt: skip
    process = subprocess.Popen([PORTAL, "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + patience(60)
        samples: Samples = {}
        while time.monotonic() < deadline:
            try:
                answer = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
                samples = parse(answer.text)
                if value(samples, "portal_worker_job_runs_total", job="meter_notebooks", outcome="failed"):
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        refused = requests.get(url, timeout=5)
    finally:
        err = stop(process)
    assert refused.status_code == 401
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert len(lines) == len(err.splitlines()), err[:2000]  # every line is JSON, tracebacks included
    failed = [line for line in lines if line["message"] == "job sync_slurm_accounts failed"]
    assert failed and failed[0]["level"] == "ERROR" and failed[0]["request_id"] == "-"  # no request: no id
    assert "Traceback" in failed[0]["exc_info"]
    runs = "portal_worker_job_runs_total"
    assert value(samples, runs, job="purge_stale_invitations", outcome="ok") == 1
    assert value(samples, runs, job="meter_notebooks", outcome="failed") == 1  # an unreachable hub fails the run
    assert value(samples, runs, job="sync_slurm_accounts", outcome="failed") == 1
    assert value(samples, "portal_worker_job_duration_seconds_count", job="check_balances") == 1
