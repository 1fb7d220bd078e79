"""Organisations, projects, memberships and invitations; every function checks its own permissions."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from babel import Locale
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select, update

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, allowed, require
from portal.config import Settings
from portal.db import find, utcnow
from portal.errors import Conflict, InvalidInput, InvitationUnusable, NotAuthorised, NotFound
from portal.identity.models import ExternalIdentity, User
from portal.mail import MailNotSent, send_mail
from portal.projects.identifiers import IdentifierError, normalise_registry_id, normalise_vat_number
from portal.projects.models import (
    Invitation,
    Organisation,
    OrganisationKind,
    OrganisationMembership,
    OrganisationRole,
    Project,
    ProjectMembership,
    ProjectRole,
)


@cache
def countries() -> dict[str, str]:
    """ISO 3166-1 alpha-2 code -> English name, from Babel's CLDR data."""
    names = Locale("en").territories
    return dict(sorted(((c, n) for c, n in names.items() if len(c) == 2 and c.isalpha()), key=lambda i: i[1]))


# --- organisations -------------------------------------------------------------------------------------


def create_organisation(
    db: Session,
    actor: User,
    *,
    name: str,
    kind: str,
    country: str,
    registry_id: str = "",
    vat_number: str = "",
) -> Organisation:
    """Register an organisation; its creator becomes its admin."""
    errors: dict[str, str] = {}
    name = name.strip()
    country = country.strip().upper()
    if not name:
        errors["name"] = "Enter the organisation's name."
    elif len(name) > 200:
        errors["name"] = "The name is longer than 200 characters."
    try:
        kind_value = OrganisationKind(kind)
    except ValueError:
        errors["kind"] = "Choose the kind of organisation."
    if country not in countries():
        errors["country"] = "Choose a country."
    normalised_registry = normalised_vat = None
    if not errors.get("country"):
        if registry_id.strip():
            try:
                normalised_registry = normalise_registry_id(country, registry_id)
            except IdentifierError as exc:
                errors["registry_id"] = str(exc)
        if vat_number.strip():
            try:
                normalised_vat = normalise_vat_number(country, vat_number)
            except IdentifierError as exc:
                errors["vat_number"] = str(exc)
    if errors:
        raise InvalidInput("The organisation could not be registered.", errors=errors)
    if (
        normalised_registry
        and db.exec(
            select(Organisation.id).where(
                Organisation.country == country, Organisation.registry_id == normalised_registry
            )
        ).first()
    ):
        raise InvalidInput(
            "The organisation could not be registered.",
            errors={
                "registry_id": "An organisation with this registry number is already registered; "
                "ask its admin to invite you."
            },
        )
    organisation = Organisation(
        name=name,
        kind=kind_value,
        country=country,
        registry_id=normalised_registry,
        vat_number=normalised_vat,
        created_by_id=actor.id,  # type: ignore[arg-type]
    )
    try:
        db.add(organisation)
        db.flush()
        db.add(
            OrganisationMembership(
                organisation_id=organisation.id,  # type: ignore[arg-type]
                user_id=actor.id,  # type: ignore[arg-type]
                role=OrganisationRole.ADMIN,
            )
        )
        db.commit()
    except IntegrityError as exc:  # the same registry number, registered at the same moment
        db.rollback()
        raise InvalidInput(
            "The organisation could not be registered.",
            errors={
                "registry_id": "An organisation with this registry number was registered at the same moment; "
                "ask its admin to invite you."
            },
        ) from exc
    return organisation


def get_organisation(db: Session, actor: User, organisation_id: int) -> Organisation:
    organisation = find(db, Organisation, organisation_id)
    if organisation is None:
        raise NotFound("No such organisation.")
    require(db, actor, Action.VIEW_ORGANISATION, organisation)
    return organisation


def organisations_of(db: Session, actor: User) -> list[tuple[Organisation, OrganisationRole]]:
    rows = db.exec(
        select(Organisation, OrganisationMembership.role)
        .join(OrganisationMembership, OrganisationMembership.organisation_id == Organisation.id)  # type: ignore[arg-type]
        .where(OrganisationMembership.user_id == actor.id)
        .order_by(Organisation.name)
    ).all()
    return [(o, OrganisationRole(r)) for o, r in rows]


def verify_organisation(db: Session, actor: User, organisation: Organisation, *, reason: str) -> Organisation:
    require(db, actor, Action.VERIFY_ORGANISATION, organisation)
    reason = audit.require_reason(reason)
    if organisation.verified_at is None:
        organisation.verified_at = utcnow()
        summary = f"verified {organisation.name} ({organisation.country})"
        audit.record(db, actor, AuditAction.ORGANISATION_VERIFIED, organisation, summary=summary, reason=reason)
        db.commit()
    return organisation


# --- projects ------------------------------------------------------------------------------------------


def _project_fields(title: str, description: str) -> tuple[str, str]:
    errors = {}
    title, description = title.strip(), description.strip()
    if not title:
        errors["title"] = "Enter a title."
    elif len(title) > 200:
        errors["title"] = "The title is longer than 200 characters."
    if len(description) > 5000:
        errors["description"] = "The description is longer than 5000 characters."
    if errors:
        raise InvalidInput("The project could not be saved.", errors=errors)
    return title, description


def create_project(
    db: Session, actor: User, organisation: Organisation, *, title: str, description: str = ""
) -> Project:
    """Create a project owned by ``organisation``, with ``actor`` as its PI."""
    require(db, actor, Action.CREATE_PROJECT, organisation)
    title, description = _project_fields(title, description)
    project = Project(organisation_id=organisation.id, title=title, description=description)  # type: ignore[arg-type]
    db.add(project)
    db.flush()
    db.add(ProjectMembership(project_id=project.id, user_id=actor.id, role=ProjectRole.PI))  # type: ignore[arg-type]
    db.commit()
    return project


def update_project(db: Session, actor: User, project: Project, *, title: str, description: str) -> Project:
    require(db, actor, Action.EDIT_PROJECT, project)
    project.title, project.description = _project_fields(title, description)
    db.commit()
    return project


def get_project(db: Session, actor: User, project_id: int) -> Project:
    project = find(db, Project, project_id)
    if project is None:
        raise NotFound("No such project.")
    require(db, actor, Action.VIEW_PROJECT, project)
    return project


def get_organisation_of_project(db: Session, project: Project) -> Organisation:
    """The owner of a project the caller has already been allowed to see."""
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    return organisation


@dataclass(frozen=True)
class ProjectSummary:
    project: Project
    organisation: Organisation
    role: ProjectRole
    member_count: int


def projects_of(db: Session, actor: User) -> list[ProjectSummary]:
    """The actor's projects for the dashboard, in one query."""
    counts = (
        select(ProjectMembership.project_id, func.count().label("n")).group_by(ProjectMembership.project_id).subquery()
    )
    rows = db.exec(
        select(Project, Organisation, ProjectMembership.role, counts.c.n)
        .join(ProjectMembership, ProjectMembership.project_id == Project.id)  # type: ignore[arg-type]
        .join(Organisation, Organisation.id == Project.organisation_id)  # type: ignore[arg-type]
        .join(counts, counts.c.project_id == Project.id)
        .where(ProjectMembership.user_id == actor.id)
        .order_by(col(Project.archived_at).is_not(None), Project.title)
    ).all()
    return [ProjectSummary(p, o, ProjectRole(r), n) for p, o, r, n in rows]


def projects_of_organisation(db: Session, actor: User, organisation: Organisation) -> list[Project]:
    require(db, actor, Action.VIEW_ORGANISATION, organisation)
    stmt = select(Project).where(Project.organisation_id == organisation.id).order_by(Project.title)
    if not allowed(db, actor, Action.MANAGE_ORGANISATION, organisation):
        stmt = stmt.join(ProjectMembership, ProjectMembership.project_id == Project.id).where(  # type: ignore[arg-type]
            ProjectMembership.user_id == actor.id
        )
    return list(db.exec(stmt))


# --- members -------------------------------------------------------------------------------------------


def members_of(db: Session, actor: User, project: Project) -> list[tuple[ProjectMembership, User]]:
    require(db, actor, Action.VIEW_PROJECT, project)
    rows = db.exec(
        select(ProjectMembership, User)
        .join(User, User.id == ProjectMembership.user_id)  # type: ignore[arg-type]
        .where(ProjectMembership.project_id == project.id)
        .order_by(ProjectMembership.role, User.display_name)
    ).all()
    order = {ProjectRole.PI: 0, ProjectRole.MANAGER: 1, ProjectRole.MEMBER: 2}
    return sorted(rows, key=lambda r: (order[ProjectRole(r[0].role)], r[1].display_name))


def _membership(db: Session, project: Project, user_id: int) -> ProjectMembership:
    membership = db.exec(
        select(ProjectMembership).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == user_id
        )
    ).first()
    if membership is None:
        raise NotFound("This person is not a member of the project.")
    return membership


def change_member_role(db: Session, actor: User, project: Project, user_id: int, role: ProjectRole) -> None:
    """Change a member's role; making someone PI hands the PI role over (the old PI becomes a manager)."""
    require(db, actor, Action.MANAGE_MEMBERS, project)
    membership = _membership(db, project, user_id)
    if membership.role == role:
        return
    if membership.role == ProjectRole.PI:
        raise Conflict("A project always has a PI: make another member PI instead.")
    if role == ProjectRole.PI:
        current_pi = db.exec(
            select(ProjectMembership).where(
                ProjectMembership.project_id == project.id, ProjectMembership.role == ProjectRole.PI
            )
        ).first()
        if current_pi is not None and current_pi.user_id != actor.id and not allowed(db, actor, Action.GRANT_ROLES):
            raise Conflict("Only the current PI can hand the PI role over.")
        if current_pi is not None:
            current_pi.role = ProjectRole.MANAGER
    membership.role = role
    db.commit()


def remove_member(db: Session, actor: User, project: Project, user_id: int) -> None:
    if user_id == actor.id:
        leave_project(db, actor, project)
        return
    require(db, actor, Action.MANAGE_MEMBERS, project)
    membership = _membership(db, project, user_id)
    if membership.role == ProjectRole.PI:
        raise Conflict("The PI cannot be removed; hand the PI role to another member first.")
    db.delete(membership)
    db.commit()


def leave_project(db: Session, actor: User, project: Project) -> None:
    require(db, actor, Action.VIEW_PROJECT, project)
    membership = _membership(db, project, actor.id)  # type: ignore[arg-type]
    if membership.role == ProjectRole.PI:
        raise Conflict("As PI you cannot leave; hand the PI role to another member first.")
    db.delete(membership)
    db.commit()


# --- invitations ---------------------------------------------------------------------------------------


class InvitationNotYours(NotAuthorised):
    title = "This invitation is for someone else"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite_member(
    db: Session, settings: Settings, actor: User, project: Project, *, email: str, role: str
) -> tuple[Invitation, str]:
    """Invite someone by e-mail; returns the invitation and the link that was sent."""
    require(db, actor, Action.MANAGE_MEMBERS, project)
    errors = {}
    try:
        email = validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        errors["email"] = str(exc)
    try:
        role_value = ProjectRole(role)
        if role_value == ProjectRole.PI:
            errors["role"] = "Invite as manager or member; hand the PI role over once they have joined."
    except ValueError:
        errors["role"] = "Choose a role."
    if project.archived_at is not None:
        errors["email"] = "This project is archived and takes no new members."
    if errors:
        raise InvalidInput("The invitation could not be sent.", errors=errors)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        project_id=project.id,  # type: ignore[arg-type]
        email=email,
        role=role_value,
        digest=_digest(token),
        invited_by_id=actor.id,  # type: ignore[arg-type]
        expires_at=utcnow() + timedelta(hours=settings.invitation_ttl_hours),
    )
    db.add(invitation)
    db.commit()
    link = f"{settings.base_url}/invitations/{token}"
    try:
        send_mail(
            settings,
            to=email,
            subject=f"Invitation to the project {project.title}",
            body=(
                f'{actor.display_name} invites you to join the project "{project.title}" on the Baltic AI '
                f"Factory portal as {role_value.label.lower()}.\n\n"
                f"Open this link to accept (it works until "
                f"{invitation.expires_at:%Y-%m-%d %H:%M} UTC):\n{link}\n\n"
                "If you did not expect this, ignore this message."
            ),
        )
    except MailNotSent as exc:  # the address is refused: bad input, and an invitation nobody got is none
        db.delete(invitation)
        db.commit()
        raise InvalidInput(
            "The invitation could not be sent.",
            errors={"email": f"The mail server does not take mail for {email}; check the address."},
        ) from exc
    return invitation, link


def invitations_of(db: Session, actor: User, project: Project) -> list[Invitation]:
    require(db, actor, Action.MANAGE_MEMBERS, project)
    return list(
        db.exec(
            select(Invitation)
            .where(Invitation.project_id == project.id)
            .order_by(col(Invitation.created_at).desc())
            .limit(50)
        )
    )


def revoke_invitation(db: Session, actor: User, project: Project, invitation_id: int) -> None:
    require(db, actor, Action.MANAGE_MEMBERS, project)
    invitation = db.get(Invitation, invitation_id)
    if invitation is None or invitation.project_id != project.id:
        raise NotFound("No such invitation.")
    if invitation.state(utcnow()) == "pending":
        invitation.revoked_at = utcnow()
        db.commit()


def find_invitation(db: Session, token: str) -> tuple[Invitation, Project]:
    """The invitation behind a link, if it can still be accepted."""
    invitation = db.exec(select(Invitation).where(Invitation.digest == _digest(token))).first()
    if invitation is None:
        raise NotFound("This invitation link is not valid. Check that you copied all of it.")
    state = invitation.state(utcnow())
    if state != "pending":
        raise InvitationUnusable(
            {
                "accepted": "This invitation has already been accepted.",
                "revoked": "This invitation was withdrawn by the project.",
                "expired": "This invitation has expired; ask the project for a new one.",
            }[state]
        )
    project = db.get(Project, invitation.project_id)
    assert project is not None
    return invitation, project


def verified_addresses(db: Session, user: User) -> set[str]:
    """The e-mail addresses a provider verified for the user (their contact address and those of their
    linked identities' latest logins), in lower case."""
    found = {user.email} if user.email else set()
    for attributes in db.exec(select(ExternalIdentity.attributes).where(ExternalIdentity.user_id == user.id)):
        if isinstance(attributes, dict) and attributes.get("email"):
            found.add(str(attributes["email"]))
    return {address.strip().casefold() for address in found}


def masked(address: str) -> str:
    """``jonas.p@vu.lt`` -> ``j…@vu.lt``: enough for its owner to recognise it."""
    local, _, domain = address.partition("@")
    return f"{local[:1]}…@{domain}"


def invitation_is_for(db: Session, invitation: Invitation, user: User) -> bool:
    """An invitation is for the person whose verified e-mail it was sent to: the link alone is not enough."""
    return invitation.email.strip().casefold() in verified_addresses(db, user)


def accept_invitation(db: Session, actor: User, token: str) -> Project:
    """Join the project of an invitation sent to one of the actor's verified e-mail addresses (a forwarded or
    leaked link admits nobody else). The link is single-use: of two people using it at the same moment
    exactly one gets in (a conditional update, atomic on every database)."""
    invitation, project = find_invitation(db, token)
    if not invitation_is_for(db, invitation, actor):
        raise InvitationNotYours(
            f"This invitation was sent to {masked(invitation.email)}. Log in with an account whose verified "
            "e-mail is that address (you can link it on your account page), or ask the project to invite the "
            "address you use here."
        )
    now = utcnow()
    claimed = db.exec(
        update(Invitation)
        .where(
            col(Invitation.id) == invitation.id,
            col(Invitation.accepted_at).is_(None),
            col(Invitation.revoked_at).is_(None),
            col(Invitation.expires_at) > now,
        )
        .values(accepted_at=now, accepted_by_id=actor.id)
    )
    if claimed.rowcount != 1:
        db.rollback()
        raise InvitationUnusable("This invitation has just been used or withdrawn.")
    already = db.exec(
        select(ProjectMembership.id).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == actor.id
        )
    ).first()
    if already is None:
        db.add(ProjectMembership(project_id=project.id, user_id=actor.id, role=invitation.role))  # type: ignore[arg-type]
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise Conflict("You joined this project at the same moment in another window.") from exc
    db.refresh(invitation)
    return project
