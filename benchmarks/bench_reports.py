"""Benchmark: the operators' dashboards with 10 and with 1,000,000 usage records.

In a scratch PostgreSQL database ``bench_reports_*`` (migrated with ``portal.migrations.upgrade``, dropped at
the end), a factory is built through the services: two sites with a GPU and a CPU resource each, capacity
planned for 2026-Q3 and Q4, 40 organisations (four sectors, five countries) with one project and one GPU
allocation each, an offering per resource and 40 paid orders with their invoices (``issue_invoice``, as the
webhook would), one credit note, and 10 usage charges through ``charge_usage_batch``.

An admin's session then requests each dashboard page, every CSV export and every JSON API table
``--requests`` times (the pages taking turns); median latency and SQL statements per request are kept.

Then ``--records`` - 10 more usage entries are written by one ``INSERT ... SELECT`` over ``generate_series``
per allocation (1 to 60 GPU-minutes each, spread from 2026-07-01 to yesterday, ``balance_after`` chained),
with their ``daily_usage`` rows and balances, as in ``bench_allocation_page.py``; the monthly rollup is
recomputed with ``portal.reports.rollups.rebuild`` (timed: the backfill an operator runs once) and checked
with ``rollup_differences`` (timed: the nightly check); the ledger invariants are checked, the tables
analysed, and the same requests are measured again. For comparison, the capacity table's "used" column is
also computed straight from ``ledger_entries`` (what a dashboard without rollups would do per view).

    .venv/bin/python benchmarks/bench_reports.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from benchcommon import HOUR, at, check_invariants, machine_summary, person, scratch_databases
from sqlmodel import Session

from portal import create_app
from portal.config import load_settings
from portal.db import make_engine
from portal.identity.models import FactoryRole
from portal.identity.services import create_api_token, grant_role
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationSource, ResourceKind
from portal.ledger.services import UsageCharge
from portal.market import services as market
from portal.market.models import InvoiceKind, Order, OrderState
from portal.projects import services as projects
from portal.reports import rollups
from portal.reports.services import TABLES

QUARTERS = [(date(2026, 7, 1), date(2026, 10, 1)), (date(2026, 10, 1), date(2027, 1, 1))]
STARTS_AT, ENDS_AT = at(2026, 7, 1), at(2027, 1, 1)
ORGANISATIONS = 40
#: GPU-seconds per allocation: room for 25,000 charges of 1 to 60 minutes (about 12,700 hours).
AWARD = 15_000 * HOUR
SECTORS = ["university", "public_body", "sme", "large_company"]
COUNTRIES = ["PL", "LT", "LV", "EE", "DE"]
SMALL_CHARGES = 10

BULK_ENTRIES = """
INSERT INTO ledger_entries (allocation_id, kind, amount, balance_after, idempotency_key, actor_id, reason, created_at)
SELECT :allocation_id, 'usage', -g.amount, :balance - sum(g.amount) OVER (ORDER BY g.i),
       'bench:' || :allocation_id || ':' || g.i, NULL, 'Slurm job ' || (5000000 + g.i), g.created_at
FROM (SELECT i, 60 * (1 + (i * 7919) % 60) AS amount,
             CAST(:first AS timestamptz) + (i - 1) * (CAST(:last AS timestamptz) - CAST(:first AS timestamptz)) / :n
               AS created_at
      FROM generate_series(1, CAST(:n AS bigint)) AS i) AS g
ORDER BY g.i
"""
BULK_DAILY = """
INSERT INTO daily_usage (allocation_id, day, amount)
SELECT allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date), -sum(amount)
FROM ledger_entries WHERE kind = 'usage' AND idempotency_key LIKE 'bench:%'
GROUP BY allocation_id, CAST(created_at AT TIME ZONE 'UTC' AS date)
ON CONFLICT (allocation_id, day) DO UPDATE SET amount = daily_usage.amount + excluded.amount
"""
BULK_BALANCE = """
UPDATE allocations SET balance = balance - t.total, used = used + t.total
FROM (SELECT allocation_id, -sum(amount) AS total FROM ledger_entries
      WHERE kind = 'usage' AND idempotency_key LIKE 'bench:%' GROUP BY allocation_id) AS t
WHERE id = t.allocation_id
"""
#: The capacity table's "used" column without the rollup: every usage entry of the quarter, per resource.
DIRECT_USED = """
SELECT a.resource_id, -sum(e.amount) FROM ledger_entries e JOIN allocations a ON a.id = e.allocation_id
WHERE e.kind = 'usage' AND e.created_at >= :start AND e.created_at < :end GROUP BY a.resource_id
"""


@dataclass
class World:
    admin_id: int
    token: str
    allocations: list[tuple[int, int]]  # (id, balance)
    build_seconds: dict[str, float] = field(default_factory=dict)


def build(url: str) -> World:
    engine = make_engine(url)
    started = time.perf_counter()
    with Session(engine, expire_on_commit=False) as db:
        resources = []
        for code, name, country in (("waw", "Warsaw", "PL"), ("rix", "Riga", "LV")):
            site = ledger.create_site(
                db, None, code=code, name=name, city=name, country=country, reason="benchmark data"
            )
            gpu = ledger.create_resource(
                db,
                None,
                site,
                code="h100",
                name="H100 GPU-hours",
                kind=ResourceKind.GPU,
                gpu_model="H100",
                reason="benchmark data",
            )
            cpu = ledger.create_resource(
                db, None, site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="benchmark data"
            )
            for starts_on, ends_on in QUARTERS:
                for resource in (gpu, cpu):
                    capacity = ORGANISATIONS * AWARD
                    ledger.set_capacity(
                        db,
                        None,
                        resource,
                        starts_on=starts_on,
                        ends_on=ends_on,
                        capacity=capacity,
                        reason="benchmark data",
                    )
            resources.append(gpu)
        admin = person(db, "Admin")
        grant_role(db, None, admin, FactoryRole.ADMIN, reason="benchmark data")
        _token, plain = create_api_token(db, admin, name="bench", scopes=["reports:read"], ttl_days=30)
        owner = person(db, "Owner")
        settings = load_settings(env="test")
        offerings = [
            market.create_offering(
                db,
                None,
                resource=r,
                title=f"H100 hours {i}",
                price_cents=250,
                max_quantity=1000,
                reason="benchmark data",
            )
            for i, r in enumerate(resources)
        ]
        allocations, invoices = [], []
        for i in range(ORGANISATIONS):
            org = projects.create_organisation(
                db,
                owner,
                name=f"Organisation {i}",
                kind=SECTORS[i % len(SECTORS)],
                country=COUNTRIES[i % len(COUNTRIES)],
            )
            project = projects.create_project(db, owner, org, title=f"Project {i}")
            allocation = ledger.open_allocation(
                db,
                None,
                project=project,
                resource=resources[i % 2],
                amount=AWARD,
                starts_at=STARTS_AT,
                ends_at=ENDS_AT,
                source=AllocationSource.AWARD if i % 3 else AllocationSource.PURCHASE,
                title=f"H100 of project {i}",
            )
            allocations.append(allocation)
            order = Order(
                organisation_id=org.id,
                project_id=project.id,
                buyer_id=owner.id,
                offering_id=offerings[i % 2].id,
                quantity=10 + i,
                unit_price_cents=250,
                net_cents=250 * (10 + i),
                vat_basis_points=2_100,
                vat_cents=250 * (10 + i) * 21 // 100,
                gross_cents=250 * (10 + i) * 121 // 100,
                vat_scheme="domestic",
                vat_country=org.country,
                state=OrderState.PAID,
                allocation_id=allocation.id,
                paid_at=datetime.now(UTC),
            )
            db.add(order)
            db.flush()
            invoice = market.issue_invoice(
                db, settings, order, InvoiceKind.INVOICE, quantity=order.quantity, net_cents=order.net_cents
            )
            invoices.append((order, invoice))
            db.commit()
        order, invoice = invoices[0]
        market.issue_invoice(
            db, settings, order, InvoiceKind.CREDIT_NOTE, quantity=-2, net_cents=-500, corrects=invoice
        )
        db.commit()
        today = datetime.now(UTC).date()
        charges = [
            UsageCharge(allocations[i].id, (i + 1) * HOUR, f"small:{uuid.uuid4().hex}", "Slurm job", today)
            for i in range(SMALL_CHARGES)
        ]
        assert len(ledger.charge_usage_batch(db, charges)) == SMALL_CHARGES
        balances = dict(db.execute(sa.select(Allocation.id, Allocation.balance)).all())
        world = World(admin.id, plain, [(a.id, balances[a.id]) for a in allocations])
    engine.dispose()
    world.build_seconds["build through the services"] = time.perf_counter() - started
    return world


def load_usage(url: str, world: World, records: int) -> None:
    """``records`` usage entries over the allocations, with daily usage and balances; then the rollup."""
    engine = make_engine(url)
    per = records // len(world.allocations)
    extra = records - per * len(world.allocations)
    yesterday = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    with Session(engine) as db:
        t0 = time.perf_counter()
        for index, (allocation_id, balance) in enumerate(world.allocations):
            n = per + (extra if index == 0 else 0)
            params = {"allocation_id": allocation_id, "balance": balance, "n": n, "first": STARTS_AT, "last": yesterday}
            db.execute(sa.text(BULK_ENTRIES), params)
        db.execute(sa.text(BULK_DAILY))
        db.execute(sa.text(BULK_BALANCE))
        db.commit()
        world.build_seconds[f"bulk SQL for {records:,} usage entries"] = time.perf_counter() - t0
        total = db.execute(sa.text("SELECT count(*) FROM ledger_entries WHERE kind = 'usage'")).scalar_one()
        assert total == records + SMALL_CHARGES, total
        t0 = time.perf_counter()
        usage_rows, revenue_rows = rollups.rebuild(db)
        world.build_seconds[f"portal reports rebuild ({usage_rows} usage months, {revenue_rows} revenue months)"] = (
            time.perf_counter() - t0
        )
    t0 = time.perf_counter()
    check_invariants(url)
    world.build_seconds["ledger invariants"] = time.perf_counter() - t0
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        t0 = time.perf_counter()
        connection.execute(sa.text("VACUUM ANALYZE"))
        world.build_seconds["VACUUM ANALYZE"] = time.perf_counter() - t0
    with Session(engine) as db:
        t0 = time.perf_counter()
        differences = rollups.rollup_differences(db)
        world.build_seconds["portal reports check"] = time.perf_counter() - t0
        assert differences == [], differences[:5]
    engine.dispose()


@dataclass
class Page:
    path: str
    latencies: dict[str, list[float]] = field(default_factory=dict)
    queries: dict[str, set[int]] = field(default_factory=dict)


def pages_to_measure() -> list[Page]:
    query = "?quarter=2026-Q3"
    paths = [f"/reports{query}", f"/reports/revenue{query}", f"/reports/calls{query}"]
    paths += [f"/reports/{name}.csv{query}" for name in TABLES]
    paths += [f"/api/v1/reports/{name}{query}" for name in TABLES]
    return [Page(p) for p in paths]


def measure(url: str, world: World, pages: list[Page], label: str, requests: int, warmup: int) -> None:
    with tempfile.TemporaryDirectory() as instance:
        settings = load_settings(
            env="test",
            database_url=url,
            secret_key="bench",  # noqa: S106 (a throwaway test app)
            base_url="http://127.0.0.1:5000",
            instance_path=Path(instance),
            log_level="WARNING",
        )
        app = create_app(settings)
        engine = app.extensions["portal.engine"]
        counter = {"queries": 0}

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _count(*_args):
            counter["queries"] += 1

        client = app.test_client()
        with client.session_transaction() as session:
            session["_user_id"] = str(world.admin_id)
            session["_fresh"] = True
        headers = {"Authorization": f"Bearer {world.token}"}
        client.get(pages[-1].path, headers=headers)  # the token's first use is recorded once
        for round_ in range(warmup + requests):
            for page in pages:
                counter["queries"] = 0
                started = time.perf_counter()
                response = client.get(page.path, headers=headers if page.path.startswith("/api/") else {})
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (page.path, response.status_code, response.data[:300])
                if round_ >= warmup:
                    page.latencies.setdefault(label, []).append(elapsed)
                    page.queries.setdefault(label, set()).add(counter["queries"])
        engine.dispose()


def direct_used_ms(url: str) -> float:
    engine = make_engine(url)
    with engine.connect() as connection:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            connection.execute(sa.text(DIRECT_USED), {"start": at(2026, 7, 1), "end": at(2026, 10, 1)}).all()
            times.append(time.perf_counter() - t0)
    engine.dispose()
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--records", type=int, default=1_000_000, help="usage records in the large run")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page and size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per page first")
    args = parser.parse_args()
    print(machine_summary(args.database_url))
    small, large = f"{SMALL_CHARGES} records", f"{args.records + SMALL_CHARGES:,} records"
    pages = pages_to_measure()
    with scratch_databases(args.database_url, "reports") as scratch:
        _name, url = scratch.create()
        world = build(url)
        measure(url, world, pages, small, args.requests, args.warmup)
        small_direct = direct_used_ms(url)
        load_usage(url, world, args.records)
        measure(url, world, pages, large, args.requests, args.warmup)
        large_direct = direct_used_ms(url)
    print("build: " + ", ".join(f"{k} {v:.1f} s" for k, v in world.build_seconds.items()))
    print(f"{args.requests} timed requests per page and size; medians\n")
    print(f"{'request':<52} {'ms, ' + small:>18} {'ms, ' + large:>24} {'ratio':>6} {'queries':>9}")
    for page in pages:
        a, b = statistics.median(page.latencies[small]), statistics.median(page.latencies[large])
        qa, qb = sorted(page.queries[small]), sorted(page.queries[large])
        same = "same" if qa == qb else "DIFFERENT"
        queries = "/".join(map(str, qa)) + (" " if qa == qb else " vs " + "/".join(map(str, qb)))
        print(f"{page.path:<52} {1000 * a:>18.1f} {1000 * b:>24.1f} {b / a:>6.2f} {queries:>9} {same}")
    print(
        f"\nwithout the rollup, the capacity table's 'used' alone from ledger_entries: "
        f"{small_direct:.1f} ms with {small}, {large_direct:.1f} ms with {large}"
    )


if __name__ == "__main__":
    main()
