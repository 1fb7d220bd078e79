"""Benchmark: the allocation page and the project page with 10 and with 1,000,000 ledger entries.

In a scratch PostgreSQL database ``bench_page_*`` (migrated with ``portal.migrations.upgrade``, dropped at
the end) the PI of two projects gets one GPU allocation in each, opened through the services:

- "small": its award and 9 usage charges through ``charge_usage_batch``: 10 entries;
- "large": its award, then ``--entries`` - 10 usage entries of 1 to 60 GPU-minutes written by one
  ``INSERT ... SELECT`` over ``generate_series`` (``balance_after`` chained with a running sum, spread over
  the days from the allocation's start to yesterday, with their ``daily_usage`` rows and the allocation's
  balance and used moved by the same total), then 9 usage charges through ``charge_usage_batch``, which
  continue the chain.

The ledger invariants are checked afterwards (balance = sum of entries, ``balance_after`` chained, used =
usage entries = daily usage), and the tables are analysed, as autovacuum would after such a load.

Then an app from ``portal.create_app`` (test settings, this database) serves, through Flask's test client
with the PI's session, each page ``--requests`` times, the pages taking turns; the median latency and the
SQL statements per request (``before_cursor_execute`` on the app's engine) are printed for each, and the
ratio large/small.

    .venv/bin/python benchmarks/bench_allocation_page.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from benchcommon import (
    HOUR,
    at,
    check_invariants,
    machine_summary,
    make_project,
    make_site,
    open_allocation,
    scratch_databases,
)
from sqlmodel import Session

from portal import create_app
from portal.config import load_settings
from portal.db import make_engine
from portal.ledger import services as ledger
from portal.ledger.services import UsageCharge

STARTS_AT = at(2026, 7, 1)
ENDS_AT = at(2027, 1, 1)
QUARTERS = [(date(2026, 7, 1), date(2026, 10, 1)), (date(2026, 10, 1), date(2027, 1, 1))]
#: Base units (GPU-seconds): 600,000 GPU-hours for the large allocation (its million charges of 1 to 60
#: GPU-minutes use about 510,000), 1,000 GPU-hours for the small one.
LARGE_AWARD = 600_000 * HOUR
SMALL_AWARD = 1_000 * HOUR
SERVICE_CHARGES = 9

BULK_ENTRIES = """
INSERT INTO ledger_entries (allocation_id, kind, amount, balance_after, idempotency_key, actor_id, reason, created_at)
SELECT :allocation_id, 'usage', -g.amount, :balance - sum(g.amount) OVER (ORDER BY g.i),
       'bench:' || :allocation_id || ':' || g.i, NULL,
       'Slurm job ' || (5000000 + g.i), g.created_at
FROM (SELECT i, 60 * (1 + (i * 7919) % 60) AS amount,
             CAST(:first AS timestamptz) + (i - 1) * (CAST(:last AS timestamptz) - CAST(:first AS timestamptz)) / :n
               AS created_at
      FROM generate_series(1, CAST(:n AS bigint)) AS i) AS g
ORDER BY g.i
"""
BULK_DAILY = """
INSERT INTO daily_usage (allocation_id, day, amount)
SELECT allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date), -sum(amount)
FROM ledger_entries WHERE allocation_id = :allocation_id AND kind = 'usage'
GROUP BY allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date)
"""
BULK_BALANCE = """
UPDATE allocations SET balance = balance - t.total, used = used + t.total
FROM (SELECT -sum(amount) AS total FROM ledger_entries WHERE allocation_id = :allocation_id AND kind = 'usage') AS t
WHERE id = :allocation_id
"""


@dataclass
class Ledger:
    label: str
    entries: int
    project_id: int = 0
    allocation_id: int = 0


@dataclass
class World:
    pi_id: int
    ledgers: list[Ledger]
    middle_entry: int = 0
    build_seconds: dict[str, float] = field(default_factory=dict)


def _service_charges(db: Session, allocation_id: int) -> None:
    today = datetime.now(UTC).date()
    charges = [
        UsageCharge(allocation_id, (i + 1) * HOUR, f"service:{allocation_id}:{i}", f"Slurm job {i}", today)
        for i in range(SERVICE_CHARGES)
    ]
    assert len(ledger.charge_usage_batch(db, charges)) == SERVICE_CHARGES


def _bulk_entries(db: Session, allocation_id: int, balance: int, n: int) -> None:
    """``n`` usage entries from the allocation's start to yesterday, with daily usage, balance and used."""
    yesterday = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    params = {"allocation_id": allocation_id, "balance": balance, "n": n, "first": STARTS_AT, "last": yesterday}
    db.execute(sa.text(BULK_ENTRIES), params)
    db.execute(sa.text(BULK_DAILY), {"allocation_id": allocation_id})
    db.execute(sa.text(BULK_BALANCE), {"allocation_id": allocation_id})
    db.commit()


def build(url: str, entries: int, analyze: bool) -> World:
    """One project per ledger size (10, 1,000 as a control, ``entries``), each with one allocation."""
    ledgers = [Ledger("10 entries", 1 + SERVICE_CHARGES), Ledger("1,000 entries", 1000)]
    ledgers.append(Ledger(f"{entries:,} entries", entries))
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as db:
        started = time.perf_counter()
        site = make_site(db, QUARTERS, capacity=2 * LARGE_AWARD)
        world = World(site.pi.id, ledgers)
        for item in ledgers:
            project = make_project(db, site.pi, f"Ledger of {item.label}")
            award = SMALL_AWARD if item.entries <= 1 + SERVICE_CHARGES else LARGE_AWARD
            allocation = open_allocation(db, project, site.gpu, award, STARTS_AT, ENDS_AT, f"H100 ({item.label})")
            item.project_id, item.allocation_id = project.id, allocation.id
            bulk = item.entries - 1 - SERVICE_CHARGES
            if bulk > 0:
                t0 = time.perf_counter()
                _bulk_entries(db, allocation.id, allocation.balance, bulk)
                world.build_seconds[f"bulk SQL for {item.label}"] = time.perf_counter() - t0
            _service_charges(db, allocation.id)
        large = ledgers[-1]
        world.middle_entry = db.execute(
            sa.text("SELECT id FROM ledger_entries WHERE allocation_id = :a ORDER BY id OFFSET :n LIMIT 1"),
            {"a": large.allocation_id, "n": large.entries // 2},
        ).scalar_one()
        counts = dict(
            db.execute(sa.text("SELECT allocation_id, count(*) FROM ledger_entries GROUP BY allocation_id")).all()
        )
        world.build_seconds["total build"] = time.perf_counter() - started
    assert counts == {item.allocation_id: item.entries for item in ledgers}, counts
    t0 = time.perf_counter()
    check_invariants(url)
    world.build_seconds["invariant check"] = time.perf_counter() - t0
    if analyze:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            t0 = time.perf_counter()
            connection.execute(sa.text("VACUUM ANALYZE"))
            world.build_seconds["VACUUM ANALYZE"] = time.perf_counter() - t0
    engine.dispose()
    return world


@dataclass
class Page:
    label: str
    path: str
    latencies: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    sql_seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)


def measure(url: str, world: World, requests: int, warmup: int, show_queries: bool) -> list[Page]:
    with tempfile.TemporaryDirectory() as instance:
        settings = load_settings(
            env="test",
            database_url=url,
            secret_key="bench",  # noqa: S106 (a throwaway test app)
            base_url="http://127.0.0.1:5000",
            instance_path=Path(instance),
        )
        app = create_app(settings)
        engine = app.extensions["portal.engine"]
        counter = {"queries": 0, "sql": 0.0}
        captured: list[str] | None = None

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):
            counter["queries"] += 1
            if captured is not None:
                captured.append(" ".join(statement.split()))
            conn.info["bench_t0"] = time.perf_counter()

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):
            counter["sql"] += time.perf_counter() - conn.info.pop("bench_t0")

        client = app.test_client()
        with client.session_transaction() as session:
            session["_user_id"] = str(world.pi_id)
            session["_fresh"] = True
        pages = []
        for item in world.ledgers:
            path = f"/projects/{item.project_id}/allocations/{item.allocation_id}"
            pages.append(Page(f"allocation page, {item.label}", path))
        for item in world.ledgers:
            pages.append(Page(f"project page, {item.label}", f"/projects/{item.project_id}"))
        large = world.ledgers[-1]
        path = f"/projects/{large.project_id}/allocations/{large.allocation_id}/entries?before={world.middle_entry}"
        pages.append(Page(f"older entries, {large.label}", path))
        for round_ in range(warmup + requests):
            for page in pages:
                counter["queries"], counter["sql"] = 0, 0.0
                started = time.perf_counter()
                response = client.get(page.path)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (page.path, response.status_code, response.data[:500])
                if round_ >= warmup:
                    page.latencies.append(elapsed)
                    page.queries.append(counter["queries"])
                    page.sql_seconds.append(counter["sql"])
                    page.sizes.append(len(response.data))
        captured = []
        body = client.get(pages[2].path).get_data(as_text=True)
        assert body.count('<td class="num">') >= 100 and "older-row" in body, "the large page shows no full page"
        if show_queries:
            print(f"SQL of one request for {pages[2].path} ({pages[2].label}):")
            for number, statement in enumerate(captured, start=1):
                print(f"  {number:>2}. {statement[:150]}{' ...' if len(statement) > 150 else ''}")
            print()
        engine.dispose()
    return pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--entries", type=int, default=1_000_000, help="ledger entries on the large allocation")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per page first")
    parser.add_argument("--show-queries", action="store_true", help="print the SQL of one large allocation page")
    parser.add_argument(
        "--no-analyze", action="store_true", help="skip VACUUM ANALYZE after the load (the server's autovacuum may)"
    )
    args = parser.parse_args()
    print(machine_summary(args.database_url))
    print(f"large allocation: {args.entries:,} entries; {args.requests} timed requests per page\n")
    with scratch_databases(args.database_url, "page") as scratch:
        _name, url = scratch.create()
        world = build(url, args.entries, analyze=not args.no_analyze)
        print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in world.build_seconds.items()))
        print("invariants hold (balance = sum of entries, balance_after chained, used = usage = daily usage)\n")
        pages = measure(url, world, args.requests, args.warmup, args.show_queries)

    print(f"{'page':<40} {'median ms':>9} {'p90 ms':>7} {'min ms':>7} {'SQL ms':>7} {'queries':>8} {'KiB':>6}")
    for page in pages:
        ordered = sorted(page.latencies)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        queries = sorted(set(page.queries))
        print(
            f"{page.label:<40} {1000 * statistics.median(page.latencies):>9.1f} {1000 * p90:>7.1f} "
            f"{1000 * ordered[0]:>7.1f} {1000 * statistics.median(page.sql_seconds):>7.1f} "
            f"{'/'.join(map(str, queries)):>8} {statistics.median(page.sizes) / 1024:>6.1f}"
        )
    print()
    n = len(world.ledgers)
    for offset, what in ((0, "allocation page"), (n, "project page")):
        large = pages[offset + n - 1]
        for small in pages[offset : offset + n - 1]:
            ratio = statistics.median(large.latencies) / statistics.median(small.latencies)
            same = set(small.queries) == set(large.queries)
            print(
                f"{what}, {world.ledgers[-1].label} vs {small.label.split(', ')[1]}: latency ratio {ratio:.2f} "
                f"(target < 1.5: {'met' if ratio < 1.5 else 'NOT met'}); queries per request "
                f"{'/'.join(map(str, sorted(set(small.queries))))} vs {'/'.join(map(str, sorted(set(large.queries))))}"
                f" ({'same' if same else 'DIFFERENT'})"
            )


if __name__ == "__main__":
    main()
