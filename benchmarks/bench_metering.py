"""Benchmark: notebook metering rounds over 10,000 running servers, by one worker and by two.

Real parts throughout: a scratch PostgreSQL database migrated with the portal's migrations (created and dropped
here), a world built through the ledger's services (a site, ``--projects`` projects with a CPU allocation each),
and ``--sessions`` running notebook sessions as the spawn check records them, each of its own hub user, all
started 10 minutes before the first round. The hub is a local HTTP server speaking the part of the JupyterHub REST
API the portal's worker reads: ``GET /hub/api/users?state=active&offset=&limit=`` with the paginated JSON answer
(``items`` and ``_pagination``, asked for with ``Accept: application/jupyterhub-pagination+json``; at most
``--hub-page`` users a page, as hub_config sets JupyterHub's ``api_page_max_limit``) and the service token
checked; it stops nothing (``DELETE`` answers 204, and the run checks that none was asked for).

Each worker is a process of its own that runs ``meter_notebooks`` (the ``meter_notebooks`` job's round) with the
portal's ``HubClient`` against that hub, as ``portal worker`` does: it imports the portal and connects once, then
meters a round whenever it is told to, at the round time it is given (an interval apart, so every charge is
known: 600 s in the first round, an interval in each later one). One worker meters database A and two workers
database B (a copy of A made before the first round); round by round the one and the two take turns, so that
both meet the same machine, and every worker has started before any round's clock starts:

1. each round's time until the last worker ended, its SQL statements and the hub pages read, for the one and the
   two (whose round's hub listing is shared); the first round is the processes' first (the code still to warm
   up), the later ones are a running worker's, and their sum is the figure of the scaling;
2. afterwards, on each database: a repeated round charges nothing; each round's shares are disjoint and cover
   every session; every session has exactly one usage entry per round (key ``hub:<session>:<interval end>``) and
   ``charged_seconds`` at the sum; the ledger's invariants hold (balances = sum of entries).

    PYTHONPATH=standin .venv/bin/python benchmarks/bench_metering.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from benchcommon import HOUR, check_invariants, machine_summary, make_project, make_site, scratch_databases
from sqlmodel import Session

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal.compute.hub_client import LIST_PAGE, PAGINATION, HubClient  # noqa: E402
from portal.compute.launch import CLAIM_BATCH, meter_notebooks  # noqa: E402
from portal.config import Settings, load_settings  # noqa: E402
from portal.db import utcnow  # noqa: E402
from portal.ledger import services as ledger  # noqa: E402
from portal.ledger.models import AllocationSource  # noqa: E402
from portal.notebook_models import NotebookSession  # noqa: E402
from portal.worker import tune_collector  # noqa: E402
from tests.json_server import Answer, Asked, JsonServer  # noqa: E402

TOKEN = "bench-metering-token"  # noqa: S105
RAN = timedelta(minutes=10)


# --- the hub's paged user list -----------------------------------------------------------------------------


class PagedHub:
    """``GET /hub/api/users?state=active`` as JupyterHub answers it (paginated), for the given users' servers."""

    def __init__(self, users: list[dict[str, Any]], max_limit: int) -> None:
        self.users = users
        #: JupyterHub's ``api_page_max_limit``: the most users one page holds.
        self.max_limit = max_limit
        self.requests = 0
        self.stops: list[str] = []
        self.http = JsonServer(self.answer)

    def answer(self, asked: Asked) -> Answer:
        if asked.headers.get("Authorization") != f"token {TOKEN}":
            return Answer(403, {"status": 403, "message": "Action is not authorized with current scopes"})
        if asked.method == "DELETE":
            self.stops.append(asked.target)
            return Answer(204)
        query = asked.query
        if asked.method != "GET" or asked.path != "/hub/api/users" or query.get("state") != ["active"]:
            return Answer(404, {"status": 404, "message": "Not Found"})
        self.requests += 1
        offset = int(query.get("offset", ["0"])[0])
        limit = min(int(query.get("limit", ["50"])[0]), self.max_limit)  # the hub caps it
        items = self.users[offset : offset + limit]
        if PAGINATION not in asked.headers.get("Accept", ""):
            return Answer(200, items)
        following = None
        if offset + limit < len(self.users):
            following = {
                "offset": offset + limit,
                "limit": limit,
                "url": f"/hub/api/users?state=active&offset={offset + limit}&limit={limit}",
            }
        pagination = {"offset": offset, "limit": limit, "total": len(self.users), "next": following}
        return Answer(200, {"items": items, "_pagination": pagination})

    @property
    def url(self) -> str:
        return self.http.url

    def stop(self) -> None:
        self.http.stop()


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


def run_worker(url: str, hub_url: str, batch: int) -> None:
    """A worker process (``--worker``), as ``portal worker`` runs: imports and connects once, prints ``ready``,
    then meters one round for each round time read from stdin (one ISO 8601 line each) and prints its report
    as one JSON line; ends at the end of stdin."""
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
            pass  # the connection is made before the first round, as in a running worker
        tune_collector()  # as `portal worker` does before its first round
        print("ready", flush=True)
        for line in sys.stdin:
            now = datetime.fromisoformat(line.strip())
            statements = 0
            began, cpu = time.time(), time.process_time()
            with Session(engine, expire_on_commit=False) as db:
                report = meter_notebooks(
                    db,
                    settings,
                    client,
                    now,
                    fresh_for=timedelta(seconds=settings.worker_interval_seconds / 2),
                    batch=batch,
                )
            ended, cpu = time.time(), time.process_time() - cpu
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
            print(json.dumps(out), flush=True)
        engine.dispose()


class Workers:
    """``count`` worker processes on one database; ``round(now)`` starts a round in all of them at once and
    returns their reports and the time from the first one's start until the last one ended."""

    def __init__(self, url: str, hub_url: str, count: int, batch: int) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", url, hub_url, str(batch)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        for process in self.processes:
            self._line(process, "ready")

    @staticmethod
    def _line(process: subprocess.Popen[str], expected: str | None = None) -> str:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line or (expected is not None and line.strip() != expected):
            process.kill()
            raise SystemExit(f"a worker failed (exit status {process.wait()})")
        return line

    def round(self, now: datetime) -> tuple[list[dict[str, Any]], float]:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(now.isoformat() + "\n")
            process.stdin.flush()
        reports = [json.loads(self._line(process)) for process in self.processes]
        return reports, max(r["ended"] for r in reports) - min(r["began"] for r in reports)

    def close(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
            if process.wait(timeout=60) != 0:
                raise SystemExit(f"a worker failed (exit status {process.returncode})")


# --- checks -----------------------------------------------------------------------------------------------------


def check_charged(url: str, sessions: int, rounds: int, interval: timedelta) -> None:
    """Every session charged exactly once in each round (600 s in the first, an interval in each later one), its
    ``charged_seconds`` moved to the last, and the ledger's invariants (balances = sum of entries)."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        per_session = connection.execute(
            sa.text(
                "SELECT count(*) AS entries, count(DISTINCT split_part(idempotency_key, ':', 2)) AS sessions, "
                "count(DISTINCT idempotency_key) AS keys "
                "FROM ledger_entries WHERE kind = 'usage' AND idempotency_key LIKE 'hub:%'"
            )
        ).one()
        seconds = connection.execute(
            sa.text("SELECT charged_seconds, count(*) FROM notebook_sessions GROUP BY charged_seconds")
        ).all()
        used = connection.execute(sa.text("SELECT sum(used) FROM allocations")).scalar_one()
    engine.dispose()
    expected = int((RAN + (rounds - 1) * interval).total_seconds())
    assert per_session.entries == per_session.keys == sessions * rounds, per_session
    assert per_session.sessions == sessions, per_session
    assert [tuple(row) for row in seconds] == [(expected, sessions)], seconds
    assert used == sessions * expected, used
    check_invariants(url)


#: One setting's round: the workers' reports, the time until the last one ended, the hub pages read.
Round = tuple[list[dict[str, Any]], float, int]


def meter(url_one: str, url_two: str, hub: PagedHub, times: list[datetime], batch: int) -> list[tuple[Round, Round]]:
    """One worker on ``url_one`` and two on ``url_two`` (a copy) meter a round at each of ``times``, the one and
    the two in turn, so that both meet the same machine (the other database's autovacuum, the ledger's growth);
    per round the one's and the two's reports, the time until the last ended and the hub pages read. In each round
    the workers' shares are disjoint and cover every session, and a repeated round at the end charges nothing."""
    pools = {"one worker": Workers(url_one, hub.url, 1, batch), "two workers": Workers(url_two, hub.url, 2, batch)}
    rounds = []
    try:
        for number, now in enumerate(times, 1):
            both = {}
            # the one before the two in odd rounds, after them in even ones: a drift of the machine's speed within
            # the run (the other database's autovacuum, say) meets both alike
            for label in sorted(pools, reverse=number % 2 == 0):
                pages = hub.requests
                reports, wall = pools[label].round(now)
                both[label] = (reports, wall, hub.requests - pages)
                shares = [set(r["charged"]) for r in reports]
                assert all(shares) and sum(map(len, shares)) == len(set().union(*shares)), "disjoint shares"
                assert not any(r["stopped"] for r in reports)
                each = [round(r["seconds"], 2) for r in reports]
                cpu = [round(r["cpu_seconds"], 2) for r in reports]
                print(f"{label}, round {number}: {wall:.2f} s until the last ended; {[len(s) for s in shares]} "
                      f"charged, {each} s each ({cpu} s CPU), {[r['statements'] for r in reports]} SQL statements, "
                      f"{both[label][2]} hub pages", flush=True)  # fmt: skip
            rounds.append((both["one worker"], both["two workers"]))
        for pool in pools.values():
            again, _ = pool.round(times[-1])
            assert not any(r["charged"] for r in again), "a repeated round charges nothing"
    finally:
        for pool in pools.values():
            pool.close()
    return rounds


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, hub_url, batch = sys.argv[2:5]
        run_worker(url, hub_url, int(batch))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (user with CREATEDB)")
    parser.add_argument("--sessions", type=int, default=10_000, help="running notebook sessions (default 10,000)")
    parser.add_argument("--projects", type=int, default=500, help="projects (allocations) they run on (default 500)")
    parser.add_argument("--batch", type=int, default=CLAIM_BATCH, help=f"sessions per claim (default {CLAIM_BATCH})")
    parser.add_argument(
        "--hub-page",
        type=int,
        default=LIST_PAGE,
        help=f"the hub's api_page_max_limit (default {LIST_PAGE}, as hub_config/jupyterhub_config.py sets it)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds each worker process meters (default 6)")
    args = parser.parse_args()

    print(machine_summary(args.database_url), flush=True)
    now = utcnow().replace(microsecond=0)
    interval = timedelta(seconds=Settings.model_fields["worker_interval_seconds"].default)
    times = [now + k * interval for k in range(args.rounds)]
    with scratch_databases(args.database_url, "metering") as scratch:
        name_a, url_a = scratch.create("a")
        clock = time.perf_counter()
        rows = seed(url_a, args.sessions, args.projects, now)
        print(f"seeded {args.sessions} running sessions on {args.projects} allocations in "
              f"{time.perf_counter() - clock:.1f} s", flush=True)  # fmt: skip
        _name_b, url_b = scratch.create("b", template=name_a)
        hub = PagedHub(hub_users(rows), args.hub_page)
        try:
            rounds = meter(url_a, url_b, hub, times, args.batch)
        finally:
            hub.stop()
        assert not hub.stops, hub.stops[:5]
        check_charged(url_a, args.sessions, args.rounds, interval)
        check_charged(url_b, args.sessions, args.rounds, interval)
        print("checks: each session charged once a round (600 s, then an interval), shares disjoint, "
              "repeated round charged nothing, ledger invariants hold", flush=True)  # fmt: skip
    print()
    print(f"| round (each worker process meters {args.rounds} in turn) | one worker | two workers | two / one |")
    print("| --- | ---: | ---: | ---: |")
    for number, ((reports_1, wall_1, _), (reports_2, wall_2, pages_2)) in enumerate(rounds, 1):
        what = "first (the processes just started)" if number == 1 else f"{number}"
        cpu_2 = " + ".join(f"{r['cpu_seconds']:.1f}" for r in reports_2)
        print(f"| {what} | {wall_1:.2f} s ({reports_1[0]['cpu_seconds']:.1f} s CPU) | {wall_2:.2f} s "
              f"({cpu_2} s CPU; {pages_2} hub pages) | "
              f"{wall_1 / wall_2:.2f}x |")  # fmt: skip
    if len(rounds) > 1:
        later_1 = sum(one[1] for one, _two in rounds[1:])
        later_2 = sum(two[1] for _one, two in rounds[1:])
        ratios = sorted(one[1] / two[1] for one, two in rounds[1:])
        print(f"| rounds 2-{args.rounds} together (a running worker's rounds) | {later_1:.2f} s | {later_2:.2f} s | "
              f"**{later_1 / later_2:.2f}x** (median of the rounds {statistics.median(ratios):.2f}x) |")  # fmt: skip


if __name__ == "__main__":
    main()
