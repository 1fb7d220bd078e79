"""The ``portal`` command."""

from __future__ import annotations

import logging
import os
import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from pydantic import ValidationError

from portal import create_app
from portal.audit.cli import reason_option
from portal.errors import DomainError


def _create_app():  # type: ignore[no-untyped-def]
    try:
        return create_app()
    except ValidationError as exc:
        raise click.ClickException(f"Invalid settings:\n{exc}") from exc


@click.group(cls=FlaskGroup, create_app=_create_app, load_dotenv=False, set_debug_flag=False)
def main() -> None:
    """Baltic AI Factory portal."""
    logging.basicConfig(
        level=os.environ.get("PORTAL_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _settings():  # type: ignore[no-untyped-def]
    return current_app.extensions["portal.settings"]


@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Bring the database schema up to date."""
    from alembic.util import CommandError

    from portal.migrations import upgrade

    try:
        upgrade(_settings().resolved_database_url, revision)
    except CommandError as exc:  # an unknown or ambiguous revision
        raise click.ClickException(str(exc)) from exc
    click.echo(f"database at revision {revision}")


@main.command()
@click.option("--bind", help="Address to listen on (default: PORTAL_SERVE_BIND).")
@click.option("--workers", type=int, help="gunicorn workers (default: PORTAL_SERVE_WORKERS).")
@with_appcontext
def serve(bind: str | None, workers: int | None) -> None:
    """Serve the portal with gunicorn (production)."""
    settings = _settings()
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
    from portal.worker import run_worker

    run_worker(get_engine(), _settings(), once=once)


@main.command("check", with_appcontext=False)
def check() -> None:
    """Check the settings, database, migrations, OIDC providers, hub, Stripe (and SMTP); exit 1 if any fails."""
    from portal.check import run_checks

    logging.getLogger().setLevel(logging.WARNING)  # the checks' own lines are the output
    results = [click.echo(r.line()) or r for r in run_checks()]
    if not all(r.ok for r in results):
        sys.exit(1)


@main.group()
def users() -> None:
    """Users and factory roles."""


@users.command("grant-role")
@click.argument("email")
@click.argument("role", type=click.Choice(["admin", "finance", "site_operator", "reviewer"]))
@reason_option
@with_appcontext
def grant_role_command(email: str, role: str, reason: str) -> None:
    """Give the user with EMAIL a factory ROLE."""
    from portal.db import get_db
    from portal.identity.models import FactoryRole
    from portal.identity.services import find_user_by_email, grant_role

    try:
        user = find_user_by_email(get_db(), email)
        grant_role(get_db(), None, user, FactoryRole(role), reason=reason)
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(f"{user.display_name} <{user.email}> is now {role}")


@users.command("deactivate")
@click.argument("email")
@reason_option
@with_appcontext
def deactivate_command(email: str, reason: str) -> None:
    """Deactivate the user with EMAIL: no more logins or API calls, and their sessions end now."""
    from portal.db import get_db
    from portal.identity.services import deactivate_user, find_user_by_email

    try:
        user = find_user_by_email(get_db(), email)
        deactivate_user(get_db(), None, user, reason=reason)
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(f"{user.display_name} <{user.email}> is deactivated; their sessions have ended")


@users.command("erase")
@click.argument("email")
@reason_option
@with_appcontext
def erase_command(email: str, reason: str) -> None:
    """Erase the personal data of the user with EMAIL (GDPR): the user is pseudonymised and deactivated; the ledger,
    invoices and audit log stay as they are (see docs/personal-data.md)."""
    from portal.db import get_db
    from portal.identity.personal_data import erase_user, erased_name
    from portal.identity.services import find_user_by_email

    try:
        user = find_user_by_email(get_db(), email)
        removed = erase_user(get_db(), None, user, reason=reason)
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    counts = ", ".join(f"{name} {count}" for name, count in removed.items() if count)
    click.echo(f"{email} is erased: user {user.id} is now {erased_name(user.id)!r} (removed: {counts or 'nothing'})")


from portal.grants.cli import calls  # noqa: E402
from portal.ledger.cli import sites  # noqa: E402
from portal.metering.cli import slurm, usage  # noqa: E402
from portal.reports.cli import reports  # noqa: E402

main.add_command(usage)
main.add_command(slurm)
main.add_command(sites)
main.add_command(calls)
main.add_command(reports)


@main.command()
@click.option("--port", default=5000, show_default=True)
@click.option("--provider-port", default=9400, show_default=True, help="First port of the local OIDC providers.")
def demo(port: int, provider_port: int) -> None:
    """Run the whole portal locally: OIDC providers, migrated SQLite, demo data. Ctrl-C stops it all."""
    from portal.demo import run_demo

    run_demo(port=port, provider_port=provider_port)
