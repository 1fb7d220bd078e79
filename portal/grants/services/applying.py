"""Applying: the draft, its answers and PDF uploads, submitting and withdrawing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, func, select
from werkzeug.utils import secure_filename

from portal.authz import login_reaches
from portal.config import AssuranceLevel, Settings
from portal.db import utcnow
from portal.errors import InvalidInput, NotFound
from portal.grants.models import (
    Application,
    ApplicationFile,
    ApplicationVersion,
    Call,
    CallBudget,
    CallState,
    ResourceRequest,
    ReviewMode,
)
from portal.grants.services.access import get_application, requests_of, require_organisation_project, require_pi
from portal.grants.services.calls import CALL_TIME_ZONE, accepting, local_day, next_cutoff
from portal.grants.services.decisions import decide_automatically
from portal.grants.services.states import IllegalTransition, NotEligible, S, Term, move, next_state, transaction
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger.models import UNITS, ResourceKind
from portal.messages import N_, Amount, Message, Text
from portal.notifications.services import notify
from portal.projects.models import Project


def _not_accepting(call: Call, now: datetime) -> Message:
    if call.state == CallState.OPEN and call.opens_at <= now < call.closes_at:
        return Message(N_("The call's last cut-off has passed; it takes no more applications."))
    if call.state == CallState.OPEN and now < call.opens_at:
        return Message(
            N_("This call opens on %(day)s (%(zone)s)."), day=local_day(call.opens_at), zone=CALL_TIME_ZONE.key
        )
    return Message(N_("This call is closed."))


def may_lead_applications(login: Login | None) -> bool:
    """A PI applies with an academic affiliation from the login, or with eIDAS 'substantial' or higher.

    Asked of the login that performs each step (starting and submitting), never of an earlier one."""
    if login is None:
        return False
    if login.attributes.get("external_affiliation"):
        return True
    return login_reaches(login, AssuranceLevel.SUBSTANTIAL)


#: Who may lead an application, per step: (said without a login, said of a login too weak).
_LEAD_NEEDS = {
    "apply": (
        N_(
            "To apply as PI, log in with your institution (academic federation) or with eIDAS at level "
            "substantial or higher."
        ),
        N_(
            "To apply as PI, log in with your institution (academic federation) or with eIDAS at level "
            "substantial or higher; this login is at level %(level)s without an academic affiliation."
        ),
    ),
    "submit": (
        N_(
            "To submit as PI, log in with your institution (academic federation) or with eIDAS at level "
            "substantial or higher."
        ),
        N_(
            "To submit as PI, log in with your institution (academic federation) or with eIDAS at level "
            "substantial or higher; this login is at level %(level)s without an academic affiliation."
        ),
    ),
}


def _require_lead(login: Login | None, step: str) -> None:
    if not may_lead_applications(login):
        without_login, weak_login = _LEAD_NEEDS[step]
        if login is None:
            raise NotEligible(Message(without_login))
        raise NotEligible(Message(weak_login, level=Term("eIDAS level of assurance", str(login.level))))


@transaction
def start_application(
    db: Session, actor: User, login: Login | None, *, call: Call, project: Project, title: str
) -> Application:
    require_pi(db, actor, project)
    require_organisation_project(project)
    _require_lead(login, "apply")
    now = utcnow()
    if not accepting(call, now):
        raise NotEligible(_not_accepting(call, now))
    if not title.strip():
        raise InvalidInput(Message(N_("Give the application a title.")), errors={"title": Message(N_("Required."))})
    application = Application(
        call_id=call.id,
        project_id=project.id,
        applicant_id=actor.id,
        title=title.strip()[:200],
    )
    db.add(application)
    db.commit()
    return application


@dataclass(frozen=True)
class RequestInput:
    resource_id: int
    amount: int
    justification: str = ""


@transaction
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
    require_pi(db, actor, project)
    if application.state != S.DRAFT:
        raise IllegalTransition(Message(N_("Only a draft can be edited; this application has been submitted.")))
    errors: dict[str, Text] = {}
    if title is not None:
        if not title.strip():
            errors["title"] = Message(N_("Give the application a title."))
        application.title = title.strip()[:200]
    if abstract is not None:
        if len(abstract) > 5000:
            errors["abstract"] = Message(N_("At most %(limit)s characters."), limit="5000")
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
                errors[f"requests.{item.resource_id}"] = Message(N_("This call does not offer that resource."))
                continue
            if item.amount > ledger.LARGEST_AMOUNT:
                errors[f"requests.{item.resource_id}"] = Message(N_("That is more than any resource has."))
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
                        resource_id=item.resource_id,
                        requested=item.amount,
                        justification=item.justification[:5000],
                    )
                )
            else:
                row.requested, row.justification = item.amount, item.justification[:5000]
    if errors:
        db.rollback()
        raise InvalidInput(Message(N_("Some answers could not be saved.")), errors=errors)
    application.updated_at = utcnow()
    db.commit()
    return application


def _check_answer(question: dict[str, Any], value: Any) -> tuple[Any, Text | None]:
    kind = question["type"]
    if value in (None, ""):
        return None, None
    if kind == "text":
        text = str(value)
        limit = int(question.get("max_length", 5000))
        too_long = Message(N_("At most %(limit)s characters."), limit=str(limit))
        return text, (too_long if len(text) > limit else None)
    if kind == "number":
        try:
            number = int(str(value).strip())
        except ValueError:
            return None, Message(N_("Enter a whole number."))
        low, high = question.get("min"), question.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            return None, Message(N_("Enter a number between %(min)s and %(max)s."), min=str(low), max=str(high))
        return number, None
    if kind == "choice":
        return (value, None) if value in question["choices"] else (None, Message(N_("Choose one of the options.")))
    if kind == "pdf":
        return (int(value), None) if str(value).isdigit() else (None, Message(N_("Upload a PDF.")))
    return None, Message(N_("Unknown question type."))


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


@transaction
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
    require_pi(db, actor, project)
    if application.state != S.DRAFT:
        raise IllegalTransition(Message(N_("Files can be changed only while the application is a draft.")))
    question = next((q for q in call.questions if q["key"] == question_key and q["type"] == "pdf"), None)
    if question is None:
        raise NotFound(Message(N_("No such file question.")))
    field = f"answers.{question_key}"
    limit = int(question.get("max_bytes", DEFAULT_PDF_LIMIT))
    if len(content) > limit:
        raise InvalidInput(
            Message(N_("The file is too large.")),
            errors={field: Message(N_("At most %(size)s MB."), size=str(limit // (1024 * 1024)))},
        )
    if not content.startswith(b"%PDF-"):
        raise InvalidInput(
            Message(N_("Only PDF files are accepted.")), errors={field: Message(N_("This is not a PDF file."))}
        )
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
            Message(N_("This file would take you past your upload quota.")),
            errors={
                field: Message(
                    N_(
                        "Your files take %(used)s of your %(quota)s; this one needs %(size)s. Replace a file you "
                        "uploaded earlier, or ask the factory for more room."
                    ),
                    used=_size(used),
                    quota=_size(quota_bytes),
                    size=_size(len(content)),
                )
            },
        )
    upload = ApplicationFile(
        application_id=application.id,
        question_key=question_key,
        filename=safe_pdf_name(filename),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        content=content,
        uploaded_by_id=actor.id,
    )
    db.add(upload)
    db.flush()
    db.exec(sa.delete(ApplicationFile).where(*replaced, ApplicationFile.id != upload.id))
    application.answers = {**application.answers, question_key: upload.id}
    application.updated_at = utcnow()
    db.commit()
    return upload


def get_file(db: Session, actor: User, file_id: int) -> ApplicationFile:
    upload = db.get(ApplicationFile, file_id)
    if upload is None:
        raise NotFound(Message(N_("No such file.")))
    try:
        get_application(db, actor, upload.application_id)
    except NotFound as exc:  # the same answer as for a file that does not exist
        raise NotFound(Message(N_("No such file."))) from exc
    return upload


def smallest_request(call: Call, kind: ResourceKind) -> int:
    """The smallest total (base units) an application to ``call`` may ask for: the call's ``min_request``, but
    never less than one display unit (one GPU-hour), since a request of nothing is refused. The pages state this
    figure, so that what a call says it takes and what submitting accepts agree."""
    return max(call.min_request, UNITS[ResourceKind(kind)][2])


def submission_problems(db: Session, call: Call, application: Application) -> dict[str, Text]:
    """What keeps the draft from being submitted, by field (in the reader's language: ``str()`` of each)."""
    problems: dict[str, Text] = {}
    if not application.title.strip():
        problems["title"] = Message(N_("Give the application a title."))
    if not application.abstract.strip():
        problems["abstract"] = Message(N_("Write a short abstract."))
    for question in call.questions:
        if question.get("required") and application.answers.get(question["key"]) in (None, ""):
            problems[f"answers.{question['key']}"] = Message(N_("This question needs an answer."))
    rows = requests_of(db, application)
    if not rows:
        problems["requests"] = Message(N_("Ask for hours of at least one resource."))
    total = sum(r.requested for r, _ in rows)
    kind = rows[0][1].kind if rows else ResourceKind.GPU
    if rows and not smallest_request(call, kind) <= total <= call.max_request:
        problems["requests"] = Message(
            N_("This call takes requests between %(smallest)s and %(largest)s; this one asks for %(total)s."),
            smallest=Amount(smallest_request(call, kind), kind),
            largest=Amount(call.max_request, kind),
            total=Amount(total, kind),
        )
    for request, _resource in rows:
        if not request.justification.strip():
            problems[f"requests.{request.resource_id}"] = Message(N_("Justify the hours you ask for."))
    return problems


@transaction
def submit(db: Session, settings: Settings, actor: User, login: Login | None, application: Application) -> Application:
    """Freeze a version and send the application to review (Playground: decided at once). ``login`` is the
    login behind this request: submitting as PI needs the level of assurance again, whatever the draft's
    start had."""
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    require_pi(db, actor, project)
    _require_lead(login, "submit")
    now = utcnow()
    if not accepting(call, now):
        raise NotEligible(_not_accepting(call, now) + Message(N_("The application can no longer be submitted.")))
    next_state(call, application.state, "submit")
    problems = submission_problems(db, call, application)
    if problems:
        raise InvalidInput(Message(N_("The application is not complete yet.")), errors=problems)
    application.version += 1
    application.submitted_at = now
    db.add(
        ApplicationVersion(
            application_id=application.id,
            version=application.version,
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
    move(db, call, application, "submit")
    cutoff = next_cutoff(call, now)
    notify(
        db,
        settings,
        actor,
        subject=Message(N_("Application submitted: %(title)s"), title=application.title),
        body=Message(
            N_("Your application to “%(call)s” was submitted (version %(version)s)."),
            call=call.title,
            version=str(application.version),
        )
        + (Message(N_("It will be evaluated with the cut-off of %(cutoff)s."), cutoff=cutoff) if cutoff else None),
        link=f"/applications/{application.id}",
    )
    manager = db.get(User, call.manager_id)
    if manager is not None:
        notify(
            db,
            settings,
            manager,
            subject=Message(N_("New application to %(call)s: %(title)s"), call=call.title, title=application.title),
            body=Message(
                N_("%(who)s submitted “%(title)s” for %(project)s."),
                who=actor.display_name,
                title=application.title,
                project=project.title,
            ),
            link=f"/applications/{application.id}",
        )
    db.commit()
    if call.review_mode == ReviewMode.AUTOMATIC:
        decide_automatically(db, settings, call, project, application)
    return application


@transaction
def withdraw(db: Session, settings: Settings, actor: User, application: Application) -> Application:
    call = db.get(Call, application.call_id)
    project = db.get(Project, application.project_id)
    assert call is not None and project is not None
    require_pi(db, actor, project)
    move(db, call, application, "withdraw")
    manager = db.get(User, call.manager_id)
    if manager is not None and application.submitted_at is not None:
        notify(
            db,
            settings,
            manager,
            subject=Message(N_("Application withdrawn: %(title)s"), title=application.title),
            body=Message(N_("%(who)s withdrew “%(title)s”."), who=actor.display_name, title=application.title),
            link=f"/applications/{application.id}",
        )
    db.commit()
    return application
