"""Metrics in Prometheus's format and structured logs: what operators watch, in one place.

- ``/metrics`` (portal) answers only with ``Authorization: Bearer <PORTAL_METRICS_TOKEN>``; without the
  setting it is 404. Several gunicorn workers share their metrics through ``PROMETHEUS_MULTIPROC_DIR``
  (prometheus_client's multiprocess mode; ``portal/gunicorn_conf.py`` empties the folder at start and marks
  dead workers). ``portal worker`` serves its own metrics on ``PORTAL_WORKER_METRICS_PORT`` behind the same
  token, so that two containers never share one folder (their process ids would collide).
- Logs: ``PORTAL_LOG_FORMAT=json`` writes one JSON object per line (python-json-logger) with ``request_id``;
  a request's id is a sane incoming ``X-Request-ID`` or a new one, and goes back in the response header.

The domain code records events through the small functions below (one line at each place), never by
touching the metric objects.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, Response, abort, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from pythonjsonlogger.json import JsonFormatter

from portal.config import Settings

# --- the metrics ---------------------------------------------------------------------------------------------

REQUEST_SECONDS = Histogram(
    "portal_http_request_duration_seconds",
    "Time to answer a request, by Flask endpoint, method and status code.",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
LEDGER_ENTRIES = Counter(
    "portal_ledger_entries_written",
    "Ledger entries written, by kind (award, purchase, usage, transfer, ...), including any whose "
    "transaction was rolled back afterwards.",
    ["kind"],
)
STRIPE_WEBHOOKS = Counter(
    "portal_stripe_webhooks",
    "Stripe webhook deliveries by outcome (fulfilled, duplicate, bad signature, ...).",
    ["outcome"],
)
NEWEST_USAGE = Gauge(
    "portal_metering_newest_usage_end_timestamp_seconds",
    "End time (Unix seconds) of the newest usage charged, per source (slurm, agent, hub).",
    ["source"],
    multiprocess_mode="max",
)
HUB_SPAWN_CHECKS = Counter(
    "portal_hub_spawn_checks",
    "The hub's spawn checks by outcome (accepted, refused, unauthorised, invalid).",
    ["outcome"],
)
HUB_SPAWNS = Counter(
    "portal_hub_spawns",
    "Notebook servers the spawn check accepted, by profile and outcome (started, not started).",
    ["profile", "outcome"],
)
HUB_SPAWN_SECONDS = Histogram(
    "portal_hub_spawn_duration_seconds",
    "Seconds from a notebook's spawn check until the portal saw its server ready at the hub, by profile.",
    ["profile"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
WORKER_JOB_RUNS = Counter(
    "portal_worker_job_runs", "Runs of ``portal worker``'s jobs by outcome (ok, failed).", ["job", "outcome"]
)
WORKER_JOB_SECONDS = Histogram(
    "portal_worker_job_duration_seconds",
    "Duration of ``portal worker``'s job runs.",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)

CAPACITY = Gauge(
    "portal_capacity_units",
    "Base units a resource can deliver in its current capacity period (GPU- or core-seconds, bytes), per site "
    "and resource; reported by ``portal worker``.",
    ["site", "resource"],
    multiprocess_mode="max",
)
CAPACITY_RESERVED = Gauge(
    "portal_capacity_reserved_units",
    "Base units of the current capacity period reserved by awards and purchases, per site and resource; reported "
    "by ``portal worker``.",
    ["site", "resource"],
    multiprocess_mode="max",
)

#: The metering lag a scrape reports is computed from this gauge at scrape time (see ``MeteringLag``).
LAG_NAME = "portal_metering_lag_seconds"
_newest_lock = threading.Lock()
_newest_seen: dict[str, float] = {}


#: The counter of each entry kind (an ``EntryKind`` or its value), looked up once: ``labels()`` cost a charge
#: more than the increment.
_entry_counters: dict[object, Counter] = {}


def ledger_entries_written(kind: object, count: int = 1) -> None:
    counter = _entry_counters.get(kind)
    if counter is None:
        counter = _entry_counters.setdefault(kind, LEDGER_ENTRIES.labels(kind=str(kind)))
    counter.inc(count)


def stripe_webhook_handled(outcome: str) -> None:
    STRIPE_WEBHOOKS.labels(outcome=outcome).inc()


def usage_charged(source: object, newest_end: datetime) -> None:
    """Usage from ``source`` that ended at ``newest_end`` (the newest of a batch) has been charged."""
    stamp = newest_end.timestamp()
    with _newest_lock:
        stamp = max(stamp, _newest_seen.get(str(source), stamp))
        _newest_seen[str(source)] = stamp
    NEWEST_USAGE.labels(source=str(source)).set(stamp)


def hub_server_started(profile: str, waited: timedelta) -> None:
    """The portal saw a spawned server ready ``waited`` after the spawn check (the hub's own ``started`` is
    set before the check, so the duration is the portal's: bounded by how often it looks)."""
    HUB_SPAWNS.labels(profile=profile, outcome="started").inc()
    HUB_SPAWN_SECONDS.labels(profile=profile).observe(max(0.0, waited.total_seconds()))


def hub_server_never_started(profile: str) -> None:
    HUB_SPAWNS.labels(profile=profile, outcome="not started").inc()


def worker_job_ran(job: str, seconds: float, *, failed: bool) -> None:
    WORKER_JOB_RUNS.labels(job=job, outcome="failed" if failed else "ok").inc()
    WORKER_JOB_SECONDS.labels(job=job).observe(seconds)


#: ``portal worker``'s state for the scrape-time metrics of ``WorkerState`` (empty in the web processes).
_worker_lock = threading.Lock()
_heartbeat: list[float] = []
_job_schedule: dict[str, tuple[int, float | None]] = {}


def worker_alive() -> None:
    """The worker's loop made progress (a job or one of its items began or ended): its health check passes."""
    with _worker_lock:
        _heartbeat[:] = [time.time()]


def worker_seconds_since_progress() -> float | None:
    with _worker_lock:
        return time.time() - _heartbeat[0] if _heartbeat else None


def worker_job_schedule(job: str, every: int, last_success: datetime | None) -> None:
    """Job ``job`` runs every ``every`` seconds and last succeeded (in any worker) at ``last_success``."""
    with _worker_lock:
        _job_schedule[job] = (every, last_success.timestamp() if last_success else None)


def capacity_in_use(site: str, resource: str, capacity: int, reserved: int) -> None:
    CAPACITY.labels(site=site, resource=resource).set(capacity)
    CAPACITY_RESERVED.labels(site=site, resource=resource).set(reserved)


#: The spawn check's answers and what they mean for the spawn.
_SPAWN_OUTCOMES = {200: "accepted", 403: "refused", 401: "unauthorised"}


class MeteringLag:
    """Adds ``portal_metering_lag_seconds{source}`` = now - the newest usage end charged, computed when
    scraped (so a stalled import shows a growing lag even though nothing is charged)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            LAG_NAME, "Seconds since the end of the newest usage charged, per source.", labels=["source"]
        )
        now = time.time()
        for metric in self.source.collect():
            yield metric
            if metric.name == NEWEST_USAGE._name:
                newest: dict[str, float] = {}
                for sample in metric.samples:
                    source = sample.labels.get("source", "")
                    newest[source] = max(sample.value, newest.get(source, sample.value))
                for source, stamp in sorted(newest.items()):
                    lag.add_metric([source], max(0.0, now - stamp))
        yield lag


class WorkerState:
    """``portal worker``'s progress, computed when scraped: the loop's last heartbeat, and per job the last
    success (in any worker, from the shared schedule) and its lag (seconds overdue: now - last success - interval,
    so it grows while a job fails or nobody runs it)."""

    def collect(self) -> Iterator[Metric]:
        with _worker_lock:
            heartbeat = list(_heartbeat)
            schedule = dict(_job_schedule)
        if not heartbeat and not schedule:
            return
        now = time.time()
        alive = GaugeMetricFamily(
            "portal_worker_heartbeat_timestamp_seconds",
            "When the worker's loop last made progress (a job or one of its items began or ended).",
        )
        if heartbeat:
            alive.add_metric([], heartbeat[0])
        yield alive
        success = GaugeMetricFamily(
            "portal_worker_job_last_success_timestamp_seconds",
            "When the job last succeeded, in any worker.",
            labels=["job"],
        )
        lag = GaugeMetricFamily(
            "portal_worker_job_lag_seconds",
            "Seconds the job's next successful run is overdue: now - last success - its interval (0 while on time).",
            labels=["job"],
        )
        for job, (every, last) in sorted(schedule.items()):
            if last is not None:
                success.add_metric([job], last)
                lag.add_metric([job], max(0.0, now - last - every))
        yield success
        yield lag


def registry() -> CollectorRegistry:
    """All metrics of this process, or of every process sharing ``PROMETHEUS_MULTIPROC_DIR``."""
    collected = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source = CollectorRegistry()
        multiprocess.MultiProcessCollector(source)
    else:
        source = REGISTRY
    collected.register(MeteringLag(source))
    collected.register(WorkerState())
    return collected


def token_accepted(authorization: str, token: str) -> bool:
    kind, _, given = authorization.partition(" ")
    return bool(token) and kind.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


# --- request ids and JSON logs ---------------------------------------------------------------------------------

#: Incoming ids are kept when they look like ids (proxies' UUIDs, trace ids), never arbitrary text.
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class RequestIdFilter(logging.Filter):
    """Puts the current request's id (or ``-`` outside a request) on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def configure_logging(settings: Settings) -> None:
    """Root handlers write text or JSON lines (``PORTAL_LOG_FORMAT``), each with the request id."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
        if settings.log_format == "json":
            handler.setFormatter(
                JsonFormatter(
                    "{levelname}{name}{message}{request_id}",
                    style="{",
                    timestamp="time",
                    rename_fields={"levelname": "level", "name": "logger"},
                )
            )
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))


def _start_request() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if SANE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.request_started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    endpoint = request.endpoint or "unmatched"
    seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
    REQUEST_SECONDS.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).observe(seconds)
    if endpoint == "api.spawn_check":
        HUB_SPAWN_CHECKS.labels(outcome=_SPAWN_OUTCOMES.get(response.status_code, "invalid")).inc()
    logging.getLogger("portal.request").info(
        "%s %s %s %.1f ms",
        request.method,
        request.path,
        response.status_code,
        seconds * 1000,
        extra={"method": request.method, "path": request.path, "status": response.status_code},
    )
    return response


def metrics_response(settings: Settings) -> Response:
    if not settings.metrics_token:
        abort(404)
    if not token_accepted(request.headers.get("Authorization", ""), settings.metrics_token):
        return Response("Send 'Authorization: Bearer <PORTAL_METRICS_TOKEN>'.\n", 401, {"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(registry()), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask, settings: Settings) -> None:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:  # every metric has labels, so no process writes there before this point
        os.makedirs(folder, exist_ok=True)
    configure_logging(settings)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.add_url_rule("/metrics", "metrics", lambda: metrics_response(settings), methods=["GET"])


# --- the worker's metrics endpoint ----------------------------------------------------------------------------

#: The worker's health check fails once its loop has made no progress for its interval plus this long.
WORKER_STALLED_GRACE_SECONDS = 600


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_worker_metrics(
    settings: Settings,
    host: str = "0.0.0.0",  # noqa: S104 - inside its container
    *,
    stalled_after: float | None = None,
) -> WSGIServer | None:
    """``portal worker``'s ``/metrics`` on ``PORTAL_WORKER_METRICS_PORT`` (0: none), in a daemon thread, and its
    health check ``/healthz``: 200 while the loop made progress in the last ``stalled_after`` seconds, 503 (saying
    how long it has been) once it is stuck, so that the container turns unhealthy although the thread answers."""
    if not settings.worker_metrics_port:
        return None
    stalled_after = stalled_after or settings.worker_interval_seconds + WORKER_STALLED_GRACE_SECONDS

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            quiet = worker_seconds_since_progress()
            if quiet is not None and quiet <= stalled_after:
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            said = "has not started" if quiet is None else f"has made no progress for {quiet:.0f} s"
            return [f"the worker's loop {said} (limit {stalled_after:.0f} s)\n".encode()]
        if not settings.metrics_token or environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found\n"]
        if not token_accepted(environ.get("HTTP_AUTHORIZATION", ""), settings.metrics_token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"Send 'Authorization: Bearer <PORTAL_METRICS_TOKEN>'.\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(registry())]

    server = make_server(host, settings.worker_metrics_port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    logging.getLogger("portal.worker").info("metrics on port %s", server.server_port)
    return server
