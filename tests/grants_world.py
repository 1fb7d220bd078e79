"""Builders for grant tests: calls of each access mode, a PI with a login, reviewers, site operators."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlmodel import Session

from portal.config import AssuranceLevel, load_settings
from portal.grants import services as grants
from portal.grants.models import AccessMode, Application, Call, CallState, ReviewMode
from portal.identity.models import FactoryRole, Login, User
from portal.identity.services import grant_role
from portal.ledger import services as ledger
from portal.projects import services as projects
from portal.projects.models import Project
from tests.ledger_world import HOUR, World, make_world, person

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


def login_of(user: User, *, level: AssuranceLevel = AssuranceLevel.SUBSTANTIAL, affiliation: bool = False) -> Login:
    """A login as a session would hold it (not stored: the services only read its level and attributes)."""
    return Login(
        user_id=user.id,
        provider="eidas",
        subject="x",
        level=level,  # type: ignore[arg-type]
        attributes={"external_affiliation": ["member@uni.example"]} if affiliation else {},
    )


def mail_settings():  # type: ignore[no-untyped-def]
    return load_settings(env="test", mail_backend="log")


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
    questions: list[dict] | None = None,  # type: ignore[type-arg]
    title: str | None = None,
) -> Call:
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


def plan_capacity_from_today(db: Session, resource, hours: int = 10_000) -> None:  # type: ignore[no-untyped-def]
    """Awards start today: plan this quarter and the next two."""
    start = date.today()
    for _ in range(3):
        q_start, q_end = ledger.quarter_of(start)
        ledger.set_capacity(
            db, None, resource, starts_on=q_start, ends_on=q_end, capacity=hours * HOUR, reason="test setup"
        )
        start = q_end


def make_grant_world(  # type: ignore[no-untyped-def]
    db: Session, *, mode: ReviewMode = ReviewMode.PEER_REVIEW, capacity_hours: int = 10_000, **call_options
) -> GrantWorld:
    world = make_world(db, q1_gpu_hours=10_000, q2_gpu_hours=10_000)
    plan_capacity_from_today(db, world.gpu, capacity_hours)
    manager = person(db, "Manager")
    call = make_call(db, world.gpu.id, manager, mode=mode, **call_options)  # type: ignore[arg-type]
    pi = person(db, "Applicant")
    org = projects.create_organisation(db, pi, name="Vilnius Uni", kind="university", country="LT")
    project = projects.create_project(db, pi, org, title="Baltic speech")
    return GrantWorld(world, manager, call, pi, project)


def complete_draft(db: Session, g: GrantWorld, hours: int = 200) -> Application:
    application = grants.start_application(
        db, g.pi, login_of(g.pi), call=g.call, project=g.project, title="Speech models for Baltic languages"
    )
    grants.save_draft(
        db,
        g.pi,
        application,
        abstract="Train ASR models.",
        answers={"software": "PyTorch", "nodes": "8"},
        requests=[grants.RequestInput(g.ledger.gpu.id, hours * HOUR, "Training 3 models for 10 days")],  # type: ignore[arg-type]
    )
    return application


def staff(db: Session, role: FactoryRole, name: str) -> User:
    user = person(db, name)
    grant_role(db, None, user, role, reason="test setup")
    return user
