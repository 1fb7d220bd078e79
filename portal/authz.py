"""The one permission mechanism: every service asks ``require(db, actor, action, target)``.

A rule says who may do an action on a target. When the actor may not even see the target the answer is
``NotFound`` (a non-member learns nothing about another project); when they may see it but not act,
``NotAuthorised``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm import Session as SASession
from sqlmodel import Session, col, select

from portal.classroom.models import Course, CourseSeat
from portal.config import AssuranceLevel
from portal.errors import NotAuthorised, NotFound
from portal.identity.models import FactoryRole, Login, RoleGrant, User
from portal.ledger.models import Allocation, Resource
from portal.projects.models import (
    Organisation,
    OrganisationMembership,
    OrganisationRole,
    Project,
    ProjectMembership,
    ProjectRole,
)
from portal.reports.models import OperatorSite


class Action(StrEnum):
    VIEW_ORGANISATION = "organisation.view"
    MANAGE_ORGANISATION = "organisation.manage"
    CREATE_PROJECT = "organisation.create_project"
    VERIFY_ORGANISATION = "organisation.verify"
    VIEW_PROJECT = "project.view"
    EDIT_PROJECT = "project.edit"
    MANAGE_MEMBERS = "project.manage_members"
    GRANT_ROLES = "factory.grant_roles"
    VIEW_ALL = "factory.view_all"
    MANAGE_ALLOCATIONS = "factory.manage_allocations"
    MANAGE_CAPACITY = "factory.manage_capacity"
    MANAGE_ALLOCATIONS_OF_PROJECT = "project.manage_allocations"
    CREATE_CALLS = "grants.create_calls"
    MANAGE_CALL = "grants.manage_call"
    VIEW_CALL = "grants.view_call"
    MANAGE_BILLING = "market.manage_billing"
    #: The operators' dashboards (a site operator sees only the sites of ``reports.OperatorSite``).
    VIEW_REPORTS = "reports.view"
    VIEW_REVENUE_REPORTS = "reports.view_revenue"
    VIEW_COURSE = "classroom.view_course"
    MANAGE_COURSE = "classroom.manage_course"
    VIEW_AUDIT = "factory.view_audit"


#: ``db.info`` key of the roles read in this session's transaction: (kind, ids) -> what the database said.
_ROLES_READ = "portal.authz.roles_read"


def _read_once(db: Session, key: tuple[Any, ...], read: Callable[[], Any]) -> Any:
    """``read()`` once per transaction: one page asks several permission questions, each asking for the same roles.

    It cannot go stale: the entries are dropped after every flush (any write of this session, through a model or a
    statement run by ``db.execute``) and at the end of every transaction, savepoints included; before answering
    from them the session autoflushes as the query would have done, so a grant just added is flushed and seen."""
    db._autoflush()  # what every query does first: flushes unless autoflush is off or a flush is under way
    remembered: dict[tuple[Any, ...], Any] = db.info.setdefault(_ROLES_READ, {})
    if key not in remembered:
        remembered[key] = read()
    return remembered[key]


@sa.event.listens_for(SASession, "after_flush")
def _forget_roles_after_a_flush(session: SASession, _context: object) -> None:
    session.info.pop(_ROLES_READ, None)


@sa.event.listens_for(SASession, "after_transaction_end")
def _forget_roles_at_the_end_of_a_transaction(session: SASession, _transaction: object) -> None:
    session.info.pop(_ROLES_READ, None)  # commit, rollback, a savepoint's end: also after_soft_rollback's cases


@sa.event.listens_for(SASession, "do_orm_execute")
def _forget_roles_before_a_write(state: ORMExecuteState) -> None:
    if not state.is_select:  # an UPDATE, DELETE or INSERT statement (or text) run through the session
        state.session.info.pop(_ROLES_READ, None)


def factory_roles(db: Session, user: User) -> set[FactoryRole]:
    """The user's factory roles, read once per transaction (every permission check asks for them)."""
    roles = _read_once(
        db,
        ("factory", user.id),
        lambda: frozenset(FactoryRole(r) for r in db.exec(select(RoleGrant.role).where(RoleGrant.user_id == user.id))),
    )
    return set(roles)


def project_role(db: Session, user: User, project: Project) -> ProjectRole | None:
    """The user's role in the project, read once per transaction (one page asks several permission questions)."""

    def read() -> ProjectRole | None:
        role = db.exec(
            select(ProjectMembership.role).where(
                ProjectMembership.project_id == project.id, ProjectMembership.user_id == user.id
            )
        ).first()
        return ProjectRole(role) if role else None

    return _read_once(db, ("project", user.id, project.id), read)


def organisation_role(db: Session, user: User, organisation_id: int) -> OrganisationRole | None:
    """The user's role in the organisation, read once per transaction (its page asks four permission questions)."""

    def read() -> OrganisationRole | None:
        role = db.exec(
            select(OrganisationMembership.role).where(
                OrganisationMembership.organisation_id == organisation_id,
                OrganisationMembership.user_id == user.id,
            )
        ).first()
        return OrganisationRole(role) if role else None

    return _read_once(db, ("organisation", user.id, organisation_id), read)


def _is_org_member_or_project_member(db: Session, user: User, org: Organisation) -> bool:
    if organisation_role(db, user, org.id) is not None:
        return True
    return (
        db.exec(
            select(ProjectMembership.id)
            .join(Project, Project.id == ProjectMembership.project_id)
            .where(Project.organisation_id == org.id, ProjectMembership.user_id == user.id)
        ).first()
        is not None
    )


def _operates_a_site_of(db: Session, user: User, project_ids: Any) -> bool:
    """A site operator assigned (``OperatorSite``) to a site where one of these projects holds an allocation."""
    if FactoryRole.SITE_OPERATOR not in factory_roles(db, user):
        return False
    found = db.exec(
        select(Allocation.id)
        .join(Resource, Resource.id == Allocation.resource_id)
        .join(OperatorSite, OperatorSite.site_id == Resource.site_id)
        .where(OperatorSite.user_id == user.id, col(Allocation.project_id).in_(project_ids))
        .limit(1)
    ).first()
    return found is not None


def _sees_project(db: Session, user: User, project: Project) -> bool:
    return project_role(db, user, project) is not None or _operates_a_site_of(db, user, [project.id])


def _sees_organisation(db: Session, user: User, org: Organisation) -> bool:
    if _is_org_member_or_project_member(db, user, org):
        return True
    return _operates_a_site_of(db, user, select(Project.id).where(Project.organisation_id == org.id))


def _holds_seat(db: Session, user: User, course: Course) -> bool:
    """A student of the course (also a removed one, who is told so on the course's page)."""
    seat = select(CourseSeat.id).where(CourseSeat.course_id == course.id, CourseSeat.user_id == user.id)
    return db.exec(seat).first() is not None


Rule = Callable[[Session, User, Any], bool]

#: action -> (rule, the action that decides whether the actor may see the target at all)
RULES: dict[Action, tuple[Rule, Action | None]] = {
    Action.VIEW_ORGANISATION: (_sees_organisation, None),
    Action.MANAGE_ORGANISATION: (
        lambda db, u, org: organisation_role(db, u, org.id) == OrganisationRole.ADMIN,
        Action.VIEW_ORGANISATION,
    ),
    Action.CREATE_PROJECT: (
        lambda db, u, org: (
            organisation_role(db, u, org.id)
            in (OrganisationRole.ADMIN, OrganisationRole.MEMBER, OrganisationRole.BILLING)
        ),
        Action.VIEW_ORGANISATION,
    ),
    Action.VERIFY_ORGANISATION: (lambda db, u, org: False, Action.VIEW_ORGANISATION),
    Action.VIEW_PROJECT: (_sees_project, None),
    Action.EDIT_PROJECT: (
        lambda db, u, p: project_role(db, u, p) in (ProjectRole.PI, ProjectRole.MANAGER),
        Action.VIEW_PROJECT,
    ),
    Action.MANAGE_MEMBERS: (
        lambda db, u, p: project_role(db, u, p) in (ProjectRole.PI, ProjectRole.MANAGER),
        Action.VIEW_PROJECT,
    ),
    Action.GRANT_ROLES: (lambda db, u, _t: False, None),
    Action.VIEW_ALL: (lambda db, u, _t: False, None),
    Action.MANAGE_ALLOCATIONS: (lambda db, u, _t: False, None),
    Action.MANAGE_CAPACITY: (lambda db, u, _t: False, None),
    Action.CREATE_CALLS: (lambda db, u, _t: False, None),
    Action.MANAGE_BILLING: (lambda db, u, _t: False, None),
    Action.VIEW_REPORTS: (lambda db, u, _t: False, None),
    Action.VIEW_REVENUE_REPORTS: (lambda db, u, _t: False, None),
    Action.VIEW_AUDIT: (lambda db, u, _t: False, None),
    Action.VIEW_COURSE: (lambda db, u, course: course.teacher_id == u.id or _holds_seat(db, u, course), None),
    Action.MANAGE_COURSE: (lambda db, u, course: course.teacher_id == u.id, Action.VIEW_COURSE),
    Action.MANAGE_CALL: (lambda db, u, call: call.manager_id == u.id, Action.VIEW_CALL),
    Action.VIEW_CALL: (lambda db, u, call: call.state != "draft" or call.manager_id == u.id, None),
    Action.MANAGE_ALLOCATIONS_OF_PROJECT: (
        lambda db, u, p: project_role(db, u, p) in (ProjectRole.PI, ProjectRole.MANAGER),
        Action.VIEW_PROJECT,
    ),
}

#: What each factory role may do on any target, beyond the rules above.
FACTORY_ROLE_ACTIONS: dict[FactoryRole, frozenset[Action]] = {
    FactoryRole.ADMIN: frozenset(Action),
    FactoryRole.FINANCE: frozenset(
        {
            Action.VIEW_ORGANISATION,
            Action.VIEW_ALL,
            Action.MANAGE_BILLING,
            Action.VIEW_REPORTS,
            Action.VIEW_REVENUE_REPORTS,
        }
    ),
    #: Projects and organisations only at the sites assigned to them (``VIEW_PROJECT``'s rule), as their reports.
    FactoryRole.SITE_OPERATOR: frozenset({Action.MANAGE_CAPACITY, Action.VIEW_REPORTS}),
    FactoryRole.REVIEWER: frozenset(),
}


def allowed(db: Session, actor: User | None, action: Action, target: Any = None) -> bool:
    if actor is None or not actor.is_active:
        return False
    for role in factory_roles(db, actor):
        if action in FACTORY_ROLE_ACTIONS[role]:
            return True
    rule, _visibility = RULES[action]
    return bool(rule(db, actor, target))


def require(db: Session, actor: User | None, action: Action, target: Any = None) -> None:
    """Raise unless ``actor`` may do ``action`` on ``target``."""
    if allowed(db, actor, action, target):
        return
    _rule, visibility = RULES[action]
    hidden = visibility is None or not allowed(db, actor, visibility, target)
    if hidden and target is not None:
        raise NotFound(f"No such {type(target).__name__.lower()}.")
    raise NotAuthorised("You are not allowed to do this.")


# --- levels of assurance ---------------------------------------------------------------------------------


class AssuranceTooLow(NotAuthorised):
    """The login performing a step is below the level the step needs (a later, weaker login does not inherit
    what an earlier one proved)."""

    title = "Level of assurance too low"


def login_reaches(login: Login | None, level: AssuranceLevel) -> bool:
    """Whether the login behind this request was made at ``level`` or higher (no login: never)."""
    return login is not None and AssuranceLevel(login.level) >= level


def require_level(login: Login | None, level: AssuranceLevel, *, to: str) -> None:
    """Raise ``AssuranceTooLow`` unless the login that performs the step (the session's, not an earlier one)
    reached ``level``. ``to`` says the step in the user's words: "buy for an organisation"."""
    if login_reaches(login, level):
        return
    have = f"this login is at level {AssuranceLevel(login.level).value}" if login else "there is no login behind this"
    raise AssuranceTooLow(f"To {to}, log in at level {level.value} or higher (eIDAS); {have}.")
