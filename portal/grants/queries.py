"""What the grants pages show, read in a constant number of queries per page.

Read-only: each function takes the session and the acting user and writes nothing, so a page can be
assembled before or after a service has refused a step. Permission to see a page is checked here, through the
same ``authz`` table as the services.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, func, select

from portal.authz import Action, allowed, project_role, require
from portal.errors import NotAuthorised, NotFound
from portal.grants import services as grants
from portal.grants.models import (
    Application,
    ApplicationFile,
    ApplicationState,
    ApplicationVersion,
    Award,
    Call,
    CallBudget,
    Reply,
    ResourceRequest,
    Review,
    ReviewKind,
    ReviewState,
)
from portal.identity.models import Login, User
from portal.ledger.models import Resource, ResourceKind, Site
from portal.messages import N_, Message
from portal.projects.models import Organisation, Project, ProjectMembership, ProjectRole

S = ApplicationState
#: The order states are listed in on the dashboard.
STATE_ORDER = list(ApplicationState)
#: From these states on the applicant reads the reviewers' comments.
COMMENTS_SHOWN = frozenset({S.REPLY, S.RANKED, S.ACCEPTED, S.REJECTED})
#: Steps a call manager takes, in the order their forms appear.
MANAGER_STEPS = (
    "pass_administrative_check",
    "complete_technical_assessment",
    "request_reply",
    "rank",
    "accept",
    "reject",
)


# --- pieces several pages share ----------------------------------------------------------------------------


def call_resources(db: Session, call: Call) -> list[tuple[CallBudget, Resource, Site]]:
    """The call's budgets with their resources and sites, in resource order."""
    return list(
        db.exec(
            select(CallBudget, Resource, Site)
            .join(Resource, Resource.id == CallBudget.resource_id)
            .join(Site, Site.id == Resource.site_id)
            .where(CallBudget.call_id == call.id)
            .order_by(Resource.id)
        ).all()
    )


def latest_version(db: Session, application: Application) -> ApplicationVersion | None:
    return db.exec(
        select(ApplicationVersion)
        .where(ApplicationVersion.application_id == application.id)
        .order_by(col(ApplicationVersion.version).desc())
    ).first()


def files_of(db: Session, application: Application) -> dict[int, tuple[str, int]]:
    """file id -> (name, size) of the application's uploads, without their content."""
    rows = db.exec(
        select(ApplicationFile.id, ApplicationFile.filename, ApplicationFile.size).where(
            ApplicationFile.application_id == application.id
        )
    ).all()
    return {file_id: (name, size) for file_id, name, size in rows}


def resources_by_id(db: Session, ids: set[int]) -> dict[int, tuple[Resource, Site]]:
    if not ids:
        return {}
    rows = db.exec(
        select(Resource, Site).join(Site, Site.id == Resource.site_id).where(col(Resource.id).in_(ids))
    ).all()
    return {r.id: (r, s) for r, s in rows}


def version_resources(db: Session, version: ApplicationVersion | None) -> dict[int, tuple[Resource, Site]]:
    """The resources a submitted version asked for (they may have left the call since)."""
    return resources_by_id(db, {r["resource_id"] for r in (version.content.get("requests", []) if version else [])})


def legal_steps(call: Call, application: Application) -> set[str]:
    """The steps the application's state allows now (the pages offer only these)."""
    steps = set()
    for step in (*MANAGER_STEPS, "withdraw", "submit"):
        try:
            grants.next_state(call, application.state, step)
        except grants.IllegalTransition:
            continue
        steps.add(step)
    return steps


def all_resources(db: Session) -> list[tuple[Resource, Site]]:
    """Every resource with its site, by site: what a new call's budgets may name."""
    return list(
        db.exec(select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name, Resource.id)).all()
    )


# --- the applicant's pages -----------------------------------------------------------------------------------


def calls_page(db: Session, me: User, now: datetime) -> dict[str, Any]:
    """The open calls with their budgets and dates, the user's applications and the calls they manage."""
    open_now = grants.open_calls(db, now)
    budgets: dict[int, list[tuple[CallBudget, Resource, Site]]] = defaultdict(list)
    if open_now:
        rows = db.exec(
            select(CallBudget, Resource, Site)
            .join(Resource, Resource.id == CallBudget.resource_id)
            .join(Site, Site.id == Resource.site_id)
            .where(col(CallBudget.call_id).in_([c.id for c in open_now]))
            .order_by(Resource.id)
        ).all()
        for budget, resource, site in rows:
            budgets[budget.call_id].append((budget, resource, site))
    schedule = {}
    for call in open_now:
        cutoff = grants.next_cutoff(call, now)
        schedule[call.id] = (cutoff, grants.decision_due(call, cutoff) if cutoff else None)
    mine = db.exec(
        select(Application, Call, Project)
        .join(ProjectMembership, ProjectMembership.project_id == Application.project_id)
        .join(Call, Call.id == Application.call_id)
        .join(Project, Project.id == Application.project_id)
        .where(ProjectMembership.user_id == me.id)
        .order_by(col(Application.updated_at).desc())
    ).all()
    may_create = allowed(db, me, Action.CREATE_CALLS)
    managed_stmt = select(Call).order_by(col(Call.created_at).desc())
    if not may_create:
        managed_stmt = managed_stmt.where(Call.manager_id == me.id)
    return {
        "calls": open_now,
        "budgets": budgets,
        "schedule": schedule,
        "mine": mine,
        "managed": list(db.exec(managed_stmt)),
        "may_create": may_create,
    }


def call_page(db: Session, me: User, login: Login | None, call_id: int, now: datetime) -> dict[str, Any]:
    """A call as an applicant reads it: its resources, its next cut-off and whether the user may apply."""
    call = grants.get_call(db, call_id)
    cutoff = grants.next_cutoff(call, now)
    resources = call_resources(db, call)
    return {
        "call": call,
        "resources": resources,
        "request_kind": resources[0][1].kind if resources else ResourceKind.GPU,
        "cutoff": cutoff,
        "decision_due": grants.decision_due(call, cutoff) if cutoff else None,
        "accepting": grants.accepting(call, now),
        "may_lead": grants.may_lead_applications(login),
        "may_manage": allowed(db, me, Action.MANAGE_CALL, call),
    }


def draft_of(
    db: Session, me: User, application_id: int
) -> tuple[Application, Call, Project, list[tuple[CallBudget, Resource, Site]]]:
    """The application its project's PI edits, with the call's resources; anyone else is refused."""
    application, call, project = grants.get_application(db, me, application_id)
    if project_role(db, me, project) != ProjectRole.PI:
        raise NotAuthorised(Message(N_("Only the project's PI edits the application.")))
    return application, call, project, call_resources(db, call)


def drafts_of(db: Session, me: User, limit: int = 20) -> list[tuple[Application, Call, Project]]:
    """The drafts the user may continue (those of the projects they lead), last saved first: one query."""
    return list(
        db.exec(
            select(Application, Call, Project)
            .join(ProjectMembership, ProjectMembership.project_id == Application.project_id)
            .join(Call, Call.id == Application.call_id)
            .join(Project, Project.id == Application.project_id)
            .where(
                ProjectMembership.user_id == me.id,
                ProjectMembership.role == ProjectRole.PI,
                Application.state == S.DRAFT,
                col(Project.archived_at).is_(None),
            )
            .order_by(col(Application.updated_at).desc())
            .limit(limit)
        ).all()
    )


def application_page(db: Session, me: User, application_id: int) -> dict[str, Any]:
    """An application as the user may see it: the applicant its version, comments and awards; the call's
    manager also the reviews, the reviewers and what the rules say about eligibility."""
    application, call, project = grants.get_application(db, me, application_id)
    is_manager = allowed(db, me, Action.MANAGE_CALL, call)
    role = project_role(db, me, project)
    is_applicant = role is not None
    requests = grants.requests_of(db, application)
    version = latest_version(db, application)
    found_version_resources = version_resources(db, version)
    reviews: list[Review] = grants.reviews_visible_to(db, me, application) if is_manager else []
    reviewers = {u.id: u for u in db.exec(select(User).where(col(User.id).in_({r.reviewer_id for r in reviews})))}
    my_reviews = list(
        db.exec(select(Review).where(Review.application_id == application.id, Review.reviewer_id == me.id))
    )
    reply = db.exec(select(Reply).where(Reply.application_id == application.id)).first()
    awards = list(
        db.exec(select(Award).where(Award.application_id == application.id).order_by(Award.resource_id, Award.tranche))
    )
    organisation = db.get(Organisation, project.organisation_id)
    steps = legal_steps(call, application)
    return {
        "application": application,
        "call": call,
        "project": project,
        "organisation": organisation,
        "is_manager": is_manager,
        "is_applicant": is_applicant,
        "is_pi": role == ProjectRole.PI,
        "may_view_project": allowed(db, me, Action.VIEW_PROJECT, project),
        "requests": requests,
        "version": version,
        "version_resources": found_version_resources,
        "files": files_of(db, application),
        "comments": grants.comments_for_applicant(db, me, application)
        if (is_applicant or is_manager) and application.state in COMMENTS_SHOWN
        else [],
        "reply": reply,
        "reviews": reviews,
        "reviewers": reviewers,
        "my_reviews": my_reviews,
        "steps": steps,
        "manager_steps": steps & set(MANAGER_STEPS),
        "awards": awards,
        "resources_by_id": {res.id: res for _r, res in requests},
        "eligibility": grants.eligibility_problems(db, call, project) if is_manager else [],
    }


def tranche_of(db: Session, application: Application, award_id: int) -> Award:
    """One tranche of the application's award (another application's is not found here)."""
    award = db.get(Award, award_id)
    if award is None or award.application_id != application.id:
        raise NotFound(Message(N_("No such tranche.")))
    return award


# --- the reviewer's pages ------------------------------------------------------------------------------------


def reviews_of(db: Session, me: User) -> list[tuple[Review, Application, Call]]:
    """The user's reviews, those still to do first, by due date."""
    return list(
        db.exec(
            select(Review, Application, Call)
            .join(Application, Application.id == Review.application_id)
            .join(Call, Call.id == Application.call_id)
            .where(Review.reviewer_id == me.id)
            .order_by(col(Review.state) != ReviewState.ASSIGNED, col(Review.due_on).is_(None), Review.due_on, Review.id)
        ).all()
    )


def my_review(db: Session, me: User, review_id: int) -> tuple[Review, Application, Call, Project]:
    """A review assigned to the user; a declared conflict of interest ends the reviewer's access."""
    review = db.get(Review, review_id)
    if review is None or review.reviewer_id != me.id or review.state == ReviewState.CONFLICT:
        raise NotFound(Message(N_("No such review.")))
    application, call, project = grants.get_application(db, me, review.application_id)
    return review, application, call, project


def review_page(db: Session, me: User, review_id: int) -> dict[str, Any]:
    """A review with the application it is about and the other reviews the reviewer may read."""
    review, application, call, project = my_review(db, me, review_id)
    version = latest_version(db, application)
    return {
        "review": review,
        "application": application,
        "call": call,
        "project": project,
        "organisation": db.get(Organisation, project.organisation_id),
        "applicant": db.get(User, application.applicant_id),
        "version": version,
        "version_resources": version_resources(db, version),
        "files": files_of(db, application),
        "others": [r for r in grants.reviews_visible_to(db, me, application) if r.id != review.id],
        "criteria": list(enumerate(call.criteria)),
        "open_for_review": application.state
        == (S.TECHNICAL_ASSESSMENT if review.kind == ReviewKind.TECHNICAL else S.PEER_REVIEW),
    }


# --- the call manager's pages --------------------------------------------------------------------------------


def managed_call(db: Session, me: User, call_id: int) -> Call:
    """A call the user manages (or may manage as an administrator)."""
    call = db.get(Call, call_id)
    if call is None:
        raise NotFound(Message(N_("No such call.")))
    require(db, me, Action.MANAGE_CALL, call)
    return call


def applications_of_call(db: Session, call: Call) -> list[tuple[Application, Project, Organisation]]:
    """The call's applications except drafts (those are still the applicants' own)."""
    return list(
        db.exec(
            select(Application, Project, Organisation)
            .join(Project, Project.id == Application.project_id)
            .join(Organisation, Organisation.id == Project.organisation_id)
            .where(Application.call_id == call.id, Application.state != S.DRAFT)
            .order_by(Application.id)
        ).all()
    )


def requests_of_call(db: Session, call: Call) -> dict[int, dict[int, ResourceRequest]]:
    """application id -> resource id -> its request, for the call's non-draft applications."""
    rows = db.exec(
        select(ResourceRequest)
        .join(Application, Application.id == ResourceRequest.application_id)
        .where(Application.call_id == call.id, Application.state != S.DRAFT)
    ).all()
    found: dict[int, dict[int, ResourceRequest]] = defaultdict(dict)
    for row in rows:
        found[row.application_id][row.resource_id] = row
    return found


def call_dashboard(db: Session, me: User, call: Call) -> dict[str, Any]:
    """The manager's view of a call: its applications by state, the pressure on each budget, the progress of
    the reviews and the ranking."""
    apps = applications_of_call(db, call)
    counts = Counter(
        dict(
            db.exec(
                select(Application.state, func.count())
                .where(Application.call_id == call.id)
                .group_by(Application.state)
            ).all()
        )
    )
    requested = requests_of_call(db, call)
    live = {a.id for a, _p, _o in apps if a.state != S.WITHDRAWN}
    resources = call_resources(db, call)
    budget_rows = []
    for budget, resource, site in resources:
        total = sum(r[resource.id].requested for app_id, r in requested.items() if app_id in live and resource.id in r)
        budget_rows.append(
            {
                "resource": resource,
                "site": site,
                "budget": budget.budget,
                "requested": total,
                "awarded": budget.awarded,
                "remaining": budget.budget - budget.awarded,
                "pressure": round(100 * total / budget.budget) if budget.budget else 0,
            }
        )
    progress: dict[int, Counter[str]] = defaultdict(Counter)
    for app_id, state, n in db.exec(
        select(Review.application_id, Review.state, func.count())
        .join(Application, Application.id == Review.application_id)
        .where(Application.call_id == call.id)
        .group_by(Review.application_id, Review.state)
    ).all():
        progress[app_id][str(state)] = n
    return {
        "call": call,
        "apps": apps,
        "counts": [(state, counts.get(state, 0)) for state in STATE_ORDER],
        "total": sum(counts.values()),
        "requested": requested,
        "resources": resources,
        "budget_rows": budget_rows,
        "progress": progress,
        "ranking": grants.ranking(db, me, call),
    }
