"""``portal sites ...``: the factory's sites, their capacity and their usage agents."""

from __future__ import annotations

from datetime import date

import click
from flask.cli import with_appcontext

from portal.audit.cli import reason_option

# The heavy imports are in the commands' bodies: ``portal --help`` and this group's help start fast (portal/cli.py).

#: Ten years: the furthest ahead ``portal sites seed`` plans.
MOST_QUARTERS = 40


@click.group()
def sites() -> None:
    """Sites, resources and capacity."""


@sites.command("seed")
@click.option(
    "--quarters",
    default=4,
    show_default=True,
    type=click.IntRange(0, MOST_QUARTERS),
    help="Quarters of capacity to plan from today's.",
)
@with_appcontext
def seed_command(quarters: int) -> None:
    """Create the factory's eight sites and their resources, and plan capacity where none is planned."""
    from portal.db import get_db
    from portal.ledger.catalogue import ensure_sites

    created = ensure_sites(
        get_db(),
        reason="the factory's standard sites (portal sites seed)",
        plan_quarters_from=date.today(),
        quarters=quarters,
    )
    click.echo(f"{len(created)} sites: {', '.join(s.city for s in created)}")


@sites.command("list")
@with_appcontext
def list_command() -> None:
    """Sites, resources and planned capacity."""
    from sqlmodel import select

    from portal.db import get_db
    from portal.formatting import quantity
    from portal.ledger.models import CapacityPeriod, Resource, Site

    db = get_db()
    rows = db.exec(
        select(Site, Resource, CapacityPeriod)
        .join(Resource, Resource.site_id == Site.id)  # type: ignore[arg-type]
        .outerjoin(CapacityPeriod, CapacityPeriod.resource_id == Resource.id)  # type: ignore[arg-type]
        .order_by(Site.code, Resource.code, CapacityPeriod.starts_on)
    ).all()
    for site, resource, period in rows:
        planned = (
            f"{period.starts_on}..{period.ends_on}: {quantity(period.reserved, resource.kind, places=0)} reserved of "
            f"{quantity(period.capacity, resource.kind, places=0)}"
            if period
            else "no capacity planned"
        )
        click.echo(f"{site.code:5} {resource.code:8} {planned}")


@sites.command("agent-token")
@click.argument("site_code")
@click.option("--owner", required=True, help="E-mail of the staff member answerable for the agent.")
@click.option("--name", required=True, help="What the agent is, e.g. 'waw-slurm-agent'.")
@click.option("--days", default=365, show_default=True, help="Days until the token expires.")
@reason_option
@with_appcontext
def agent_token_command(site_code: str, owner: str, name: str, days: int, reason: str) -> None:
    """Print a usage:write token for SITE_CODE's usage agent (shown once; store it in the agent's secrets)."""
    from sqlmodel import select

    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.services import create_agent_token, find_user_by_email
    from portal.ledger.models import Site

    db = get_db()
    site = db.exec(select(Site).where(Site.code == site_code.lower())).first()
    if site is None:
        raise click.ClickException(f"No site with the code '{site_code}'; see 'portal sites list'.")
    try:
        _token, plain = create_agent_token(
            db,
            None,
            owner=find_user_by_email(db, owner),
            site_id=site.id,  # type: ignore[arg-type]
            name=name,
            reason=reason,
            ttl_days=days,
        )
    except DomainError as exc:
        raise click.ClickException(" ".join([exc.detail, *exc.errors.values()])) from exc
    click.echo(plain)
