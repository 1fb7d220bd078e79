"""Every ``portal`` command that takes arguments, given bad ones: it exits non-zero with a message on stderr,
no traceback, and changes nothing; the same from the real process, and for a database it cannot use."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from sqlalchemy import func
from sqlmodel import Session, select

from portal.audit.models import AuditEvent
from portal.ledger.models import CapacityPeriod, LedgerEntry, Site
from tests.conftest import portal_cli, portal_cli_in_process
from tests.ledger_world import make_world

REASON = ("--reason", "Checking how the command answers bad input")
UNKNOWN = "nobody-at-all@example.eu"
HUGE = str(2**80)


def counts(db: Session) -> tuple[int, ...]:
    db.expire_all()
    return tuple(
        db.exec(select(func.count()).select_from(table)).one()
        for table in (AuditEvent, LedgerEntry, Site, CapacityPeriod)
    )


def test_commands_refuse_bad_arguments_with_a_message_and_change_nothing(
    app: Flask, db: Session, tmp_path: Path
) -> None:
    world = make_world(db)
    email, site = world.pi.email or "", world.site.code
    garbage = tmp_path / "sacct.txt"
    garbage.write_bytes(b"not|a|sacct|line\n\x00\xff\xfe broken bytes\n" + b"|" * 10_000 + b"\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    commands: list[tuple[str, ...]] = [
        ("users", "grant-role", UNKNOWN, "admin", *REASON),
        ("users", "grant-role", email, "emperor", *REASON),
        ("users", "grant-role", "", "admin", *REASON),
        ("users", "grant-role", email, "admin", "--reason", "  "),
        ("reports", "assign-site", UNKNOWN, site, *REASON),
        ("reports", "assign-site", email, "no-such-site", *REASON),
        ("reports", "assign-site", email, "\x01" * 3, *REASON),
        ("sites", "agent-token", "no-such-site", "--owner", email, "--name", "agent", *REASON),
        ("sites", "agent-token", site, "--owner", UNKNOWN, "--name", "agent", *REASON),
        ("sites", "agent-token", site, "--owner", email, "--name", " ", *REASON),
        ("sites", "agent-token", site, "--owner", email, "--name", "agent", "--days", "x", *REASON),
        ("sites", "agent-token", site, "--owner", email, "--name", "agent", "--days", "-5", *REASON),
        ("sites", "agent-token", site, "--owner", email, "--name", "agent", "--days", HUGE, *REASON),
        ("sites", "seed", "--quarters", "x"),
        ("sites", "seed", "--quarters", "-1"),
        ("sites", "seed", "--quarters", HUGE),
        ("usage", "import-sacct", str(tmp_path / "missing.txt"), "--cluster", "factory"),
        ("usage", "import-sacct", str(garbage), "--cluster", "factory"),
        ("usage", "import-sacct", str(tmp_path), "--cluster", "factory"),
        ("usage", "pull-sacct", "--cluster", "no-such-cluster"),
        ("usage", "pull-sacct", "--cluster", "no-such-cluster", "--since", "2026-13-45"),
        ("slurm", "sync", "--cluster", "no-such-cluster"),
        ("slurm", "map", "--cluster", "no-such-cluster", "--account", "a", "--allocation", "x", *REASON),
        ("slurm", "map", "--cluster", "no-such-cluster", "--account", "a", "--allocation", HUGE, *REASON),
        ("slurm", "set-username", "--cluster", "no-such-cluster", UNKNOWN, "someone", *REASON),
        ("calls", "seed", "--manager", UNKNOWN, "--resource", f"{site}:gpu"),
        ("calls", "seed", "--manager", email, "--resource", "no-colon"),
        ("calls", "seed", "--manager", email, "--resource", "no-such-site:gpu"),
        ("db", "upgrade", "--revision", "no-such-revision"),
        ("serve", "--workers", "x"),
    ]
    before = counts(db)
    results = [portal_cli_in_process(app, *args) for args in commands]

    failures = []
    for args, result in zip(commands, results, strict=True):
        if result.returncode == 0 or not result.stderr.strip() or "Traceback" in result.stderr:
            failures.append(f"portal {' '.join(args)[:150]}: exit {result.returncode}\n{result.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert counts(db) == before


def test_the_real_command_refuses_bad_input_and_a_database_it_cannot_use_in_words(app: Flask, tmp_path: Path) -> None:
    """The process itself: a bad argument, a database with no schema, a database server that is not there."""
    unmigrated = f"sqlite:///{tmp_path / 'empty.db'}"
    nowhere = "postgresql+psycopg://postgres@127.0.0.1:9/test"  # the discard port: nothing listens
    cases = [
        (("sites", "seed", "--quarters", "x"), {}, "Invalid value for '--quarters'"),
        (("users", "grant-role", UNKNOWN, "admin", *REASON), {"PORTAL_DATABASE_URL": unmigrated}, "portal db upgrade"),
        (
            ("users", "grant-role", UNKNOWN, "admin", *REASON),
            {"PORTAL_DATABASE_URL": nowhere},
            "Cannot use the database",
        ),
    ]
    for args, env, said in cases:
        result = portal_cli(app, *args, **env)
        assert result.returncode != 0 and said in result.stderr and "Traceback" not in result.stderr, result.stderr
