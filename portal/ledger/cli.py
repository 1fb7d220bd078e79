"""``portal sites ...``, ``portal resources ...``, ``portal capacity ...`` and ``portal allocations ...``: the
factory's sites, their resources, capacity and usage agents, and allocations opened by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

from portal.audit.cli import reason_option
from portal.commands import refusal

if TYPE_CHECKING:
    from portal.ledger.models import Resource, Site

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
        .join(Resource, Resource.site_id == Site.id)
        .outerjoin(CapacityPeriod, CapacityPeriod.resource_id == Resource.id)
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
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.services import create_agent_token, find_user_by_email

    db = get_db()
    site = _site(site_code)
    try:
        _token, plain = create_agent_token(
            db,
            None,
            owner=find_user_by_email(db, owner),
            site_id=site.id,
            name=name,
            reason=reason,
            ttl_days=days,
        )
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(plain)


def _site(code: str) -> Site:
    from sqlmodel import select

    from portal.db import get_db
    from portal.ledger.models import Site

    site = get_db().exec(select(Site).where(Site.code == code.strip().lower())).first()
    if site is None:
        raise click.ClickException(f"No site with the code '{code}'; see 'portal sites list'.")
    return site


def _resource(reference: str) -> Resource:
    """The resource named ``SITE:CODE`` (``waw:h200``)."""
    from sqlmodel import select

    from portal.db import get_db
    from portal.ledger.models import Resource

    site_code, _, code = reference.partition(":")
    if not code:
        raise click.BadParameter(f"'{reference}' is not SITE:RESOURCE, e.g. waw:h200.", param_hint="RESOURCE")
    site = _site(site_code)
    resource = (
        get_db()
        .exec(select(Resource).where(Resource.site_id == site.id, Resource.code == code.strip().lower()))
        .first()
    )
    if resource is None:
        raise click.ClickException(f"Site {site.code} has no resource '{code}'; see 'portal sites list'.")
    return resource


def _planning_day(day: date, option: str) -> date:
    from portal.ledger.services import PLANNING_YEARS

    first, last = PLANNING_YEARS
    if not first <= day.year <= last:
        raise click.BadParameter(f"give a date between {first} and {last}", param_hint=option)
    return day


#: The dates the commands read: ISO days.
DAY = click.DateTime(["%Y-%m-%d"])


@sites.command("add")
@click.argument("code")
@click.option("--name", required=True, help="The site's name, e.g. 'Warsaw AI Factory'.")
@click.option("--city", required=True)
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, e.g. PL.")
@reason_option
@with_appcontext
def add_site_command(code: str, name: str, city: str, country: str, reason: str) -> None:
    """Add the site CODE (up to 16 letters or digits, e.g. waw); audited with the reason."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.ledger import services as ledger

    if len(country.strip()) != 2 or not country.strip().isalpha():
        raise click.BadParameter(f"'{country}' is not a two-letter country code, e.g. PL.", param_hint="--country")
    if not name.strip() or not city.strip():
        raise click.BadParameter("give the site's name and city", param_hint="--name/--city")
    try:
        site = ledger.create_site(get_db(), None, code=code, name=name, city=city, country=country, reason=reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(f"site {site.code}: {site.name}, {site.city} ({site.country}) [id {site.id}]")


@sites.command("update")
@click.argument("code")
@click.option("--name", help="The site's new name.")
@click.option("--city", help="The site's city.")
@click.option("--country", help="ISO 3166-1 alpha-2 code, e.g. PL.")
@reason_option
@with_appcontext
def update_site_command(code: str, name: str | None, city: str | None, country: str | None, reason: str) -> None:
    """Rename the site CODE or correct its city or country; the code itself stays (Slurm cluster names, agent
    tokens and account mappings use it). Audited with the reason."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.ledger import services as ledger

    if name is None and city is None and country is None:
        raise click.UsageError("give at least one of --name, --city, --country")
    site = _site(code)
    try:
        site = ledger.update_site(get_db(), None, site, name=name, city=city, country=country, reason=reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(f"site {site.code}: {site.name}, {site.city} ({site.country}) [id {site.id}]")


@click.group()
def resources() -> None:
    """Resources of the sites."""


@resources.command("add")
@click.argument("reference", metavar="SITE:CODE")
@click.option("--name", required=True, help="What users see, e.g. 'H200 GPU-hours'.")
@click.option("--kind", required=True, type=click.Choice(["gpu", "cpu", "storage"]))
@click.option("--gpu-model", help="The GPU model of a GPU resource, e.g. H200 (Slurm's gres type).")
@click.option(
    "--overbooking",
    default="1.0",
    show_default=True,
    help="How far reservations may exceed capacity, a factor from 1.0 to 3.0.",
)
@reason_option
@with_appcontext
def add_resource_command(
    reference: str, name: str, kind: str, gpu_model: str | None, overbooking: str, reason: str
) -> None:
    """Add a resource CODE to the site SITE (e.g. waw:h200); audited with the reason."""
    from decimal import Decimal, InvalidOperation

    from portal.db import get_db
    from portal.errors import DomainError
    from portal.ledger import services as ledger
    from portal.ledger.models import ResourceKind

    site_code, _, code = reference.partition(":")
    if not code.strip() or len(code.strip()) > 32:
        raise click.BadParameter(f"'{reference}' is not SITE:CODE, e.g. waw:h200.", param_hint="SITE:CODE")
    try:
        factor = Decimal(overbooking.strip())
    except InvalidOperation:
        factor = Decimal(0)
    if not factor.is_finite() or not Decimal(1) <= factor <= Decimal(3):
        raise click.BadParameter(f"'{overbooking}' is not a factor from 1.0 to 3.0.", param_hint="--overbooking")
    if not name.strip() or len(name.strip()) > 200:
        raise click.BadParameter("give a name of up to 200 characters", param_hint="--name")
    site = _site(site_code)
    try:
        resource = ledger.create_resource(
            get_db(),
            None,
            site,
            code=code,
            name=name,
            kind=ResourceKind(kind),
            gpu_model=(gpu_model or "").strip()[:32] or None,
            overbooking_permille=int(factor * 1000),
            reason=reason,
        )
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(f"resource {site.code}:{resource.code}: {resource.name} ({resource.kind}) [id {resource.id}]")


@click.group()
def capacity() -> None:
    """Capacity of the resources per quarter."""


@capacity.command("set")
@click.argument("reference", metavar="SITE:RESOURCE")
@click.option("--quarter", "day", required=True, type=DAY, help="A day in the quarter to plan, e.g. 2030-01-01.")
@click.option("--capacity", "amount", help="The quarter's capacity in hours (TB-months for storage), e.g. 150000.")
@click.option("--units", type=click.IntRange(1, 1_000_000), help="…or the GPUs or cores in service.")
@click.option(
    "--utilisation",
    default=80,
    show_default=True,
    type=click.IntRange(1, 100),
    help="With --units: the target utilisation in percent.",
)
@reason_option
@with_appcontext
def set_capacity_command(
    reference: str, day: datetime, amount: str | None, units: int | None, utilisation: int, reason: str
) -> None:
    """Plan (or re-plan) the capacity of SITE:RESOURCE (e.g. waw:h200) for a quarter, never below what is
    reserved; audited with the reason."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.formatting import parse_quantity, quantity
    from portal.ledger import services as ledger

    if (amount is None) == (units is None):
        raise click.UsageError("Give either --capacity (hours) or --units (GPUs or cores in service).")
    resource = _resource(reference)
    starts_on, ends_on = ledger.quarter_of(_planning_day(day.date(), "--quarter"))
    try:
        planned = (
            parse_quantity(amount, resource.kind, field="capacity")
            if amount is not None
            else ledger.capacity_from_gpus(units or 0, starts_on, ends_on, utilisation)
        )
        period = ledger.set_capacity(
            get_db(), None, resource, starts_on=starts_on, ends_on=ends_on, capacity=planned, reason=reason
        )
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(
        f"{reference.lower()} {period.starts_on}..{period.ends_on}: {quantity(period.capacity, resource.kind)}, "
        f"{quantity(period.reserved, resource.kind)} reserved"
    )


@click.group()
def allocations() -> None:
    """Allocations opened by hand."""


@allocations.command("open")
@click.option("--project", "project_id", required=True, type=click.IntRange(1, 2**31 - 1), help="The project's number.")
@click.option("--resource", "reference", required=True, help="SITE:RESOURCE, e.g. waw:h200.")
@click.option("--amount", required=True, help="Hours to credit (TB-months for storage), e.g. 1000 or 12.5.")
@click.option("--from", "starts_on", required=True, type=DAY, help="First day (UTC midnight), e.g. 2030-01-01.")
@click.option("--to", "ends_on", required=True, type=DAY, help="End day, exclusive (UTC midnight), e.g. 2030-04-01.")
@click.option("--title", default="", help="What the project page calls it; the resource's name by default.")
@reason_option
@with_appcontext
def open_allocation_command(
    project_id: int, reference: str, amount: str, starts_on: datetime, ends_on: datetime, title: str, reason: str
) -> None:
    """Open an allocation for a project by hand (a pilot, a correction), reserving its capacity; audited with
    the reason. Prints the allocation's id (for 'portal slurm map --allocation')."""
    from portal.audit.services import require_reason
    from portal.db import find, get_db
    from portal.errors import DomainError
    from portal.formatting import parse_quantity, quantity
    from portal.ledger import services as ledger
    from portal.ledger.models import AllocationSource
    from portal.projects.models import Project

    try:
        reason = require_reason(reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    db = get_db()
    project = find(db, Project, project_id)
    if project is None:
        raise click.ClickException(f"No project number {project_id}.")
    resource = _resource(reference)
    first = _planning_day(starts_on.date(), "--from")
    last = _planning_day(ends_on.date(), "--to")
    try:
        allocation = ledger.open_allocation(
            db,
            None,
            project=project,
            resource=resource,
            amount=parse_quantity(amount, resource.kind, field="amount"),
            starts_at=datetime.combine(first, time.min, tzinfo=UTC),
            ends_at=datetime.combine(last, time.min, tzinfo=UTC),
            source=AllocationSource.ADMIN,
            title=title,
            reason=reason,
        )
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(
        f"allocation {allocation.id} open: {quantity(allocation.balance, resource.kind)} of {resource.name} for "
        f"project {project.id}, {first}..{last} ({allocation.state})"
    )
