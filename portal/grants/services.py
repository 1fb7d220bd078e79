"""Calls, applications, the review pipeline and awards.

An application moves through states by named transitions (``TRANSITIONS``); any other move raises
``IllegalTransition``. Awards open allocations through the ledger in one unit of work with the call's
budget, so a refusal (capacity run out, budget spent) changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, col, func, select
from werkzeug.utils import secure_filename

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, allowed, factory_roles, login_reaches, organisation_role, project_role, require
from portal.config import AssuranceLevel, Settings
from portal.db import utcnow
from portal.errors import Conflict, InvalidInput, NotAuthorised, NotFound
from portal.formatting import quantity
from portal.grants.models import (
    AccessMode,
    Application,
    ApplicationFile,
    ApplicationState,
    ApplicationVersion,
    Award,
    Call,
    CallBudget,
    CallState,
    Reply,
    ResourceRequest,
    Review,
    ReviewKind,
    ReviewMode,
    ReviewState,
)
from portal.identity.models import FactoryRole, Login, User
from portal.ledger import services as ledger
from portal.ledger.models import AllocationSource, EntryKind, Resource
from portal.notifications.services import notify
from portal.projects.models import Organisation, Project, ProjectMembership, ProjectRole

S = ApplicationState


class IllegalTransition(Conflict):
    """The application is not in a state where this step can happen."""

    title = "Not possible in this state"


class NotEligible(Conflict):
    title = "Not eligible"


class ConflictOfInterest(Conflict):
    title = "Conflict of interest"


class BudgetExhausted(Conflict):
    title = "Call budget exhausted"


#: (state, step) -> next state. Steps not listed for a state are illegal there.
TRANSITIONS: dict[tuple[ApplicationState, str], ApplicationState] = {
    (S.DRAFT, "submit"): S.SUBMITTED,
    (S.SUBMITTED, "pass_administrative_check"): S.TECHNICAL_ASSESSMENT,
    (S.TECHNICAL_ASSESSMENT, "complete_technical_assessment"): S.PEER_REVIEW,
    (S.PEER_REVIEW, "request_reply"): S.REPLY,
    (S.REPLY, "rank"): S.RANKED,
    (S.RANKED, "accept"): S.ACCEPTED,
    **{
        (state, "reject"): S.REJECTED
        for state in (S.SUBMITTED, S.TECHNICAL_ASSESSMENT, S.PEER_REVIEW, S.REPLY, S.RANKED)
    },
    **{
        (state, "withdraw"): S.WITHDRAWN
        for state in (S.DRAFT, S.SUBMITTED, S.TECHNICAL_ASSESSMENT, S.PEER_REVIEW, S.REPLY, S.RANKED)
    },
}
#: Shortcuts of the lighter review modes.
MODE_TRANSITIONS: dict[tuple[ReviewMode, ApplicationState, str], ApplicationState] = {
    (ReviewMode.AUTOMATIC, S.SUBMITTED, "accept"): S.ACCEPTED,
    (ReviewMode.TECHNICAL, S.TECHNICAL_ASSESSMENT, "complete_technical_assessment"): S.RANKED,
}

FINAL_STATES = frozenset({S.ACCEPTED, S.REJECTED, S.WITHDRAWN})
QUESTION_TYPES = frozenset({"text", "number", "choice", "pdf"})
MIN_SCIENTIFIC_REVIEWS = 2


def next_state(call: Call, state: ApplicationState, step: str) -> ApplicationState:
    target = MODE_TRANSITIONS.get((call.review_mode, state, step)) or TRANSITIONS.get((state, step))
    if target is None:
        raise IllegalTransition(f"An application that is {state.label} cannot {step.replace('_', ' ')}.")
    return target


def _move(db: Session, call: Call, application: Application, step: str) -> None:
    """Change the state with a conditional UPDATE, so two simultaneous steps cannot both happen."""
    target = next_state(call, application.state, step)
    table = Application.__table__  # type: ignore[attr-defined]
    now = utcnow()
    values: dict[str, Any] = {"state": target.value, "updated_at": now}
    if target in FINAL_STATES:
        values["decided_at"] = now
    result = db.execute(
        sa.update(table).where(table.c.id == application.id, table.c.state == application.state.value).values(**values)
    )
    if result.rowcount != 1:
        db.rollback()
        raise IllegalTransition("The application changed in the meantime; reload and try again.")
    db.refresh(application)


# --- calls ----------------------------------------------------------------------------------------------


def _validate_questions(questions: list[dict[str, Any]]) -> None:
    keys = set()
    for q in questions:
        if q.get("type") not in QUESTION_TYPES or not q.get("key") or not q.get("label"):
            raise InvalidInput(
                "Each question has a key, a label and a type among text, number, choice, pdf.",
                errors={"questions": f"Question {q!r} is incomplete."},
            )
        if q["key"] in keys:
            raise InvalidInput("Question keys are unique.", errors={"questions": f"'{q['key']}' repeats."})
        keys.add(q["key"])
        if q["type"] == "choice" and not q.get("choices"):
            raise InvalidInput("A choice question lists its choices.", errors={"questions": q["key"]})


def create_call(
    db: Session,
    actor: User | None,
    *,
    title: str,
    access_mode: AccessMode,
    review_mode: ReviewMode,
    manager: User,
    budgets: dict[int, int],
    max_request: int,
    opens_at: datetime,
    closes_at: datetime,
    first_cutoff: date,
    description: str = "",
    min_request: int = 0,
    duration_months: int = 6,
    eligible_kinds: list[str] | None = None,
    eligible_countries: list[str] | None = None,
    cutoff_every_days: int | None = None,
    decision_within_working_days: int | None = None,
    questions: list[dict[str, Any]] | None = None,
    criteria: list[dict[str, Any]] | None = None,
    reason: str,
) -> Call:
    """Create a call in the draft state (``open_call`` publishes it); ``actor`` None is seed data."""
    if actor is not None:
        require(db, actor, Action.CREATE_CALLS)
    reason = audit.require_reason(reason)
    errors = {}
    if not title.strip():
        errors["title"] = "Enter a title."
    if duration_months not in (3, 6, 12):
        errors["duration_months"] = "Allocations run 3, 6 or 12 months."
    if closes_at <= opens_at:
        errors["closes_at"] = "The call must close after it opens."
    if not 0 <= min_request <= max_request or not 0 < max_request <= ledger.LARGEST_AMOUNT:
        errors["max_request"] = "The largest request must be positive and at least the smallest."
    if not budgets or any(not 0 < amount <= ledger.LARGEST_AMOUNT for amount in budgets.values()):
        errors["budgets"] = "Give each resource of the call a positive budget."
    criteria = criteria or []
    if review_mode == ReviewMode.PEER_REVIEW and sum(int(c.get("weight", 0)) for c in criteria) != 100:
        errors["criteria"] = "Peer review criteria weights must add up to 100."
    if errors:
        raise InvalidInput("The call could not be created.", errors=errors)
    _validate_questions(questions or [])
    call = Call(
        title=title.strip(),
        description=description,
        access_mode=access_mode,
        review_mode=review_mode,
        eligible_kinds=eligible_kinds or [],
        eligible_countries=[c.upper() for c in eligible_countries or []],
        min_request=min_request,
        max_request=max_request,
        duration_months=duration_months,
        opens_at=opens_at,
        closes_at=closes_at,
        first_cutoff=first_cutoff,
        cutoff_every_days=cutoff_every_days,
        decision_within_working_days=decision_within_working_days,
        questions=questions or [],
        criteria=criteria,
        manager_id=manager.id,  # type: ignore[arg-type]
    )
    db.add(call)
    db.flush()
    for resource_id, amount in budgets.items():
        if db.get(Resource, resource_id) is None:
            db.rollback()
            raise InvalidInput("No such resource.", errors={"budgets": f"resource {resource_id}"})
        db.add(CallBudget(call_id=call.id, resource_id=resource_id, budget=amount))  # type: ignore[arg-type]
    summary = f"call '{call.title}' ({access_mode}, {review_mode}), managed by {manager.display_name}"
    audit.record(
        db, actor, AuditAction.CALL_CREATED, call, summary=summary, reason=reason, details={"budgets": budgets}
    )
    db.commit()
    return call


def set_call_state(db: Session, actor: User, call: Call, state: CallState, *, reason: str) -> Call:
    require(db, actor, Action.MANAGE_CALL, call)
    reason = audit.require_reason(reason)
    before, call.state = call.state, state
    details = {"before": before, "after": state}
    summary = f"call '{call.title}' {before} -> {state}"
    audit.record(db, actor, AuditAction.CALL_STATE_CHANGED, call, summary=summary, reason=reason, details=details)
    db.commit()
    return call


def get_call(db: Session, call_id: int) -> Call:
    call = db.get(Call, call_id)
    if call is None or call.state == CallState.DRAFT:
        raise NotFound("No such call.")
    return call


# Dates of calls are days in the call's time zone, as people say them: a call "opens on D" at the start of D
# and "closes on D" at the end of D; a cut-off D takes what is submitted until the end of D. The time zone is
# the factory's (Europe/Warsaw), stated wherever such a day is shown.
CALL_TIME_ZONE = ZoneInfo("Europe/Warsaw")


def start_of_day(day: date) -> datetime:
    """00:00 of ``day`` in the call's time zone, as a UTC moment."""
    return datetime.combine(day, time.min, tzinfo=CALL_TIME_ZONE).astimezone(UTC)


def end_of_day(day: date) -> datetime:
    """The end of ``day`` in the call's time zone (the next day's 00:00 there), as a UTC moment."""
    return start_of_day(day + timedelta(days=1))


def local_day(moment: datetime) -> date:
    return moment.astimezone(CALL_TIME_ZONE).date()


def closing_day(call: Call) -> date:
    """The last day the call takes submissions (it closes at that day's end, in the call's time zone)."""
    return local_day(call.closes_at - timedelta(microseconds=1))


def accepting(call: Call, now: datetime) -> bool:
    """Open, between its opening and closing, and (unless decided at submission) with a cut-off still to come:
    a call whose last cut-off has passed takes no more applications, whatever its closing day."""
    if call.state != CallState.OPEN or not call.opens_at <= now < call.closes_at:
        return False
    return call.review_mode == ReviewMode.AUTOMATIC or next_cutoff(call, now) is not None


def open_calls(db: Session, now: datetime | None = None) -> list[Call]:
    now = now or utcnow()
    candidates = db.exec(
        select(Call)
        .where(Call.state == CallState.OPEN, col(Call.opens_at) <= now, col(Call.closes_at) > now)
        .order_by(Call.closes_at)
    )
    return [call for call in candidates if accepting(call, now)]


def next_cutoff(call: Call, after: datetime) -> date | None:
    """The first cut-off whose day has not ended by ``after`` (in the call's time zone), on or before the
    closing day; None when the call has no more."""
    day = local_day(after)
    cutoff = call.first_cutoff
    if call.cutoff_every_days:
        if cutoff < day:
            periods = -(-(day - cutoff).days // call.cutoff_every_days)
            cutoff = cutoff + timedelta(days=periods * call.cutoff_every_days)
    elif cutoff < day:
        return None
    return cutoff if cutoff <= closing_day(call) else None


def decision_due(call: Call, cutoff: date) -> date | None:
    """The cut-off plus the call's working days (Monday to Friday)."""
    if call.decision_within_working_days is None:
        return None
    day, left = cutoff, call.decision_within_working_days
    while left:
        day += timedelta(days=1)
        if day.weekday() < 5:
            left -= 1
    return day


def budgets_of(db: Session, call: Call) -> list[tuple[CallBudget, Resource]]:
    return list(
        db.exec(
            select(CallBudget, Resource)
            .join(Resource, Resource.id == CallBudget.resource_id)  # type: ignore[arg-type]
            .where(CallBudget.call_id == call.id)
            .order_by(Resource.id)
        ).all()
    )


# --- applying -------------------------------------------------------------------------------------------


def _not_accepting(call: Call, now: datetime) -> str:
    if call.state == CallState.OPEN and call.opens_at <= now < call.closes_at:
        return "The call's last cut-off has passed; it takes no more applications."
    if call.state == CallState.OPEN and now < call.opens_at:
        return f"This call opens on {local_day(call.opens_at)} ({CALL_TIME_ZONE.key})."
    return "This call is closed."


def may_lead_applications(login: Login | None) -> bool:
    """A PI applies with an academic affiliation from the login, or with eIDAS 'substantial' or higher.

    Asked of the login that performs each step (starting and submitting), never of an earlier one."""
    if login is None:
        return False
    if login.attributes.get("external_affiliation"):
        return True
    return login_reaches(login, AssuranceLevel.SUBSTANTIAL)


def _require_lead(login: Login | None, step: str) -> None:
    if not may_lead_applications(login):
        raise NotEligible(
            f"To {step} as PI, log in with your institution (academic federation) or with eIDAS at level "
            "substantial or higher"
            + (f"; this login is at level {login.level} without an academic affiliation." if login else ".")
        )


def _require_pi(db: Session, actor: User, project: Project) -> None:
    require(db, actor, Action.VIEW_PROJECT, project)
    role = db.exec(
        select(ProjectMembership.role).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == actor.id
        )
    ).first()
    if role != ProjectRole.PI:
        raise NotAuthorised("Only the project's PI applies for it.")


def start_application(
    db: Session, actor: User, login: Login | None, *, call: Call, project: Project, title: str
) -> Application:
    _require_pi(db, actor, project)
    _require_lead(login, "apply")
    now = utcnow()
    if not accepting(call, now):
        raise NotEligible(_not_accepting(call, now))
    if not title.strip():
        raise InvalidInput("Give the application a title.", errors={"title": "Required."})
    application = Application(
        call_id=call.id,
        project_id=project.id,
        applicant_id=actor.id,  # type: ignore[arg-type]
        title=title.strip()[:200],
    )
    db.add(application)
    db.commit()
    return application


def get_application(db: Session, actor: User, application_id: int) -> tuple[Application, Call, Project]:
    """An application its project's members, its call's manager (and admins) and its reviewers may see; a
    reviewer who declared a conflict of interest no longer sees it (nor its files), and no other staff role
    reads applications: a site operator sees one through the technical review assigned to them."""
    application = db.get(Application, application_id)
    if application is None:
        raise NotFound("No such application.")
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    if not (
        project_role(db, actor, project) is not None
        or allowed(db, actor, Action.MANAGE_CALL, call)
        or _active_review_of(db, application, actor)
    ):
        raise NotFound("No such application.")
    return application, call, project


def _review_of(db: Session, application: Application, reviewer: User, kind: ReviewKind | None = None) -> Review | None:
    stmt = select(Review).where(Review.application_id == application.id, Review.reviewer_id == reviewer.id)
    if kind is not None:
        stmt = stmt.where(Review.kind == kind)
    return db.exec(stmt).first()


def _active_review_of(db: Session, application: Application, reviewer: User) -> bool:
    """A review row that lets the reviewer read the application: any but one declined for a conflict."""
    stmt = select(Review.id).where(
        Review.application_id == application.id,
        Review.reviewer_id == reviewer.id,
        Review.state != ReviewState.CONFLICT,
    )
    return db.exec(stmt).first() is not None


@dataclass(frozen=True)
class RequestInput:
    resource_id: int
    amount: int
    justification: str = ""


def save_draft(
    db: Session,
    actor: User,
    application: Application,
    *,
    title: str | None = None,
    abstract: str | None = None,
    answers: dict[str, Any] | None = None,
    co_applicants: list[str] | None = None,
    requests: list[RequestInput] | None = None,
) -> Application:
    """Save what is there so far (as the applicant types): types and lengths are checked, completeness not."""
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    _require_pi(db, actor, project)
    if application.state != S.DRAFT:
        raise IllegalTransition("Only a draft can be edited; this application has been submitted.")
    errors: dict[str, str] = {}
    if title is not None:
        if not title.strip():
            errors["title"] = "Give the application a title."
        application.title = title.strip()[:200]
    if abstract is not None:
        if len(abstract) > 5000:
            errors["abstract"] = "At most 5000 characters."
        application.abstract = abstract[:5000]
    if answers is not None:
        merged = dict(application.answers)
        for question in call.questions:
            if question["key"] in answers:
                value, problem = _check_answer(question, answers[question["key"]])
                if problem:
                    errors[f"answers.{question['key']}"] = problem
                else:
                    merged[question["key"]] = value
        application.answers = merged
    if co_applicants is not None:
        application.co_applicants = [c.strip().lower() for c in co_applicants if c.strip()][:20]
    if requests is not None:
        budget_resources = {b.resource_id for b in db.exec(select(CallBudget).where(CallBudget.call_id == call.id))}
        existing = {
            r.resource_id: r
            for r in db.exec(select(ResourceRequest).where(ResourceRequest.application_id == application.id))
        }
        for item in requests:
            if item.resource_id not in budget_resources:
                errors[f"requests.{item.resource_id}"] = "This call does not offer that resource."
                continue
            if item.amount > ledger.LARGEST_AMOUNT:
                errors[f"requests.{item.resource_id}"] = "That is more than any resource has."
                continue
            row = existing.pop(item.resource_id, None)
            if item.amount <= 0:
                if row is not None:
                    db.delete(row)
                continue
            if row is None:
                db.add(
                    ResourceRequest(
                        application_id=application.id,
                        resource_id=item.resource_id,  # type: ignore[arg-type]
                        requested=item.amount,
                        justification=item.justification[:5000],
                    )
                )
            else:
                row.requested, row.justification = item.amount, item.justification[:5000]
    if errors:
        db.rollback()
        raise InvalidInput("Some answers could not be saved.", errors=errors)
    application.updated_at = utcnow()
    db.commit()
    return application


def _check_answer(question: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    kind = question["type"]
    if value in (None, ""):
        return None, None
    if kind == "text":
        text = str(value)
        limit = int(question.get("max_length", 5000))
        return text, (f"At most {limit} characters." if len(text) > limit else None)
    if kind == "number":
        try:
            number = int(str(value).strip())
        except ValueError:
            return None, "Enter a whole number."
        low, high = question.get("min"), question.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            return None, f"Enter a number between {low} and {high}."
        return number, None
    if kind == "choice":
        return (value, None) if value in question["choices"] else (None, "Choose one of the options.")
    if kind == "pdf":
        return (int(value), None) if str(value).isdigit() else (None, "Upload a PDF.")
    return None, "Unknown question type."


#: Largest PDF accepted when a question does not set its own ``max_bytes``.
DEFAULT_PDF_LIMIT = 10 * 1024 * 1024


def safe_pdf_name(given: str) -> str:
    """``<safe-name>.pdf`` for a name an uploader gave (``case.html`` -> ``case.pdf``): ASCII letters, digits,
    ``._-`` only, never a path, never another extension; the only name a file is shown and served under."""
    name = secure_filename(given or "")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem[:100].strip('._') or 'upload'}.pdf"


def _size(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.1f} kB"


def uploaded_bytes(db: Session, user: User) -> int:
    """What the user's uploaded files take now (counted against ``upload_quota_bytes``)."""
    return int(
        db.exec(
            select(func.coalesce(func.sum(ApplicationFile.size), 0)).where(ApplicationFile.uploaded_by_id == user.id)
        ).one()
    )


def upload_pdf(
    db: Session,
    actor: User,
    application: Application,
    *,
    question_key: str,
    filename: str,
    content: bytes,
    quota_bytes: int = Settings.model_fields["upload_quota_bytes"].default,
) -> ApplicationFile:
    """Store a PDF as the answer to a ``pdf`` question of the draft; the file it replaces is deleted.

    The actor's uploads may take at most ``quota_bytes`` (the ``upload_quota_bytes`` setting) together; the
    file is stored and served as :func:`safe_pdf_name` of the given name.
    """
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    _require_pi(db, actor, project)
    if application.state != S.DRAFT:
        raise IllegalTransition("Files can be changed only while the application is a draft.")
    question = next((q for q in call.questions if q["key"] == question_key and q["type"] == "pdf"), None)
    if question is None:
        raise NotFound("No such file question.")
    field = f"answers.{question_key}"
    limit = int(question.get("max_bytes", DEFAULT_PDF_LIMIT))
    if len(content) > limit:
        raise InvalidInput("The file is too large.", errors={field: f"At most {limit // (1024 * 1024)} MB."})
    if not content.startswith(b"%PDF-"):
        raise InvalidInput("Only PDF files are accepted.", errors={field: "This is not a PDF file."})
    # a draft's earlier files for this question are replaced: no submitted version can name them
    replaced = (ApplicationFile.application_id == application.id, ApplicationFile.question_key == question_key)
    freed = db.exec(
        select(func.coalesce(func.sum(ApplicationFile.size), 0)).where(
            *replaced, ApplicationFile.uploaded_by_id == actor.id
        )
    ).one()
    used = uploaded_bytes(db, actor) - int(freed)
    if used + len(content) > quota_bytes:
        raise InvalidInput(
            "This file would take you past your upload quota.",
            errors={
                field: f"Your files take {_size(used)} of your {_size(quota_bytes)}; this one needs "
                f"{_size(len(content))}. Replace a file you uploaded earlier, or ask the factory for more room."
            },
        )
    upload = ApplicationFile(
        application_id=application.id,
        question_key=question_key,  # type: ignore[arg-type]
        filename=safe_pdf_name(filename),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        uploaded_by_id=actor.id,
    )
    db.add(upload)
    db.flush()
    db.exec(sa.delete(ApplicationFile).where(*replaced, ApplicationFile.id != upload.id))  # type: ignore[call-overload]
    application.answers = {**application.answers, question_key: upload.id}
    application.updated_at = utcnow()
    db.commit()
    return upload


def get_file(db: Session, actor: User, file_id: int) -> ApplicationFile:
    upload = db.get(ApplicationFile, file_id)
    if upload is None:
        raise NotFound("No such file.")
    try:
        get_application(db, actor, upload.application_id)
    except NotFound as exc:  # the same answer as for a file that does not exist
        raise NotFound("No such file.") from exc
    return upload


def requests_of(db: Session, application: Application) -> list[tuple[ResourceRequest, Resource]]:
    return list(
        db.exec(
            select(ResourceRequest, Resource)
            .join(Resource, Resource.id == ResourceRequest.resource_id)  # type: ignore[arg-type]
            .where(ResourceRequest.application_id == application.id)
            .order_by(Resource.id)
        ).all()
    )


def submission_problems(db: Session, call: Call, application: Application) -> dict[str, str]:
    """What keeps the draft from being submitted, by field."""
    problems: dict[str, str] = {}
    if not application.title.strip():
        problems["title"] = "Give the application a title."
    if not application.abstract.strip():
        problems["abstract"] = "Write a short abstract."
    for question in call.questions:
        if question.get("required") and application.answers.get(question["key"]) in (None, ""):
            problems[f"answers.{question['key']}"] = "This question needs an answer."
    rows = requests_of(db, application)
    if not rows:
        problems["requests"] = "Ask for hours of at least one resource."
    total = sum(r.requested for r, _ in rows)
    if rows and not call.min_request <= total <= call.max_request:
        kind = rows[0][1].kind
        problems["requests"] = (
            f"This call takes requests between {quantity(call.min_request, kind)} and "
            f"{quantity(call.max_request, kind)}; this one asks for {quantity(total, kind)}."
        )
    for request, _resource in rows:
        if not request.justification.strip():
            problems[f"requests.{request.resource_id}"] = "Justify the hours you ask for."
    return problems


def submit(db: Session, settings: Settings, actor: User, login: Login | None, application: Application) -> Application:
    """Freeze a version and send the application to review (Playground: decided at once). ``login`` is the
    login behind this request: submitting as PI needs the level of assurance again, whatever the draft's
    start had."""
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    _require_pi(db, actor, project)
    _require_lead(login, "submit")
    now = utcnow()
    if not accepting(call, now):
        raise NotEligible(_not_accepting(call, now) + " The application can no longer be submitted.")
    next_state(call, application.state, "submit")
    problems = submission_problems(db, call, application)
    if problems:
        raise InvalidInput("The application is not complete yet.", errors=problems)
    application.version += 1
    application.submitted_at = now
    db.add(
        ApplicationVersion(
            application_id=application.id,
            version=application.version,  # type: ignore[arg-type]
            content={
                "title": application.title,
                "abstract": application.abstract,
                "answers": application.answers,
                "co_applicants": application.co_applicants,
                "requests": [
                    {"resource_id": r.resource_id, "requested": r.requested, "justification": r.justification}
                    for r, _ in requests_of(db, application)
                ],
            },
        )
    )
    _move(db, call, application, "submit")
    cutoff = next_cutoff(call, now)
    notify(
        db,
        settings,
        actor,
        subject=f"Application submitted: {application.title}",
        body=f"Your application to “{call.title}” was submitted (version {application.version})."
        + (f" It will be evaluated with the cut-off of {cutoff}." if cutoff else ""),
        link=f"/applications/{application.id}",
    )
    manager = db.get(User, call.manager_id)
    if manager is not None:
        notify(
            db,
            settings,
            manager,
            subject=f"New application to {call.title}: {application.title}",
            body=f"{actor.display_name} submitted “{application.title}” for {project.title}.",
            link=f"/applications/{application.id}",
        )
    db.commit()
    if call.review_mode == ReviewMode.AUTOMATIC:
        _decide_automatically(db, settings, call, project, application)
    return application


def _decide_automatically(
    db: Session, settings: Settings, call: Call, project: Project, application: Application
) -> None:
    problems = eligibility_problems(db, call, project)
    if problems:
        decide_reject(db, settings, None, application, reason=" ".join(problems))
        return
    awards = {r.resource_id: r.requested for r, _ in requests_of(db, application)}
    try:
        decide_accept(db, settings, None, application, awarded=awards)
    except (BudgetExhausted, ledger.CapacityExhausted, ledger.NoCapacityPlanned) as exc:
        decide_reject(db, settings, None, application, reason=f"No hours could be awarded: {exc.detail}")


def withdraw(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    _require_pi(db, actor, project)
    _move(db, call, application, "withdraw")
    manager = db.get(User, call.manager_id)
    if manager is not None and application.submitted_at is not None:
        notify(
            db,
            settings,
            manager,
            subject=f"Application withdrawn: {application.title}",
            body=f"{actor.display_name} withdrew “{application.title}”.",
            link=f"/applications/{application.id}",
        )
    db.commit()
    return application


# --- the review pipeline ---------------------------------------------------------------------------------


def eligibility_problems(db: Session, call: Call, project: Project) -> list[str]:
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    problems = []
    if call.eligible_kinds and organisation.kind not in call.eligible_kinds:
        problems.append(
            f"{organisation.name} is a {organisation.kind.label.lower()}; this call is for "
            + ", ".join(k.replace("_", " ") for k in call.eligible_kinds)
            + "."
        )
    if call.eligible_countries and organisation.country not in call.eligible_countries:
        problems.append(
            f"{organisation.name} is in {organisation.country}; this call is for organisations in "
            + ", ".join(call.eligible_countries)
            + "."
        )
    return problems


def _manager_context(db: Session, actor: User | None, application: Application) -> tuple[Call, Project]:
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    if actor is not None:
        require(db, actor, Action.MANAGE_CALL, call)
    return call, project


def administrative_check(
    db: Session, settings: Settings, actor: User, application: Application, *, passed: bool, reason: str = ""
) -> Application:
    """The call manager's administrative check; eligibility rules are checked here too."""
    call, project = _manager_context(db, actor, application)
    if passed:
        problems = eligibility_problems(db, call, project)
        if problems:
            raise NotEligible(" ".join(problems))
        _move(db, call, application, "pass_administrative_check")
        db.commit()
        return application
    return decide_reject(db, settings, actor, application, reason=reason or "The administrative check failed.")


def conflict_of_interest(db: Session, reviewer: User, project: Project) -> str | None:
    """Why ``reviewer`` may not review ``project``, if they may not."""
    if db.exec(
        select(ProjectMembership.id).where(
            ProjectMembership.project_id == project.id, ProjectMembership.user_id == reviewer.id
        )
    ).first():
        return "is a member of the project"
    if organisation_role(db, reviewer, project.organisation_id) is not None:
        return "belongs to the applying organisation"
    same_org = db.exec(
        select(ProjectMembership.id)
        .join(Project, Project.id == ProjectMembership.project_id)  # type: ignore[arg-type]
        .where(ProjectMembership.user_id == reviewer.id, Project.organisation_id == project.organisation_id)
    ).first()
    return "works in a project of the applying organisation" if same_org else None


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
    call, project = _manager_context(db, actor, application)
    expected = S.TECHNICAL_ASSESSMENT if kind == ReviewKind.TECHNICAL else S.PEER_REVIEW
    if application.state != expected:
        raise IllegalTransition(
            f"{kind.value.capitalize()} reviewers are assigned while the application is in "
            f"{expected.label}; it is {application.state.label}."
        )
    needed = FactoryRole.SITE_OPERATOR if kind == ReviewKind.TECHNICAL else FactoryRole.REVIEWER
    if needed not in factory_roles(db, reviewer):
        raise InvalidInput(
            f"{reviewer.display_name} is not a {needed.value.replace('_', ' ')}.",
            errors={"reviewer": f"Needs the {needed.value} role."},
        )
    why = conflict_of_interest(db, reviewer, project)
    if why:
        raise ConflictOfInterest(f"{reviewer.display_name} {why}.")
    if _review_of(db, application, reviewer, kind) is not None:
        raise Conflict(f"{reviewer.display_name} is already assigned.")
    review = Review(application_id=application.id, reviewer_id=reviewer.id, kind=kind, due_on=due_on)  # type: ignore[arg-type]
    db.add(review)
    db.flush()
    notify(
        db,
        settings,
        reviewer,
        subject=f"Review requested: {application.title}",
        body=f"You are asked for a {kind.value} review of “{application.title}” in “{call.title}”"
        + (f", due {due_on}." if due_on else ".")
        + " Declare a conflict of interest if you have one.",
        link=f"/reviews/{review.id}",
    )
    db.commit()
    return review


def _my_review(db: Session, actor: User, review_id: int) -> tuple[Review, Application]:
    """The actor's own review; one they declined for a conflict of interest is gone for them."""
    review = db.get(Review, review_id)
    if review is None or review.reviewer_id != actor.id or review.state == ReviewState.CONFLICT:
        raise NotFound("No such review.")
    application = db.get(Application, review.application_id)
    assert application is not None
    return review, application


def declare_conflict(db: Session, actor: User, review_id: int, *, reason: str) -> Review:
    review, _application = _my_review(db, actor, review_id)
    if review.state != ReviewState.ASSIGNED:
        raise IllegalTransition("Only an open review can be declined.")
    if not reason.strip():
        raise InvalidInput("Say what the conflict is.", errors={"reason": "Required."})
    review.state, review.conflict_reason = ReviewState.CONFLICT, reason.strip()[:1000]
    db.commit()
    return review


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
        raise IllegalTransition("This review is already submitted or declined.")
    expected = S.TECHNICAL_ASSESSMENT if review.kind == ReviewKind.TECHNICAL else S.PEER_REVIEW
    if application.state != expected:
        raise IllegalTransition(f"The application is {application.state.label}; reviews are closed.")
    errors = {}
    if not comment_to_applicant.strip():
        errors["comment_to_applicant"] = "Write a comment for the applicant."
    if review.kind == ReviewKind.TECHNICAL:
        if feasible is None:
            errors["feasible"] = "Say whether the work is feasible here."
    else:
        scores = scores or {}
        for criterion in call.criteria:
            value = scores.get(criterion["key"])
            if not isinstance(value, int) or not 1 <= value <= 5:
                errors[f"scores.{criterion['key']}"] = "Score from 1 to 5."
    if errors:
        raise InvalidInput("The review is not complete.", errors=errors)
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
    get_application(db, actor, application.id)  # type: ignore[arg-type]
    rows = db.exec(
        select(Review.kind, Review.comment_to_applicant)
        .where(Review.application_id == application.id, Review.state == ReviewState.SUBMITTED)
        .order_by(Review.id)
    ).all()
    return [(str(k), c) for k, c in rows]


def complete_technical_assessment(
    db: Session, settings: Settings, actor: User, application: Application
) -> Application:
    call, _project = _manager_context(db, actor, application)
    done = db.exec(
        select(func.count()).where(
            Review.application_id == application.id,
            Review.kind == ReviewKind.TECHNICAL,
            Review.state == ReviewState.SUBMITTED,
        )
    ).one()
    if not done:
        raise IllegalTransition("A site operator's technical assessment must be submitted first.")
    _move(db, call, application, "complete_technical_assessment")
    db.commit()
    return application


def request_reply(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call, _project = _manager_context(db, actor, application)
    done = db.exec(
        select(func.count()).where(
            Review.application_id == application.id,
            Review.kind == ReviewKind.SCIENTIFIC,
            Review.state == ReviewState.SUBMITTED,
        )
    ).one()
    if done < MIN_SCIENTIFIC_REVIEWS:
        raise IllegalTransition(f"At least {MIN_SCIENTIFIC_REVIEWS} scientific reviews are needed; {done} are in.")
    _move(db, call, application, "request_reply")
    applicant = db.get(User, application.applicant_id)
    assert applicant is not None
    notify(
        db,
        settings,
        applicant,
        subject=f"Reviews of “{application.title}”: your reply",
        body="The reviews of your application are in. You may reply to them before the ranking.",
        link=f"/applications/{application.id}",
    )
    db.commit()
    return application


def submit_reply(db: Session, actor: User, application: Application, *, text: str) -> Reply:
    project = db.get(Project, application.project_id)
    assert project is not None
    _require_pi(db, actor, project)
    if application.state != S.REPLY:
        raise IllegalTransition("Replies are taken only while the application waits for its reply.")
    if not text.strip():
        raise InvalidInput("Write your reply.", errors={"text": "Required."})
    reply = db.exec(select(Reply).where(Reply.application_id == application.id)).first()
    if reply is None:
        reply = Reply(application_id=application.id, text=text.strip()[:10_000])  # type: ignore[arg-type]
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


def rank(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call, _project = _manager_context(db, actor, application)
    reviews = list(db.exec(select(Review).where(Review.application_id == application.id)))
    _move(db, call, application, "rank")
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


# --- decisions and awards ----------------------------------------------------------------------------------


def decide_reject(
    db: Session, settings: Settings, actor: User | None, application: Application, *, reason: str
) -> Application:
    call, project = _manager_context(db, actor, application)
    if not reason.strip():
        raise InvalidInput("Give the applicant the reasons.", errors={"reason": "Required."})
    _move(db, call, application, "reject")
    application.decision_reason = reason.strip()[:5000]
    _tell_members(
        db,
        settings,
        project,
        subject=f"Decision on “{application.title}”: not accepted",
        body=f"Your application to “{call.title}” was not accepted.\n\nReasons: {application.decision_reason}",
        link=f"/applications/{application.id}",
    )
    summary = f"rejected '{application.title}' of project {project.id} in call '{call.title}'"
    audit.record(db, actor, AuditAction.APPLICATION_REJECTED, application, summary=summary, reason=reason)
    db.commit()
    return application


def _tell_members(db: Session, settings: Settings, project: Project, *, subject: str, body: str, link: str) -> None:
    members = db.exec(
        select(User)
        .join(ProjectMembership, ProjectMembership.user_id == User.id)  # type: ignore[arg-type]
        .where(ProjectMembership.project_id == project.id)
    ).all()
    for member in members:
        notify(db, settings, member, subject=subject, body=body, link=link)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    year, month = day.year + month // 12, month % 12 + 1
    for candidate in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, candidate))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def decide_accept(
    db: Session,
    settings: Settings,
    actor: User | None,
    application: Application,
    *,
    awarded: dict[int, int],
    first_tranche_percent: int = 100,
    reason: str = "",
    starts_on: date | None = None,
) -> Application:
    """Accept with ``awarded`` base units per resource (≤ requested, ≤ what is left of the call's budget).

    One unit of work: the budget is taken with a conditional UPDATE, the allocations are opened through
    the ledger (capacity reserved now, for every tranche); if anything is refused, nothing has happened.
    With ``first_tranche_percent`` below 100 the rest waits as a second tranche for ``release_tranche``,
    its capacity already held, so releasing it never fails for capacity.
    """
    call, project = _manager_context(db, actor, application)
    if not 1 <= first_tranche_percent <= 100:
        raise InvalidInput("The first tranche is 1 to 100 % of the award.", errors={"first_tranche_percent": "1–100"})
    requests = {r.resource_id: (r, res) for r, res in requests_of(db, application)}
    errors = {}
    for resource_id, amount in awarded.items():
        if resource_id not in requests:
            errors[f"awarded.{resource_id}"] = "The application did not ask for this resource."
        elif not 0 <= amount <= requests[resource_id][0].requested:
            errors[f"awarded.{resource_id}"] = "Award between zero and the hours requested."
    if not any(awarded.values()):
        errors["awarded"] = "Award some hours, or reject the application."
    if errors:
        raise InvalidInput("The award is not valid.", errors=errors)
    next_state(call, application.state, "accept")
    start = starts_on or utcnow().date()
    starts_at, ends_at = _midnight(start), _midnight(_add_months(start, call.duration_months))
    budgets = db.exec(select(CallBudget).where(CallBudget.call_id == call.id)).all()
    budget_table = CallBudget.__table__  # type: ignore[attr-defined]
    with ledger.unit_of_work(db):
        for resource_id, amount in sorted(awarded.items()):
            if amount == 0:
                continue
            request, resource = requests[resource_id]
            budget = next(b for b in budgets if b.resource_id == resource_id)
            taken = db.execute(
                sa.update(budget_table)
                .where(budget_table.c.id == budget.id, budget_table.c.awarded + amount <= budget_table.c.budget)
                .values(awarded=budget_table.c.awarded + amount)
            )
            if taken.rowcount != 1:
                db.refresh(budget)
                raise BudgetExhausted(
                    f"The call has {quantity(budget.budget - budget.awarded, resource.kind)} of {resource.name} left; "
                    f"{quantity(amount, resource.kind)} were to be awarded."
                )
            first = amount * first_tranche_percent // 100
            allocation = ledger.open_allocation(
                db,
                None,
                project=project,
                resource=resource,
                amount=first,
                starts_at=starts_at,
                ends_at=ends_at,
                source=AllocationSource.AWARD,
                title=f"{call.access_mode.label}: {application.title}"[:200],
                idempotency_key=f"award:{application.id}:{resource_id}:1",
                reason=f"award of application {application.id}",
                held_for_later=amount - first,  # the second tranche's capacity, so its release never fails
            )
            request.awarded = amount
            db.add(
                Award(
                    application_id=application.id,
                    resource_id=resource_id,
                    tranche=1,
                    amount=first,  # type: ignore[arg-type]
                    allocation_id=allocation.id,
                    released_at=utcnow(),
                )
            )
            if amount > first:
                db.add(
                    Award(
                        application_id=application.id,
                        resource_id=resource_id,
                        tranche=2,  # type: ignore[arg-type]
                        amount=amount - first,
                        allocation_id=allocation.id,
                    )
                )
        _move(db, call, application, "accept")
        application.decision_reason = reason.strip()[:5000]
        summary = f"accepted '{application.title}' of project {project.id} in call '{call.title}'"
        details = {"awarded": awarded, "first_tranche_percent": first_tranche_percent, "starts_on": start}
        audit.record(
            db, actor, AuditAction.APPLICATION_ACCEPTED, application, summary=summary, reason=reason, details=details
        )
        _tell_members(
            db,
            settings,
            project,
            subject=f"Decision on “{application.title}”: accepted",
            body=f"Your application to “{call.title}” was accepted. The hours are on the project page from "
            f"{start} to {ends_at.date()}."
            + (f"\n\n{application.decision_reason}" if application.decision_reason else ""),
            link=f"/projects/{project.id}",
        )
    return application


def release_tranche(db: Session, settings: Settings, actor: User, award_id: int) -> Award:
    """Credit a held tranche to its allocation (after the progress report)."""
    award = db.get(Award, award_id)
    if award is None:
        raise NotFound("No such tranche.")
    application = db.get(Application, award.application_id)
    assert application is not None
    call, project = _manager_context(db, actor, application)
    if award.released_at is not None:
        raise IllegalTransition("This tranche was released already.")
    with ledger.unit_of_work(db):
        ledger.credit(
            db,
            None,
            award.allocation_id,
            award.amount,
            kind=EntryKind.AWARD,  # type: ignore[arg-type]
            idempotency_key=f"award:{application.id}:{award.resource_id}:{award.tranche}",
            reason=f"tranche {award.tranche} of application {application.id}",
            capacity_held=True,  # reserved with the decision
        )
        award.released_at = utcnow()
        summary = f"released tranche {award.tranche} of '{application.title}' to allocation {award.allocation_id}"
        details = {"amount": award.amount, "allocation_id": award.allocation_id, "application_id": application.id}
        audit.record(db, actor, AuditAction.TRANCHE_RELEASED, award, summary=summary, details=details)
        _tell_members(
            db,
            settings,
            project,
            subject=f"More hours for “{application.title}”",
            body=f"Tranche {award.tranche} of your award from “{call.title}” is now on the project page.",
            link=f"/projects/{project.id}",
        )
    return award
