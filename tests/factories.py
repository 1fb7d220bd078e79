"""Builders for tests and benchmarks: people, sites with planned capacity, projects, allocations, offerings,
grant calls and applications.

Everything is made through the services, as the portal itself would. ``tests/ledger_world.py`` and
``tests/grants_world.py`` re-export the names their tests import; ``benchmarks/benchcommon.py`` builds its data
with these too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

from sqlmodel import Session

from portal.config import AssuranceLevel, OIDCProvider, Settings, load_settings
from portal.db import utcnow
from portal.grants import services as grants
from portal.grants.models import AccessMode, Application, Call, CallState, ReviewMode
from portal.identity.models import FactoryRole, Login, User
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


# --- people ------------------------------------------------------------------------------------------------


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


def staff(db: Session, role: FactoryRole, name: str) -> User:
    user = person(db, name)
    grant_role(db, None, user, role, reason="test setup")
    return user


def login_of(user: User, *, level: AssuranceLevel = AssuranceLevel.SUBSTANTIAL, affiliation: bool = False) -> Login:
    """A login as a session would hold it (not stored: the services only read its level and attributes)."""
    return Login(
        user_id=user.id,
        provider="eidas",
        subject="x",
        level=level,
        attributes={"external_affiliation": ["member@uni.example"]} if affiliation else {},
    )


def mail_settings() -> Settings:
    return load_settings(env="test", mail_backend="log")


# --- sites, projects and allocations -----------------------------------------------------------------------


def add_cpu(db: Session, site: Site, *, reason: str = "test setup") -> Resource:
    """A CPU resource ("CPU core-hours", code ``cpu``) at ``site``, with no capacity planned."""
    return ledger.create_resource(
        db, None, site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason=reason
    )


def make_project(db: Session, pi: User, title: str, *, country: str = "LV") -> Project:
    """A project of ``pi``'s own university ("Org of <title>")."""
    org = projects.create_organisation(db, pi, name=f"Org of {title}", kind="university", country=country)
    return projects.create_project(db, pi, org, title=title)


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
    """A site with H100 GPU-hours planned in ``Q1`` and ``Q2``, and two PIs with a project each."""
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


@dataclass
class SiteWorld:
    site: Site
    gpu: Resource
    cpu: Resource
    pi: User


def make_site(
    db: Session,
    quarters: list[tuple[date, date]],
    *,
    capacity: int,
    code: str = "bench",
    reason: str = "benchmark data",
) -> SiteWorld:
    """A site with a GPU and a CPU resource, ``capacity`` base units planned in each quarter, and a PI."""
    site = ledger.create_site(db, None, code=code, name="Bench Centre", city="Riga", country="LV", reason=reason)
    gpu = ledger.create_resource(
        db, None, site, code="h100", name="H100 GPU-hours", kind=ResourceKind.GPU, gpu_model="H100", reason=reason
    )
    cpu = add_cpu(db, site, reason=reason)
    for starts_on, ends_on in quarters:
        for resource in (gpu, cpu):
            ledger.set_capacity(
                db, None, resource, starts_on=starts_on, ends_on=ends_on, capacity=capacity, reason=reason
            )
    return SiteWorld(site, gpu, cpu, person(db, "Pi"))


def open_allocation(
    db: Session,
    project: Project,
    resource: Resource,
    amount: int,
    starts_at: datetime,
    ends_at: datetime,
    title: str,
    *,
    key: str | None = None,
) -> Allocation:
    """An awarded allocation of ``amount`` base units of ``resource`` to ``project``."""
    return ledger.open_allocation(
        db,
        None,
        project=project,
        resource=resource,
        amount=amount,
        starts_at=starts_at,
        ends_at=ends_at,
        source=AllocationSource.AWARD,
        title=title,
        idempotency_key=key,
    )


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
    return open_allocation(
        db, project or world.project, world.gpu, hours * HOUR, at(2030, 1, 1), at(2030, 4, 1), title, key=key
    )


# --- compute: capacity and allocations around now -------------------------------------------------------


def plan_capacity_around_now(db: Session, resource: Resource, amount: int) -> None:
    today = utcnow().date()
    for day in (today - timedelta(days=40), today, today + timedelta(days=40)):
        starts_on, ends_on = ledger.quarter_of(day)
        ledger.set_capacity(
            db, None, resource, starts_on=starts_on, ends_on=ends_on, capacity=amount, reason="test setup"
        )


def open_now(db: Session, project, resource: Resource, hours: int, *, days: int = 30) -> Allocation:
    now = utcnow()
    return ledger.open_allocation(
        db,
        None,
        project=project,
        resource=resource,
        amount=hours * HOUR,
        starts_at=now - timedelta(days=1),
        ends_at=now + timedelta(days=days),
        source=AllocationSource.AWARD,
        title=f"{resource.code} award",
    )


def cpu_resource(db: Session, world: World) -> Resource:
    """CPU core-hours at ``world``'s site, with capacity planned around now."""
    resource = ledger.create_resource(
        db, None, world.site, code="cpu", name="CPU core-hours", kind=ResourceKind.CPU, reason="test setup"
    )
    plan_capacity_around_now(db, resource, 100_000 * HOUR)
    return resource


class CpuProject(NamedTuple):
    world: World
    project: Project
    allocation: Allocation


def cpu_project(
    db: Session,
    owner,
    *,
    hours: int,
    title: str = "Notebook project",
    organisation: str = "Notebook Uni",
    country: str = "LV",
    days: int = 30,
) -> CpuProject:
    """A fresh site with CPU capacity planned around now, and ``owner``'s own project there with ``hours``
    core-hours open from yesterday for ``days`` days: what a member needs to start CPU notebooks."""
    world = make_world(db)
    cpu = cpu_resource(db, world)
    org = projects.create_organisation(db, owner, name=organisation, kind="university", country=country)
    project = projects.create_project(db, owner, org, title=title)
    return CpuProject(world, project, open_now(db, project, cpu, hours, days=days))


# --- the marketplace ---------------------------------------------------------------------------------------


def publish_offering(db: Session, resource: Resource, *, reason: str = "test setup", **terms: Any) -> Offering:
    """A published offering of ``resource``: "H100 hours" at 2.50 EUR an hour, up to 500 hours, valid 3 months,
    unless ``terms`` say otherwise."""
    values: dict[str, Any] = {"title": "H100 hours", "price_cents": 250, "max_quantity": 500, "validity_months": 3}
    offering = market.create_offering(db, None, resource=resource, reason=reason, **(values | terms))
    market.set_offering_state(db, None, offering, OfferingState.PUBLISHED, reason=reason)
    return offering


# --- grants ------------------------------------------------------------------------------------------------

CRITERIA = [
    {"key": "excellence", "label": "Scientific excellence", "weight": 50},
    {"key": "impact", "label": "Impact", "weight": 30},
    {"key": "readiness", "label": "Technical readiness", "weight": 20},
]
QUESTIONS = [
    {"key": "software", "label": "Software stack", "type": "text", "required": True, "max_length": 500},
    {"key": "nodes", "label": "Largest job (GPUs)", "type": "number", "required": True, "min": 1, "max": 512},
    {"key": "field", "label": "Field", "type": "choice", "required": False, "choices": ["NLP", "Vision", "Other"]},
]


@dataclass
class GrantWorld:
    ledger: World
    manager: User
    call: Call
    pi: User
    project: Project


def make_call(
    db: Session,
    gpu_id: int,
    manager: User,
    *,
    mode: ReviewMode = ReviewMode.PEER_REVIEW,
    budget_hours: int = 500,
    max_hours: int = 400,
    kinds: list[str] | None = None,
    countries: list[str] | None = None,
    questions: list[dict[str, Any]] | None = None,
    title: str | None = None,
) -> Call:
    """An open call of ``mode``'s access mode, with a budget of ``budget_hours`` on the GPU ``gpu_id``."""
    now = datetime.now(UTC)
    call = grants.create_call(
        db,
        None,
        title=title or f"{mode.value} call",
        access_mode={
            ReviewMode.AUTOMATIC: AccessMode.PLAYGROUND,
            ReviewMode.TECHNICAL: AccessMode.FAST_LANE,
            ReviewMode.PEER_REVIEW: AccessMode.LARGE_SCALE,
        }[mode],
        review_mode=mode,
        manager=manager,
        budgets={gpu_id: budget_hours * HOUR},
        max_request=max_hours * HOUR,
        min_request=HOUR,
        opens_at=now - timedelta(days=1),
        closes_at=now + timedelta(days=60),
        first_cutoff=date.today() + timedelta(days=14),
        cutoff_every_days=14,
        decision_within_working_days=10,
        eligible_kinds=kinds if kinds is not None else ["university"],
        eligible_countries=countries if countries is not None else ["PL", "LT", "LV", "EE"],
        questions=QUESTIONS if questions is None else questions,
        criteria=CRITERIA if mode == ReviewMode.PEER_REVIEW else [],
        duration_months=3,
        reason="test setup",
    )
    grants.set_call_state(db, manager, call, CallState.OPEN, reason="test setup")
    return call


def plan_capacity_from_today(db: Session, resource: Resource, hours: int = 10_000) -> None:
    """Awards start today: plan this quarter and the next two."""
    start = date.today()
    for _ in range(3):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, resource, starts_on=q_start, ends_on=q_end, capacity=hours * HOUR, reason="test setup"
        )
        start = q_end


def make_grant_world(
    db: Session, *, mode: ReviewMode = ReviewMode.PEER_REVIEW, capacity_hours: int = 10_000, **call_options: Any
) -> GrantWorld:
    """A ledger ``World`` with capacity from today, a manager with an open call, and an applicant's project."""
    world = make_world(db, q1_gpu_hours=10_000, q2_gpu_hours=10_000)
    plan_capacity_from_today(db, world.gpu, capacity_hours)
    manager = person(db, "Manager")
    call = make_call(db, world.gpu.id, manager, mode=mode, **call_options)
    pi = person(db, "Applicant")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    return GrantWorld(world, manager, call, pi, project)


def complete_draft(db: Session, g: GrantWorld, hours: int = 200) -> Application:
    """The applicant's draft with every required answer and a request for ``hours`` GPU-hours."""
    application = grants.start_application(
        db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="Speech models for Baltic languages"
    )
    grants.save_draft(
        db,
        g.pi,
        application,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(g.ledger.gpu.id, hours * HOUR, "Training 3 models for 10 days")],
    )
    return application


def running_course(db: Session, settings: Settings, teacher: User, parent_allocation_id: int, **overrides: Any):
    """A course that started an hour ago and runs 20 more days, on the teacher's allocation: 3 seats of 10
    core-hours, the CPU profile; ``overrides`` are ``create_course``'s own arguments."""
    from portal.classroom import services as classroom

    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "title": "Intro to Dask",
        "starts_at": now - timedelta(hours=1),
        "ends_at": now + timedelta(days=20),
        "student_cap": 10 * 3600,
        "max_seats": 3,
        "profiles": ["cpu"],
    }
    values.update(overrides)
    return classroom.create_course(db, settings, teacher, parent_allocation_id=parent_allocation_id, **values)
