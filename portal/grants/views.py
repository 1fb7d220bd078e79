"""Calls for proposals in the browser: applying, the draft editor, the review pipeline, the call manager's
dashboard and call creation.

The services decide everything; these views turn their named refusals into a page that says why (4xx),
never an error 500: ``InvalidInput`` shows next to the fields (422), a ``Conflict`` (an illegal step, an
ineligible organisation, a conflict of interest, a spent budget or capacity) above the forms (409).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, send_file, url_for
from flask_login import login_required
from flask_wtf import FlaskForm
from sqlmodel import Session, col, func, select
from wtforms.fields.choices import SelectChoice

from portal.authz import Action, allowed, project_role, require
from portal.db import get_db, utcnow
from portal.errors import Conflict, DomainError, InvalidInput, NotAuthorised, NotFound
from portal.formatting import csv_safe, parse_quantity
from portal.forms import ActionForm, apply_errors
from portal.grants import services as grants
from portal.grants.forms import (
    AcceptBase,
    ApplyForm,
    AssignReviewerForm,
    CallForm,
    CallStateForm,
    CheckFailForm,
    ConflictForm,
    DraftBase,
    RejectForm,
    ReplyForm,
    UploadForm,
    accept_form,
    draft_form,
    hours_field_name,
    justification_field_name,
    question_field_name,
    review_form,
    score_field_name,
)
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
from portal.identity.models import User
from portal.identity.services import find_user_by_email
from portal.ledger.models import UNITS, Resource, ResourceKind, Site
from portal.projects import services as projects
from portal.projects.models import Organisation, Project, ProjectMembership, ProjectRole
from portal.web import actor, current_login, settings

bp = Blueprint("grants", __name__)

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
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")


# --- small helpers ----------------------------------------------------------------------------------------


def hours_text(amount: int, kind: ResourceKind) -> str:
    """Base units as an editable number of display units: ``720000`` GPU-seconds -> ``"200"``."""
    value = (Decimal(amount) / Decimal(UNITS[ResourceKind(kind)][2])).normalize()
    return f"{value:f}"


def plain_amount(amount: int | None, kind: ResourceKind) -> str:
    """Display units with one decimal and no grouping, for CSV cells."""
    if amount is None:
        return ""
    value = (Decimal(amount) / Decimal(UNITS[ResourceKind(kind)][2])).quantize(Decimal("0.1"))
    return f"{value:f}"


@bp.app_template_filter("score")
def score_filter(score: int | None) -> str:
    """A weighted score (0–500) on the 1–5 scale of the reviews: ``430`` -> ``"4.30"``."""
    return "—" if score is None else f"{Decimal(score) / 100:.2f}"


@bp.app_template_global("call_dates")
def call_dates(call: Call) -> dict[str, Any]:
    """What the pages say about a call's days: its first and last day, in the call's time zone (named)."""
    return {
        "opens_on": grants.local_day(call.opens_at),
        "closes_on": grants.closing_day(call),
        "time_zone": grants.CALL_TIME_ZONE.key,
    }


def _call_resources(db: Session, call: Call) -> list[tuple[CallBudget, Resource, Site]]:
    return list(
        db.exec(
            select(CallBudget, Resource, Site)
            .join(Resource, Resource.id == CallBudget.resource_id)  # type: ignore[arg-type]
            .join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
            .where(CallBudget.call_id == call.id)
            .order_by(Resource.id)
        ).all()
    )


def _latest_version(db: Session, application: Application) -> ApplicationVersion | None:
    return db.exec(
        select(ApplicationVersion)
        .where(ApplicationVersion.application_id == application.id)
        .order_by(col(ApplicationVersion.version).desc())
    ).first()


def _files_of(db: Session, application: Application) -> dict[int, tuple[str, int]]:
    """file id -> (name, size) of the application's uploads, without their content."""
    rows = db.exec(
        select(ApplicationFile.id, ApplicationFile.filename, ApplicationFile.size).where(
            ApplicationFile.application_id == application.id
        )
    ).all()
    return {file_id: (name, size) for file_id, name, size in rows}


def _resources_by_id(db: Session, ids: set[int]) -> dict[int, tuple[Resource, Site]]:
    if not ids:
        return {}
    rows = db.exec(
        select(Resource, Site).join(Site, Site.id == Resource.site_id).where(col(Resource.id).in_(ids))  # type: ignore[arg-type]
    ).all()
    return {r.id: (r, s) for r, s in rows}  # type: ignore[misc]


def _legal_steps(call: Call, application: Application) -> set[str]:
    steps = set()
    for step in (*MANAGER_STEPS, "withdraw", "submit"):
        try:
            grants.next_state(call, application.state, step)
        except grants.IllegalTransition:
            continue
        steps.add(step)
    return steps


def _show_errors(form: FlaskForm, errors: dict[str, str], names: dict[str, str]) -> None:
    """Put service errors (``answers.nodes``) on the form's fields (``q_1``); others go to the top."""
    for key, message in errors.items():
        field = form._fields.get(names.get(key, key))
        if field is not None:
            field.errors = [*list(field.errors), message]
        else:
            form.form_errors.append(message)


# --- calls ------------------------------------------------------------------------------------------------


@bp.get("/calls")
@login_required
def calls():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    now = utcnow()
    open_now = grants.open_calls(db, now)
    budgets: dict[int, list[tuple[CallBudget, Resource, Site]]] = defaultdict(list)
    if open_now:
        rows = db.exec(
            select(CallBudget, Resource, Site)
            .join(Resource, Resource.id == CallBudget.resource_id)  # type: ignore[arg-type]
            .join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
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
        .join(ProjectMembership, ProjectMembership.project_id == Application.project_id)  # type: ignore[arg-type]
        .join(Call, Call.id == Application.call_id)  # type: ignore[arg-type]
        .join(Project, Project.id == Application.project_id)  # type: ignore[arg-type]
        .where(ProjectMembership.user_id == me.id)
        .order_by(col(Application.updated_at).desc())
    ).all()
    may_create = allowed(db, me, Action.CREATE_CALLS)
    managed_stmt = select(Call).order_by(col(Call.created_at).desc())
    if not may_create:
        managed_stmt = managed_stmt.where(Call.manager_id == me.id)
    return render_template(
        "grants/calls.html",
        calls=open_now,
        budgets=budgets,
        schedule=schedule,
        mine=mine,
        managed=list(db.exec(managed_stmt)),
        may_create=may_create,
    )


def _pi_projects(db: Session, me: User) -> list[SelectChoice]:
    return [
        SelectChoice(s.project.id, f"{s.project.title} ({s.organisation.name})")  # type: ignore[arg-type]
        for s in projects.projects_of(db, me)
        if s.role == ProjectRole.PI and s.project.archived_at is None
    ]


def _call_page(call_id: int, *, form: ApplyForm | None = None, error: DomainError | None = None, status: int = 200):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    call = grants.get_call(db, call_id)
    now = utcnow()
    cutoff = grants.next_cutoff(call, now)
    if form is None:
        form = ApplyForm(formdata=None)
    form.project_id.choices = _pi_projects(db, me)  # type: ignore[assignment]
    resources = _call_resources(db, call)
    kind = resources[0][1].kind if resources else ResourceKind.GPU
    return (
        render_template(
            "grants/call.html",
            call=call,
            resources=resources,
            request_kind=kind,
            cutoff=cutoff,
            decision_due=grants.decision_due(call, cutoff) if cutoff else None,
            accepting=grants.accepting(call, now),
            may_lead=grants.may_lead_applications(current_login()),
            may_manage=allowed(db, me, Action.MANAGE_CALL, call),
            form=form,
            error=error,
        ),
        status,
    )


@bp.get("/calls/<int:call_id>")
@login_required
def call(call_id: int):  # type: ignore[no-untyped-def]
    return _call_page(call_id)


@bp.post("/calls/<int:call_id>/apply")
@login_required
def apply(call_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    call = grants.get_call(db, call_id)
    form = ApplyForm()
    form.project_id.choices = _pi_projects(db, me)  # type: ignore[assignment]
    if not form.validate_on_submit():
        return _call_page(call_id, form=form, status=422)
    project = projects.get_project(db, me, form.project_id.data)  # type: ignore[arg-type]
    try:
        application = grants.start_application(
            db, me, current_login(), call=call, project=project, title=form.title.data or ""
        )
    except InvalidInput as exc:
        _show_errors(form, exc.errors, {})
        return _call_page(call_id, form=form, status=422)
    except Conflict as exc:
        db.rollback()
        return _call_page(call_id, form=form, error=exc, status=exc.status)
    flash("Your draft is created. It is saved as you type; submit it when it is complete.", "success")
    return redirect(url_for("grants.edit", application_id=application.id))


# --- the draft editor --------------------------------------------------------------------------------------


def _editor_context(db: Session, me: User, application_id: int):  # type: ignore[no-untyped-def]
    application, call, project = grants.get_application(db, me, application_id)
    if project_role(db, me, project) != ProjectRole.PI:
        raise NotAuthorised("Only the project's PI edits the application.")
    resources = _call_resources(db, call)
    form_class = draft_form(call, [(r, s) for _b, r, s in resources])
    return application, call, project, resources, form_class


def _draft_data(db: Session, application: Application, call: Call) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": application.title,
        "abstract": application.abstract,
        "co_applicants": "\n".join(application.co_applicants),
    }
    for i, question in enumerate(call.questions):
        value = application.answers.get(question["key"])
        if question["type"] != "pdf":
            data[question_field_name(i)] = "" if value is None else str(value)
    for request_row, resource in grants.requests_of(db, application):
        data[hours_field_name(resource.id)] = hours_text(request_row.requested, resource.kind)  # type: ignore[arg-type]
        data[justification_field_name(resource.id)] = request_row.justification  # type: ignore[arg-type]
    return data


def _field_names(call: Call, resources: list[tuple[CallBudget, Resource, Site]]) -> dict[str, str]:
    """Service error keys -> the editor's field names."""
    names = {f"answers.{q['key']}": question_field_name(i) for i, q in enumerate(call.questions)}
    for budget, _resource, _site in resources:
        names[f"requests.{budget.resource_id}"] = justification_field_name(budget.resource_id)
        names[f"hours.{budget.resource_id}"] = hours_field_name(budget.resource_id)
    return names


def _render_editor(  # type: ignore[no-untyped-def]
    application: Application,
    call: Call,
    project: Project,
    resources: list[tuple[CallBudget, Resource, Site]],
    form: DraftBase,
    *,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    db = get_db()
    errors = errors or {}
    pdf_questions = [(i, q) for i, q in enumerate(call.questions) if q["type"] == "pdf"]
    apart = {"requests", *(f"answers.{q['key']}" for _i, q in pdf_questions)}  # shown in their own places
    _show_errors(form, {k: v for k, v in errors.items() if k not in apart}, _field_names(call, resources))
    return (
        render_template(
            "grants/edit.html",
            application=application,
            call=call,
            project=project,
            resources=resources,
            form=form,
            questions=list(enumerate(call.questions)),
            pdf_questions=pdf_questions,
            files=_files_of(db, application),
            errors=errors,
            message=message,
            error=error,
            action_form=ActionForm(),
            upload_limit=grants.DEFAULT_PDF_LIMIT,
        ),
        status,
    )


def _split_emails(text: str) -> list[str]:
    return [e for e in re.split(r"[\s,;]+", text) if e]


def _save(  # type: ignore[no-untyped-def]
    db: Session, me: User, application: Application, call: Call, resources, form: DraftBase
) -> dict[str, str]:
    """Save what the form holds, as far as it is valid: a wrong answer keeps only itself unsaved."""
    errors: dict[str, str] = {}
    answers = {
        q["key"]: form._fields[question_field_name(i)].data or ""
        for i, q in enumerate(call.questions)
        if q["type"] != "pdf"
    }
    requests = []
    for _budget, resource, _site in resources:
        text = (form._fields[hours_field_name(resource.id)].data or "").strip()  # type: ignore[arg-type]
        justification = form._fields[justification_field_name(resource.id)].data or ""  # type: ignore[arg-type]
        amount = 0
        if text and text.strip("0.,") != "":
            try:
                amount = parse_quantity(text, resource.kind, field=f"hours.{resource.id}")
            except InvalidInput as exc:
                errors.update(exc.errors)
                continue
        requests.append(grants.RequestInput(resource.id, amount, justification))  # type: ignore[arg-type]
    co_applicants: list[str] | None = _split_emails(form.co_applicants.data or "")
    wrong = [e for e in co_applicants or [] if not EMAIL.match(e)]
    if wrong:
        errors["co_applicants"] = "Not an e-mail address: " + ", ".join(wrong)
        co_applicants = None
    values: dict[str, Any] = {
        "title": form.title.data or "",
        "abstract": form.abstract.data or "",
        "answers": answers,
        "co_applicants": co_applicants,
        "requests": requests,
    }
    for attempt in (1, 2):
        try:
            grants.save_draft(db, me, application, **values)
        except InvalidInput as exc:
            errors.update(exc.errors or {"form": exc.detail})
            if attempt == 2 or not exc.errors:
                break
            # save the rest without what was refused
            for key in exc.errors:
                if key in ("title", "abstract"):
                    values[key] = None
                elif key.startswith("answers."):
                    values["answers"].pop(key.removeprefix("answers."), None)
                elif key.startswith("requests."):
                    values["requests"] = [r for r in values["requests"] if f"requests.{r.resource_id}" != key]
        else:
            break
    return errors


@bp.route("/applications/<int:application_id>/edit", methods=["GET", "POST"])
@login_required
def edit(application_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    if application.state != S.DRAFT:
        flash("This application is submitted; it can no longer be edited.", "info")
        return redirect(url_for("grants.application", application_id=application_id))
    if request.method == "GET":
        form = form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(application, call, project, resources, form)
    form = form_class()
    try:
        errors = _save(db, me, application, call, resources, form)
    except Conflict as exc:
        db.rollback()
        return _status_page(application_id, error=exc, status=exc.status)
    if errors:
        return _render_editor(
            application,
            call,
            project,
            resources,
            form,
            errors=errors,
            message="Some answers were not saved.",
            status=422,
        )
    flash(f"Saved at {utcnow():%H:%M} UTC.", "success")
    return redirect(url_for("grants.edit", application_id=application_id))


@bp.post("/applications/<int:application_id>/save")
@login_required
def autosave(application_id: int):  # type: ignore[no-untyped-def]
    """The editor saving as the applicant types (htmx): a small status, always 200 so that htmx shows it."""
    db, me = get_db(), actor()
    application, call, _project, resources, form_class = _editor_context(db, me, application_id)
    form = form_class()
    labels = {name: f.label.text for name, f in form._fields.items()}
    names = _field_names(call, resources)
    try:
        errors = _save(db, me, application, call, resources, form)
    except Conflict as exc:
        db.rollback()
        return render_template("grants/_save_status.html", refused=exc.detail, errors={}, saved_at=None)
    shown = [
        (names.get(key, key), labels.get(names.get(key, key), "The application"), message)
        for key, message in errors.items()
    ]
    return render_template("grants/_save_status.html", refused=None, errors=shown, saved_at=utcnow())


@bp.post("/applications/<int:application_id>/files")
@login_required
def upload(application_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    form = UploadForm()
    if not form.validate_on_submit():
        abort(400)
    key = form.question.data or ""
    storage = form.file.data
    try:
        if storage is None or not getattr(storage, "filename", ""):
            raise InvalidInput("Choose a file.", errors={f"answers.{key}": "Choose a PDF file to upload."})
        upload = grants.upload_pdf(
            db,
            me,
            application,
            question_key=key,
            filename=storage.filename or "",
            content=storage.read(),
            quota_bytes=settings().upload_quota_bytes,
        )
    except InvalidInput as exc:
        db.rollback()
        form = form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(
            application, call, project, resources, form, errors=exc.errors, message=exc.detail, status=422
        )
    except Conflict as exc:
        db.rollback()
        return _status_page(application_id, error=exc, status=exc.status)
    flash(f"{upload.filename} is uploaded.", "success")
    return redirect(url_for("grants.edit", application_id=application_id) + "#documents")


@bp.get("/files/<int:file_id>")
@login_required
def download(file_id: int):  # type: ignore[no-untyped-def]
    try:
        upload = grants.get_file(get_db(), actor(), file_id)
    except NotFound as exc:  # the same answer whether the file or only its application is hidden
        raise NotFound("No such file.") from exc
    response = send_file(
        io.BytesIO(upload.content),
        mimetype="application/pdf",
        as_attachment=True,
        download_name=grants.safe_pdf_name(upload.filename),  # files stored before names were made safe too
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.post("/applications/<int:application_id>/submit")
@login_required
def submit(application_id: int):  # type: ignore[no-untyped-def]
    """Submit; when the editor's fields come along (the button is in the editor), they are saved first."""
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    form = form_class() if "title" in request.form else None
    errors: dict[str, str] = {}
    try:
        if form is not None:
            errors = _save(db, me, application, call, resources, form)
        if not errors:
            grants.submit(db, settings(), me, current_login(), application)
    except InvalidInput as exc:
        db.rollback()
        errors = exc.errors or {"form": exc.detail}
    except Conflict as exc:
        db.rollback()
        db.refresh(application)
        if application.state != S.DRAFT:
            return _status_page(application_id, error=exc, status=exc.status)
        form = form or form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(application, call, project, resources, form, error=exc, status=exc.status)
    if errors:
        db.refresh(application)
        form = form or form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(
            application,
            call,
            project,
            resources,
            form,
            errors=errors,
            message="The application is not complete yet. Nothing was submitted.",
            status=422,
        )
    flash(f"“{application.title}” is submitted (version {application.version}).", "success")
    return redirect(url_for("grants.application", application_id=application_id))


@bp.post("/applications/<int:application_id>/withdraw")
@login_required
def withdraw(application_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        grants.withdraw(db, settings(), me, application)
    except Conflict as exc:
        db.rollback()
        return _status_page(application_id, error=exc, status=exc.status)
    flash("The application is withdrawn.", "success")
    return redirect(url_for("grants.application", application_id=application_id))


# --- the application's page --------------------------------------------------------------------------------


def _status_page(  # type: ignore[no-untyped-def]
    application_id: int,
    *,
    forms: dict[str, FlaskForm] | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    db, me = get_db(), actor()
    application, call, project = grants.get_application(db, me, application_id)
    is_manager = allowed(db, me, Action.MANAGE_CALL, call)
    role = project_role(db, me, project)
    is_applicant = role is not None
    requests = grants.requests_of(db, application)
    version = _latest_version(db, application)
    version_resources = _resources_by_id(
        db, {r["resource_id"] for r in (version.content.get("requests", []) if version else [])}
    )
    reviews: list[Review] = grants.reviews_visible_to(db, me, application) if is_manager else []
    reviewers = {u.id: u for u in db.exec(select(User).where(col(User.id).in_({r.reviewer_id for r in reviews})))}
    my_reviews = list(
        db.exec(select(Review).where(Review.application_id == application.id, Review.reviewer_id == me.id))
    )
    forms = dict(forms or {})
    award_labels = [(resource.id, f"{resource.name}: hours to award") for _r, resource in requests]
    accept_class = accept_form(award_labels)  # type: ignore[arg-type]
    defaults: dict[str, FlaskForm] = {
        "reply": ReplyForm(formdata=None),
        "check": CheckFailForm(formdata=None),
        "assign": AssignReviewerForm(
            formdata=None,
            kind=ReviewKind.TECHNICAL.value
            if application.state == S.TECHNICAL_ASSESSMENT
            else ReviewKind.SCIENTIFIC.value,
        ),
        "accept": accept_class(
            formdata=None,
            data={f"award_{res.id}": hours_text(r.requested, res.kind) for r, res in requests},
        ),
        "reject": RejectForm(formdata=None),
    }
    reply = db.exec(select(Reply).where(Reply.application_id == application.id)).first()
    if reply is not None and "reply" not in forms:
        defaults["reply"] = ReplyForm(formdata=None, data={"reply": reply.text})
    for name, form in defaults.items():
        forms.setdefault(name, form)
    awards = list(
        db.exec(select(Award).where(Award.application_id == application.id).order_by(Award.resource_id, Award.tranche))
    )
    organisation = db.get(Organisation, project.organisation_id)
    steps = _legal_steps(call, application)
    return (
        render_template(
            "grants/application.html",
            application=application,
            call=call,
            project=project,
            organisation=organisation,
            is_manager=is_manager,
            is_applicant=is_applicant,
            is_pi=role == ProjectRole.PI,
            may_view_project=allowed(db, me, Action.VIEW_PROJECT, project),
            requests=requests,
            version=version,
            version_resources=version_resources,
            files=_files_of(db, application),
            comments=grants.comments_for_applicant(db, me, application)
            if (is_applicant or is_manager) and application.state in COMMENTS_SHOWN
            else [],
            reply=reply,
            reviews=reviews,
            reviewers=reviewers,
            my_reviews=my_reviews,
            steps=steps,
            manager_steps=steps & set(MANAGER_STEPS),
            awards=awards,
            resources_by_id={res.id: res for _r, res in requests},
            forms=forms,
            action_form=ActionForm(),
            error=error,
            eligibility=grants.eligibility_problems(db, call, project) if is_manager else [],
        ),
        status,
    )


@bp.get("/applications/<int:application_id>")
@login_required
def application(application_id: int):  # type: ignore[no-untyped-def]
    return _status_page(application_id)


@bp.post("/applications/<int:application_id>/reply")
@login_required
def reply(application_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    form = ReplyForm()
    if not form.validate_on_submit():
        return _status_page(application_id, forms={"reply": form}, status=422)
    try:
        grants.submit_reply(db, me, application, text=form.reply.data or "")
    except InvalidInput as exc:
        _show_errors(form, exc.errors, {"text": "reply"})
        return _status_page(application_id, forms={"reply": form}, status=422)
    except Conflict as exc:
        db.rollback()
        return _status_page(application_id, forms={"reply": form}, error=exc, status=exc.status)
    flash("Your reply is sent to the panel.", "success")
    return redirect(url_for("grants.application", application_id=application_id))


Step = Callable[[Session, User, Application, Call], str]


def _manager_step(  # type: ignore[no-untyped-def]
    application_id: int,
    run: Step,
    *,
    form_key: str | None = None,
    form: FlaskForm | None = None,
    names: dict[str, str] | None = None,
):
    """One step of the call manager: the permission first, then the form, then the service."""
    db, me = get_db(), actor()
    application, call, _project = grants.get_application(db, me, application_id)
    require(db, me, Action.MANAGE_CALL, call)
    forms = {form_key: form} if form_key and form is not None else None
    if form is None:
        if not ActionForm().validate_on_submit():
            abort(400)
    elif not form.validate_on_submit():
        return _status_page(application_id, forms=forms, status=422)
    try:
        done = run(db, me, application, call)
    except InvalidInput as exc:
        db.rollback()
        if form is None:
            return _status_page(application_id, error=exc, status=exc.status)
        if exc.errors and exc.detail not in exc.errors.values():
            form.form_errors.append(exc.detail)
        _show_errors(form, exc.errors or {"": exc.detail}, names or {})
        return _status_page(application_id, forms=forms, status=exc.status)
    except Conflict as exc:
        db.rollback()
        return _status_page(application_id, forms=forms, error=exc, status=exc.status)
    flash(done, "success")
    return redirect(url_for("grants.application", application_id=application_id))


@bp.post("/applications/<int:application_id>/check")
@login_required
def administrative_check(application_id: int):  # type: ignore[no-untyped-def]
    if request.form.get("decision") == "fail":
        form = CheckFailForm()

        def fail(db: Session, me: User, application: Application, _call: Call) -> str:
            grants.administrative_check(
                db, settings(), me, application, passed=False, reason=form.fail_reason.data or ""
            )
            return "The administrative check failed; the applicant is told the reasons."

        return _manager_step(application_id, fail, form_key="check", form=form, names={"reason": "fail_reason"})

    def passed(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.administrative_check(db, settings(), me, application, passed=True)
        return "The administrative check passed; the application is in technical assessment."

    return _manager_step(application_id, passed)


@bp.post("/applications/<int:application_id>/reviewers")
@login_required
def assign_reviewer(application_id: int):  # type: ignore[no-untyped-def]
    form = AssignReviewerForm()

    def assign(db: Session, me: User, application: Application, _call: Call) -> str:
        try:
            reviewer = find_user_by_email(db, form.email.data or "")
        except (NotFound, Conflict) as exc:
            raise InvalidInput(exc.detail, errors={"email": exc.detail}) from exc
        kind = ReviewKind(form.kind.data)
        grants.assign_reviewer(db, settings(), me, application, reviewer, kind=kind, due_on=form.due_on.data)
        return f"{reviewer.display_name} is asked for a {kind.value} review."

    return _manager_step(application_id, assign, form_key="assign", form=form, names={"reviewer": "email"})


@bp.post("/applications/<int:application_id>/complete-technical-assessment")
@login_required
def complete_technical_assessment(application_id: int):  # type: ignore[no-untyped-def]
    def run(db: Session, me: User, application: Application, call: Call) -> str:
        grants.complete_technical_assessment(db, settings(), me, application)
        return f"The technical assessment is complete; the application is {application.state.label}."

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/request-reply")
@login_required
def request_reply(application_id: int):  # type: ignore[no-untyped-def]
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.request_reply(db, settings(), me, application)
        return "The applicant is asked for a reply to the reviews."

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/rank")
@login_required
def rank(application_id: int):  # type: ignore[no-untyped-def]
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.rank(db, settings(), me, application)
        return "The application is ranked."

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/accept")
@login_required
def accept(application_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    requests = grants.requests_of(db, application)
    form: AcceptBase = accept_form([(res.id, f"{res.name}: hours to award") for _r, res in requests])()  # type: ignore[arg-type]
    names = {f"awarded.{res.id}": f"award_{res.id}" for _r, res in requests} | {"reason": "accept_reason"}

    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        awarded, errors = {}, {}
        for _request, resource in requests:
            name = f"award_{resource.id}"
            text = (form._fields[name].data or "").strip()
            if not text or text.strip("0.,") == "":
                awarded[resource.id] = 0
                continue
            try:
                awarded[resource.id] = parse_quantity(text, resource.kind, field=name)
            except InvalidInput as exc:
                errors.update(exc.errors)
        if errors:
            raise InvalidInput("The award is not valid.", errors=errors)
        grants.decide_accept(
            db,
            settings(),
            me,
            application,
            awarded=awarded,  # type: ignore[arg-type]
            first_tranche_percent=form.first_tranche_percent.data or 100,
            reason=form.accept_reason.data or "",
        )
        return "The application is accepted; the project's allocations are open."

    return _manager_step(application_id, run, form_key="accept", form=form, names=names)


@bp.post("/applications/<int:application_id>/reject")
@login_required
def reject(application_id: int):  # type: ignore[no-untyped-def]
    form = RejectForm()

    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.decide_reject(db, settings(), me, application, reason=form.reject_reason.data or "")
        return "The application is rejected; the applicant is told the reasons."

    return _manager_step(application_id, run, form_key="reject", form=form, names={"reason": "reject_reason"})


@bp.post("/applications/<int:application_id>/tranches/<int:award_id>/release")
@login_required
def release_tranche(application_id: int, award_id: int):  # type: ignore[no-untyped-def]
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        award = db.get(Award, award_id)
        if award is None or award.application_id != application.id:
            raise NotFound("No such tranche.")
        grants.release_tranche(db, settings(), me, award_id)
        return f"Tranche {award.tranche} is released to the project."

    return _manager_step(application_id, run)


# --- reviews -------------------------------------------------------------------------------------------------


@bp.get("/reviews")
@login_required
def reviews():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    rows = db.exec(
        select(Review, Application, Call)
        .join(Application, Application.id == Review.application_id)  # type: ignore[arg-type]
        .join(Call, Call.id == Application.call_id)  # type: ignore[arg-type]
        .where(Review.reviewer_id == me.id)
        .order_by(col(Review.state) != ReviewState.ASSIGNED, col(Review.due_on).is_(None), Review.due_on, Review.id)
    ).all()
    return render_template("grants/reviews.html", rows=rows)


def _my_review(db: Session, me: User, review_id: int) -> tuple[Review, Application, Call, Project]:
    review = db.get(Review, review_id)
    if review is None or review.reviewer_id != me.id or review.state == ReviewState.CONFLICT:
        raise NotFound("No such review.")  # a declared conflict of interest ends the reviewer's access
    application, call, project = grants.get_application(db, me, review.application_id)
    return review, application, call, project


def _review_page(  # type: ignore[no-untyped-def]
    review_id: int,
    *,
    form: FlaskForm | None = None,
    conflict_form: ConflictForm | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    db, me = get_db(), actor()
    review, application, call, project = _my_review(db, me, review_id)
    if form is None:
        data: dict[str, Any] = {
            "comment_to_applicant": review.comment_to_applicant,
            "comment_to_panel": review.comment_to_panel,
        }
        if review.feasible is not None:
            data["feasible"] = "yes" if review.feasible else "no"
        for i, criterion in enumerate(call.criteria):
            if criterion["key"] in review.scores:
                data[score_field_name(i)] = str(review.scores[criterion["key"]])
        form = review_form(call, review.kind)(formdata=None, data=data)
    version = _latest_version(db, application)
    others = [r for r in grants.reviews_visible_to(db, me, application) if r.id != review.id]
    return (
        render_template(
            "grants/review.html",
            review=review,
            application=application,
            call=call,
            project=project,
            organisation=db.get(Organisation, project.organisation_id),
            applicant=db.get(User, application.applicant_id),
            version=version,
            version_resources=_resources_by_id(
                db, {r["resource_id"] for r in (version.content.get("requests", []) if version else [])}
            ),
            files=_files_of(db, application),
            others=others,
            form=form,
            criteria=list(enumerate(call.criteria)),
            conflict_form=conflict_form or ConflictForm(formdata=None),
            open_for_review=application.state
            == (S.TECHNICAL_ASSESSMENT if review.kind == ReviewKind.TECHNICAL else S.PEER_REVIEW),
            error=error,
        ),
        status,
    )


@bp.get("/reviews/<int:review_id>")
@login_required
def review(review_id: int):  # type: ignore[no-untyped-def]
    return _review_page(review_id)


@bp.post("/reviews/<int:review_id>")
@login_required
def submit_review(review_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    review, _application, call, _project = _my_review(db, me, review_id)
    form = review_form(call, review.kind)()
    if not form.validate_on_submit():
        return _review_page(review_id, form=form, status=422)
    scores: dict[str, int] = {}
    for i, criterion in enumerate(call.criteria):
        value = form._fields[score_field_name(i)].data if score_field_name(i) in form._fields else None
        if value and str(value).isdigit():
            scores[criterion["key"]] = int(value)
    feasible_field = form._fields.get("feasible")
    feasible = {"yes": True, "no": False}.get(feasible_field.data) if feasible_field is not None else None
    panel_field = form._fields.get("comment_to_panel")
    try:
        grants.submit_review(
            db,
            me,
            review_id,
            comment_to_applicant=form.comment_to_applicant.data or "",
            comment_to_panel=(panel_field.data or "") if panel_field is not None else "",
            scores=scores if review.kind == ReviewKind.SCIENTIFIC else None,
            feasible=feasible,
        )
    except InvalidInput as exc:
        db.rollback()
        names = {f"scores.{c['key']}": score_field_name(i) for i, c in enumerate(call.criteria)}
        _show_errors(form, exc.errors, names)
        return _review_page(review_id, form=form, status=422)
    except Conflict as exc:
        db.rollback()
        return _review_page(review_id, form=form, error=exc, status=exc.status)
    flash("Your review is submitted. Thank you.", "success")
    return redirect(url_for("grants.review", review_id=review_id))


@bp.post("/reviews/<int:review_id>/conflict")
@login_required
def declare_conflict(review_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    _my_review(db, me, review_id)
    form = ConflictForm()
    if not form.validate_on_submit():
        return _review_page(review_id, conflict_form=form, status=422)
    try:
        grants.declare_conflict(db, me, review_id, reason=form.conflict_reason.data or "")
    except InvalidInput as exc:
        _show_errors(form, exc.errors, {"reason": "conflict_reason"})
        return _review_page(review_id, conflict_form=form, status=422)
    except Conflict as exc:
        db.rollback()
        return _review_page(review_id, conflict_form=form, error=exc, status=exc.status)
    flash("Your conflict of interest is recorded; the call manager will ask someone else.", "success")
    return redirect(url_for("grants.reviews"))


# --- the call manager's dashboard ----------------------------------------------------------------------------


def _managed_call(call_id: int) -> Call:
    db, me = get_db(), actor()
    call = db.get(Call, call_id)
    if call is None:
        raise NotFound("No such call.")
    require(db, me, Action.MANAGE_CALL, call)
    return call


def _applications_of_call(db: Session, call: Call) -> list[tuple[Application, Project, Organisation]]:
    """The call's applications except drafts (those are still the applicants' own)."""
    return list(
        db.exec(
            select(Application, Project, Organisation)
            .join(Project, Project.id == Application.project_id)  # type: ignore[arg-type]
            .join(Organisation, Organisation.id == Project.organisation_id)  # type: ignore[arg-type]
            .where(Application.call_id == call.id, Application.state != S.DRAFT)
            .order_by(Application.id)
        ).all()
    )


def _requests_of_call(db: Session, call: Call) -> dict[int, dict[int, ResourceRequest]]:
    """application id -> resource id -> its request, for the call's non-draft applications."""
    rows = db.exec(
        select(ResourceRequest)
        .join(Application, Application.id == ResourceRequest.application_id)  # type: ignore[arg-type]
        .where(Application.call_id == call.id, Application.state != S.DRAFT)
    ).all()
    found: dict[int, dict[int, ResourceRequest]] = defaultdict(dict)
    for row in rows:
        found[row.application_id][row.resource_id] = row
    return found


@bp.get("/calls/<int:call_id>/manage")
@login_required
def manage(call_id: int, state_form: CallStateForm | None = None, status: int = 200):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    call = _managed_call(call_id)
    apps = _applications_of_call(db, call)
    counts = Counter(
        dict(
            db.exec(
                select(Application.state, func.count())
                .where(Application.call_id == call.id)
                .group_by(Application.state)
            ).all()
        )
    )
    requested = _requests_of_call(db, call)
    live = {a.id for a, _p, _o in apps if a.state != S.WITHDRAWN}
    resources = _call_resources(db, call)
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
        .join(Application, Application.id == Review.application_id)  # type: ignore[arg-type]
        .where(Application.call_id == call.id)
        .group_by(Review.application_id, Review.state)
    ).all():
        progress[app_id][str(state)] = n
    return render_template(
        "grants/manage.html",
        call=call,
        apps=apps,
        counts=[(state, counts.get(state, 0)) for state in STATE_ORDER],
        total=sum(counts.values()),
        requested=requested,
        resources=resources,
        budget_rows=budget_rows,
        progress=progress,
        ranking=grants.ranking(db, me, call),
        state_form=state_form or CallStateForm(formdata=None),
    ), status


@bp.post("/calls/<int:call_id>/state")
@login_required
def set_call_state(call_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    call = _managed_call(call_id)
    form = CallStateForm()
    if not form.validate_on_submit() or form.state.data not in (CallState.OPEN.value, CallState.CLOSED.value):
        abort(400)
    try:
        grants.set_call_state(db, me, call, CallState(form.state.data), reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return manage(call_id, state_form=form, status=422)
    flash(f"The call is {call.state.value}.", "success")
    return redirect(url_for("grants.manage", call_id=call_id))


@bp.get("/calls/<int:call_id>/applications.csv")
@login_required
def applications_csv(call_id: int):  # type: ignore[no-untyped-def]
    db = get_db()
    call = _managed_call(call_id)
    resources = _call_resources(db, call)
    requested = _requests_of_call(db, call)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "id",
            "title",
            "project",
            "organisation",
            "country",
            "state",
            *(f"requested {r.name}, {s.name} ({r.display_unit}s)" for _b, r, s in resources),
            "score",
            *(f"awarded {r.name}, {s.name} ({r.display_unit}s)" for _b, r, s in resources),
        ]
    )
    for application, project, organisation in _applications_of_call(db, call):
        mine = requested.get(application.id, {})  # type: ignore[call-overload]
        writer.writerow(
            [
                csv_safe(v)
                for v in [
                    application.id,
                    application.title,
                    project.title,
                    organisation.name,
                    organisation.country,
                    application.state.value,
                    *(
                        plain_amount(mine[r.id].requested if r.id in mine else None, r.kind)  # type: ignore[index]
                        for _b, r, _s in resources
                    ),
                    score_filter(application.score) if application.score is not None else "",
                    *(
                        plain_amount(mine[r.id].awarded if r.id in mine else None, r.kind)  # type: ignore[index]
                        for _b, r, _s in resources
                    ),
                ]
            ]
        )
    filename = f"call-{call.id}-applications.csv"
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- creating calls -------------------------------------------------------------------------------------------


def _json_list(text: str, field: str, errors: dict[str, str]) -> list[dict[str, Any]]:
    import json

    try:
        value = json.loads(text or "[]")
    except ValueError as exc:
        errors[field] = f"Not valid JSON: {exc}."
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        errors[field] = "Give a JSON list of objects."
        return []
    return value


@bp.route("/admin/calls/new", methods=["GET", "POST"])
@login_required
def new_call():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    require(db, me, Action.CREATE_CALLS)
    resources = db.exec(
        select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name, Resource.id)
    ).all()  # type: ignore[arg-type]
    by_id = {r.id: r for r, _s in resources}
    form = CallForm()
    for row in form.budgets:
        row.resource_id.choices = [  # type: ignore[assignment]
            SelectChoice(0, "—"),
            *(SelectChoice(r.id, f"{s.name}: {r.name}") for r, s in resources),
        ]
    budgets_error = ""
    status = 200
    if form.validate_on_submit():
        errors: dict[str, str] = {}
        manager = None
        try:
            manager = find_user_by_email(db, form.manager_email.data or "")
        except (NotFound, Conflict) as exc:
            errors["manager_email"] = exc.detail
        budgets: dict[int, int] = {}
        for row in form.budgets:
            resource = by_id.get(row.resource_id.data)
            text = (row.hours.data or "").strip()
            if resource is None:
                if text:
                    budgets_error = "Choose the resource of each budget."
                continue
            try:
                budgets[resource.id] = budgets.get(resource.id, 0) + parse_quantity(
                    text, resource.kind, field="budgets"
                )  # type: ignore[index]
            except InvalidInput as exc:
                budgets_error = f"{resource.name}: {exc.errors.get('budgets', exc.detail)}"
        if not budgets and not budgets_error:
            budgets_error = "Give at least one resource a budget."
        kind = by_id[next(iter(budgets))].kind if budgets else ResourceKind.GPU
        limits = {}
        for name in ("min_request", "max_request"):
            text = (form._fields[name].data or "").strip()
            if name == "min_request" and text.strip("0.,") == "":
                limits[name] = 0
                continue
            try:
                limits[name] = parse_quantity(text, kind, field=name)
            except InvalidInput as exc:
                errors.update(exc.errors)
        countries = [c.strip().upper() for c in (form.eligible_countries.data or "").split(",") if c.strip()]
        if any(not re.fullmatch(r"[A-Z]{2}", c) for c in countries):
            errors["eligible_countries"] = "Give two-letter ISO codes separated by commas, for example PL, LT."
        questions = _json_list(form.questions.data or "", "questions", errors)
        criteria = _json_list(form.criteria.data or "", "criteria", errors)
        if not errors and not budgets_error and manager is not None:
            try:
                created = grants.create_call(
                    db,
                    me,
                    title=form.title.data or "",
                    description=form.description.data or "",
                    access_mode=AccessMode(form.access_mode.data),
                    review_mode=ReviewMode(form.review_mode.data),
                    manager=manager,
                    budgets=budgets,
                    min_request=limits["min_request"],
                    max_request=limits["max_request"],
                    duration_months=form.duration_months.data or 6,
                    opens_at=grants.start_of_day(form.opens_on.data),  # type: ignore[arg-type]
                    closes_at=grants.end_of_day(form.closes_on.data),  # type: ignore[arg-type]
                    first_cutoff=form.first_cutoff.data,  # type: ignore[arg-type]
                    cutoff_every_days=form.cutoff_every_days.data,
                    decision_within_working_days=form.decision_within_working_days.data,
                    eligible_kinds=list(form.eligible_kinds.data or []),
                    eligible_countries=countries,
                    questions=questions,
                    criteria=criteria,
                    reason=form.reason.data or "",
                )
            except InvalidInput as exc:
                db.rollback()
                errors.update(exc.errors or {"": exc.detail})
            else:
                flash(f"The call “{created.title}” is created as a draft. Open it when it is ready.", "success")
                return redirect(url_for("grants.manage", call_id=created.id))
        budgets_error = errors.pop("budgets", budgets_error)
        _show_errors(form, errors, {"closes_at": "closes_on"})
        status = 422
    elif form.is_submitted():
        status = 422
    return render_template("grants/new_call.html", form=form, budgets_error=budgets_error), status
