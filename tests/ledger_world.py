"""Builders for ledger tests: a site, a resource with planned capacity, projects with members.

Everything is made through the services, as the portal itself would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlmodel import Session

from portal.config import OIDCProvider
from portal.identity.models import FactoryRole, User
from portal.identity.services import grant_role, provision_user
from portal.ledger import services as ledger
from portal.ledger.models import Allocation, AllocationSource, Resource, ResourceKind, Site
from portal.market import services as market
from portal.market.models import Offering, OfferingState
from portal.projects import services as projects
from portal.projects.models import Project

PROVIDER = OIDCProvider(name="eidas", label="eIDAS", discovery_url="https://idp.example/x", client_id="portal")
HOUR = 3600

#: The quarters the tests plan capacity for.
Q1 = (date(2030, 1, 1), date(2030, 4, 1))
Q2 = (date(2030, 4, 1), date(2030, 7, 1))


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def person(db: Session, name: str = "Person") -> User:
    return provision_user(
        db,
        provider=PROVIDER,
        subject=f"{name}-{uuid.uuid4().hex}",
        display_name=name,
        email=f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.eu",
    )


def admin(db: Session) -> User:
    user = person(db, "Admin")
    grant_role(db, None, user, FactoryRole.ADMIN, reason="test setup")
    return user


@dataclass
class World:
    site: Site
    gpu: Resource
    pi: User
    project: Project
    other_pi: User
    other_project: Project


def make_world(
    db: Session,
    *,
    q1_gpu_hours: int = 1000,
    q2_gpu_hours: int = 1000,
    overbooking_permille: int = 1000,
    code: str | None = None,
) -> World:
    site = ledger.create_site(
        db,
        None,
        code=code or f"s{uuid.uuid4().hex[:8]}",
        name="Test Centre",
        city="Riga",
        country="LV",
        reason="test setup",
    )
    gpu = ledger.create_resource(
        db,
        None,
        site,
        code="h100",
        name="H100 GPU-hours",
        kind=ResourceKind.GPU,
        gpu_model="H100",
        overbooking_permille=overbooking_permille,
        reason="test setup",
    )
    ledger.set_capacity(
        db, None, gpu, starts_on=Q1[0], ends_on=Q1[1], capacity=q1_gpu_hours * HOUR, reason="test setup"
    )
    ledger.set_capacity(
        db, None, gpu, starts_on=Q2[0], ends_on=Q2[1], capacity=q2_gpu_hours * HOUR, reason="test setup"
    )
    pi = person(db, "Pi")
    org = projects.create_organisation(db, pi, name="Uni", kind="university", country="LV")
    project = projects.create_project(db, pi, org, title="Vision")
    other_pi = person(db, "Other")
    other_org = projects.create_organisation(db, other_pi, name="Other Uni", kind="university", country="EE")
    other_project = projects.create_project(db, other_pi, other_org, title="Speech")
    return World(site, gpu, pi, project, other_pi, other_project)


def open_q1(
    db: Session,
    world: World,
    hours: int,
    *,
    project: Project | None = None,
    key: str | None = None,
    title: str = "Q1 award",
) -> Allocation:
    """An allocation over the whole first quarter."""
    return ledger.open_allocation(
        db,
        None,
        project=project or world.project,
        resource=world.gpu,
        amount=hours * HOUR,
        starts_at=at(2030, 1, 1),
        ends_at=at(2030, 4, 1),
        source=AllocationSource.AWARD,
        title=title,
        idempotency_key=key,
    )


def publish_offering(db: Session, resource: Resource, *, reason: str = "test setup", **terms: Any) -> Offering:
    """A published offering of ``resource``: "H100 hours" at 2.50 EUR an hour, up to 500 hours, valid 3 months,
    unless ``terms`` say otherwise."""
    values: dict[str, Any] = {"title": "H100 hours", "price_cents": 250, "max_quantity": 500, "validity_months": 3}
    offering = market.create_offering(db, None, resource=resource, reason=reason, **(values | terms))
    market.set_offering_state(db, None, offering, OfferingState.PUBLISHED, reason=reason)
    return offering
