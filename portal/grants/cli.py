"""``portal calls ...``: the factory's standing calls for proposals."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from portal.commands import refusal

# The heavy imports are in the commands' bodies: ``portal --help`` and this group's help start fast (portal/cli.py).


@click.group()
def calls() -> None:
    """Calls for proposals."""


@calls.command("seed")
@click.option("--manager", required=True, help="E-mail of the call manager (a user who has logged in once).")
@click.option(
    "--resource",
    "resources",
    multiple=True,
    required=True,
    help="SITE:RESOURCE the calls award, e.g. waw:h200 (repeatable).",
)
@with_appcontext
def seed_command(manager: str, resources: tuple[str, ...]) -> None:
    """Create and open Playground, Fast Lane and Large Scale where they do not exist yet."""
    from sqlmodel import select

    from portal.db import get_db
    from portal.errors import DomainError
    from portal.grants.catalogue import ensure_default_calls
    from portal.identity.services import find_user_by_email
    from portal.ledger.models import Resource, Site

    db = get_db()
    chosen = []
    for item in resources:
        site_code, _, code = item.partition(":")
        resource = db.exec(
            select(Resource)
            .join(Site, Site.id == Resource.site_id)
            .where(Site.code == site_code.lower(), Resource.code == code.lower())
        ).first()
        if resource is None:
            raise click.ClickException(f"No resource '{item}'; see 'portal sites list'.")
        chosen.append(resource)
    try:
        created = ensure_default_calls(
            db, find_user_by_email(db, manager), chosen, reason="the factory's standing calls (portal calls seed)"
        )
    except DomainError as exc:
        raise refusal(exc) from exc
    for call in created:
        click.echo(f"{call.id}: {call.title} ({call.state})")
