"""Organisations, projects, memberships and invitations; every function checks its own permissions."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

import sqlalchemy as sa
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
from portal.messages import N_, Message, language_of, paragraphs, render
from portal.pagination import PAGE_SIZE, KeyColumn, Page, keyset_page, search_pattern
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
        errors["name"] = Message(N_("Enter the organisation's name."))
    elif len(name) > 200:
        errors["name"] = Message(N_("The name is longer than 200 characters."))
    try:
        kind_value = OrganisationKind(kind)
    except ValueError:
        errors["kind"] = Message(N_("Choose the kind of organisation."))
    if country not in countries():
        errors["country"] = Message(N_("Choose a country."))
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
        raise InvalidInput(Message(N_("The organisation could not be registered.")), errors=errors)
    if (
        normalised_registry
        and db.exec(
            select(Organisation.id).where(
                Organisation.country == country, Organisation.registry_id == normalised_registry
            )
        ).first()
    ):
        raise InvalidInput(
            Message(N_("The organisation could not be registered.")),
            errors={
                "registry_id": Message(
                    N_("An organisation with this registry number is already registered; ask its admin to invite you.")
                )
            },
        )
    organisation = Organisation(
        name=name,
        kind=kind_value,
        country=country,
        registry_id=normalised_registry,
        vat_number=normalised_vat,
        created_by_id=actor.id,
    )
    try:
        db.add(organisation)
        db.flush()
        db.add(
            OrganisationMembership(
                organisation_id=organisation.id,
                user_id=actor.id,
                role=OrganisationRole.ADMIN,
            )
        )
        db.commit()
    except IntegrityError as exc:  # the same registry number, registered at the same moment
        db.rollback()
        raise InvalidInput(
            Message(N_("The organisation could not be registered.")),
            errors={
                "registry_id": Message(
                    N_(
                        "An organisation with this registry number was registered at the same moment; ask its admin "
                        "to invite you."
                    )
                )
            },
        ) from exc
    return organisation


def get_organisation(db: Session, actor: User, organisation_id: int) -> Organisation:
    organisation = find(db, Organisation, organisation_id)
    if organisation is None:
        raise NotFound(Message(N_("No such organisation.")))
    require(db, actor, Action.VIEW_ORGANISATION, organisation)
    return organisation


def organisations_of(db: Session, actor: User) -> list[tuple[Organisation, OrganisationRole]]:
    rows = db.exec(
        select(Organisation, OrganisationMembership.role)
        .join(OrganisationMembership, OrganisationMembership.organisation_id == Organisation.id)
        .where(OrganisationMembership.user_id == actor.id)
        .order_by(Organisation.name)
    ).all()
    return [(o, OrganisationRole(r)) for o, r in rows]


#: The order of organisation lists: by name, the id breaking ties.
ORGANISATION_ORDER = (KeyColumn(col(Organisation.name), str), KeyColumn(col(Organisation.id), int))


def organisation_page_of(
    db: Session, actor: User, *, query: str = "", cursor: str | None = None, size: int = PAGE_SIZE
) -> Page[tuple[Organisation, OrganisationRole]]:
    """One page of the actor's organisations, by name; ``query`` finds text in the name, the registry or the VAT
    number, whatever the case."""
    stmt = (
        select(Organisation, OrganisationMembership.role)
        .join(OrganisationMembership, OrganisationMembership.organisation_id == Organisation.id)
        .where(OrganisationMembership.user_id == actor.id)
    )
    pattern = search_pattern(query)
    if pattern:
        stmt = stmt.where(
            col(Organisation.name).ilike(pattern, escape="\\")
            | col(Organisation.registry_id).ilike(pattern, escape="\\")
            | col(Organisation.vat_number).ilike(pattern, escape="\\")
        )
    page = keyset_page(db, stmt, ORGANISATION_ORDER, lambda r: (r[0].name, r[0].id), cursor=cursor, size=size)
    return page.map(lambda rows: [(o, OrganisationRole(r)) for o, r in rows])


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
        errors["title"] = Message(N_("Enter a title."))
    elif len(title) > 200:
        errors["title"] = Message(N_("The title is longer than 200 characters."))
    if len(description) > 5000:
        errors["description"] = Message(N_("The description is longer than 5000 characters."))
    if errors:
        raise InvalidInput(Message(N_("The project could not be saved.")), errors=errors)
    return title, description


def create_project(
    db: Session, actor: User, organisation: Organisation, *, title: str, description: str = ""
) -> Project:
    """Create a project owned by ``organisation``, with ``actor`` as its PI."""
    require(db, actor, Action.CREATE_PROJECT, organisation)
    title, description = _project_fields(title, description)
    project = Project(organisation_id=organisation.id, title=title, description=description)
    db.add(project)
    db.flush()
    db.add(ProjectMembership(project_id=project.id, user_id=actor.id, role=ProjectRole.PI))
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
        raise NotFound(Message(N_("No such project.")))
    require(db, actor, Action.VIEW_PROJECT, project)
    return project


def get_organisation_of_project(db: Session, project: Project) -> Organisation | None:
    """The owner of a project the caller has already been allowed to see; None for a personal project."""
    if project.organisation_id is None:
        return None
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    return organisation


#: The title a personal project is given; its owner may change it.
PERSONAL_PROJECT_TITLE = "Hours of {name}"
#: The invitation's first sentence, per role (a sentence each, so that every language can word it).
_INVITES_AS = {
    ProjectRole.PI: N_(
        "%(who)s invites you to join the project “%(project)s” on the Baltic AI Factory portal as principal "
        "investigator."
    ),
    ProjectRole.MANAGER: N_(
        "%(who)s invites you to join the project “%(project)s” on the Baltic AI Factory portal as manager."
    ),
    ProjectRole.MEMBER: N_(
        "%(who)s invites you to join the project “%(project)s” on the Baltic AI Factory portal as member."
    ),
}


def personal_project_of(db: Session, actor: User) -> Project | None:
    """The actor's personal project (the hours they bought as a private buyer), if they have one."""
    return db.exec(select(Project).where(Project.owner_id == actor.id)).first()


def open_personal_project(db: Session, actor: User) -> Project:
    """The actor's personal project, made (and committed) on their first purchase as a private buyer: owned
    by them, of no organisation, with them as its PI, so that only they and the members they invite see it.
    A concurrent first purchase finds the one the other made (``owner_id`` is unique)."""
    existing = personal_project_of(db, actor)
    if existing is not None:
        return existing
    title = PERSONAL_PROJECT_TITLE.format(name=actor.display_name)[:200]
    project = Project(owner_id=actor.id, title=title)
    try:
        db.add(project)
        db.flush()
        db.add(ProjectMembership(project_id=project.id, user_id=actor.id, role=ProjectRole.PI))
        db.commit()
    except IntegrityError:
        db.rollback()
        made = personal_project_of(db, actor)
        assert made is not None
        return made
    return project


@dataclass(frozen=True)
class ProjectSummary:
    project: Project
    #: None for a personal project.
    organisation: Organisation | None
    role: ProjectRole
    member_count: int


def _member_counts(db: Session, project_ids: list[int]) -> dict[int, int]:
    """Members per project, counted for these projects only (``project_memberships.project_id`` is indexed)."""
    if not project_ids:
        return {}
    rows = db.exec(
        select(ProjectMembership.project_id, func.count())
        .where(col(ProjectMembership.project_id).in_(project_ids))
        .group_by(ProjectMembership.project_id)
    ).all()
    return dict(rows)


def _summaries(db: Session, rows: list[tuple[Project, Organisation | None, str]]) -> list[ProjectSummary]:
    counts = _member_counts(db, [p.id for p, _o, _r in rows])
    return [ProjectSummary(p, o, ProjectRole(r), counts.get(p.id, 0)) for p, o, r in rows]


def _my_projects(actor: User, *, personal: bool = False) -> sa.Select:
    """The actor's projects with their organisation and the actor's role; with ``personal``, their personal
    projects too (organisation None): the dashboard shows them, the forms that need an organisation do not."""
    stmt = select(Project, Organisation, ProjectMembership.role).join(
        ProjectMembership, ProjectMembership.project_id == Project.id
    )
    if personal:
        stmt = stmt.outerjoin(Organisation, Organisation.id == Project.organisation_id)
    else:
        stmt = stmt.join(Organisation, Organisation.id == Project.organisation_id)
    return stmt.where(ProjectMembership.user_id == actor.id)


def _archived(project: Project) -> bool:
    return project.archived_at is not None


#: The dashboard's order: current projects before archived ones (false before true), then by title; the id
#: breaks ties. The index ``ix_projects_dashboard_order`` has these columns, so that a page of a person's
#: projects costs the same whether they have 60 projects or 2,000.
DASHBOARD_ORDER = (
    KeyColumn(col(Project.archived_at).is_not(None), bool),
    KeyColumn(col(Project.title), str),
    KeyColumn(col(Project.id), int),
)
#: The order of an organisation's projects: by title, the id breaking ties.
PROJECT_ORDER = (KeyColumn(col(Project.title), str), KeyColumn(col(Project.id), int))


def _project_search(stmt: sa.Select, query: str) -> sa.Select:
    """Projects whose title holds ``query`` (any case), or whose number it is."""
    pattern = search_pattern(query)
    if pattern is None:
        return stmt
    found = col(Project.title).ilike(pattern, escape="\\")
    number = query.strip().lstrip("#")
    if number.isdigit() and len(number) <= 18:
        found = found | (col(Project.id) == int(number))
    return stmt.where(found)


def projects_of(db: Session, actor: User, *, personal: bool = False) -> list[ProjectSummary]:
    """All the actor's organisations' projects (for choosing one in a form), in the dashboard's order; their
    personal project too with ``personal`` (its summary's organisation is None)."""
    stmt = _my_projects(actor, personal=personal)
    rows = db.exec(stmt.order_by(*(c.expression for c in DASHBOARD_ORDER))).all()
    return _summaries(db, list(rows))


def project_page_of(
    db: Session, actor: User, *, query: str = "", cursor: str | None = None, size: int = PAGE_SIZE
) -> Page[ProjectSummary]:
    """One page of the actor's projects, personal ones included, for the dashboard and the API: two statements
    whatever the number of projects (the page's rows, then the member counts of those rows only)."""
    stmt = _project_search(_my_projects(actor, personal=True), query)
    page = keyset_page(
        db, stmt, DASHBOARD_ORDER, lambda r: (_archived(r[0]), r[0].title, r[0].id), cursor=cursor, size=size
    )
    return page.map(lambda rows: _summaries(db, rows))


def projects_of_organisation(
    db: Session,
    actor: User,
    organisation: Organisation,
    *,
    query: str = "",
    cursor: str | None = None,
    size: int = PAGE_SIZE,
) -> Page[Project]:
    """One page of an organisation's projects, by title: all of them for its admins, else the actor's own."""
    require(db, actor, Action.VIEW_ORGANISATION, organisation)
    stmt = select(Project).where(Project.organisation_id == organisation.id)
    if not allowed(db, actor, Action.MANAGE_ORGANISATION, organisation):
        stmt = stmt.join(ProjectMembership, ProjectMembership.project_id == Project.id).where(
            ProjectMembership.user_id == actor.id
        )
    stmt = _project_search(stmt, query)
    return keyset_page(db, stmt, PROJECT_ORDER, lambda p: (p.title, p.id), cursor=cursor, size=size)


# --- members -------------------------------------------------------------------------------------------


def members_of(db: Session, actor: User, project: Project) -> list[tuple[ProjectMembership, User]]:
    require(db, actor, Action.VIEW_PROJECT, project)
    rows = db.exec(
        select(ProjectMembership, User)
        .join(User, User.id == ProjectMembership.user_id)
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
        raise NotFound(Message(N_("This person is not a member of the project.")))
    return membership


def change_member_role(db: Session, actor: User, project: Project, user_id: int, role: ProjectRole) -> None:
    """Change a member's role; making someone PI hands the PI role over (the old PI becomes a manager)."""
    require(db, actor, Action.MANAGE_MEMBERS, project)
    membership = _membership(db, project, user_id)
    if membership.role == role:
        return
    if membership.role == ProjectRole.PI:
        raise Conflict(Message(N_("A project always has a PI: make another member PI instead.")))
    if role == ProjectRole.PI:
        current_pi = db.exec(
            select(ProjectMembership).where(
                ProjectMembership.project_id == project.id, ProjectMembership.role == ProjectRole.PI
            )
        ).first()
        if current_pi is not None and current_pi.user_id != actor.id and not allowed(db, actor, Action.GRANT_ROLES):
            raise Conflict(Message(N_("Only the current PI can hand the PI role over.")))
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
        raise Conflict(Message(N_("The PI cannot be removed; hand the PI role to another member first.")))
    db.delete(membership)
    db.commit()


def leave_project(db: Session, actor: User, project: Project) -> None:
    require(db, actor, Action.VIEW_PROJECT, project)
    membership = _membership(db, project, actor.id)
    if membership.role == ProjectRole.PI:
        raise Conflict(Message(N_("As PI you cannot leave; hand the PI role to another member first.")))
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
            errors["role"] = Message(N_("Invite as manager or member; hand the PI role over once they have joined."))
    except ValueError:
        errors["role"] = Message(N_("Choose a role."))
    if project.archived_at is not None:
        errors["email"] = Message(N_("This project is archived and takes no new members."))
    if errors:
        raise InvalidInput(Message(N_("The invitation could not be sent.")), errors=errors)
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        project_id=project.id,
        email=email,
        role=role_value,
        digest=_digest(token),
        invited_by_id=actor.id,
        expires_at=utcnow() + timedelta(hours=settings.invitation_ttl_hours),
    )
    db.add(invitation)
    db.commit()
    link = f"{settings.base_url}/invitations/{token}"
    # in the invitee's language when they have an account, else in the language of whoever invites them
    invitee = db.exec(select(User).where(func.lower(User.email) == email.lower())).first()
    language = language_of(settings, invitee or actor)
    named = {"who": actor.display_name, "project": project.title}
    try:
        send_mail(
            settings,
            to=email,
            subject=render(Message(N_("Invitation to the project %(project)s"), project=project.title), language),
            body=render(
                paragraphs(
                    Message(_INVITES_AS[role_value], **named),
                    Message(
                        N_("Open this link to accept (it works until %(expires)s):\n%(link)s"),
                        expires=invitation.expires_at,
                        link=link,
                    ),
                    Message(N_("If you did not expect this, ignore this message.")),
                ),
                language,
            ),
        )
    except MailNotSent as exc:  # the address is refused: bad input, and an invitation nobody got is none
        db.delete(invitation)
        db.commit()
        raise InvalidInput(
            Message(N_("The invitation could not be sent.")),
            errors={
                "email": Message(
                    N_("The mail server does not take mail for %(email)s; check the address."), email=email
                )
            },
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
        raise NotFound(Message(N_("No such invitation.")))
    if invitation.state(utcnow()) == "pending":
        invitation.revoked_at = utcnow()
        db.commit()


def find_invitation(db: Session, token: str) -> tuple[Invitation, Project]:
    """The invitation behind a link, if it can still be accepted."""
    invitation = db.exec(select(Invitation).where(Invitation.digest == _digest(token))).first()
    if invitation is None:
        raise NotFound(Message(N_("This invitation link is not valid. Check that you copied all of it.")))
    state = invitation.state(utcnow())
    if state != "pending":
        raise InvitationUnusable(
            Message(
                {
                    "accepted": N_("This invitation has already been accepted."),
                    "revoked": N_("This invitation was withdrawn by the project."),
                    "expired": N_("This invitation has expired; ask the project for a new one."),
                }[state]
            )
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
            Message(
                N_(
                    "This invitation was sent to %(email)s. Log in with an account whose verified e-mail is that "
                    "address (you can link it on your account page), or ask the project to invite the address you "
                    "use here."
                ),
                email=masked(invitation.email),
            )
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
        raise InvitationUnusable(Message(N_("This invitation has just been used or withdrawn.")))
    already = db.exec(
        select(ProjectMembership.id).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == actor.id
        )
    ).first()
    if already is None:
        db.add(ProjectMembership(project_id=project.id, user_id=actor.id, role=invitation.role))
    try:
        db.commit()
    except IntegrityError as exc:
        db.rollback()
        raise Conflict(Message(N_("You joined this project at the same moment in another window."))) from exc
    db.refresh(invitation)
    return project
