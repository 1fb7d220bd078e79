"""Backups as the compose ``backup`` service makes them (``deploy/backup/backup.sh``), restored the documented way
into a fresh PostgreSQL database: every row, every balance and the append-only rules come back."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from portal.ledger import services as ledger
from portal.migrations import upgrade
from tests.ledger_world import HOUR, make_world, open_q1

pytestmark = pytest.mark.postgres
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "backup" / "backup.sh"


def _libpq_env(url: str) -> dict[str, str]:
    parsed = sa.engine.make_url(url)
    env = {**os.environ, "PGHOST": parsed.host or "127.0.0.1", "PGPORT": str(parsed.port or 5432)}
    env |= {"PGUSER": parsed.username or "postgres", "PGDATABASE": parsed.database or ""}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    return env


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty database on the test server, for the restore; dropped afterwards."""
    base = os.environ.get("PORTAL_TEST_DATABASE_URL")
    if not base:
        pytest.skip("PORTAL_TEST_DATABASE_URL is not set; scripts/test sets it to the local PostgreSQL")
    name = f"portal_restore_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
        )
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _row_counts(engine: sa.Engine) -> dict[str, int]:
    tables = sa.inspect(engine).get_table_names()
    with engine.connect() as connection:
        return {t: connection.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one() for t in tables}


def _balances(engine: sa.Engine) -> dict[int, tuple[int, int]]:
    """Each allocation's balance and the sum of its ledger entries."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT a.id, a.balance, COALESCE(SUM(e.amount), 0) FROM allocations a "
                "LEFT JOIN ledger_entries e ON e.allocation_id = a.id GROUP BY a.id, a.balance"
            )
        )
        return {row[0]: (row[1], int(row[2])) for row in rows}


def test_a_backup_restores_into_a_fresh_database_with_every_row_balance_and_append_only_rule(
    postgres_url: str, fresh_database: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    source = sa.create_engine(postgres_url)
    with Session(source, expire_on_commit=False) as db:
        world = make_world(db, q1_gpu_hours=10_000)
        allocation = open_q1(db, world, 100)
        for i in range(5):
            ledger.charge_usage(db, allocation.id, (i + 1) * HOUR, idempotency_key=f"backup-{uuid.uuid4().hex}")
    hub_home = tmp_path / "hub-data"
    (hub_home / "alice").mkdir(parents=True)
    (hub_home / "alice" / "notes.ipynb").write_text('{"cells": []}')
    backups = tmp_path / "backups"
    backups.mkdir()
    expired = backups / "portal-20200101T000000Z.dump"
    expired.write_bytes(b"old")
    os.utime(expired, (time.time() - 15 * 86_400,) * 2)

    before = time.time()
    env = _libpq_env(postgres_url) | {
        "BACKUP_DIR": str(backups),
        "BACKUP_HUB_DATA": str(hub_home),
        "BACKUP_RETENTION_DAYS": "14",
    }
    made = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr

    # What an operator and the "backups missing" alert see: one new dump and archive, the expired one gone,
    # and the success recorded for Prometheus.
    dumps = sorted(backups.glob("portal-*.dump"))
    assert len(dumps) == 1 and dumps[0] != expired
    (archive,) = backups.glob("hub-data-*.tar.gz")
    with tarfile.open(archive) as tar:
        assert "./alice/notes.ipynb" in tar.getnames()
    metrics = (backups / "metrics" / "portal_backup.prom").read_text()
    (line,) = [x for x in metrics.splitlines() if x.startswith("portal_backup_last_success_timestamp_seconds ")]
    assert before - 1 <= float(line.split()[1]) <= time.time() + 1
    assert (backups / "last-success").read_text().strip() == line.split()[1]

    # The documented restore, into a database nobody has touched.
    restore_into = str(sa.engine.make_url(fresh_database).database)
    restored = subprocess.run(
        ["pg_restore", "--no-owner", "--exit-on-error", "--dbname", restore_into, str(dumps[0])],
        env=_libpq_env(fresh_database),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    target = sa.create_engine(fresh_database)
    try:
        counts = _row_counts(source)
        assert counts["ledger_entries"] >= 6 and counts["audit_events"] > 0
        assert _row_counts(target) == counts
        balances = _balances(target)
        assert balances == _balances(source)
        assert balances[allocation.id] == (85 * HOUR, 85 * HOUR)
        for statement in (
            "UPDATE ledger_entries SET amount = amount + 1",
            "DELETE FROM ledger_entries",
            "UPDATE audit_events SET reason = 'rewritten'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), target.begin() as connection:
                connection.execute(sa.text(statement))
        # The restored schema is at the migrations' head: `portal db upgrade` has nothing to do.
        with source.connect() as a, target.connect() as b:
            query = sa.text("SELECT version_num FROM alembic_version")
            assert a.execute(query).scalar_one() == b.execute(query).scalar_one()
    finally:
        target.dispose()
        source.dispose()


def test_a_failed_backup_exits_non_zero_and_leaves_the_last_success_as_it_was(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "last-success").write_text("1700000000\n")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": "1", "PGUSER": "nobody", "BACKUP_DIR": str(backups)}
    made = subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode != 0
    assert "FAILED" in made.stdout
    assert (backups / "last-success").read_text() == "1700000000\n"
    assert not list(backups.glob("portal-*")), "a failed dump must leave no file that looks like a backup"
    assert not (backups / "metrics" / "portal_backup.prom").exists()
