"""``portal users ...``: factory roles, deactivation and erasure (GDPR) from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

from portal.audit.cli import reason_option
from portal.commands import refusal

if TYPE_CHECKING:
    pass

# The heavy imports are in the commands' bodies: ``portal --help`` and this group's help start fast (portal/cli.py).


@click.group()
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
    from portal.errors import DomainError
    from portal.identity.models import FactoryRole
    from portal.identity.services import find_user_by_email, grant_role

    try:
        user = find_user_by_email(get_db(), email)
        grant_role(get_db(), None, user, FactoryRole(role), reason=reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(f"{user.display_name} <{user.email}> is now {role}")


@users.command("deactivate")
@click.argument("email")
@reason_option
@with_appcontext
def deactivate_command(email: str, reason: str) -> None:
    """Deactivate the user with EMAIL: no more logins or API calls, and their sessions end now."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.services import deactivate_user, find_user_by_email

    try:
        user = find_user_by_email(get_db(), email)
        deactivate_user(get_db(), None, user, reason=reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    click.echo(f"{user.display_name} <{user.email}> is deactivated; their sessions have ended")


@users.command("erase")
@click.argument("email")
@reason_option
@with_appcontext
def erase_command(email: str, reason: str) -> None:
    """Erase the personal data of the user with EMAIL (GDPR): the user is pseudonymised and deactivated; the ledger,
    invoices and audit log stay as they are (see docs/personal-data.md)."""
    from portal.db import get_db
    from portal.errors import DomainError
    from portal.identity.personal_data import erase_user, erased_name
    from portal.identity.services import find_user_by_email

    try:
        user = find_user_by_email(get_db(), email)
        removed = erase_user(get_db(), None, user, reason=reason)
    except DomainError as exc:
        raise refusal(exc) from exc
    counts = ", ".join(f"{name} {count}" for name, count in removed.items() if count)
    click.echo(f"{email} is erased: user {user.id} is now {erased_name(user.id)!r} (removed: {counts or 'nothing'})")
