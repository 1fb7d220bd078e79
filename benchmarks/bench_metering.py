"""Benchmark: one notebook metering round over 10,000 running servers, by one worker and by two.

Real parts throughout: a scratch PostgreSQL database migrated with the portal's migrations (created and dropped
here), a world built through the ledger's services (a site, ``--projects`` projects with a CPU allocation each),
and ``--sessions`` running notebook sessions as the spawn check records them, each of its own hub user, all
started 10 minutes before the round. The hub is a local HTTP server speaking the part of the JupyterHub REST API
the portal's worker reads: ``GET /hub/api/users?state=active&offset=&limit=`` with the paginated JSON answer
(``items`` and ``_pagination``, asked for with ``Accept: application/jupyterhub-pagination+json``) and the service
token checked; it stops nothing (``DELETE`` answers 204, and the run checks that none was asked for).

Each worker is a process of its own running ``meter_notebooks`` (the ``meter_notebooks`` job's round) with the
portal's ``HubClient`` against that hub, as ``portal worker`` does, at one fixed ``now`` (so the expected charge
of each session is exactly 600 s):

1. one worker meters every session of database A in one round: the round's time, its SQL statements;
2. two workers start together on database B (a copy of A made before step 1) and share the round through their
   ``SKIP LOCKED`` claims: the combined rate (sessions / time until both ended) against the single worker's;
3. afterwards, on each database: a repeated round charges nothing; every session has exactly one usage entry
   (key ``hub:<session>:<interval end>``), charged 600 s; the two workers' sessions are disjoint and cover all;
   the ledger's invariants hold (balances = sum of entries).

    .venv/bin/python benchmarks/bench_metering.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from benchcommon import HOUR, check_invariants, machine_summary, make_project, make_site, scratch_databases
from sqlmodel import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal.compute.hub_client import PAGINATION, HubClient  # noqa: E402
from portal.compute.launch import CLAIM_BATCH, meter_notebooks  # noqa: E402
from portal.config import Settings, load_settings  # noqa: E402
from portal.db import utcnow  # noqa: E402
from portal.ledger import services as ledger  # noqa: E402
from portal.ledger.models import AllocationSource  # noqa: E402
from portal.notebook_models import NotebookSession  # noqa: E402

TOKEN = "bench-metering-token"  # noqa: S105
RAN = timedelta(minutes=10)


# --- the hub's paged user list -----------------------------------------------------------------------------


class PagedHub:
    """``GET /hub/api/users?state=active`` as JupyterHub answers it (paginated), for the given users' servers."""

    def __init__(self, users: list[dict[str, Any]]) -> None:
        self.users = users
        self.requests = 0
        self.stops: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _refuse(self) -> bool:
                if self.headers.get("Authorization") == f"token {TOKEN}":
                    return False
                self._answer(403, {"status": 403, "message": "Action is not authorized with current scopes"})
                return True

            def _answer(self, status: int, body: Any) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self._refuse():
                    return
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                if url.path != "/hub/api/users" or query.get("state") != ["active"]:
                    self._answer(404, {"status": 404, "message": "Not Found"})
                    return
                outer.requests += 1
                offset = int(query.get("offset", ["0"])[0])
                limit = min(int(query.get("limit", ["200"])[0]), 200)  # the hub's api_page_max_limit
                items = outer.users[offset : offset + limit]
                total = len(outer.users)
                following = None
                if offset + limit < total:
                    following = {
                        "offset": offset + limit,
                        "limit": limit,
                        "url": f"/hub/api/users?state=active&offset={offset + limit}&limit={limit}",
                    }
                if PAGINATION in self.headers.get("Accept", ""):
                    body: Any = {
                        "items": items,
                        "_pagination": {"offset": offset, "limit": limit, "total": total, "next": following},
                    }
                else:
                    body = items
                self._answer(200, body)

            def do_DELETE(self) -> None:
                if self._refuse():
                    return
                outer.stops.append(self.path)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def hub_users(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hub's user models (JupyterHub 5's shape, trimmed to what matters) of the sessions' servers."""
    users = []
    for row in rows:
        started = row["started_at"].isoformat().replace("+00:00", "Z")
        server = {
            "name": row["server_name"],
            "ready": True,
            "pending": None,
            "started": started,
            "last_activity": started,
            "url": f"/user/{row['hub_user']}/{row['server_name']}/",
            "progress_url": f"/hub/api/users/{row['hub_user']}/servers/{row['server_name']}/progress",
            "user_options": {"allocation": row["allocation_id"], "profile": "cpu", "hours": 10},
        }
        users.append(
            {
                "kind": "user",
                "name": row["hub_user"],
                "admin": False,
                "groups": [],
                "server": None,
                "pending": None,
                "last_activity": started,
                "servers": {row["server_name"]: server},
            }
        )
    return users


# --- the world --------------------------------------------------------------------------------------------------


def seed(url: str, sessions: int, projects: int, now: datetime) -> list[dict[str, Any]]:
    """A site, ``projects`` projects with a CPU allocation each, ``sessions`` running sessions spread over them."""
    engine = sa.create_engine(url)
    today = now.date()
    quarters = sorted({ledger.quarter_of(today + timedelta(days=d)) for d in (-40, 0, 40)})
    with Session(engine, expire_on_commit=False) as db:
        world = make_site(db, quarters, capacity=1_000_000_000 * HOUR)
        allocations = []
        for p in range(projects):
            project = make_project(db, world.pi, f"Metering bench {p}")
            allocations.append(
                ledger.open_allocation(
                    db,
                    None,
                    project=project,
                    resource=world.cpu,
                    amount=100_000 * HOUR,
                    starts_at=now - timedelta(days=1),
                    ends_at=now + timedelta(days=30),
                    source=AllocationSource.AWARD,
                    title=f"cpu {p}",
                )
            )
        started = now - RAN
        rows = []
        for i in range(sessions):
            allocation = allocations[i * projects // sessions]  # neighbouring sessions share an allocation
            rows.append(
                {
                    "user_id": world.pi.id,
                    "project_id": allocation.project_id,
                    "allocation_id": allocation.id,
                    "hub_user": f"student{i:05d}",
                    "server_name": f"a{allocation.id}-1",
                    "profile": "cpu",
                    "gpus": 0,
                    "cpus": 1,
                    "max_seconds": 10 * HOUR,
                    "requested_at": started,
                    "started_at": started,
                    "stop_reason": "",
                    "charged_seconds": 0,
                    "charged_from_slurm": False,
                }
            )
        db.execute(sa.insert(NotebookSession.__table__), rows)
        db.commit()
    with engine.connect() as connection:
        connection.execute(sa.text("ANALYZE"))
        connection.commit()
    engine.dispose()
    return rows


# --- a worker process -------------------------------------------------------------------------------------------


def worker_settings(url: str, hub_url: str, instance: Path) -> Settings:
    return load_settings(
        env="test",
        instance_path=instance,
        database_url=url,
        secret_key="bench-secret-key",  # noqa: S106
        oidc_providers=[],
        hub_url=hub_url,
        hub_api_token=TOKEN,
    )


def run_worker(url: str, hub_url: str, now: str, go_at: float, batch: int) -> None:
    """One worker's round (``--worker``): prints its report as JSON on stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = worker_settings(url, hub_url, Path(tmp))
        engine = sa.create_engine(url)
        statements = 0

        def count(*_args: Any) -> None:
            nonlocal statements
            statements += 1

        sa.event.listen(engine, "before_cursor_execute", count)
        client = HubClient.from_settings(settings)
        with engine.connect():
            pass  # the connection is made before the clock starts, as in a running worker
        time.sleep(max(0.0, go_at - time.time()))
        began, cpu = time.time(), time.process_time()
        with Session(engine, expire_on_commit=False) as db:
            report = meter_notebooks(
                db,
                settings,
                client,
                datetime.fromisoformat(now),
                fresh_for=timedelta(seconds=settings.worker_interval_seconds / 2),
                batch=batch,
            )
        ended, cpu = time.time(), time.process_time() - cpu
        engine.dispose()
    out = {
        "began": began,
        "ended": ended,
        "seconds": ended - began,
        "cpu_seconds": cpu,
        "charged": sorted(report.charged),
        "stopped": len(report.stopped),
        "statements": statements,
        "pid": os.getpid(),
    }
    print(json.dumps(out))


def workers(url: str, hub_url: str, now: datetime, count: int, batch: int) -> tuple[list[dict[str, Any]], float]:
    """``count`` worker processes started together; their reports and the time from the start until the last
    one ended."""
    go_at = time.time() + 3.0  # after every process has imported the portal and connected
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", url, hub_url, now.isoformat(), str(go_at), str(batch)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    reports = []
    for process in processes:
        out, _ = process.communicate(timeout=900)
        if process.returncode != 0:
            raise SystemExit(f"a worker failed (exit status {process.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports, max(r["ended"] for r in reports) - min(r["began"] for r in reports)


# --- checks -----------------------------------------------------------------------------------------------------


def check_charged_once(url: str, sessions: int) -> None:
    """Every session charged exactly once for its interval, its ``charged_seconds`` moved to it, and the ledger's
    invariants (balances = sum of entries)."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        per_session = connection.execute(
            sa.text(
                "SELECT count(*) AS entries, count(DISTINCT split_part(idempotency_key, ':', 2)) AS sessions "
                "FROM ledger_entries WHERE kind = 'usage' AND idempotency_key LIKE 'hub:%'"
            )
        ).one()
        seconds = connection.execute(
            sa.text("SELECT charged_seconds, count(*) FROM notebook_sessions GROUP BY charged_seconds")
        ).all()
        used = connection.execute(sa.text("SELECT sum(used) FROM allocations")).scalar_one()
    engine.dispose()
    expected = int(RAN.total_seconds())
    assert per_session.entries == sessions == per_session.sessions, per_session
    assert [tuple(row) for row in seconds] == [(expected, sessions)], seconds
    assert used == sessions * expected, used
    check_invariants(url)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, hub_url, now, go_at, batch = sys.argv[2:7]
        run_worker(url, hub_url, now, float(go_at), int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (user with CREATEDB)")
    parser.add_argument("--sessions", type=int, default=10_000, help="running notebook sessions (default 10,000)")
    parser.add_argument("--projects", type=int, default=500, help="projects (allocations) they run on (default 500)")
    parser.add_argument("--batch", type=int, default=CLAIM_BATCH, help=f"sessions per claim (default {CLAIM_BATCH})")
    args = parser.parse_args()

    print(machine_summary(args.database_url), flush=True)
    now = utcnow().replace(microsecond=0)
    with scratch_databases(args.database_url, "metering") as scratch:
        name_a, url_a = scratch.create("a")
        clock = time.perf_counter()
        rows = seed(url_a, args.sessions, args.projects, now)
        print(f"seeded {args.sessions} running sessions on {args.projects} allocations in "
              f"{time.perf_counter() - clock:.1f} s", flush=True)  # fmt: skip
        _name_b, url_b = scratch.create("b", template=name_a)
        hub = PagedHub(hub_users(rows))
        try:
            (one,), _ = workers(url_a, hub.url, now, 1, args.batch)
            print(f"one worker: {one['seconds']:.2f} s ({one['cpu_seconds']:.1f} s CPU), "
                  f"{len(one['charged'])} charged, "
                  f"{one['statements']} SQL statements, {hub.requests} hub pages", flush=True)  # fmt: skip
            pages_one = hub.requests
            two, two_wall = workers(url_b, hub.url, now, 2, args.batch)
            print(f"two workers: {two_wall:.2f} s until both ended; "
                  f"{[len(r['charged']) for r in two]} charged, {[round(r['seconds'], 2) for r in two]} s each "
                  f"({[round(r['cpu_seconds'], 1) for r in two]} s CPU), "
                  f"{[r['statements'] for r in two]} SQL statements, {hub.requests - pages_one} hub pages "
                  "(the round's list is read once and shared)", flush=True)  # fmt: skip
            pages_two = hub.requests - pages_one
            (again_a,), _ = workers(url_a, hub.url, now, 1, args.batch)
            (again_b,), _ = workers(url_b, hub.url, now, 1, args.batch)
        finally:
            hub.stop()
        assert len(one["charged"]) == args.sessions and one["stopped"] == 0
        first, second = (set(r["charged"]) for r in two)
        assert first and second and not first & second, "the two workers metered disjoint, non-empty shares"
        assert len(first | second) == args.sessions
        assert not again_a["charged"] and not again_b["charged"], "a repeated round charges nothing"
        assert not hub.stops, hub.stops[:5]
        check_charged_once(url_a, args.sessions)
        check_charged_once(url_b, args.sessions)
        print("checks: each session charged once (600 s), shares disjoint, repeated round charged nothing, "
              "ledger invariants hold", flush=True)  # fmt: skip
    one_rate = args.sessions / one["seconds"] * 60
    two_rate = args.sessions / two_wall * 60
    print()
    print("| measurement | figure |")
    print("| --- | --- |")
    print(f"| one worker, one round of {args.sessions:,} sessions | {one['seconds']:.1f} s "
          f"({one_rate:,.0f} sessions/min; {one['cpu_seconds']:.1f} s CPU in the worker; "
          f"{one['statements']} SQL statements, {pages_one} hub pages) |")  # fmt: skip
    print(f"| two workers (two processes), the same round | {two_wall:.1f} s until both ended "
          f"({two_rate:,.0f} sessions/min; shares {len(first)} + {len(second)}; {pages_two} hub pages) |")  # fmt: skip
    print(f"| two workers / one worker | {two_rate / one_rate:.2f}x |")
    print(f"| repeated round (nothing new to charge) | {again_a['seconds']:.1f} s, 0 charged |")


if __name__ == "__main__":
    main()
