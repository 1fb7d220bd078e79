"""The review pipeline: the administrative check, reviewers and their conflicts of interest, scores,
the applicant's reply and the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlmodel import Session, col, func, select

from portal.authz import Action, allowed, factory_roles, organisation_role, require
from portal.config import Settings
from portal.db import utcnow
from portal.errors import Conflict, InvalidInput, NotFound
from portal.grants.models import Application, Call, Reply, Review, ReviewKind, ReviewState
from portal.grants.services.access import (
    eligibility_problems,
    get_application,
    manager_context,
    require_pi,
    review_of,
    sentences,
)
from portal.grants.services.decisions import decide_reject
from portal.grants.services.states import (
    MIN_SCIENTIFIC_REVIEWS,
    ConflictOfInterest,
    IllegalTransition,
    NotEligible,
    S,
    move,
    state_name,
    transaction,
)
from portal.identity.models import FactoryRole, User
from portal.messages import N_, Message
from portal.notifications.services import notify
from portal.projects.models import Project, ProjectMembership

#: What a reviewer is asked, per kind of review (a sentence each, so that every language can word it).
_ASKED = {
    ReviewKind.TECHNICAL: N_("You are asked for a technical review of “%(title)s” in “%(call)s”."),
    ReviewKind.SCIENTIFIC: N_("You are asked for a scientific review of “%(title)s” in “%(call)s”."),
}
_ASKED_DUE = {
    ReviewKind.TECHNICAL: N_("You are asked for a technical review of “%(title)s” in “%(call)s”, due %(due)s."),
    ReviewKind.SCIENTIFIC: N_("You are asked for a scientific review of “%(title)s” in “%(call)s”, due %(due)s."),
}
#: Why a reviewer may not review a project (``conflict_of_interest``), as the refusal says it.
_CONFLICTED = {
    "is a member of the project": N_("%(name)s is a member of the project."),
    "belongs to the applying organisation": N_("%(name)s belongs to the applying organisation."),
    "works in a project of the applying organisation": N_("%(name)s works in a project of the applying organisation."),
}
#: Reviewers of each kind are assigned in one state only.
_ASSIGNED_WHILE = {
    ReviewKind.TECHNICAL: N_(
        "Technical reviewers are assigned while the application is in technical assessment; it is %(state)s."
    ),
    ReviewKind.SCIENTIFIC: N_(
        "Scientific reviewers are assigned while the application is in peer review; it is %(state)s."
    ),
}
#: The factory role a reviewer of each kind needs: (refusal, the field's message).
_NEEDS_ROLE = {
    FactoryRole.SITE_OPERATOR: (N_("%(name)s is not a site operator."), N_("Needs the site_operator role.")),
    FactoryRole.REVIEWER: (N_("%(name)s is not a reviewer."), N_("Needs the reviewer role.")),
}


@transaction
def administrative_check(
    db: Session, settings: Settings, actor: User, application: Application, *, passed: bool, reason: str = ""
) -> Application:
    """The call manager's administrative check; eligibility rules are checked here too."""
    call, project = manager_context(db, actor, application)
    if passed:
        problems = eligibility_problems(db, call, project)
        if problems:
            raise NotEligible(sentences(problems))
        move(db, call, application, "pass_administrative_check")
        db.commit()
        return application
    failed = reason or Message(N_("The administrative check failed."))
    return decide_reject(db, settings, actor, application, reason=failed)


def conflict_of_interest(db: Session, reviewer: User, project: Project) -> str | None:
    """Why ``reviewer`` may not review ``project``, if they may not."""
    if db.exec(
        select(ProjectMembership.id).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == reviewer.id
        )
    ).first():
        return "is a member of the project"
    if project.organisation_id is None:  # a personal project: no organisation to be tied to
        return None
    if organisation_role(db, reviewer, project.organisation_id) is not None:
        return "belongs to the applying organisation"
    same_org = db.exec(
        select(ProjectMembership.id)
        .join(Project, Project.id == ProjectMembership.project_id)
        .where(ProjectMembership.user_id == reviewer.id, Project.organisation_id == project.organisation_id)
    ).first()
    return "works in a project of the applying organisation" if same_org else None


@transaction
def assign_reviewer(
    db: Session,
    settings: Settings,
    actor: User,
    application: Application,
    reviewer: User,
    *,
    kind: ReviewKind,
    due_on: date | None = None,
) -> Review:
    call, project = manager_context(db, actor, application)
    expected = S.TECHNICAL_ASSESSMENT if kind == ReviewKind.TECHNICAL else S.PEER_REVIEW
    if application.state != expected:
        raise IllegalTransition(Message(_ASSIGNED_WHILE[kind], state=state_name(application.state)))
    needed = FactoryRole.SITE_OPERATOR if kind == ReviewKind.TECHNICAL else FactoryRole.REVIEWER
    if needed not in factory_roles(db, reviewer):
        refusal, field_message = _NEEDS_ROLE[needed]
        raise InvalidInput(Message(refusal, name=reviewer.display_name), errors={"reviewer": Message(field_message)})
    why = conflict_of_interest(db, reviewer, project)
    if why:
        raise ConflictOfInterest(Message(_CONFLICTED[why], name=reviewer.display_name))
    if review_of(db, application, reviewer, kind) is not None:
        raise Conflict(Message(N_("%(name)s is already assigned."), name=reviewer.display_name))
    review = Review(application_id=application.id, reviewer_id=reviewer.id, kind=kind, due_on=due_on)
    db.add(review)
    db.flush()
    notify(
        db,
        settings,
        reviewer,
        subject=Message(N_("Review requested: %(title)s"), title=application.title),
        body=Message(_ASKED_DUE[kind] if due_on else _ASKED[kind], title=application.title, call=call.title, due=due_on)
        + Message(N_("Declare a conflict of interest if you have one.")),
        link=f"/reviews/{review.id}",
    )
    db.commit()
    return review


def _my_review(db: Session, actor: User, review_id: int) -> tuple[Review, Application]:
    """The actor's own review; one they declined for a conflict of interest is gone for them."""
    review = db.get(Review, review_id)
    if review is None or review.reviewer_id != actor.id or review.state == ReviewState.CONFLICT:
        raise NotFound(Message(N_("No such review.")))
    application = db.get(Application, review.application_id)
    assert application is not None
    return review, application


@transaction
def declare_conflict(db: Session, actor: User, review_id: int, *, reason: str) -> Review:
    review, _application = _my_review(db, actor, review_id)
    if review.state != ReviewState.ASSIGNED:
        raise IllegalTransition(Message(N_("Only an open review can be declined.")))
    if not reason.strip():
        raise InvalidInput(Message(N_("Say what the conflict is.")), errors={"reason": Message(N_("Required."))})
    review.state, review.conflict_reason = ReviewState.CONFLICT, reason.strip()[:1000]
    db.commit()
    return review


@transaction
def submit_review(
    db: Session,
    actor: User,
    review_id: int,
    *,
    comment_to_applicant: str,
    comment_to_panel: str = "",
    scores: dict[str, int] | None = None,
    feasible: bool | None = None,
) -> Review:
    review, application = _my_review(db, actor, review_id)
    call = db.get(Call, application.call_id)
    assert call is not None
    if review.state != ReviewState.ASSIGNED:
        raise IllegalTransition(Message(N_("This review is already submitted or declined.")))
    expected = S.TECHNICAL_ASSESSMENT if review.kind == ReviewKind.TECHNICAL else S.PEER_REVIEW
    if application.state != expected:
        raise IllegalTransition(
            Message(N_("The application is %(state)s; reviews are closed."), state=state_name(application.state))
        )
    errors: dict[str, Message] = {}
    if not comment_to_applicant.strip():
        errors["comment_to_applicant"] = Message(N_("Write a comment for the applicant."))
    if review.kind == ReviewKind.TECHNICAL:
        if feasible is None:
            errors["feasible"] = Message(N_("Say whether the work is feasible here."))
    else:
        scores = scores or {}
        for criterion in call.criteria:
            value = scores.get(criterion["key"])
            if not isinstance(value, int) or not 1 <= value <= 5:
                errors[f"scores.{criterion['key']}"] = Message(N_("Score from 1 to 5."))
    if errors:
        raise InvalidInput(Message(N_("The review is not complete.")), errors=errors)
    review.comment_to_applicant = comment_to_applicant.strip()
    review.comment_to_panel = comment_to_panel.strip()
    review.feasible = feasible
    review.scores = {c["key"]: int(scores[c["key"]]) for c in call.criteria} if scores else {}
    review.state, review.submitted_at = ReviewState.SUBMITTED, utcnow()
    db.commit()
    return review


def reviews_visible_to(db: Session, actor: User, application: Application) -> list[Review]:
    """Other reviews show to a reviewer only after their own is in; managers see all; applicants none here."""
    call = db.get(Call, application.call_id)
    assert call is not None
    reviews = list(db.exec(select(Review).where(Review.application_id == application.id).order_by(Review.id)))
    if allowed(db, actor, Action.MANAGE_CALL, call):
        return reviews
    mine = [r for r in reviews if r.reviewer_id == actor.id]
    if any(r.state == ReviewState.SUBMITTED for r in mine):
        return [r for r in reviews if r.state == ReviewState.SUBMITTED or r.reviewer_id == actor.id]
    return mine


def comments_for_applicant(db: Session, actor: User, application: Application) -> list[tuple[str, str]]:
    """(kind, comment) of every submitted review, without who wrote it."""
    get_application(db, actor, application.id)
    rows = db.exec(
        select(Review.kind, Review.comment_to_applicant)
        .where(Review.application_id == application.id, Review.state == ReviewState.SUBMITTED)
        .order_by(Review.id)
    ).all()
    return [(str(k), c) for k, c in rows]


@transaction
def complete_technical_assessment(
    db: Session, settings: Settings, actor: User, application: Application
) -> Application:
    call, _project = manager_context(db, actor, application)
    done = db.exec(
        select(func.count()).where(
            Review.application_id == application.id,
            Review.kind == ReviewKind.TECHNICAL,
            Review.state == ReviewState.SUBMITTED,
        )
    ).one()
    if not done:
        raise IllegalTransition(Message(N_("A site operator's technical assessment must be submitted first.")))
    move(db, call, application, "complete_technical_assessment")
    db.commit()
    return application


@transaction
def request_reply(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call, _project = manager_context(db, actor, application)
    done = db.exec(
        select(func.count()).where(
            Review.application_id == application.id,
            Review.kind == ReviewKind.SCIENTIFIC,
            Review.state == ReviewState.SUBMITTED,
        )
    ).one()
    if done < MIN_SCIENTIFIC_REVIEWS:
        raise IllegalTransition(
            Message(
                N_("At least %(needed)s scientific reviews are needed; %(done)s are in."),
                needed=MIN_SCIENTIFIC_REVIEWS,
                done=done,
            )
        )
    move(db, call, application, "request_reply")
    applicant = db.get(User, application.applicant_id)
    assert applicant is not None
    notify(
        db,
        settings,
        applicant,
        subject=Message(N_("Reviews of “%(title)s”: your reply"), title=application.title),
        body=Message(N_("The reviews of your application are in. You may reply to them before the ranking.")),
        link=f"/applications/{application.id}",
    )
    db.commit()
    return application


@transaction
def submit_reply(db: Session, actor: User, application: Application, *, text: str) -> Reply:
    project = db.get(Project, application.project_id)
    assert project is not None
    require_pi(db, actor, project)
    if application.state != S.REPLY:
        raise IllegalTransition(Message(N_("Replies are taken only while the application waits for its reply.")))
    if not text.strip():
        raise InvalidInput(Message(N_("Write your reply.")), errors={"text": Message(N_("Required."))})
    reply = db.exec(select(Reply).where(Reply.application_id == application.id)).first()
    if reply is None:
        reply = Reply(application_id=application.id, text=text.strip()[:10_000])
        db.add(reply)
    else:
        reply.text, reply.submitted_at = text.strip()[:10_000], utcnow()
    db.commit()
    return reply


def weighted_score(call: Call, reviews: list[Review]) -> int | None:
    """Mean over submitted scientific reviews of Σ score × weight (1–5 × weights summing to 100)."""
    scored = [r for r in reviews if r.kind == ReviewKind.SCIENTIFIC and r.state == ReviewState.SUBMITTED]
    if not scored:
        return None
    totals = [sum(r.scores[c["key"]] * int(c["weight"]) for c in call.criteria) for r in scored]
    return sum(totals) // len(totals)


@transaction
def rank(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call, _project = manager_context(db, actor, application)
    reviews = list(db.exec(select(Review).where(Review.application_id == application.id)))
    move(db, call, application, "rank")
    application.score = weighted_score(call, reviews)
    db.commit()
    return application


@dataclass(frozen=True)
class RankingRow:
    position: int
    application: Application
    tied: bool


def ranking(db: Session, actor: User, call: Call) -> list[RankingRow]:
    """Ranked and decided applications by weighted score, best first; equal scores are marked as ties."""
    require(db, actor, Action.MANAGE_CALL, call)
    apps = list(
        db.exec(
            select(Application)
            .where(
                Application.call_id == call.id,
                col(Application.state).in_([S.RANKED, S.ACCEPTED, S.REJECTED]),
                col(Application.score).is_not(None),
            )
            .order_by(col(Application.score).desc(), Application.id)
        )
    )
    rows, position = [], 0
    for i, app in enumerate(apps):
        if i == 0 or app.score != apps[i - 1].score:
            position = i + 1
        tied = (i > 0 and apps[i - 1].score == app.score) or (i + 1 < len(apps) and apps[i + 1].score == app.score)
        rows.append(RankingRow(position, app, tied))
    return rows
