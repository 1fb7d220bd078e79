"""Benchmark: single usage charges per second (``ledger.charge_usage``) against a bare insert+commit.

In one run, in a scratch PostgreSQL database ``bench_ledger_*`` (migrated, dropped at the end):

(a) bare: each writer inserts one row into a one-column-plus-key table ``--ops`` times, on a connection
    checked out of its own engine's pool for each insert (as ``charge_usage`` does), through psycopg itself
    (no ORM, no portal code): what the server and the driver allow. Twice: as a transaction (BEGIN, INSERT,
    COMMIT: three round trips) and in autocommit (the INSERT alone: one round trip, as a charge).
(b) charges: each writer calls ``ledger.charge_usage`` ``--ops`` times (one transaction each, a fresh
    idempotency key each time) through its own engine and session, on its own allocation (as the worker's
    metering charges different servers' allocations). After the clock stops, every tenth key is charged a
    second time, which must change nothing and answer the first entry (a repeat is a different operation, a
    read; timing it but not counting it, as this benchmark once did, charged the charges for it).
(c) hot allocation: the same with every writer charging one shared allocation (they queue on its row
    lock; informative, not part of the goal).

Each phase runs with 1 and with ``--writers`` writers. Writers are separate processes (``multiprocessing``
with ``fork``), so the GIL is not shared; the figures are operations per second of wall time for all
writers together, from their release to the last writer's last operation, the best of ``--repeat`` tries
made in turns (bare, bare in autocommit, charges, hot allocation, then again), so that a burst of load from
elsewhere on a shared machine hits one try of each rather than one phase. Beside the rates, the CPU each
operation cost: the writer processes' own (``time.process_time``) and their PostgreSQL backends' (from
``/proc``, when the server runs on this machine), the median of the tries. On a machine whose cores are all
busy the rate ratio approaches the inverse ratio of these sums, whatever the load from elsewhere.
Afterwards the ledger invariants are checked (``benchcommon.check_invariants``), every allocation's balance
is what its charges make it, and each key has exactly one entry.

    .venv/bin/python benchmarks/bench_ledger.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres --ops 1000 --repeat 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import statistics
import time
from dataclasses import dataclass
from datetime import date

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
from sqlmodel import Session, func, select

from portal.ledger import services as ledger
from portal.ledger.models import Allocation, EntryKind, LedgerEntry

QUARTERS = [(date(2026, 1, 1), date(2026, 4, 1)), (date(2026, 4, 1), date(2026, 7, 1))]
CHARGE = 60  # seconds of GPU time per charge


def _backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the PostgreSQL backend ``pid`` has used, when the server runs on this machine."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backend_pid(engine: sa.Engine) -> int:
    pooled = engine.raw_connection()  # the pool's only connection: the one every operation checks out
    try:
        return pooled.driver_connection.info.backend_pid
    finally:
        pooled.close()


def _report_cpu(results, cpu_before: float, pid: int, server_before: float | None) -> None:
    server_after = _backend_cpu(pid)
    server = None if server_before is None or server_after is None else server_after - server_before
    results.put((time.process_time() - cpu_before, server))


def _bare_writer(url: str, tag: str, ops: int, autocommit: bool, start, results) -> None:
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    pid = _backend_pid(engine)  # connected before the clock starts, as the charge writers are
    start.wait()
    cpu, server = time.process_time(), _backend_cpu(pid)
    for i in range(ops):
        pooled = engine.raw_connection()
        connection = pooled.driver_connection
        connection.autocommit = autocommit
        connection.execute("INSERT INTO bench_bare (key, amount) VALUES (%s, %s)", (f"{tag}-{i}", i), prepare=True)
        if autocommit:
            connection.autocommit = False
        else:
            connection.commit()
        pooled.close()
    _report_cpu(results, cpu, pid, server)
    engine.dispose()


def _charge_writer(url: str, allocation_id: int, tag: str, ops: int, start, results) -> None:
    engine = sa.create_engine(url, pool_size=1, max_overflow=0)
    with Session(engine, expire_on_commit=False) as db:
        pid = _backend_pid(engine)
        start.wait()
        cpu, server = time.process_time(), _backend_cpu(pid)
        first = [ledger.charge_usage(db, allocation_id, CHARGE, idempotency_key=f"bench:{tag}:{i}") for i in range(ops)]
        _report_cpu(results, cpu, pid, server)
        # after the clock: every tenth key again, which must change nothing and answer the first entry
        for i in range(0, ops, 10):
            again = ledger.charge_usage(db, allocation_id, CHARGE, idempotency_key=f"bench:{tag}:{i}")
            assert (again.id, again.balance_after) == (first[i].id, first[i].balance_after), (again, first[i])
    engine.dispose()


#: The age of the oldest transaction on the server holding a transaction id or snapshot, other than the
#: benchmark's: while it runs, PostgreSQL may not prune the row versions that later updates leave behind, in any
#: database, so every charge's update of its allocation and rollup rows makes the next one's longer to walk.
_OLDEST_ELSEWHERE = """
    SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity
    WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND datname IS DISTINCT FROM current_database()
"""


def _oldest_transaction_elsewhere(engine: sa.Engine) -> float:
    with engine.connect() as connection:
        return float(connection.execute(sa.text(_OLDEST_ELSEWHERE)).scalar_one())


@dataclass
class Try:
    seconds: float
    #: CPU seconds of all writers' processes, and of their PostgreSQL backends (None: server not on this machine).
    client_cpu: float
    server_cpu: float | None


def _next_report(results, processes: list) -> tuple[float, float | None]:
    """The next writer's CPU report; a writer that died without one fails the benchmark instead of hanging it."""
    while True:
        try:
            return results.get(timeout=1)
        except queue.Empty:
            failed = [p.exitcode for p in processes if p.exitcode]
            assert not failed, f"writers failed: {failed}"


def _timed(target, args_per_writer: list[tuple]) -> Try:
    """Run one process per argument tuple, all released together; the wall time from release to the last."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(args_per_writer) + 1)
    results = context.Queue()
    processes = [context.Process(target=target, args=(*args, start, results)) for args in args_per_writer]
    for process in processes:
        process.start()
    start.wait(timeout=300)  # broken (an error) when a writer dies before it is ready
    clock = time.perf_counter()
    cpu = [_next_report(results, processes) for _ in processes]  # each reports when its operations are done
    elapsed = time.perf_counter() - clock
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    assert not failed, f"writers failed: {failed}"
    servers = [server for _client, server in cpu]
    return Try(elapsed, sum(client for client, _server in cpu), None if None in servers else sum(servers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--ops", type=int, default=1000, help="operations per writer and phase")
    parser.add_argument("--repeat", type=int, default=1, help="tries of every phase, alternating; the best counts")
    args = parser.parse_args()
    print("machine:", machine_summary(args.database_url))
    print(
        f"writers: processes (fork), 1 and {args.writers}; {args.ops} operations per writer and phase; "
        f"best of {args.repeat} alternating tries"
    )
    with scratch_databases(args.database_url, "ledger") as scratch:
        _name, url = scratch.create()
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(
                sa.text("CREATE TABLE bench_bare (id bigserial PRIMARY KEY, key text UNIQUE, amount bigint)")
            )
        counts = [1, args.writers]
        with Session(engine, expire_on_commit=False) as db:
            world = make_site(db, QUARTERS, capacity=10**12)
            project = make_project(db, world.pi, "Ledger benchmark")
            amount = 10**9 * HOUR // 1000

            def allocation(title: str) -> int:
                return open_allocation(db, project, world.gpu, amount, at(2026, 1, 1), at(2026, 6, 30), title).id

            own = {n: [allocation(f"own {n}.{w}") for w in range(n)] for n in counts}
            hot = {n: allocation(f"hot {n}") for n in counts}
        engine.dispose()

        rates: dict[str, float] = {}
        cpu: dict[str, list[tuple[float, float | None]]] = {}
        watcher = sa.create_engine(url, poolclass=sa.pool.NullPool)
        oldest = 0.0

        def measure(name: str, target, args_per_writer: list[tuple]) -> None:
            nonlocal oldest
            ops = len(args_per_writer) * args.ops
            tried = _timed(target, args_per_writer)
            oldest = max(oldest, _oldest_transaction_elsewhere(watcher))
            rates[name] = max(rates.get(name, 0.0), ops / tried.seconds)
            server = None if tried.server_cpu is None else tried.server_cpu / ops
            cpu.setdefault(name, []).append((tried.client_cpu / ops, server))

        for r in range(args.repeat):  # the phases alternate, so a burst of load elsewhere hits one try of each
            for n in counts:
                measure(f"bare {n}", _bare_writer, [(url, f"{r}-{n}-{w}", args.ops, False) for w in range(n)])
                auto = [(url, f"auto-{r}-{n}-{w}", args.ops, True) for w in range(n)]
                measure(f"bare autocommit {n}", _bare_writer, auto)
                charges = [(url, own[n][w], f"own-{r}-{n}-{w}", args.ops) for w in range(n)]
                measure(f"charge {n}", _charge_writer, charges)
                measure(
                    f"hot charge {n}", _charge_writer, [(url, hot[n], f"hot-{r}-{n}-{w}", args.ops) for w in range(n)]
                )

        watcher.dispose()
        print(f"oldest transaction elsewhere on the server at the end of a try: {oldest:,.0f} s")
        check_invariants(url)
        engine = sa.create_engine(url)
        with Session(engine) as db:
            for n in counts:
                for allocation_id, writers in [*((a, 1) for a in own[n]), (hot[n], n)]:
                    fresh = db.get(Allocation, allocation_id)
                    assert fresh is not None
                    assert fresh.used == writers * args.repeat * args.ops * CHARGE, (allocation_id, fresh.used)
                    assert fresh.balance == amount - fresh.used
            usage = db.exec(select(func.count()).where(LedgerEntry.kind == EntryKind.USAGE)).one()
            keys = db.exec(select(func.count(func.distinct(LedgerEntry.idempotency_key)))).one()
            assert usage == sum(counts) * 2 * args.repeat * args.ops, usage  # own + hot, each key once
            assert ledger.balance_mismatches(db) == []
        engine.dispose()
        print(f"invariants hold; {usage} usage entries, {keys} distinct keys, repeats changed nothing")

    for n in counts:
        bare, auto = rates[f"bare {n}"], rates[f"bare autocommit {n}"]
        charge, hot_rate = rates[f"charge {n}"], rates[f"hot charge {n}"]
        print(
            f"{n} writer(s): bare BEGIN+INSERT+COMMIT {bare:,.0f}/s, bare INSERT in autocommit {auto:,.0f}/s; "
            f"charges {charge:,.0f}/s ({charge / bare:.0%} / {charge / auto:.0%} of bare), "
            f"one shared allocation {hot_rate:,.0f}/s ({hot_rate / bare:.0%} / {hot_rate / auto:.0%})"
        )
        print(f"  CPU per operation, median of {args.repeat} tries (writer process + its PostgreSQL backend):")
        for name in ("bare", "bare autocommit", "charge", "hot charge"):
            client, server = _median_cpu(cpu[f"{name} {n}"])
            shown = "server not on this machine" if server is None else f"server {server:,.0f} µs"
            total = "" if server is None else f", together {client + server:,.0f} µs"
            print(f"    {name:16} client {client:,.0f} µs, {shown}{total}")


def _median_cpu(tries: list[tuple[float, float | None]]) -> tuple[float, float | None]:
    """The median client and server CPU per operation of a phase's tries, in µs."""
    client = statistics.median(c for c, _s in tries) * 1e6
    servers = [s for _c, s in tries]
    return client, None if None in servers else statistics.median(servers) * 1e6


if __name__ == "__main__":
    main()
