"""Opening a course: its join code, the notebook profiles that fit its resource, the allocations a teacher may
fund it from (and the projects whose leads they must ask), and ``create_course``, which moves ``student_cap ×
max_seats`` from the teacher's allocation into the course's own.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from portal.authz import Action, require
from portal.classroom.models import Course
from portal.config import NotebookProfile, Settings
from portal.errors import InvalidInput, NotFound
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, Resource, ResourceKind
from portal.messages import N_, Amount, Message
from portal.projects.models import Project, ProjectMembership, ProjectRole

#: Join codes: no look-alike characters (0/O, 1/I/L); 10 of 31 symbols are about 2^49 codes.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 10


MAX_SEATS = 1000


def new_join_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(code: str) -> str:
    """What a person typed (or a link carried) as a code: case, spaces and dashes do not matter."""
    return re.sub(r"[\s-]", "", code or "").upper()[:32]


def profile_fits(profile: NotebookProfile, resource: Resource) -> bool:
    """Whether the profile runs on the resource (the spawn check's rule: GPUs of the model, or CPUs)."""
    if profile.gpus > 0:
        return (
            resource.kind == ResourceKind.GPU
            and (resource.gpu_model or "").casefold() == (profile.gpu_model or "").casefold()
        )
    return resource.kind == ResourceKind.CPU


@dataclass(frozen=True)
class FundingOption:
    """An allocation a teacher may fund a course from."""

    allocation: Allocation
    resource: Resource
    project: Project


def funding_options(db: Session, actor: User) -> list[FundingOption]:
    """Allocations with hours left, of projects the actor leads (PI or manager), that are not courses."""
    rows = db.exec(
        select(Allocation, Resource, Project)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(Project, Project.id == Allocation.project_id)
        .join(ProjectMembership, ProjectMembership.project_id == Project.id)
        .where(
            ProjectMembership.user_id == actor.id,
            col(ProjectMembership.role).in_([ProjectRole.PI, ProjectRole.MANAGER]),
            col(Allocation.state).in_([AllocationState.ACTIVE, AllocationState.PENDING]),
            col(Allocation.source) != AllocationSource.COURSE,
            col(Allocation.balance) > 0,
            col(Resource.kind) != ResourceKind.STORAGE,
        )
        .order_by(col(Project.title), col(Allocation.id))
    ).all()
    return [FundingOption(a, r, p) for a, r, p in rows]


def projects_to_ask(db: Session, actor: User) -> list[Project]:
    """Projects with hours left where the actor is a plain member: only their PI or a manager can fund a course
    from them (moving a project's hours is theirs to decide), so the actor is told to ask them."""
    return list(
        db.exec(
            select(Project)
            .join(ProjectMembership, ProjectMembership.project_id == Project.id)
            .where(
                ProjectMembership.user_id == actor.id,
                col(ProjectMembership.role).not_in([ProjectRole.PI, ProjectRole.MANAGER]),
                sa.exists().where(
                    Allocation.project_id == Project.id,
                    col(Allocation.state).in_([AllocationState.ACTIVE, AllocationState.PENDING]),
                    col(Allocation.source) != AllocationSource.COURSE,
                    col(Allocation.balance) > 0,
                    col(Allocation.resource_id).in_(select(Resource.id).where(Resource.kind != ResourceKind.STORAGE)),
                ),
            )
            .order_by(col(Project.title))
        ).all()
    )


def _check_materials(url: str) -> str:
    url = url.strip()
    if url and not re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+", url):
        raise InvalidInput(
            Message(N_("Course materials are a public git repository's https:// address.")),
            errors={"materials_url": Message(N_("An https:// address of a git repository."))},
        )
    return url


def create_course(
    db: Session,
    settings: Settings,
    actor: User,
    *,
    parent_allocation_id: int,
    title: str,
    starts_at: datetime,
    ends_at: datetime,
    student_cap: int,
    max_seats: int,
    profiles: list[str],
    required_affiliation: str = "",
    required_entitlement: str = "",
    materials_url: str = "",
) -> Course:
    """Open a course funded from ``parent_allocation_id``, which the actor must manage (PI or manager)."""
    title = title.strip()
    if not title:
        raise InvalidInput(Message(N_("Give the course a title.")), errors={"title": Message(N_("Required."))})
    if not isinstance(max_seats, int) or not 1 <= max_seats <= MAX_SEATS:
        raise InvalidInput(
            Message(N_("From 1 to %(most)s seats."), most=str(MAX_SEATS)),
            errors={"max_seats": Message(N_("From 1 to %(most)s."), most=str(MAX_SEATS))},
        )
    if not isinstance(student_cap, int) or student_cap <= 0:
        raise InvalidInput(
            Message(N_("Each student needs some hours.")),
            errors={"student_hours": Message(N_("Must be more than zero."))},
        )
    parent = db.get(Allocation, parent_allocation_id)
    if parent is None:
        raise NotFound(Message(N_("No such allocation.")))
    require(db, actor, Action.MANAGE_ALLOCATIONS_OF_PROJECT, db.get(Project, parent.project_id))
    resource = db.get(Resource, parent.resource_id)
    assert resource is not None
    chosen = [settings.notebook_profile(name) for name in dict.fromkeys(profiles)]
    if not chosen or None in chosen:
        raise InvalidInput(
            Message(N_("Choose the notebook profiles students may start.")),
            errors={"profiles": Message(N_("Choose one."))},
        )
    unfit = [p.label for p in chosen if p is not None and not profile_fits(p, resource)]
    if unfit:
        raise InvalidInput(
            Message(N_("%(profiles)s cannot run on %(resource)s."), profiles=", ".join(unfit), resource=resource.name),
            errors={
                "profiles": Message(
                    N_("Not for %(resource)s: %(profiles)s."), resource=resource.name, profiles=", ".join(unfit)
                )
            },
        )
    materials_url = _check_materials(materials_url)
    budget = student_cap * max_seats
    if budget > parent.balance:
        raise ledger.InsufficientBalance(
            Message(
                N_("The hours per student × %(seats)s seats are more than %(allocation)s has left: %(left)s."),
                seats=str(max_seats),
                allocation=wording.title_of(parent),
                left=Amount(parent.balance, resource.kind),
            ),
            errors={
                "student_hours": Message(
                    N_("At most %(each)s each."), each=Amount(parent.balance // max_seats, resource.kind)
                )
            },
        )
    with ledger.unit_of_work(db):
        allocation = ledger.share_to_course(
            db,
            actor,
            parent_id=parent.id,
            amount=budget,
            starts_at=starts_at,
            ends_at=ends_at,
            title=wording.COURSE_TITLE.english(title=title)[:200],
        )
        course = Course(
            title=title[:200],
            teacher_id=actor.id,
            project_id=parent.project_id,
            parent_allocation_id=parent.id,
            allocation_id=allocation.id,
            starts_at=starts_at,
            ends_at=ends_at,
            student_cap=student_cap,
            max_seats=max_seats,
            profiles=[p.name for p in chosen if p is not None],
            join_code=new_join_code(),
            required_affiliation=required_affiliation.strip()[:200],
            required_entitlement=required_entitlement.strip()[:500],
            materials_url=materials_url,
        )
        db.add(course)
        db.flush()
    return course
