"""Who the hours and the revenue count under: the *public* and *private* sides, the sector of an organisation's
kind, and for a personal project (no organisation) the private buyers' label and its owner's billing country.
"""

from __future__ import annotations

from sqlmodel import Session, col, func, select

from portal.market.models import Order
from portal.projects.models import OrganisationKind

PUBLIC_KINDS = frozenset({OrganisationKind.UNIVERSITY, OrganisationKind.PUBLIC_BODY})
#: The sector (and, where unknown, the country) of personal projects: persons buying hours for themselves.
PRIVATE_BUYERS_LABEL = "Private buyers"


def side_of(kind: OrganisationKind | str | None) -> str:
    """``public`` for universities, research institutes and public bodies; ``private`` otherwise, private
    buyers (``kind`` None: no organisation) included."""
    return "public" if kind is not None and OrganisationKind(kind) in PUBLIC_KINDS else "private"


def sector_of(kind: OrganisationKind | str | None) -> str:
    """The sector's label; ``PRIVATE_BUYERS_LABEL`` for a personal project (``kind`` None)."""
    return PRIVATE_BUYERS_LABEL if kind is None else OrganisationKind(kind).label


def private_buyer_countries(db: Session, project_ids: list[int]) -> dict[int, str]:
    """The country of each personal project's owner: that of the billing address of their latest order (one
    statement); a project without any order is left out."""
    if not project_ids:
        return {}
    latest = (
        select(func.max(Order.id))
        .where(col(Order.project_id).in_(project_ids), col(Order.organisation_id).is_(None))
        .group_by(Order.project_id)
    )
    rows = db.exec(select(Order.project_id, Order.billing_country).where(col(Order.id).in_(latest))).all()
    return {int(p): str(c) for p, c in rows if c}
