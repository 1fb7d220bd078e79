"""``portal reports ...``: rebuild and check the dashboards' rollups, assign sites to site operators."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from portal.audit.cli import reason_option

# The heavy imports are in the commands' bodies: ``portal --help`` and this group's help start fast (portal/cli.py).


@click.group()
def reports() -> None:
    """The operators' dashboards."""


@reports.command("rebuild")
@with_appcontext
def rebuild_command() -> None:
    """Recompute the monthly usage and revenue rollups from the ledger's daily usage and the invoices."""
    from portal.db import get_db
    from portal.reports import rollups

    usage, revenue = rollups.rebuild(get_db())
    click.echo(f"rebuilt {usage} usage months and {revenue} revenue months")


@reports.command("check")
@with_appcontext
def check_command() -> None:
    """Compare the rollups with a recomputation; exit status 1 if they differ."""
    from portal.db import get_db
    from portal.reports import rollups

    differences = rollups.rollup_differences(get_db())
    for d in differences[:50]:
        click.echo(f"{d.table} {d.key}: stored {d.stored}, recomputed {d.expected}")
    if differences:
        raise click.ClickException(f"{len(differences)} rollup rows differ; run 'portal reports rebuild'")
    click.echo("rollups agree with the ledger and the invoices")


@reports.command("assign-site")
@click.argument("email")
@click.argument("site_code")
@reason_option
@with_appcontext
def assign_site_command(email: str, site_code: str, reason: str) -> None:
    """Let the site operator with EMAIL see the figures of the site SITE_CODE."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.services import find_user_by_email
    from portal.reports import services

    db = get_db()
    try:
        operator = find_user_by_email(db, email)
        site = services.find_site(db, site_code)
        services.assign_site(db, None, operator, site, reason=reason)
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(f"{operator.display_name} sees the figures of {site.name}")
