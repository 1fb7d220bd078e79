"""Organisations, projects, members and invitations over the JSON API."""

from __future__ import annotations

from datetime import datetime

from flask import jsonify, request, url_for
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_user, bp, spec, token_required
from portal.db import get_db
from portal.identity.models import ApiScope
from portal.pagination import MAX_PAGE_SIZE, MAX_SEARCH, PAGE_SIZE
from portal.projects import services
from portal.projects.models import Organisation, OrganisationKind, Project, ProjectRole
from portal.web import settings


class OrganisationOut(BaseModel):
    id: int
    name: str
    kind: OrganisationKind
    country: str
    registry_id: str | None
    vat_number: str | None
    verified: bool

    @classmethod
    def of(cls, org: Organisation) -> OrganisationOut:
        return cls(
            id=org.id,
            name=org.name,
            kind=org.kind,
            country=org.country,
            registry_id=org.registry_id,
            vat_number=org.vat_number,
            verified=org.verified_at is not None,
        )


class OrganisationIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: OrganisationKind
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")
    registry_id: str = Field(default="", max_length=64)
    vat_number: str = Field(default="", max_length=32)


class ProjectOut(BaseModel):
    id: int
    title: str
    description: str
    #: None for a personal project (hours its owner bought as a private person).
    organisation_id: int | None
    archived: bool
    created_at: datetime

    @classmethod
    def of(cls, project: Project) -> ProjectOut:
        return cls(
            id=project.id,
            title=project.title,
            description=project.description,
            organisation_id=project.organisation_id,
            archived=project.archived_at is not None,
            created_at=project.created_at,
        )


class ProjectIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)


class MemberOut(BaseModel):
    user_id: int
    display_name: str
    role: ProjectRole


class InvitationIn(BaseModel):
    email: str = Field(max_length=320)
    role: ProjectRole = ProjectRole.MEMBER


class InvitationOut(BaseModel):
    id: int
    email: str
    role: ProjectRole
    expires_at: datetime


def _dump(model: BaseModel | list[BaseModel]):
    if isinstance(model, list):
        return jsonify([m.model_dump(mode="json") for m in model])
    return jsonify(model.model_dump(mode="json"))


@bp.get("/organisations")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=list[OrganisationOut], HTTP_401=Problem, HTTP_403=Problem), tags=["organisations"]
)
def list_organisations():
    """Organisations the token's owner belongs to."""
    return _dump([OrganisationOut.of(o) for o, _role in services.organisations_of(get_db(), api_user())])


@bp.post("/organisations")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=OrganisationIn,
    resp=Response(HTTP_201=OrganisationOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["organisations"],
)
def create_organisation():
    """Register an organisation; VAT and registry numbers are validated, the caller becomes its admin."""
    body: OrganisationIn = request.context.json
    org = services.create_organisation(get_db(), api_user(), **body.model_dump())
    return _dump(OrganisationOut.of(org)), 201


@bp.get("/organisations/<int:organisation_id>")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=OrganisationOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=["organisations"],
)
def get_organisation(organisation_id: int):
    return _dump(OrganisationOut.of(services.get_organisation(get_db(), api_user(), organisation_id)))


@bp.post("/organisations/<int:organisation_id>/projects")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=ProjectIn,
    resp=Response(HTTP_201=ProjectOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=["projects"],
)
def create_project(organisation_id: int):
    """Create a project owned by the organisation; the caller becomes its PI."""
    db, user = get_db(), api_user()
    body: ProjectIn = request.context.json
    org = services.get_organisation(db, user, organisation_id)
    project = services.create_project(db, user, org, title=body.title, description=body.description)
    return _dump(ProjectOut.of(project)), 201


class ProjectListQuery(BaseModel):
    q: str = Field(default="", max_length=MAX_SEARCH, description="Text in the title (any case), or a project's id")
    cursor: str | None = Field(default=None, max_length=2000, description="`next_cursor` of the previous page")
    size: int = Field(default=PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="Projects per page")


class ProjectPageOut(BaseModel):
    projects: list[ProjectOut] = Field(description="Current projects first, then archived ones; each by title")
    next_cursor: str | None = Field(description="Pass as `cursor` for the following page; null on the last")
    next: str | None = Field(description="The URL of the following page; null on the last")


@bp.get("/projects")
@token_required(ApiScope.READ)
@spec.validate(
    query=ProjectListQuery,
    resp=Response(HTTP_200=ProjectPageOut, HTTP_400=Problem, HTTP_401=Problem, HTTP_403=Problem, HTTP_422=Problem),
    tags=["projects"],
)
def list_projects():
    """The projects the token's owner is a member of, one page at a time (a cursor that was not handed out: 400)."""
    query: ProjectListQuery = request.context.query
    page = services.project_page_of(get_db(), api_user(), query=query.q, cursor=query.cursor, size=query.size)
    following = None
    if page.next_cursor:
        args = {"cursor": page.next_cursor, "size": query.size} | ({"q": query.q} if query.q else {})
        following = url_for(request.endpoint or "", **args)
    return _dump(
        ProjectPageOut(
            projects=[ProjectOut.of(s.project) for s in page.items], next_cursor=page.next_cursor, next=following
        )
    )


@bp.get("/projects/<int:project_id>")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=ProjectOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem), tags=["projects"]
)
def get_project(project_id: int):
    return _dump(ProjectOut.of(services.get_project(get_db(), api_user(), project_id)))


@bp.get("/projects/<int:project_id>/members")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=list[MemberOut], HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem), tags=["projects"]
)
def list_members(project_id: int):
    db, user = get_db(), api_user()
    project = services.get_project(db, user, project_id)
    return _dump(
        [
            MemberOut(user_id=u.id, display_name=u.display_name, role=m.role)
            for m, u in services.members_of(db, user, project)
        ]
    )


@bp.post("/projects/<int:project_id>/invitations")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=InvitationIn,
    resp=Response(HTTP_201=InvitationOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem, HTTP_422=Problem),
    tags=["projects"],
)
def invite(project_id: int):
    """Invite someone by e-mail; the link goes to their inbox only."""
    db, user = get_db(), api_user()
    body: InvitationIn = request.context.json
    project = services.get_project(db, user, project_id)
    invitation, _link = services.invite_member(db, settings(), user, project, email=body.email, role=body.role)
    return _dump(
        InvitationOut(
            id=invitation.id,
            email=invitation.email,
            role=invitation.role,
            expires_at=invitation.expires_at,
        )
    ), 201
