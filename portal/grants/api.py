"""Calls and applications over the JSON API: the open calls, the token owner's applications with their
decisions and awards, and a draft's start, update and submission, through the same services as the pages.

Starting and submitting an application as PI asks for the level of assurance of the login that performs the
step (``grants.services.may_lead_applications``). Through the API that is the login in whose session the token
was made on the account page (``ApiToken.login``): a token made after an eIDAS *substantial* login, or one with
an academic affiliation, applies; one made otherwise (or outside a login) is refused with 409 ``not-eligible``,
as that login would be in the browser."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from flask import jsonify, request, url_for
from pydantic import BaseModel, Field
from spectree import Response

from portal.api.core import Problem, api_token, api_user, bp, responses, spec, token_required
from portal.db import get_db, utcnow
from portal.grants import queries
from portal.grants import services as grants
from portal.grants.models import AccessMode, Application, ApplicationState, Award, Call, ReviewMode
from portal.identity.models import ApiScope
from portal.ledger.models import ResourceKind
from portal.projects import services as projects
from portal.web import settings

TAGS = ["calls"]


class CallBudgetOut(BaseModel):
    resource_id: int
    resource_name: str
    kind: ResourceKind
    site_name: str
    base_unit: str


class CallOut(BaseModel):
    id: int
    title: str
    description: str
    access_mode: AccessMode
    review_mode: ReviewMode
    opens_at: datetime
    closes_at: datetime
    next_cutoff: date | None = Field(description="The next cut-off day (the call's time zone); null: none left")
    decision_due: date | None = Field(description="When the decision for that cut-off is due, if the call says")
    min_request: int = Field(description="Base units an application asks for at least")
    max_request: int = Field(description="Base units an application asks for at most")
    duration_months: int = Field(description="How long an awarded allocation runs")
    eligible_kinds: list[str] = Field(description="Organisation kinds that may apply; empty: any")
    eligible_countries: list[str] = Field(description="ISO country codes that may apply; empty: any")
    questions: list[dict[str, Any]] = Field(description="The questions a draft's `answers` answer, by `key`")
    resources: list[CallBudgetOut] = Field(description="The resources the call offers")


class CallListOut(BaseModel):
    calls: list[CallOut] = Field(description="Open calls taking applications, closing soonest first")


class ResourceRequestIn(BaseModel):
    resource_id: int = Field(ge=1, le=2**62, description="One of the call's resources")
    amount: int = Field(ge=0, le=2**62, description="Base units asked for; 0 removes the request")
    justification: str = Field(default="", max_length=5000)


class ApplicationIn(BaseModel):
    call_id: int = Field(ge=1, le=2**62)
    project_id: int = Field(ge=1, le=2**62, description="A project of which you are the PI")
    title: str = Field(min_length=1, max_length=200)


class ApplicationUpdateIn(BaseModel):
    """Only the fields sent are changed; types and lengths are checked, completeness only on submission."""

    title: str | None = Field(default=None, max_length=200)
    abstract: str | None = Field(default=None, max_length=5000)
    answers: dict[str, Any] | None = Field(default=None, description="Answers by the call's question `key`")
    co_applicants: list[str] | None = Field(default=None, max_length=20, description="Their e-mail addresses")
    requests: list[ResourceRequestIn] | None = Field(default=None, max_length=50)


class SubmitApplicationIn(BaseModel):
    """No fields: send ``{}``."""


class RequestOut(BaseModel):
    resource_id: int
    requested: int
    justification: str
    awarded: int | None


class AwardOut(BaseModel):
    resource_id: int
    tranche: int
    amount: int = Field(description="Base units of this tranche")
    allocation_id: int | None = Field(description="The allocation it opened; null until the tranche is released")
    released_at: datetime | None


class ApplicationOut(BaseModel):
    id: int
    call_id: int
    call_title: str
    project_id: int
    state: ApplicationState
    title: str
    version: int = Field(description="Versions submitted so far")
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    decided_at: datetime | None


class ApplicationDetailOut(ApplicationOut):
    abstract: str
    answers: dict[str, Any]
    co_applicants: list[str]
    requests: list[RequestOut]
    decision_reason: str = Field(
        description="Why it was accepted or rejected, as stored: in English where the portal decided (an automatic "
        "decision), as written where the call's manager did; empty before the decision"
    )
    decision_reason_shown: str = Field(
        description="The same in the language of `Accept-Language` (as the application's page shows it)"
    )
    comments: list[str] = Field(description="The reviewers' comments to the applicant, once they are shown")
    awards: list[AwardOut] = Field(description="The award's tranches, once accepted")


class ApplicationListOut(BaseModel):
    applications: list[ApplicationOut] = Field(description="Of your projects, last changed first")


def _summary(application: Application, call: Call) -> dict[str, Any]:
    return {
        "id": application.id,
        "call_id": call.id,
        "call_title": call.title,
        "project_id": application.project_id,
        "state": application.state,
        "title": application.title,
        "version": application.version,
        "created_at": application.created_at,
        "updated_at": application.updated_at,
        "submitted_at": application.submitted_at,
        "decided_at": application.decided_at,
    }


def _detail(application_id: int) -> ApplicationDetailOut:
    page = queries.application_page(get_db(), api_user(), application_id)
    application: Application = page["application"]
    awards: list[Award] = page["awards"]
    return ApplicationDetailOut(
        **_summary(application, page["call"]),
        abstract=application.abstract,
        answers=application.answers,
        co_applicants=application.co_applicants,
        requests=[
            RequestOut(
                resource_id=r.resource_id, requested=r.requested, justification=r.justification, awarded=r.awarded
            )
            for r, _resource in page["requests"]
        ],
        decision_reason=application.decision_reason if application.decided_at else "",
        decision_reason_shown=application.shown_decision_reason if application.decided_at else "",
        comments=[text for _label, text in page["comments"]],
        awards=[
            AwardOut(
                resource_id=a.resource_id,
                tranche=a.tranche,
                amount=a.amount,
                allocation_id=a.allocation_id,
                released_at=a.released_at,
            )
            for a in awards
        ],
    )


def _created(application_id: int):
    response = jsonify(_detail(application_id).model_dump(mode="json"))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_application", application_id=application_id)
    return response


@bp.get("/calls")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=CallListOut, HTTP_401=Problem, HTTP_403=Problem),
    tags=TAGS,
    operation_id="list_calls",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_calls():
    """The calls for proposals that take applications now, with their resources and next cut-off."""
    page = queries.calls_page(get_db(), api_user(), utcnow())
    calls = []
    for call in page["calls"]:
        cutoff, due = page["schedule"][call.id]
        calls.append(
            CallOut(
                id=call.id,
                title=call.title,
                description=call.description,
                access_mode=call.access_mode,
                review_mode=call.review_mode,
                opens_at=call.opens_at,
                closes_at=call.closes_at,
                next_cutoff=cutoff,
                decision_due=due,
                min_request=call.min_request,
                max_request=call.max_request,
                duration_months=call.duration_months,
                eligible_kinds=call.eligible_kinds,
                eligible_countries=call.eligible_countries,
                questions=call.questions,
                resources=[
                    CallBudgetOut(
                        resource_id=resource.id,
                        resource_name=resource.name,
                        kind=resource.kind,
                        site_name=site.name,
                        base_unit=resource.base_unit,
                    )
                    for _budget, resource, site in page["budgets"][call.id]
                ],
            )
        )
    return jsonify(CallListOut(calls=calls).model_dump(mode="json"))


@bp.get("/applications")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=ApplicationListOut, HTTP_401=Problem, HTTP_403=Problem),
    tags=TAGS,
    operation_id="list_applications",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def list_applications():
    """The applications of the token owner's projects, with their state and when they were decided."""
    page = queries.calls_page(get_db(), api_user(), utcnow())
    body = ApplicationListOut(
        applications=[ApplicationOut(**_summary(application, call)) for application, call, _project in page["mine"]]
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/applications/<int:application_id>")
@token_required(ApiScope.READ)
@spec.validate(
    resp=Response(HTTP_200=ApplicationDetailOut, HTTP_401=Problem, HTTP_403=Problem, HTTP_404=Problem),
    tags=TAGS,
    operation_id="get_application",
    security={"bearerAuth": [ApiScope.READ.value]},
)
def get_application(application_id: int):
    """An application of one of your projects: its answers and requests, and once decided the decision's
    reason, the reviewers' comments to the applicant and the award's tranches."""
    return jsonify(_detail(application_id).model_dump(mode="json"))


@bp.post("/applications")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=ApplicationIn,
    resp=responses(401, 403, 404, 409, 422, HTTP_201=ApplicationDetailOut),
    tags=TAGS,
    operation_id="create_application",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def create_application():
    """Start a draft application to an open call for a project of which you are the PI. 409: the call takes
    no applications now, or the login that made the token has too low a level of assurance and no academic
    affiliation (`not-eligible`; see the module's note). 422: a personal project (calls award hours to
    organisations' projects; `personal-project-cannot-apply`), or a blank title."""
    db, user = get_db(), api_user()
    body: ApplicationIn = request.context.json
    call = grants.get_call(db, body.call_id)
    project = projects.get_project(db, user, body.project_id)
    application = grants.start_application(db, user, api_token().login(), call=call, project=project, title=body.title)
    return _created(application.id)


@bp.patch("/applications/<int:application_id>")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=ApplicationUpdateIn,
    resp=responses(401, 403, 404, 409, 422, HTTP_200=ApplicationDetailOut),
    tags=TAGS,
    operation_id="update_application",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def update_application(application_id: int):
    """Save a draft's fields (the project's PI only); 409 once it is submitted, 422 naming each bad field."""
    db, user = get_db(), api_user()
    body: ApplicationUpdateIn = request.context.json
    application, _call, _project, _resources = queries.draft_of(db, user, application_id)
    grants.save_draft(
        db,
        user,
        application,
        title=body.title,
        abstract=body.abstract,
        answers=body.answers,
        co_applicants=body.co_applicants,
        requests=(
            [grants.RequestInput(r.resource_id, r.amount, r.justification) for r in body.requests]
            if body.requests is not None
            else None
        ),
    )
    return jsonify(_detail(application_id).model_dump(mode="json"))


@bp.post("/applications/<int:application_id>/submit")
@token_required(ApiScope.WRITE)
@spec.validate(
    json=SubmitApplicationIn,
    resp=responses(401, 403, 404, 409, 422, HTTP_200=ApplicationDetailOut),
    tags=TAGS,
    operation_id="submit_application",
    security={"bearerAuth": [ApiScope.WRITE.value]},
)
def submit_application(application_id: int):
    """Submit a complete draft (the project's PI only): 422 lists what is missing; 409 when the call no
    longer takes it, it is not a draft, or the login that made the token may not lead applications (see the module's
    note)."""
    db, user = get_db(), api_user()
    application, _call, _project, _resources = queries.draft_of(db, user, application_id)
    grants.submit(db, settings(), user, api_token().login(), application)
    return jsonify(_detail(application_id).model_dump(mode="json"))
