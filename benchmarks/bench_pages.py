"""Benchmark: pages that grow with data, at a small and at a large scale.

Two scratch PostgreSQL databases ``bench_pages_*`` (migrated with ``portal.migrations.upgrade``, dropped at the
end) hold the same shape at two sizes: one organisation whose admin, the PI, leads ``--small`` (60) or
``--large`` (2,000) projects, each with 4 more members and 5 GPU allocations of 100 ledger entries (an award
and 99 usage charges with their daily usage): 30,000 entries at the small scale, 1,000,000 at the large.
The site, its resources, the users and the organisation are made through the services; the projects,
memberships, allocations, entries and daily usage by ``INSERT ... SELECT generate_series`` (no ORM), with the
ledger invariants checked afterwards and the tables analysed, as autovacuum would.

The small scale holds more than one page of projects (50), so both scales show the same amount on every
page and only the data behind it differs. An app from ``portal.create_app`` (test settings) serves, through
Flask's test client with the PI's session, each page ``--requests`` times, the pages taking turns:
the dashboard, the organisation page, a project page, one of its allocation pages and ``/api/v1/projects``
(a bearer token of the PI). It prints the median latency, SQL statements per request and size per page and
scale, and the ratio large/small (goal: at most 1.2).

    .venv/bin/python benchmarks/bench_pages.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa
from benchcommon import HOUR, at, check_invariants, machine_summary, make_site, person, scratch_databases
from flask.testing import FlaskClient
from sqlmodel import Session

from portal import create_app
from portal.config import load_settings
from portal.db import make_engine
from portal.identity.models import User
from portal.identity.services import create_api_token, start_web_session
from portal.projects import services as projects

STARTS_AT = at(2026, 7, 1)
ENDS_AT = at(2027, 1, 1)
QUARTERS = [(date(2026, 7, 1), date(2026, 10, 1)), (date(2026, 10, 1), date(2027, 1, 1))]
ALLOCATIONS_PER_PROJECT = 5
ENTRIES_PER_ALLOCATION = 100
MEMBERS_PER_PROJECT = 4
AWARD = 1_000 * HOUR

BULK = [
    """INSERT INTO projects (organisation_id, title, description, created_at)
       SELECT :org, 'Project ' || lpad(CAST((i * 7919) % :n AS text), 5, '0'), 'bench', now()
       FROM generate_series(1, :n) AS i""",
    """INSERT INTO project_memberships (project_id, user_id, role, joined_at)
       SELECT p.id, :pi, 'pi', now() FROM projects p WHERE p.organisation_id = :org""",
    """INSERT INTO project_memberships (project_id, user_id, role, joined_at)
       SELECT p.id, u, 'member', now() FROM projects p, unnest(CAST(:members AS int[])) AS u
       WHERE p.organisation_id = :org""",
    """INSERT INTO allocations (project_id, resource_id, source, state, starts_at, ends_at, title, balance,
                                credited, used, reserved, notified_threshold, created_at)
       SELECT p.id, :resource, 'award', 'active', :starts, :ends, 'H100 share ' || k, :award, :award, 0, :award, 0,
              now()
       FROM projects p, generate_series(1, :per) AS k WHERE p.organisation_id = :org""",
    """INSERT INTO ledger_entries (allocation_id, kind, amount, balance_after, idempotency_key, actor_id, reason,
                                   created_at)
       SELECT a.id, CASE WHEN e.i = 1 THEN 'award' ELSE 'usage' END, e.amount,
              sum(e.amount) OVER (PARTITION BY a.id ORDER BY e.i), 'bench:' || a.id || ':' || e.i, NULL,
              CASE WHEN e.i = 1 THEN 'award' ELSE 'Slurm job ' || e.i END,
              CAST(:starts AS timestamptz) + e.i * interval '1 day'
       FROM allocations a,
            LATERAL (SELECT i, CASE WHEN i = 1 THEN :award ELSE -60 * (1 + (i * 7919 + a.id) % 60) END AS amount
                     FROM generate_series(1, :entries) AS i) AS e
       ORDER BY a.id, e.i""",
    """INSERT INTO daily_usage (allocation_id, day, amount)
       SELECT allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date), -sum(amount)
       FROM ledger_entries WHERE kind = 'usage'
       GROUP BY allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date)""",
    """UPDATE allocations SET balance = balance - t.total, used = t.total
       FROM (SELECT allocation_id, -sum(amount) AS total FROM ledger_entries WHERE kind = 'usage'
             GROUP BY allocation_id) AS t
       WHERE id = t.allocation_id""",
]


@dataclass
class World:
    label: str
    projects: int
    pi_id: int = 0
    org_id: int = 0
    project_id: int = 0
    allocation_id: int = 0
    token: str = ""
    build_seconds: float = 0.0
    entries: int = 0


def build(url: str, world: World) -> None:
    engine = make_engine(url)
    started = time.perf_counter()
    with Session(engine, expire_on_commit=False) as db:
        site = make_site(db, QUARTERS, capacity=10**15)
        members = [person(db, f"Member{i}") for i in range(MEMBERS_PER_PROJECT)]
        org = projects.create_organisation(db, site.pi, name="Bench Lab", kind="university", country="LV")
        _row, world.token = create_api_token(db, site.pi, name="bench", scopes=["read"], ttl_days=1)
        params = {
            "org": org.id,
            "n": world.projects,
            "pi": site.pi.id,
            "members": [m.id for m in members],
            "resource": site.gpu.id,
            "starts": STARTS_AT,
            "ends": ENDS_AT,
            "award": AWARD,
            "per": ALLOCATIONS_PER_PROJECT,
            "entries": ENTRIES_PER_ALLOCATION,
        }
        for statement in BULK:
            db.execute(sa.text(statement), params)
        db.commit()
        world.pi_id, world.org_id = site.pi.id, org.id
        # a project from the middle of the list, and its first allocation
        world.project_id = db.execute(
            sa.text("SELECT id FROM projects ORDER BY title, id OFFSET :n LIMIT 1"), {"n": world.projects // 2}
        ).scalar_one()
        world.allocation_id = db.execute(
            sa.text("SELECT min(id) FROM allocations WHERE project_id = :p"), {"p": world.project_id}
        ).scalar_one()
        world.entries = db.execute(sa.text("SELECT count(*) FROM ledger_entries")).scalar_one()
    check_invariants(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE"))
    world.build_seconds = time.perf_counter() - started
    engine.dispose()


@dataclass
class Page:
    label: str
    path: str
    latencies: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


@dataclass
class Client:
    """A test client of an app on one world's database, logged in as its PI, counting statements."""

    world: World
    client: FlaskClient
    engine: sa.Engine
    counter: dict[str, int]
    pages: list[Page]


def open_client(url: str, world: World, instance: str) -> Client:
    settings = load_settings(
        env="test",
        database_url=url,
        secret_key="bench",  # noqa: S106 (a throwaway test app)
        base_url="http://127.0.0.1:5000",
        instance_path=Path(instance) / world.label,
        log_level="WARNING",
    )
    app = create_app(settings)
    engine = app.extensions["portal.engine"]
    counter = {"queries": 0}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _count(*_args) -> None:
        counter["queries"] += 1

    client = app.test_client()
    with Session(engine) as db:  # the server-side session a login makes
        pi = db.get(User, world.pi_id)
        assert pi is not None
        key = start_web_session(db, pi, None, lifetime=timedelta(days=1))
    with client.session_transaction() as session:
        session.update({"_user_id": str(world.pi_id), "_fresh": True, "web_session": key})
    pages = [
        Page("dashboard", "/"),
        Page("organisation page", f"/organisations/{world.org_id}"),
        Page("project page", f"/projects/{world.project_id}"),
        Page("allocation page", f"/projects/{world.project_id}/allocations/{world.allocation_id}"),
        Page("/api/v1/projects", "/api/v1/projects"),
    ]
    return Client(world, client, engine, counter, pages)


def measure(clients: list[Client], requests: int, warmup: int) -> None:
    """Each page in turn, at each scale in turn, so that both scales meet the same load on a shared machine."""
    for round_ in range(warmup + requests):
        for index in range(len(clients[0].pages)):
            for c in clients:
                page = c.pages[index]
                c.counter["queries"] = 0
                headers = {"Authorization": f"Bearer {c.world.token}"} if page.path.startswith("/api/") else {}
                started = time.perf_counter()
                response = c.client.get(page.path, headers=headers)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (page.path, response.status_code, response.data[:300])
                if round_ >= warmup:
                    page.latencies.append(elapsed)
                    page.queries.append(c.counter["queries"])
                    page.sizes.append(len(response.data))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--small", type=int, default=60, help="projects at the small scale")
    parser.add_argument("--large", type=int, default=2000, help="projects at the large scale")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per page first")
    args = parser.parse_args()
    print(machine_summary(args.database_url))
    worlds = [World("small", args.small), World("large", args.large)]
    with scratch_databases(args.database_url, "pages") as scratch, tempfile.TemporaryDirectory() as instance:
        clients = []
        for world in worlds:
            _name, url = scratch.create(world.label)
            build(url, world)
            print(
                f"{world.label}: {world.projects:,} projects x {ALLOCATIONS_PER_PROJECT} allocations, "
                f"{world.entries:,} ledger entries; built, checked and analysed in {world.build_seconds:.1f} s"
            )
            clients.append(open_client(url, world, instance))
        measure(clients, args.requests, args.warmup)
        for c in clients:
            c.engine.dispose()
    print(f"\n{args.requests} timed requests per page and scale, taking turns; latency in ms, size in KiB")
    print(
        f"{'page':<18} {'small med':>9} {'large med':>9} {'ratio':>6} {'small min':>9} {'large min':>9} {'ratio':>6}"
        f" {'statements':>10} {'KiB':>10}"
    )
    small_pages, large_pages = clients[0].pages, clients[1].pages
    for small, large in zip(small_pages, large_pages, strict=True):
        ratio = statistics.median(large.latencies) / statistics.median(small.latencies)
        least = min(large.latencies) / min(small.latencies)
        queries = f"{'/'.join(map(str, sorted(set(small.queries))))}|{'/'.join(map(str, sorted(set(large.queries))))}"
        sizes = f"{statistics.median(small.sizes) / 1024:.1f}|{statistics.median(large.sizes) / 1024:.1f}"
        print(
            f"{small.label:<18} {1000 * statistics.median(small.latencies):>9.1f} "
            f"{1000 * statistics.median(large.latencies):>9.1f} {ratio:>6.2f} {1000 * min(small.latencies):>9.1f} "
            f"{1000 * min(large.latencies):>9.1f} {least:>6.2f} {queries:>10} {sizes:>10}"
            f"  {'ok' if ratio <= 1.2 else 'OVER 1.2'}"
        )


if __name__ == "__main__":
    main()
