"""Benchmark: charging a large sacct file with ``import_sacct`` on PostgreSQL, against bare inserts.

For each file size (default 100k, 300k and --lines lines) a child process:

1. creates a scratch database ``bench_sacct_*``, migrates it with ``portal.migrations.upgrade`` and builds,
   through the services, a site with a GPU and a CPU resource, 50 projects with one allocation each and
   50 Slurm accounts mapped to them with ``map_slurm_account``;
2. writes a sacct file (``--parsable2 --noheader``, the portal's field order) with job rows, ``.batch``,
   ``.extern`` and some ``.0`` step rows, array tasks, a few running/pending/never-started/node-failed jobs;
3. times ``import_sacct`` streaming from the file (after a ``CHECKPOINT``), sampling the resident set size;
4. checks the result: every expected job charged once with its usage record, and the ledger invariants
   (balance = sum of entries, ``balance_after`` chained, used = usage entries = daily usage).

Then a second child process builds the same world in a fresh database and times the bare insert of the
same rows (one ledger entry and one usage record per charged job, ids given), each into its own copy,
after a ``CHECKPOINT``, ``--repeat`` times (the median counts): ``executemany`` in transactions of
``BATCH_SIZE`` jobs into the same tables, ``COPY`` into the same tables, and ``COPY`` into plain tables
without indexes or constraints.

Separate processes keep each import's peak RSS (``getrusage``) its own, and the phases independent.

    .venv/bin/python benchmarks/bench_sacct_import.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres --lines 1000000
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import sqlalchemy as sa
from benchcommon import (
    at,
    check_invariants,
    checkpoint,
    libpq_url,
    machine_summary,
    make_project,
    make_site,
    open_allocation,
    peak_rss_mib,
    rss_mib,
    scratch_databases,
)
from sqlmodel import Session, func, select

from portal.db import make_engine
from portal.ledger.models import LedgerEntry
from portal.metering import services as metering
from portal.metering.models import UsageRecord

CLUSTER = "bench"
ACCOUNTS = 50
GPU_ACCOUNTS = 40  # the other 10 draw from CPU allocations
USERS_PER_ACCOUNT = 5
#: Jobs end between these instants (inside the allocations' dates).
WINDOW_START = datetime(2026, 8, 15, tzinfo=UTC)
WINDOW_DAYS = 90
#: Average sacct lines per job with this mix (measured), to spread the jobs over the window.
LINES_PER_JOB = 3.1
ALLOCATION_AMOUNT = 10**13
CAPACITY = 10**15

# State of a job row -> weight. "NEVER" is a job cancelled before it started.
STATES = {
    "COMPLETED": 780,
    "FAILED": 70,
    "CANCELLED": 40,
    "TIMEOUT": 30,
    "OUT_OF_MEMORY": 10,
    "PREEMPTED": 5,
    "NODE_FAIL": 5,
    "RUNNING": 30,
    "PENDING": 20,
    "NEVER": 10,
}
CHARGED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "PREEMPTED"}
STEP_STATE = {
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "CANCELLED": "CANCELLED",
    "TIMEOUT": "CANCELLED",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "PREEMPTED": "CANCELLED",
    "NODE_FAIL": "NODE_FAIL",
    "RUNNING": "RUNNING",
}


@dataclass(frozen=True)
class Charged:
    """What the import is expected to charge for one job (and what the bare inserts write)."""

    account: int
    amount: int
    job_id: str
    raw: str
    user: str
    start: datetime
    end: datetime


def _t(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S") if value is not None else "Unknown"


def generate(n_lines: int, steps: bool = True, seed: int = 42) -> Iterator[tuple[str, Charged | None]]:
    """Exactly ``n_lines`` sacct lines, each with the charge its job row should produce (None for others).

    Jobs arrive in job id order over ``WINDOW_DAYS`` days, as sacct lists them. Without ``steps`` only the
    job rows are written, as ``sacct -X`` (which ``portal slurm pull-sacct`` runs) writes them.
    """
    rng = random.Random(seed)  # noqa: S311 (test data, reproducible)
    states, weights = list(STATES), list(STATES.values())
    jobs_expected = max(1.0, n_lines / (LINES_PER_JOB if steps else 1.0))
    step = WINDOW_DAYS * 86_400 / jobs_expected
    submit = WINDOW_START - timedelta(days=1)
    next_id = 4_000_000
    written = 0
    array: list[tuple[str, int]] = []  # pending tasks of the current array: (JobID, JobIDRaw)
    while written < n_lines:
        if array:
            job_id, raw = array.pop(0)
        elif rng.random() < 0.02:
            size = rng.randint(4, 32)
            array = [(f"{next_id}_{k}", next_id + k) for k in range(size)]
            next_id += size
            job_id, raw = array.pop(0)
        else:
            job_id, raw = str(next_id), next_id
            next_id += 1
        submit += timedelta(seconds=rng.expovariate(1 / step))
        account = rng.randrange(ACCOUNTS)
        user = f"u{account:02d}{rng.randrange(USERS_PER_ACCOUNT)}"
        state = rng.choices(states, weights)[0]
        if account < GPU_ACCOUNTS:
            partition = "gpu"
            gpus = rng.choice((1, 1, 2, 4, 4, 8, 8, 16))
            nodes = max(1, gpus // 8)
            cpus = gpus * 8
            gres = f"gres/gpu:h100={gpus},gres/gpu={gpus}" if rng.random() < 0.5 else f"gres/gpu={gpus}"
            tres = f"billing={cpus},cpu={cpus},{gres},mem={gpus * 64}G,node={nodes}"
            step_tres = f"cpu={cpus},{gres},mem={gpus * 64}G,node={nodes}"
            units = gpus
        else:
            partition = "cpu"
            cpus = rng.choice((1, 4, 16, 32, 64, 128, 256))
            nodes = max(1, cpus // 128)
            tres = f"billing={cpus},cpu={cpus},mem={cpus * 4}G,node={nodes}"
            step_tres = f"cpu={cpus},mem={cpus * 4}G,node={nodes}"
            units = cpus
        if state in ("PENDING", "NEVER"):
            start = end = None
            elapsed = 0
            word = "PENDING" if state == "PENDING" else f"CANCELLED by {1000 + account}"
            tres = "" if state == "PENDING" else tres
        else:
            start = submit + timedelta(seconds=rng.randrange(3600))
            elapsed = 1 + min(172_800, int(rng.expovariate(1 / 5400)))
            end = None if state == "RUNNING" else start + timedelta(seconds=elapsed)
            word = f"CANCELLED by {1000 + account}" if state == "CANCELLED" else state
        lines = [
            f"{job_id}|{raw}|{CLUSTER}|proj{account:03d}|{user}|{partition}|{tres}|{elapsed}|{_t(start)}|{_t(end)}|{word}"
        ]
        if start is not None and steps:
            step_state = STEP_STATE.get(state, "CANCELLED")
            lines.append(
                f"{job_id}.batch|{raw}.batch|{CLUSTER}|proj{account:03d}|||{step_tres}|{elapsed}|"
                f"{_t(start)}|{_t(end)}|{step_state}"
            )
            lines.append(
                f"{job_id}.extern|{raw}.extern|{CLUSTER}|proj{account:03d}|||{tres}|{elapsed}|"
                f"{_t(start)}|{_t(end)}|{'RUNNING' if end is None else 'COMPLETED'}"
            )
            if rng.random() < 0.2:
                lines.append(
                    f"{job_id}.0|{raw}.0|{CLUSTER}|proj{account:03d}|||{step_tres}|{elapsed}|"
                    f"{_t(start)}|{_t(end)}|{step_state}"
                )
        charge = None
        if state in CHARGED and start is not None and end is not None:
            charge = Charged(account, units * elapsed, job_id, str(raw), user, start, end)
        for index, line in enumerate(lines[: n_lines - written]):
            yield line + "\n", charge if index == 0 else None
        written += len(lines)


def write_file(path: Path, n_lines: int, steps: bool) -> int:
    """Write the file; the number of jobs it should charge."""
    expected = 0
    with path.open("w", encoding="utf-8") as out:
        for line, charge in generate(n_lines, steps):
            out.write(line)
            expected += charge is not None
    return expected


# --- the world -------------------------------------------------------------------------------------------


def build_world(url: str) -> list[int]:
    """50 projects with an allocation each and the Slurm account ``projNNN`` mapped to it: allocation ids."""
    engine = make_engine(url)
    with Session(engine, expire_on_commit=False) as db:
        world = make_site(
            db, [(date(2026, 7, 1), date(2026, 10, 1)), (date(2026, 10, 1), date(2027, 1, 1))], capacity=CAPACITY
        )
        allocation_ids = []
        for account in range(ACCOUNTS):
            project = make_project(db, world.pi, f"Project {account:03d}")
            res = world.gpu if account < GPU_ACCOUNTS else world.cpu
            allocation = open_allocation(
                db, project, res, ALLOCATION_AMOUNT, at(2026, 7, 1), at(2027, 1, 1), f"{res.name} {account:03d}"
            )
            metering.map_slurm_account(
                db,
                None,
                cluster=CLUSTER,
                account=f"proj{account:03d}",
                allocation_id=allocation.id,
                reason="benchmark data",
            )
            allocation_ids.append(allocation.id)
    engine.dispose()
    return allocation_ids


# --- the import -----------------------------------------------------------------------------------------


def _sampled(lines: Iterator[str], every: int, samples: list[tuple[int, float]]) -> Iterator[str]:
    for number, line in enumerate(lines, start=1):
        if number % every == 0:
            samples.append((number, round(rss_mib(), 1)))
        yield line


def run_import(url: str, path: Path, n_lines: int, profile: str | None) -> dict[str, object]:
    engine = make_engine(url)
    samples: list[tuple[int, float]] = []
    with Session(engine, expire_on_commit=False) as db, path.open(encoding="utf-8", errors="replace") as stream:
        rss_before = rss_mib()
        every = max(1000, n_lines // 10)
        profiler = cProfile.Profile() if profile else None
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        report = metering.import_sacct(db, _sampled(stream, every, samples), cluster=CLUSTER)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
    peak = peak_rss_mib()
    if profiler and profile:
        profiler.dump_stats(profile)
        stats = pstats.Stats(profile, stream=sys.stderr)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
    engine.dispose()
    return {
        "seconds": seconds,
        "report": report,
        "rss_before_mib": round(rss_before, 1),
        "rss_samples": samples,
        "peak_rss_mib": round(peak, 1),
    }


def verify(url: str, expected: int) -> dict[str, int]:
    """The import charged every expected job once, with its usage record, and the ledger invariants hold."""
    engine = make_engine(url)
    with Session(engine) as db:
        usage_entries = db.exec(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "usage")).one()
        records = db.exec(select(func.count()).select_from(UsageRecord)).one()
        # Each usage record points at its own entry: same allocation, key, quantity; and quantity is the
        # job's units times its run time (the generator's jobs run exactly from start to end).
        mismatched = db.exec(
            sa.text(
                "SELECT count(*) FROM usage_records r JOIN ledger_entries e ON e.id = r.ledger_entry_id "
                "WHERE e.allocation_id <> r.allocation_id OR e.amount <> -r.quantity "
                "OR e.idempotency_key <> :prefix || r.external_id OR r.source <> 'slurm' "
                "OR r.origin <> :cluster OR r.username NOT LIKE 'u%' OR r.ended_at <= r.started_at "
                "OR r.quantity % CAST(extract(epoch FROM r.ended_at - r.started_at) AS bigint) <> 0"
            ).bindparams(prefix=f"slurm:{CLUSTER}:", cluster=CLUSTER)
        ).one()[0]
    engine.dispose()
    assert mismatched == 0, f"{mismatched} usage records do not match their entries"
    assert usage_entries == expected, (usage_entries, expected)
    assert records == expected, (records, expected)
    check_invariants(url)
    return {"usage_entries": int(usage_entries), "usage_records": int(records)}


# --- bare inserts ----------------------------------------------------------------------------------------

ENTRY_COLUMNS = "id, allocation_id, kind, amount, balance_after, idempotency_key, actor_id, reason, created_at"
RECORD_COLUMNS = (
    "id, source, origin, external_id, allocation_id, ledger_entry_id, username, started_at, ended_at, quantity, "
    "recorded_at"
)


def bare_rows(n_lines: int, steps: bool, allocation_ids: list[int]) -> tuple[list[tuple], list[tuple]]:
    """The rows the import writes to ledger_entries and usage_records, with ids from 1,000,001 up."""
    now = datetime.now(UTC)
    balance = dict.fromkeys(allocation_ids, ALLOCATION_AMOUNT)
    entries, records = [], []
    next_id = 1_000_001
    for _line, charge in generate(n_lines, steps):
        if charge is None:
            continue
        allocation_id = allocation_ids[charge.account]
        balance[allocation_id] -= charge.amount
        entries.append(
            (
                next_id,
                allocation_id,
                "usage",
                -charge.amount,
                balance[allocation_id],
                f"slurm:{CLUSTER}:{charge.raw}",
                None,
                f"Slurm job {charge.job_id}",
                now,
            )
        )
        records.append(
            (
                next_id,
                "slurm",
                CLUSTER,
                charge.raw,
                allocation_id,
                next_id,
                charge.user,
                charge.start,
                charge.end,
                charge.amount,
                now,
            )
        )
        next_id += 1
    return entries, records


def bare_executemany(url: str, entries: list[tuple], records: list[tuple], batch: int) -> float:
    entry_sql = f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) VALUES ({', '.join(['%s'] * 9)})"  # noqa: S608
    record_sql = f"INSERT INTO usage_records ({RECORD_COLUMNS}) VALUES ({', '.join(['%s'] * 11)})"  # noqa: S608
    with psycopg.connect(libpq_url(url)) as connection:
        started = time.perf_counter()
        for i in range(0, len(entries), batch):
            with connection.cursor() as cursor:
                cursor.executemany(entry_sql, entries[i : i + batch])
                cursor.executemany(record_sql, records[i : i + batch])
            connection.commit()
        return time.perf_counter() - started


def bare_copy(url: str, entries: list[tuple], records: list[tuple], *, plain: bool) -> float:
    entry_table, record_table = ("plain_entries", "plain_records") if plain else ("ledger_entries", "usage_records")
    with psycopg.connect(libpq_url(url)) as connection:
        if plain:
            connection.execute("CREATE TABLE plain_entries (LIKE ledger_entries)")
            connection.execute("CREATE TABLE plain_records (LIKE usage_records)")
            connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY {entry_table} ({ENTRY_COLUMNS}) FROM STDIN") as copy:
                for row in entries:
                    copy.write_row(row)
            with cursor.copy(f"COPY {record_table} ({RECORD_COLUMNS}) FROM STDIN") as copy:
                for row in records:
                    copy.write_row(row)
        connection.commit()
        return time.perf_counter() - started


# --- one size, in a child process ------------------------------------------------------------------------


def child_import(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {}
    with scratch_databases(args.database_url, "sacct") as scratch, tempfile.TemporaryDirectory() as tmp:
        _name, url = scratch.create()
        t0 = time.perf_counter()
        build_world(url)
        result["setup_seconds"] = round(time.perf_counter() - t0, 1)
        path = Path(tmp) / "sacct.txt"
        t0 = time.perf_counter()
        expected = write_file(path, args.lines, not args.job_rows_only)
        result["file_mib"] = round(path.stat().st_size / 2**20, 1)
        result["generate_seconds"] = round(time.perf_counter() - t0, 1)
        result["expected_charges"] = expected
        checkpoint(args.database_url)
        measured = run_import(url, path, args.lines, args.profile)
        report = measured.pop("report")
        assert report.lines == args.lines, (report.lines, args.lines)
        assert not report.problems, report.problems[:5]
        assert report.charged == expected, (report.charged, expected)
        result.update(measured)
        result["charged"] = report.charged
        result["skipped"] = report.skipped
        result.update(verify(url, expected))
    return result


def child_bare(args: argparse.Namespace) -> dict[str, object]:
    """The same rows, inserted without logic into three copies of a freshly built world."""
    with scratch_databases(args.database_url, "sacct") as scratch:
        name, url = scratch.create()
        allocation_ids = build_world(url)
        entries, records = bare_rows(args.lines, not args.job_rows_only, allocation_ids)
        seconds: dict[str, list[float]] = {"executemany": [], "copy": [], "copy_plain": []}
        for repeat in range(args.repeat):
            copies = [scratch.create(f"{suffix}{repeat}", template=name)[1] for suffix in ("exec", "copy", "plain")]
            checkpoint(args.database_url)
            seconds["executemany"].append(bare_executemany(copies[0], entries, records, metering.BATCH_SIZE))
            checkpoint(args.database_url)
            seconds["copy"].append(bare_copy(copies[1], entries, records, plain=False))
            checkpoint(args.database_url)
            seconds["copy_plain"].append(bare_copy(copies[2], entries, records, plain=True))
    return {"bare_rows": len(entries), "bare_seconds": seconds}


# --- the parent: run each size and print the table -------------------------------------------------------


def _run_child(args: argparse.Namespace, what: str, size: int) -> dict:
    command = [sys.executable, __file__, "--child", what, "--database-url", args.database_url, "--lines", str(size)]
    command += ["--repeat", str(args.repeat)] + (["--job-rows-only"] if args.job_rows_only else [])
    if args.profile and what == "import":
        command += ["--profile", args.profile]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"the {what} run with {size} lines failed")
    if args.profile:
        sys.stderr.write(out.stderr)
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[7:])


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="a PostgreSQL server (any database on it)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the largest file")
    parser.add_argument(
        "--sizes", help="comma-separated file sizes in lines (default: 100000,300000 and --lines, those below it)"
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-insert comparison")
    parser.add_argument(
        "--job-rows-only", action="store_true", help="no step rows, as `sacct -X` writes (pull-sacct runs it so)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="bare-insert runs per method (the median counts)")
    parser.add_argument("--profile", help="write a cProfile of the import to this file (with one size)")
    parser.add_argument("--child", choices=("import", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.database_url.startswith("postgresql"):
        parser.error("--database-url must be a PostgreSQL URL")
    if args.child:
        result = child_import(args) if args.child == "import" else child_bare(args)
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = sorted({s for s in (100_000, 300_000) if s < args.lines} | {args.lines})
    print(machine_summary(args.database_url))
    kind = "job rows only (sacct -X)" if args.job_rows_only else "job and step rows"
    print(f"import_sacct BATCH_SIZE={metering.BATCH_SIZE}; {kind}; sizes: {', '.join(f'{s:,}' for s in sizes)} lines\n")
    results = []
    for size in sizes:
        started = time.perf_counter()
        result = {"lines": size, **_run_child(args, "import", size)}
        if not args.no_bare:
            result.update(_run_child(args, "bare", size))
            assert result["bare_rows"] == result["charged"], (result["bare_rows"], result["charged"])
        result["wall_seconds"] = time.perf_counter() - started
        results.append(result)
        _print_one(result)

    print("\nSummary")
    print(f"{'lines':>10} {'jobs charged':>12} {'import s':>9} {'lines/s':>10} {'jobs/s':>9} {'peak RSS MiB':>12}")
    for r in results:
        print(
            f"{r['lines']:>10,} {r['charged']:>12,} {r['seconds']:>9.1f} {r['lines'] / r['seconds']:>10,.0f} "
            f"{r['charged'] / r['seconds']:>9,.0f} {r['peak_rss_mib']:>12.1f}"
        )


def _print_one(r: dict) -> None:
    lines, charged, seconds = r["lines"], r["charged"], r["seconds"]
    print(
        f"== {lines:,} lines ({r['file_mib']} MiB, written in {r['generate_seconds']} s; setup {r['setup_seconds']} s)"
    )
    print(f"   skipped: {json.dumps(r['skipped'], sort_keys=True)}")
    print(
        f"   import_sacct: {seconds:.1f} s, {charged:,} jobs charged -> {_rate(charged, seconds)} jobs, "
        f"{_rate(lines, seconds)} lines"
    )
    samples = r["rss_samples"]
    picks = [samples[0], samples[len(samples) // 2], samples[-1]] if samples else []
    print(
        f"   RSS before import {r['rss_before_mib']} MiB; during: "
        + ", ".join(f"{mib} MiB at line {n:,}" for n, mib in picks)
        + f"; peak (getrusage) {r['peak_rss_mib']} MiB"
    )
    bare = r.get("bare_seconds")
    if bare:
        rate = charged / seconds
        for label, key in (
            ("executemany, same tables", "executemany"),
            ("COPY, same tables", "copy"),
            ("COPY, plain tables", "copy_plain"),
        ):
            median = statistics.median(bare[key])
            bare_rate = charged / median
            runs = ", ".join(f"{t:.1f}" for t in bare[key])
            print(
                f"   bare {label:<25} {median:6.1f} s (median of {runs}) -> {bare_rate:>9,.0f} jobs/s; "
                f"import is {100 * rate / bare_rate:5.1f} % of it"
            )
    print(f"   (child process wall time {r['wall_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
