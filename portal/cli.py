"""The ``portal`` command.

Every command starts quickly: this module imports only click and Flask's CLI, the command groups of the other
packages (``portal usage``, ``portal sites``, ...) are imported when one of them is run, and each command imports
what it needs in its body. ``portal --help`` loads neither the application nor the database, PDF or Stripe
libraries (tests/cli/test_cli_start.py counts the modules).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib import metadata
from typing import Any

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext


def _domain_groups() -> dict[str, tuple[str, str]]:
    """The command groups the packages declare in ``CLI_GROUPS`` beside their ``init_app`` (``portal.DOMAINS``).

    The one part of a package's plugging-in that ``init_app`` cannot do: ``portal --help`` must list the groups
    without building the application or importing the groups' modules (each imports its package's services in
    its commands' bodies, and ``app.cli`` would need the application). So each package owns its group object in
    its ``cli.py`` and names it, with its summary, in a dict literal in its ``__init__.py``, which imports
    nothing; this reads those dicts."""
    from portal import DOMAINS

    groups: dict[str, tuple[str, str]] = {}
    for package in DOMAINS:
        groups.update(getattr(importlib.import_module(package), "CLI_GROUPS", {}))
    return groups


#: The command groups of the packages: imported when run, listed by ``--help`` with this summary
#: (tests/cli/test_cli_start.py checks that each matches the group's own).
LAZY_COMMANDS: dict[str, tuple[str, str]] = _domain_groups()


#: The entry-point group through which other distributions add commands to ``portal`` (``name = "module:command"``).
CLI_PLUGINS = "portal.cli_plugins"

#: The commands of the development stand-ins (the separate distribution in standin/, the ``standin`` extra, which
#: registers them in ``portal.cli_plugins``): listed by ``--help`` with this summary whether or not it is installed.
STANDIN_COMMANDS: dict[str, str] = {
    "demo": "Run the whole portal locally: OIDC providers, migrated SQLite, demo data. Ctrl-C stops it all.",
}

STANDIN_MISSING = (
    "`portal {name}` comes with the development stand-ins, which are not installed. In a checkout of the portal,"
    " run scripts/bootstrap (or: pip install -e ./standin -e '.[standin]'); production installs leave them out."
)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def standin_missing(ctx: click.Context) -> None:
    """A command of the development stand-ins, which are not installed (see scripts/bootstrap)."""
    raise click.ClickException(STANDIN_MISSING.format(name=ctx.info_name))


def _cli_plugins() -> dict[str, tuple[str, str]]:
    """The commands of ``portal.cli_plugins`` entry points, as ``lazy_commands`` entries (imported when run); a
    stand-in command whose distribution is missing runs :func:`standin_missing`, which says how to install it."""
    plugins = {name: ("portal.cli:standin_missing", summary) for name, summary in STANDIN_COMMANDS.items()}
    for entry in metadata.entry_points(group=CLI_PLUGINS):
        owner = entry.dist.name if entry.dist else entry.module
        plugins[entry.name] = (entry.value, STANDIN_COMMANDS.get(entry.name, f"A command of the {owner} plugin."))
    return plugins


def database_problem(exc: BaseException) -> str | None:
    """What an operator reads instead of a traceback when a command meets a database it cannot use: one with no
    schema (or an older one) or one it cannot reach. Other database errors are the portal's bugs and keep theirs."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    if not isinstance(exc, DBAPIError):
        return None
    said = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    missing_table = "no such table" in said or type(exc.orig).__name__ == "UndefinedTable"
    if missing_table:
        return (
            f"The database has no schema for this command, or an older one ({said}). Run `portal db upgrade`"
            " first; PORTAL_DATABASE_URL names the database."
        )
    if isinstance(exc, OperationalError):
        return f"Cannot use the database ({said}). Check PORTAL_DATABASE_URL and that the server is running."
    return None


class PortalGroup(FlaskGroup):
    """Flask's command group, but lazy: ``--help`` lists the commands without loading the application (Flask's
    own group loads it to look for ``app.cli`` commands, which the portal has none of), and the other packages'
    groups and Flask plugins' commands (``flask.commands`` entry points) are imported only when run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(LAZY_COMMANDS)

    def _load_plugin_commands(self) -> None:
        if self._loaded_plugin_commands:
            return
        self.lazy_commands.update(_cli_plugins())
        for entry in metadata.entry_points(group="flask.commands"):
            owner = entry.dist.name if entry.dist else entry.module
            self.lazy_commands.setdefault(entry.name, (entry.value, f"Commands of the {owner} plugin."))
        self._loaded_plugin_commands = True

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            errors = sys.modules.get("portal.errors")
            if errors is not None and isinstance(exc, errors.DomainError):
                from portal.commands import refusal

                raise refusal(exc) from exc  # a command that left the services' refusal to the group
            problem = database_problem(exc) if "sqlalchemy" in sys.modules else None
            if problem is None:
                raise
            raise click.ClickException(problem) from exc

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_plugin_commands()
        if name in self.lazy_commands and name not in self.commands:
            module, _, attribute = self.lazy_commands[name][0].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return sorted({*self.commands, *self.lazy_commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with the summary of a group not imported yet taken from ``lazy_commands``."""
        commands = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command: click.Command | None = self.commands[name]
            else:
                command = click.Command(name, help=self.lazy_commands[name][1])
            if command is not None and not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])


#: Set by ``portal serve`` to the metrics folder it made itself: gunicorn removes it on exit (gunicorn_conf.py).
OWN_METRICS_DIR = "PORTAL_SERVE_METRICS_DIR"


def _database_url() -> str:
    """The database the settings name, without building the application (the ``db`` commands need no more)."""
    from pathlib import Path

    from pydantic import ValidationError

    from portal.config import load_settings

    try:
        settings = load_settings()
    except ValidationError as exc:
        raise click.ClickException(f"Invalid settings:\n{exc}") from exc
    Path(settings.instance_path).mkdir(parents=True, exist_ok=True)  # SQLite's default file lives there
    return settings.resolved_database_url


def _create_app():
    from pydantic import ValidationError

    from portal import create_app

    try:
        return create_app()
    except ValidationError as exc:
        raise click.ClickException(f"Invalid settings:\n{exc}") from exc


@click.group(cls=PortalGroup, create_app=_create_app, load_dotenv=False, set_debug_flag=False)
def main() -> None:
    """Baltic AI Factory portal."""
    logging.basicConfig(
        level=os.environ.get("PORTAL_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _settings():
    return current_app.extensions["portal.settings"]


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


def _revision_name(revision: str | None) -> str:
    return revision or "base (no schema)"


def _migrations(count: int) -> str:
    return f"{count} migration{'' if count == 1 else 's'}"


def _target(revision: str) -> str | None:
    from alembic.util import CommandError

    from portal.migrations import resolve_revision

    try:
        return resolve_revision(revision)
    except CommandError as exc:  # an unknown or ambiguous revision
        raise click.ClickException(str(exc)) from exc


@db.command("upgrade", with_appcontext=False)
@click.option("--revision", default="head", show_default=True, help="The revision to bring the schema up to.")
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date (or up to REVISION); never goes down (see 'portal db downgrade')."""
    from portal.migrations import current_revision, migrations_between, upgrade

    url = _database_url()
    target = _target(revision)
    before = current_revision(url)
    if before is not None and before != target and migrations_between(before, target):
        raise click.ClickException(
            f"revision {_revision_name(target)} is older than the database's {before}; 'portal db upgrade' only goes"
            f" up (to go back: 'portal db downgrade --revision {revision}')"
        )
    upgrade(url, target or "base")
    after = current_revision(url)
    if after == before:
        click.echo(f"database already at revision {_revision_name(after)}; nothing to do")
    else:
        applied = len(migrations_between(after, before))
        click.echo(f"database upgraded from revision {_revision_name(before)} to {after} ({_migrations(applied)})")


@db.command("downgrade", with_appcontext=False)
@click.option("--revision", required=True, help="The older revision to go back to, e.g. 0015; 'base' drops everything.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (scripts).")
def db_downgrade(revision: str, yes: bool) -> None:
    """Take the database schema back to an older REVISION, undoing the later migrations: the tables and columns
    they added are dropped with their data. Take a backup and stop the portal and the workers first.

    Lists the migrations it will undo and asks for confirmation (--yes skips it); the downgrade is logged (a
    warning naming the revisions and the operating-system user), not written to the audit log, whose table
    the downgrade may drop.
    """
    import getpass

    from portal.migrations import current_revision, downgrade, migrations_between

    url = _database_url()
    target = _target(revision)
    before = current_revision(url)
    if before == target:
        click.echo(f"database already at revision {_revision_name(before)}; nothing to do")
        return
    undone = migrations_between(before, target)
    if not undone:
        raise click.ClickException(
            f"revision {_revision_name(target)} is not older than the database's {_revision_name(before)}; nothing"
            f" to undo (to go up: 'portal db upgrade --revision {revision}')"
        )
    click.echo(
        f"going down from revision {before} to {_revision_name(target)} undoes {_migrations(len(undone))}:", err=True
    )
    for name, description in undone:
        click.echo(f"  {name}  {description}", err=True)
    if not yes:
        click.confirm("Their tables and columns are dropped with their data. Go ahead?", abort=True, err=True)
    logging.getLogger("portal.migrations").warning(
        "schema downgrade from %s to %s by %s", before, _revision_name(target), getpass.getuser()
    )
    downgrade(url, target or "base")
    after = current_revision(url)
    done = f"database downgraded from revision {before} to {_revision_name(after)}"
    click.echo(f"{done} ({_migrations(len(undone))} undone)")


@main.command()
@click.option("--bind", help="Address to listen on (default: PORTAL_SERVE_BIND).")
@click.option("--workers", type=int, help="gunicorn workers (default: PORTAL_SERVE_WORKERS).")
@with_appcontext
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the portal with gunicorn (production).

    The workers add up their metrics in PROMETHEUS_MULTIPROC_DIR; when it is unset, a new temporary folder,
    removed when gunicorn exits.
    """
    settings = _settings()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="portal-metrics-")
        os.environ[OWN_METRICS_DIR] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    args = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind or settings.serve_bind,
        "--workers",
        str(workers or settings.serve_workers),
        *(["--access-logfile", "-"] if settings.log_format == "text" else []),  # json: the portal logs requests
        "--config",
        "python:portal.gunicorn_conf",
        "--forwarded-allow-ips",
        "*" if settings.trusted_proxies else "127.0.0.1",
        "portal:create_app()",
    ]
    os.execv(sys.executable, args)  # noqa: S606  (gunicorn replaces this process)


@main.command()
@click.option("--once", is_flag=True, help="Run every job once and exit.")
@with_appcontext
def worker(once: bool) -> None:
    """Run the periodic jobs until stopped."""
    from portal.db import get_engine
    from portal.worker import run_worker, tune_collector

    engine, settings = get_engine(), _settings()
    tune_collector()  # this process only runs the worker: after start-up, before the first round
    run_worker(engine, settings, once=once)


@main.command("check", with_appcontext=False)
def check() -> None:
    """Check the settings, database, migrations, OIDC providers, hub, Stripe (and SMTP); exit 1 if any fails."""
    from portal.check import run_checks

    logging.getLogger().setLevel(logging.WARNING)  # the checks' own lines are the output
    results = [click.echo(r.line()) or r for r in run_checks()]
    if not all(r.ok for r in results):
        sys.exit(1)
