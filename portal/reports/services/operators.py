"""Site operators' sites: assigning a site to an operator (whose dashboards then show its figures), audited, and
finding a site by its code for the command line.
"""

from __future__ import annotations

from sqlmodel import Session, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, factory_roles, require
from portal.errors import InvalidInput, NotFound
from portal.identity.models import FactoryRole, User
from portal.ledger.models import Site
from portal.reports.models import OperatorSite


def assign_site(db: Session, actor: User | None, operator: User, site: Site, *, reason: str) -> OperatorSite:
    """Let a site operator see ``site``'s figures; ``actor`` None is the command line."""
    if actor is not None:
        require(db, actor, Action.GRANT_ROLES)
    reason = audit.require_reason(reason)
    if FactoryRole.SITE_OPERATOR not in factory_roles(db, operator):
        raise InvalidInput(f"{operator.display_name} is not a site operator.")
    existing = db.get(OperatorSite, (operator.id, site.id))
    if existing is not None:
        return existing
    assignment = OperatorSite(user_id=operator.id, site_id=site.id)
    db.add(assignment)
    summary = f"{audit.actor_label(operator)} sees the reports of {site.name} ({site.code})"
    details = {"site_id": site.id, "site": site.code}
    audit.record(
        db,
        actor or "cli",
        AuditAction.OPERATOR_SITE_ASSIGNED,
        operator,
        summary=summary,
        reason=reason,
        details=details,
    )
    db.commit()
    return assignment


def find_site(db: Session, code: str) -> Site:
    site = db.exec(select(Site).where(Site.code == code.strip().lower())).first()
    if site is None:
        raise NotFound(f"No site with code {code!r}.")
    return site
