"""The applicant's pages: the open calls, applying, the draft editor with its uploads, submitting,
withdrawing and replying to the reviews."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from typing import Any

from flask import abort, flash, make_response, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from markupsafe import Markup
from sqlmodel import Session
from wtforms.fields.choices import SelectChoice

from portal.db import get_db, utcnow
from portal.errors import Conflict, DomainError, InvalidInput, NotFound
from portal.formatting import parse_quantity, unit_name
from portal.forms import ActionForm
from portal.grants import outputs, queries
from portal.grants import services as grants
from portal.grants.forms import (
    ORGANISATION_KIND_LABELS,
    ApplyForm,
    DraftBase,
    ReplyForm,
    UploadForm,
    draft_form,
    hours_field_name,
    justification_field_name,
    question_field_name,
)
from portal.grants.models import Application, Call, CallBudget
from portal.grants.views.common import S, application_page, bp, hours_text, show_errors
from portal.i18n import current_language
from portal.identity.models import User
from portal.ledger.models import Resource, ResourceKind, Site
from portal.projects import services as projects
from portal.projects.models import Project, ProjectRole
from portal.web import actor, current_login, settings

EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
#: Posted with the editor's checkboxes of sites: the checkboxes then say which resources are asked for.
PICKER = "sites_shown"

Resources = list[tuple[CallBudget, Resource, Site]]


# --- calls ------------------------------------------------------------------------------------------------


@bp.get("/calls")
@login_required
def calls():
    return render_template("grants/calls.html", **queries.calls_page(get_db(), actor(), utcnow()))


def _pi_projects(db: Session, me: User) -> list[SelectChoice]:
    return [
        SelectChoice(s.project.id, f"{s.project.title} ({s.organisation.name})")
        for s in projects.projects_of(db, me)
        if s.role == ProjectRole.PI and s.project.archived_at is None
    ]


def _call_page(call_id: int, *, form: ApplyForm | None = None, error: DomainError | None = None, status: int = 200):
    db, me = get_db(), actor()
    page = queries.call_page(db, me, current_login(), call_id, utcnow())
    if form is None:
        form = ApplyForm(formdata=None)
    form.project_id.choices = _pi_projects(db, me)
    call = page["call"]
    return (
        render_template(
            "grants/call.html",
            **page,
            smallest_request=grants.smallest_request(call, page["request_kind"]),
            eligible_kinds=[str(ORGANISATION_KIND_LABELS.get(k, k)) for k in call.eligible_kinds],
            form=form,
            error=error,
        ),
        status,
    )


@bp.get("/calls/<int:call_id>")
@login_required
def call(call_id: int):
    return _call_page(call_id)


@bp.post("/calls/<int:call_id>/apply")
@login_required
def apply(call_id: int):
    db, me = get_db(), actor()
    call = grants.get_call(db, call_id)
    form = ApplyForm()
    form.project_id.choices = _pi_projects(db, me)
    if not form.validate_on_submit():
        return _call_page(call_id, form=form, status=422)
    project = projects.get_project(db, me, form.project_id.data)
    try:
        application = grants.start_application(
            db, me, current_login(), call=call, project=project, title=form.title.data or ""
        )
    except InvalidInput as exc:
        show_errors(form, exc.errors, {})
        return _call_page(call_id, form=form, status=422)
    except Conflict as exc:
        return _call_page(call_id, form=form, error=exc, status=exc.status)
    flash(_("Your draft is created. It is saved as you type; submit it when it is complete."), "success")
    return redirect(url_for("grants.edit", application_id=application.id))


# --- the draft editor --------------------------------------------------------------------------------------


@bp.app_context_processor
def _drafts() -> dict[str, Any]:
    """``my_drafts()`` for the dashboard (``grants/_drafts.html``): the dashboard belongs to ``projects``, which
    cannot import ``grants``, so the section asks for its rows when it is drawn (one query, on that page only)."""

    def my_drafts() -> list[tuple[Application, Call, Project]]:
        if not current_user.is_authenticated:
            return []
        return queries.drafts_of(get_db(), actor())

    return {"my_drafts": my_drafts}


def _editor_context(db: Session, me: User, application_id: int):
    application, call, project, resources = queries.draft_of(db, me, application_id)
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
        data[hours_field_name(resource.id)] = hours_text(request_row.requested, resource.kind)
        data[justification_field_name(resource.id)] = request_row.justification
    return data


def _field_names(call: Call, resources: Resources) -> dict[str, str]:
    """Service error keys -> the editor's field names."""
    names = {f"answers.{q['key']}": question_field_name(i) for i, q in enumerate(call.questions)}
    for budget, _resource, _site in resources:
        names[f"requests.{budget.resource_id}"] = justification_field_name(budget.resource_id)
        names[f"hours.{budget.resource_id}"] = hours_field_name(budget.resource_id)
    return names


def _posted_picks(form: DraftBase, resources: Resources) -> set[int] | None:
    """The resources the applicant ticked in this request; ``None`` where the form had no checkboxes (a call
    of one resource, or a client that posts hours alone): then each resource's hours field decides."""
    ids = {r.id for _b, r, _s in resources}
    if len(ids) <= 1 or PICKER not in request.form:
        return None
    return {i for i in (form.sites.data or []) if i in ids}


def _shown(db: Session, application: Application, resources: Resources, also: Iterable[int] = ()) -> set[int]:
    """The resources whose rows of hours the editor shows: those the draft asks for and ``also``; every one
    where the call has only one."""
    ids = {r.id for _b, r, _s in resources}
    if len(ids) <= 1:
        return ids
    asked = {resource.id for _request, resource in grants.requests_of(db, application)}
    return (asked | set(also)) & ids


def _error_list(
    form: DraftBase, errors: dict[str, str], call: Call, resources: Resources
) -> list[tuple[str | None, str, str]]:
    """(the id of the field to link to, its label, the message) for each error: what the summary at the top of
    the editor and the autosave's status name. An error of no field has neither id nor label."""
    names = _field_names(call, resources)
    pdfs = {f"answers.{q['key']}": (f"pdf-{i}", q["label"]) for i, q in enumerate(call.questions) if q["type"] == "pdf"}
    listed: list[tuple[str | None, str, str]] = []
    for key, message in errors.items():
        field = form._fields.get(names.get(key, key))
        if key == "requests":
            listed.append(("requests", _("Compute time requested"), message))
        elif key in pdfs:
            listed.append((*pdfs[key], message))
        elif field is not None:
            listed.append((field.id, str(field.label.text), message))
        else:
            listed.append((None, "", message))
    return listed


def _units() -> dict[ResourceKind, str]:
    """Each kind's unit in the page's language, for the hints of the hours."""
    return {kind: unit_name(kind, locale=current_language()) for kind in ResourceKind}


def _render_editor(
    application: Application,
    call: Call,
    project: Project,
    resources: Resources,
    form: DraftBase,
    *,
    shown: set[int] | None = None,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    db = get_db()
    errors = errors or {}
    if shown is None:
        shown = _shown(db, application, resources)
    wrong = (k.split(".", 1) for k in errors)  # a resource's row with an error is shown, ticked or not
    shown = shown | {
        int(rid) for part, *rest in wrong if part in ("hours", "requests") for rid in rest if rid.isdigit()
    }
    pdf_questions = [(i, q) for i, q in enumerate(call.questions) if q["type"] == "pdf"]
    apart = {"requests", *(f"answers.{q['key']}" for _i, q in pdf_questions)}  # shown in their own places
    show_errors(form, {k: v for k, v in errors.items() if k not in apart}, _field_names(call, resources))
    form.form_errors.clear()  # the summary names them
    form.sites.data = sorted(shown)
    kind = resources[0][1].kind if resources else ResourceKind.GPU
    return (
        render_template(
            "grants/edit.html",
            application=application,
            call=call,
            project=project,
            resources=resources,
            picked=[(b, r, s) for b, r, s in resources if r.id in shown],
            picker=len(resources) > 1,
            units=_units(),
            request_kind=kind,
            smallest_request=grants.smallest_request(call, kind),
            form=form,
            questions=list(enumerate(call.questions)),
            pdf_questions=pdf_questions,
            files=queries.files_of(db, application),
            errors=errors,
            summary=_error_list(form, errors, call, resources),
            message=message,
            error=error,
            action_form=ActionForm(),
            upload_limit=grants.DEFAULT_PDF_LIMIT,
            report_warnings=outputs.report_warnings(
                db, project, call, today=utcnow().date(), exclude_application_id=application.id
            ),
        ),
        status,
    )


def _split_emails(text: str) -> list[str]:
    return [e for e in re.split(r"[\s,;]+", text) if e]


def _save(
    db: Session,
    me: User,
    application: Application,
    call: Call,
    resources: Resources,
    form: DraftBase,
    picks: set[int] | None = None,
) -> dict[str, str]:
    """Save what the form holds, as far as it is valid: a wrong answer keeps only itself unsaved. A resource
    left out of ``picks`` (when given) is no longer asked for."""
    errors: dict[str, str] = {}
    answers = {
        q["key"]: form._fields[question_field_name(i)].data or ""
        for i, q in enumerate(call.questions)
        if q["type"] != "pdf"
    }
    requests = []
    for _budget, resource, _site in resources:
        if picks is not None and resource.id not in picks:
            requests.append(grants.RequestInput(resource.id, 0))
            continue
        text = (form._fields[hours_field_name(resource.id)].data or "").strip()
        justification = form._fields[justification_field_name(resource.id)].data or ""
        amount = 0
        if text and text.strip("0.,") != "":
            try:
                amount = parse_quantity(text, resource.kind, field=f"hours.{resource.id}")
            except InvalidInput as exc:
                errors.update(exc.errors)
                continue
        requests.append(grants.RequestInput(resource.id, amount, justification))
    co_applicants: list[str] | None = _split_emails(form.co_applicants.data or "")
    wrong = [e for e in co_applicants or [] if not EMAIL.match(e)]
    if wrong:
        errors["co_applicants"] = _("Not an e-mail address: %(addresses)s", addresses=", ".join(wrong))
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
def edit(application_id: int):
    """The editor. Its Save button posts here; so does "Show these sites" where the page runs without
    JavaScript (with it, ticking a site swaps the rows in through ``pick_sites``)."""
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    if application.state != S.DRAFT:
        flash(_("This application is submitted; it can no longer be edited."), "info")
        return redirect(url_for("grants.application", application_id=application_id))
    if request.method == "GET":
        form = form_class(formdata=None, data=_draft_data(db, application, call))
        also = request.args.getlist("site", type=int)
        return _render_editor(
            application, call, project, resources, form, shown=_shown(db, application, resources, also)
        )
    form = form_class()
    picks = _posted_picks(form, resources)
    try:
        errors = _save(db, me, application, call, resources, form, picks)
    except Conflict as exc:
        return application_page(application_id, error=exc, status=exc.status)
    if errors:
        return _render_editor(
            application,
            call,
            project,
            resources,
            form,
            shown=picks if picks is not None else _shown(db, application, resources),
            errors=errors,
            message=_("Some answers were not saved."),
            status=422,
        )
    # ticked sites without hours yet are not saved: the address keeps their rows on the page
    unsaved = sorted((picks or set()) - _shown(db, application, resources))
    target = url_for("grants.edit", application_id=application_id, site=unsaved)
    if "show_sites" in request.form:
        return redirect(target + "#requests")
    flash(_("Saved at %(time)s UTC.", time=utcnow().strftime("%H:%M")), "success")
    return redirect(target)


def _save_status(errors: list[tuple[str | None, str, str]] | None = None, refused: str | None = None) -> str:
    return render_template("grants/_save_status.html", refused=refused, errors=errors or [], saved_at=utcnow())


@bp.post("/applications/<int:application_id>/save")
@login_required
def autosave(application_id: int):
    """The editor saving as the applicant types (htmx): a small status, always 200 so that htmx shows it."""
    db, me = get_db(), actor()
    application, call, _project, resources, form_class = _editor_context(db, me, application_id)
    form = form_class()
    try:
        errors = _save(db, me, application, call, resources, form, _posted_picks(form, resources))
    except Conflict as exc:
        return _save_status(refused=exc.detail)
    return _save_status(_error_list(form, errors, call, resources))


@bp.post("/applications/<int:application_id>/sites")
@login_required
def pick_sites(application_id: int):
    """Ticking a site in the editor (htmx): the draft is saved with the sites ticked, and the rows of hours of
    those sites come back, with the save status out of band."""
    db, me = get_db(), actor()
    application, call, _project, resources, form_class = _editor_context(db, me, application_id)
    form = form_class()
    picks = _posted_picks(form, resources)
    try:
        errors = _save(db, me, application, call, resources, form, picks)
    except Conflict as exc:
        response = make_response(_save_status(refused=exc.detail))
        response.headers.update({"HX-Retarget": "#save-status", "HX-Reswap": "innerHTML"})
        return response
    shown = picks if picks is not None else _shown(db, application, resources)
    show_errors(form, {k: v for k, v in errors.items() if k != "requests"}, _field_names(call, resources))
    return render_template(
        "grants/_request_rows.html",
        form=form,
        picked=[(b, r, s) for b, r, s in resources if r.id in shown],
        picker=len(resources) > 1,
        units=_units(),
        save_status=Markup(_save_status(_error_list(form, errors, call, resources))),  # noqa: S704 (our template)
    )


@bp.post("/applications/<int:application_id>/files")
@login_required
def upload(application_id: int):
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    form = UploadForm()
    if not form.validate_on_submit():
        abort(400)
    key = form.question.data or ""
    storage = form.file.data
    try:
        if storage is None or not getattr(storage, "filename", ""):
            raise InvalidInput(_("Choose a file."), errors={f"answers.{key}": _("Choose a PDF file to upload.")})
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
        form = form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(
            application, call, project, resources, form, errors=exc.errors, message=exc.detail, status=422
        )
    except Conflict as exc:
        return application_page(application_id, error=exc, status=exc.status)
    flash(_("%(name)s is uploaded.", name=upload.filename), "success")
    return redirect(url_for("grants.edit", application_id=application_id) + "#documents")


@bp.get("/files/<int:file_id>")
@login_required
def download(file_id: int):
    try:
        upload = grants.get_file(get_db(), actor(), file_id)
    except NotFound as exc:  # the same answer whether the file or only its application is hidden
        raise NotFound(_("No such file.")) from exc
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
def submit(application_id: int):
    """Submit; when the editor's fields come along (the button is in the editor), they are saved first."""
    db, me = get_db(), actor()
    application, call, project, resources, form_class = _editor_context(db, me, application_id)
    form = form_class() if "title" in request.form else None
    picks = _posted_picks(form, resources) if form is not None else None
    errors: dict[str, str] = {}
    try:
        if form is not None:
            errors = _save(db, me, application, call, resources, form, picks)
        if not errors:
            grants.submit(db, settings(), me, current_login(), application)
    except InvalidInput as exc:
        errors = exc.errors or {"form": exc.detail}
    except Conflict as exc:
        db.refresh(application)
        if application.state != S.DRAFT:
            return application_page(application_id, error=exc, status=exc.status)
        form = form or form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(
            application,
            call,
            project,
            resources,
            form,
            shown=_picks_shown(db, application, resources, picks),
            error=exc,
            status=exc.status,
        )
    if errors:
        db.refresh(application)
        form = form or form_class(formdata=None, data=_draft_data(db, application, call))
        return _render_editor(
            application,
            call,
            project,
            resources,
            form,
            shown=_picks_shown(db, application, resources, picks),
            errors=errors,
            message=_("The application is not complete yet. Nothing was submitted."),
            status=422,
        )
    flash(
        _("“%(title)s” is submitted (version %(version)s).", title=application.title, version=application.version),
        "success",
    )
    return redirect(url_for("grants.application", application_id=application_id))


@bp.post("/applications/<int:application_id>/withdraw")
@login_required
def withdraw(application_id: int):
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    if not ActionForm().validate_on_submit():
        abort(400)
    try:
        grants.withdraw(db, settings(), me, application)
    except Conflict as exc:
        return application_page(application_id, error=exc, status=exc.status)
    flash(_("The application is withdrawn."), "success")
    return redirect(url_for("grants.application", application_id=application_id))


def _picks_shown(db: Session, application: Application, resources: Resources, picks: set[int] | None) -> set[int]:
    """The rows to show again after a refused step: those ticked, with those the draft asks for."""
    return _shown(db, application, resources, picks or ())


# --- the application's page --------------------------------------------------------------------------------


@bp.get("/applications/<int:application_id>")
@login_required
def application(application_id: int):
    return application_page(application_id)


@bp.post("/applications/<int:application_id>/reply")
@login_required
def reply(application_id: int):
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    form = ReplyForm()
    if not form.validate_on_submit():
        return application_page(application_id, forms={"reply": form}, status=422)
    try:
        grants.submit_reply(db, me, application, text=form.reply.data or "")
    except InvalidInput as exc:
        show_errors(form, exc.errors, {"text": "reply"})
        return application_page(application_id, forms={"reply": form}, status=422)
    except Conflict as exc:
        return application_page(application_id, forms={"reply": form}, error=exc, status=exc.status)
    flash(_("Your reply is sent to the panel."), "success")
    return redirect(url_for("grants.application", application_id=application_id))
