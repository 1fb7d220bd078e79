"""What the benchmarks share: scratch PostgreSQL databases, memory, and the tests' builders
(``tests/factories.py``: a world built through the services).

Scratch databases are named ``bench_*`` and always dropped afterwards (also when a benchmark fails).
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from portal.migrations import upgrade

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the tests' builders, for a benchmark run as `python benchmarks/bench_x.py`

from tests.factories import (  # noqa: E402, F401  (the builders the benchmarks import from here)
    HOUR,
    PROVIDER,
    SiteWorld,
    at,
    make_project,
    make_site,
    open_allocation,
    person,
)

# --- scratch databases -------------------------------------------------------------------------------


def _admin_engine(server_url: str) -> sa.Engine:
    return sa.create_engine(server_url, isolation_level="AUTOCOMMIT")


def database_url(server_url: str, name: str) -> str:
    return sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """The same URL for psycopg itself (``postgresql://...``)."""
    return sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    assert name.startswith("bench_"), name
    engine = _admin_engine(server_url)
    with engine.connect() as connection:
        suffix = f' TEMPLATE "{template}"' if template else ""
        connection.execute(sa.text(f'CREATE DATABASE "{name}"{suffix}'))
    engine.dispose()
    return database_url(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    assert name.startswith("bench_"), name
    engine = _admin_engine(server_url)
    with engine.connect() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


def checkpoint(server_url: str) -> None:
    """Write dirty buffers out now (``CHECKPOINT``), so that a timed phase does not pay for an earlier one."""
    engine = _admin_engine(server_url)
    with engine.connect() as connection:
        connection.execute(sa.text("CHECKPOINT"))
    engine.dispose()


@contextmanager
def scratch_databases(server_url: str, prefix: str) -> Iterator[ScratchDatabases]:
    """Make databases ``bench_<prefix>_<random>[_suffix]`` as asked; drop every one of them at the end."""
    scratch = ScratchDatabases(server_url, f"bench_{prefix}_{uuid.uuid4().hex[:8]}")
    try:
        yield scratch
    finally:
        for name in reversed(scratch.names):
            drop_database(server_url, name)


@dataclass
class ScratchDatabases:
    server_url: str
    base_name: str

    def __post_init__(self) -> None:
        self.names: list[str] = []

    def create(self, suffix: str = "", *, template: str | None = None, migrate: bool = True) -> tuple[str, str]:
        """(name, URL) of a new database, migrated with the portal's Alembic migrations unless a template."""
        name = self.base_name + (f"_{suffix}" if suffix else "")
        self.names.append(name)
        url = create_database(self.server_url, name, template=template)
        if migrate and template is None:
            upgrade(url)
        return name, url


# --- memory and machine ----------------------------------------------------------------------------------


def rss_mib() -> float:
    """The process's resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (``getrusage``; KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_summary(server_url: str) -> str:
    cpus = os.cpu_count()
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "?")
    except OSError:
        pass
    mem = "?"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    engine = _admin_engine(server_url)
    with engine.connect() as connection:
        version = connection.execute(sa.text("SHOW server_version")).scalar_one()
    engine.dispose()
    return (
        f"{cpus} CPUs ({model}), {mem} RAM, Python {platform.python_version()}, PostgreSQL {version}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


# --- invariants -------------------------------------------------------------------------------------------

INVARIANTS = {
    "allocations whose balance differs from the sum of their entries": """
        SELECT count(*) FROM allocations a
        LEFT JOIN (SELECT allocation_id, sum(amount) AS total FROM ledger_entries GROUP BY allocation_id) s
          ON s.allocation_id = a.id
        WHERE a.balance <> coalesce(s.total, 0)""",
    "entries whose balance_after is not the previous entry's plus their amount": """
        SELECT count(*) FROM (
          SELECT amount, balance_after,
                 lag(balance_after) OVER (PARTITION BY allocation_id ORDER BY id) AS previous
          FROM ledger_entries) e
        WHERE previous IS NOT NULL AND balance_after <> previous + amount""",
    "allocations whose last entry's balance_after is not their balance": """
        SELECT count(*) FROM allocations a
        JOIN LATERAL (SELECT balance_after FROM ledger_entries e WHERE e.allocation_id = a.id
                      ORDER BY id DESC LIMIT 1) last ON true
        WHERE last.balance_after <> a.balance""",
    "allocations whose used differs from the sum of their usage entries": """
        SELECT count(*) FROM allocations a
        LEFT JOIN (SELECT allocation_id, -sum(amount) AS total FROM ledger_entries WHERE kind = 'usage'
                   GROUP BY allocation_id) s ON s.allocation_id = a.id
        WHERE a.used <> coalesce(s.total, 0)""",
    "allocations whose used differs from the sum of their daily usage": """
        SELECT count(*) FROM allocations a
        LEFT JOIN (SELECT allocation_id, sum(amount) AS total FROM daily_usage GROUP BY allocation_id) d
          ON d.allocation_id = a.id
        WHERE a.used <> coalesce(d.total, 0)""",
}


def check_invariants(url: str) -> None:
    """Raise AssertionError when a ledger invariant does not hold in the database at ``url``."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        broken = {what: connection.execute(sa.text(sql)).scalar_one() for what, sql in INVARIANTS.items()}
    engine.dispose()
    failing = {what: n for what, n in broken.items() if n}
    assert not failing, failing
