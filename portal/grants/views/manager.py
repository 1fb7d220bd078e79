"""The call manager's pages: the steps of the review pipeline on an application, the call's dashboard,
opening and closing the call, and its applications as CSV."""

from __future__ import annotations

from collections.abc import Callable

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import login_required
from flask_wtf import FlaskForm
from sqlmodel import Session

from portal.authz import Action, require
from portal.db import get_db, utcnow
from portal.errors import Conflict, InvalidInput, NotFound
from portal.formatting import parse_quantity
from portal.forms import ActionForm, apply_errors
from portal.grants import outputs, queries
from portal.grants import services as grants
from portal.grants.forms import (
    AcceptBase,
    AssignReviewerForm,
    CallStateForm,
    CheckFailForm,
    RejectForm,
    accept_form,
)
from portal.grants.models import Application, Call, CallState, ReviewKind
from portal.grants.views.common import (
    application_page,
    award_labels,
    bp,
    grants_label,
    plain_amount,
    plain_score,
    show_errors,
)
from portal.identity.models import User
from portal.identity.services import find_user_by_email
from portal.web import actor, csv_response, settings

Step = Callable[[Session, User, Application, Call], str]


# --- steps on an application -----------------------------------------------------------------------------------


def _manager_step(
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
        return application_page(application_id, forms=forms, status=422)
    try:
        done = run(db, me, application, call)
    except InvalidInput as exc:
        if form is None:
            return application_page(application_id, error=exc, status=exc.status)
        if exc.errors and exc.detail not in exc.errors.values():
            form.form_errors.append(exc.detail)
        show_errors(form, exc.errors or {"": exc.detail}, names or {})
        return application_page(application_id, forms=forms, status=exc.status)
    except Conflict as exc:
        return application_page(application_id, forms=forms, error=exc, status=exc.status)
    flash(done, "success")
    return redirect(url_for("grants.application", application_id=application_id))


@bp.post("/applications/<int:application_id>/check")
@login_required
def administrative_check(application_id: int):
    if request.form.get("decision") == "fail":
        form = CheckFailForm()

        def fail(db: Session, me: User, application: Application, _call: Call) -> str:
            grants.administrative_check(
                db, settings(), me, application, passed=False, reason=form.fail_reason.data or ""
            )
            return _("The administrative check failed; the applicant is told the reasons.")

        return _manager_step(application_id, fail, form_key="check", form=form, names={"reason": "fail_reason"})

    def passed(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.administrative_check(db, settings(), me, application, passed=True)
        return _("The administrative check passed; the application is in technical assessment.")

    return _manager_step(application_id, passed)


@bp.post("/applications/<int:application_id>/reviewers")
@login_required
def assign_reviewer(application_id: int):
    form = AssignReviewerForm()

    def assign(db: Session, me: User, application: Application, _call: Call) -> str:
        try:
            reviewer = find_user_by_email(db, form.email.data or "")
        except (NotFound, Conflict) as exc:
            raise InvalidInput(exc.detail, errors={"email": exc.detail}) from exc
        kind = ReviewKind(form.kind.data)
        grants.assign_reviewer(db, settings(), me, application, reviewer, kind=kind, due_on=form.due_on.data)
        if kind == ReviewKind.TECHNICAL:
            return _("%(name)s is asked for a technical review.", name=reviewer.display_name)
        return _("%(name)s is asked for a scientific review.", name=reviewer.display_name)

    return _manager_step(application_id, assign, form_key="assign", form=form, names={"reviewer": "email"})


@bp.post("/applications/<int:application_id>/complete-technical-assessment")
@login_required
def complete_technical_assessment(application_id: int):
    def run(db: Session, me: User, application: Application, call: Call) -> str:
        grants.complete_technical_assessment(db, settings(), me, application)
        return _(
            "The technical assessment is complete; the application is %(state)s.",
            state=grants_label(application.state),
        )

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/request-reply")
@login_required
def request_reply(application_id: int):
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.request_reply(db, settings(), me, application)
        return _("The applicant is asked for a reply to the reviews.")

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/rank")
@login_required
def rank(application_id: int):
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.rank(db, settings(), me, application)
        return _("The application is ranked.")

    return _manager_step(application_id, run)


@bp.post("/applications/<int:application_id>/accept")
@login_required
def accept(application_id: int):
    db, me = get_db(), actor()
    application, _call, _project = grants.get_application(db, me, application_id)
    requests = grants.requests_of(db, application)
    form: AcceptBase = accept_form(award_labels(requests))()
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
            raise InvalidInput(_("The award is not valid."), errors=errors)
        grants.decide_accept(
            db,
            settings(),
            me,
            application,
            awarded=awarded,
            first_tranche_percent=form.first_tranche_percent.data or 100,
            reason=form.accept_reason.data or "",
        )
        return _("The application is accepted; the project's allocations are open.")

    return _manager_step(application_id, run, form_key="accept", form=form, names=names)


@bp.post("/applications/<int:application_id>/reject")
@login_required
def reject(application_id: int):
    form = RejectForm()

    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        grants.decide_reject(db, settings(), me, application, reason=form.reject_reason.data or "")
        return _("The application is rejected; the applicant is told the reasons.")

    return _manager_step(application_id, run, form_key="reject", form=form, names={"reason": "reject_reason"})


@bp.post("/applications/<int:application_id>/tranches/<int:award_id>/release")
@login_required
def release_tranche(application_id: int, award_id: int):
    def run(db: Session, me: User, application: Application, _call: Call) -> str:
        award = queries.tranche_of(db, application, award_id)
        grants.release_tranche(db, settings(), me, award_id)
        return _("Tranche %(n)s is released to the project.", n=award.tranche)

    return _manager_step(application_id, run)


# --- the call manager's dashboard ----------------------------------------------------------------------------


@bp.get("/calls/<int:call_id>/manage")
@login_required
def manage(call_id: int, state_form: CallStateForm | None = None, status: int = 200):
    db, me = get_db(), actor()
    call = queries.managed_call(db, me, call_id)
    return render_template(
        "grants/manage.html",
        **queries.call_dashboard(db, me, call),
        award_reports=outputs.reports_of_call(db, me, call, utcnow().date()),
        state_form=state_form or CallStateForm(formdata=None),
    ), status


@bp.post("/calls/<int:call_id>/state")
@login_required
def set_call_state(call_id: int):
    db, me = get_db(), actor()
    call = queries.managed_call(db, me, call_id)
    form = CallStateForm()
    if not form.validate_on_submit() or form.state.data not in (CallState.OPEN.value, CallState.CLOSED.value):
        abort(400)
    try:
        grants.set_call_state(db, me, call, CallState(form.state.data), reason=form.reason.data or "")
    except InvalidInput as exc:
        apply_errors(form, exc)
        return manage(call_id, state_form=form, status=422)
    flash(_("The call is open.") if call.state == CallState.OPEN else _("The call is closed."), "success")
    return redirect(url_for("grants.manage", call_id=call_id))


@bp.get("/calls/<int:call_id>/applications.csv")
@login_required
def applications_csv(call_id: int):
    """The call's applications with what each asked for and was awarded, in display units (one decimal)."""
    db = get_db()
    call = queries.managed_call(db, actor(), call_id)
    resources = queries.call_resources(db, call)
    requested = queries.requests_of_call(db, call)
    header = [
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
    rows = []
    for application, project, organisation in queries.applications_of_call(db, call):
        mine = requested.get(application.id, {})
        rows.append(
            [
                application.id,
                application.title,
                project.title,
                organisation.name,
                organisation.country,
                application.state.value,
                *(plain_amount(mine[r.id].requested if r.id in mine else None, r.kind) for _b, r, _s in resources),
                plain_score(application.score) if application.score is not None else "",
                *(plain_amount(mine[r.id].awarded if r.id in mine else None, r.kind) for _b, r, _s in resources),
            ]
        )
    return csv_response(f"call-{call.id}-applications.csv", header, rows)
