"""Who sees an application, and what each step reads of it: the PI, the call's manager, its reviewers."""

from __future__ import annotations

from sqlmodel import Session, select

from portal.authz import Action, allowed, project_role, require
from portal.errors import InvalidInput, NotAuthorised, NotFound
from portal.grants.models import Application, Call, ResourceRequest, Review, ReviewKind, ReviewState
from portal.identity.models import User
from portal.ledger.models import Resource
from portal.messages import N_, Message, Text, listed
from portal.projects.models import Organisation, OrganisationKind, Project, ProjectMembership, ProjectRole


def require_pi(db: Session, actor: User, project: Project) -> None:
    require(db, actor, Action.VIEW_PROJECT, project)
    role = db.exec(
        select(ProjectMembership.role).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == actor.id
        )
    ).first()
    if role != ProjectRole.PI:
        raise NotAuthorised(Message(N_("Only the project's PI applies for it.")))


def get_application(db: Session, actor: User, application_id: int) -> tuple[Application, Call, Project]:
    """An application its project's members, its call's manager (and admins) and its reviewers may see; a
    reviewer who declared a conflict of interest no longer sees it (nor its files), and no other staff role
    reads applications: a site operator sees one through the technical review assigned to them."""
    application = db.get(Application, application_id)
    if application is None:
        raise NotFound(Message(N_("No such application.")))
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    if not (
        project_role(db, actor, project) is not None
        or allowed(db, actor, Action.MANAGE_CALL, call)
        or active_review_of(db, application, actor)
    ):
        raise NotFound(Message(N_("No such application.")))
    return application, call, project


def review_of(db: Session, application: Application, reviewer: User, kind: ReviewKind | None = None) -> Review | None:
    stmt = select(Review).where(Review.application_id == application.id, Review.reviewer_id == reviewer.id)
    if kind is not None:
        stmt = stmt.where(Review.kind == kind)
    return db.exec(stmt).first()


def active_review_of(db: Session, application: Application, reviewer: User) -> bool:
    """A review row that lets the reviewer read the application: any but one declined for a conflict."""
    stmt = select(Review.id).where(
        Review.application_id == application.id,
        Review.reviewer_id == reviewer.id,
        Review.state != ReviewState.CONFLICT,
    )
    return db.exec(stmt).first() is not None


def requests_of(db: Session, application: Application) -> list[tuple[ResourceRequest, Resource]]:
    return list(
        db.exec(
            select(ResourceRequest, Resource)
            .join(Resource, Resource.id == ResourceRequest.resource_id)
            .where(ResourceRequest.application_id == application.id)
            .order_by(Resource.id)
        ).all()
    )


#: Why a personal project (hours a person bought for themselves) takes part in no call for proposals.
PERSONAL_PROJECT_PROBLEM = N_(
    "%(title)s is a personal project: calls for proposals award hours to projects of a university, research "
    "institute, public body or company, which answers for the work. Apply with a project of your organisation."
)

#: Why an organisation of another kind is not eligible, per its kind; ``kinds`` lists those the call is for.
_WRONG_KIND = {
    OrganisationKind.UNIVERSITY: N_("%(name)s is a university or research institute; this call is for %(kinds)s."),
    OrganisationKind.PUBLIC_BODY: N_("%(name)s is a public body; this call is for %(kinds)s."),
    OrganisationKind.SME: N_("%(name)s is a sme or startup; this call is for %(kinds)s."),
    OrganisationKind.LARGE_COMPANY: N_("%(name)s is a large company; this call is for %(kinds)s."),
}
#: The kinds a call is for, as listed after "this call is for".
_KIND_LISTED = {
    # Translators: a kind of organisation a call for proposals is for, in a list after "this call is for".
    OrganisationKind.UNIVERSITY: N_("university"),
    # Translators: a kind of organisation a call for proposals is for, in a list after "this call is for".
    OrganisationKind.PUBLIC_BODY: N_("public body"),
    # Translators: a kind of organisation a call for proposals is for (small or medium enterprise), in a list.
    OrganisationKind.SME: N_("sme"),
    # Translators: a kind of organisation a call for proposals is for, in a list after "this call is for".
    OrganisationKind.LARGE_COMPANY: N_("large company"),
}


def sentences(parts: list[Text]) -> Text:
    """Whole sentences, one after the other."""
    joined = parts[0]
    for part in parts[1:]:
        joined = joined + part
    return joined


class PersonalProjectCannotApply(InvalidInput):
    """An application for a personal project: calls are for organisations' projects (their kind and country are
    what the eligibility rules check), so it is refused before a draft exists."""

    title = "Not eligible"


def require_organisation_project(project: Project) -> None:
    """Refuse a personal project as an applicant, naming why (422)."""
    if project.organisation_id is None:
        problem = Message(PERSONAL_PROJECT_PROBLEM, title=project.title)
        raise PersonalProjectCannotApply(problem, errors={"project_id": problem})


def eligibility_problems(db: Session, call: Call, project: Project) -> list[Text]:
    """What makes ``project`` ineligible for ``call``, each a sentence in the reader's language (``str()`` of
    one: the request's, else English); empty when it is eligible."""
    if project.organisation_id is None:
        return [Message(PERSONAL_PROJECT_PROBLEM, title=project.title)]
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    problems: list[Text] = []
    if call.eligible_kinds and organisation.kind not in call.eligible_kinds:
        kinds = listed(
            [
                Message(_KIND_LISTED[OrganisationKind(k)]) if k in set(OrganisationKind) else k.replace("_", " ")
                for k in call.eligible_kinds
            ]
        )
        problems.append(Message(_WRONG_KIND[organisation.kind], name=organisation.name, kinds=kinds))
    if call.eligible_countries and organisation.country not in call.eligible_countries:
        problems.append(
            Message(
                N_("%(name)s is in %(country)s; this call is for organisations in %(countries)s."),
                name=organisation.name,
                country=organisation.country,
                countries=", ".join(call.eligible_countries),
            )
        )
    return problems


def manager_context(db: Session, actor: User | None, application: Application) -> tuple[Call, Project]:
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    if actor is not None:
        require(db, actor, Action.MANAGE_CALL, call)
    return call, project
