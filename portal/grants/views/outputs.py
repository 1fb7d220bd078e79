"""A project's research outputs and the reports its awards owe: the Outputs and Reports sections of the project
page, adding and removing outputs, and writing a report. ``grants.outputs`` decides who may do what."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required

from portal.db import get_db, utcnow
from portal.errors import Conflict, DomainError, InvalidInput, NotAuthorised
from portal.forms import ActionForm, apply_errors
from portal.grants import outputs
from portal.grants.forms import OutputForm, ProgressReportForm
from portal.grants.models import OutputKind, ReportKind
from portal.grants.views.common import bp
from portal.projects import services as projects
from portal.projects.models import Project
from portal.web import actor, settings


@bp.app_context_processor
def _project_research() -> dict[str, Any]:
    """``project_research(project)`` for the project page (``grants/_project_research.html``): the project
    page belongs to ``projects``, which sits below ``grants`` and cannot import it, so the section asks for
    its figures when it is drawn. Three queries, and only on the pages that include the section."""

    def project_research(project: Project) -> dict[str, Any]:
        if not current_user.is_authenticated:
            return {"outputs": [], "reports": [], "can_edit": False, "form": None}
        db, me = get_db(), actor()
        return {
            "outputs": outputs.outputs_of(db, me, project),
            "reports": outputs.reports_of_project(db, me, project, utcnow().date()),
            "can_edit": outputs.may_edit(db, me, project),
            "form": OutputForm(formdata=None),
        }

    return {"project_research": project_research}


def _output_page(project: Project, form: OutputForm, status: int = 200):
    return render_template("grants/output_form.html", project=project, form=form), status


@bp.get("/projects/<int:project_id>/outputs/new")
@login_required
def new_output(project_id: int):
    db, me = get_db(), actor()
    project = projects.get_project(db, me, project_id)
    if not outputs.may_edit(db, me, project):
        raise NotAuthorised(_("Only the project's PI and managers list its outputs."))
    return _output_page(project, OutputForm(formdata=None))


@bp.post("/projects/<int:project_id>/outputs")
@login_required
def add_output(project_id: int):
    db, me = get_db(), actor()
    project = projects.get_project(db, me, project_id)
    form = OutputForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        output = outputs.add_output(
            db,
            me,
            project,
            kind=form.kind.data or "",
            citation=form.citation.data or "",
            year=form.year.data,
            doi=form.doi.data,
            url=form.url.data,
        )
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        form.form_errors.insert(0, exc.detail)
        return _output_page(project, form, status=422)
    listed = {
        OutputKind.PUBLICATION: _("The publication is listed among the project's outputs."),
        OutputKind.DATASET: _("The dataset is listed among the project's outputs."),
        OutputKind.SOFTWARE: _("The software is listed among the project's outputs."),
    }
    flash(listed[output.kind], "success")
    return redirect(url_for("projects.project", project_id=project_id) + "#outputs")


@bp.post("/projects/<int:project_id>/outputs/<int:output_id>/remove")
@login_required
def remove_output(project_id: int, output_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    db, me = get_db(), actor()
    outputs.remove_output(db, me, projects.get_project(db, me, project_id), output_id)
    flash(_("The output is removed."), "success")
    return redirect(url_for("projects.project", project_id=project_id) + "#outputs")


def _report_page(
    report_id: int, *, form: ProgressReportForm | None = None, error: DomainError | None = None, status: int = 200
):
    db, me = get_db(), actor()
    report, application, call, project = outputs.get_report(db, me, report_id)
    return render_template(
        "grants/progress_report.html",
        report=report,
        application=application,
        call=call,
        project=project,
        state=report.state(utcnow().date()),
        can_submit=outputs.may_edit(db, me, project) and report.submitted_at is None,
        form=form or ProgressReportForm(formdata=None),
        error=error,
    ), status


@bp.get("/progress-reports/<int:report_id>")
@login_required
def progress_report(report_id: int):
    return _report_page(report_id)


@bp.post("/progress-reports/<int:report_id>")
@login_required
def submit_progress_report(report_id: int):
    db, me = get_db(), actor()
    report, _application, _call, _project = outputs.get_report(db, me, report_id)
    form = ProgressReportForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        outputs.submit_report(db, settings(), me, report, text=form.text.data or "")
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return _report_page(report_id, form=form, status=exc.status)
    except Conflict as exc:
        db.rollback()
        return _report_page(report_id, form=form, error=exc, status=exc.status)
    submitted = {
        ReportKind.PROGRESS: _("The progress report is submitted."),
        ReportKind.FINAL: _("The final report is submitted."),
    }
    flash(submitted[report.kind], "success")
    return redirect(url_for("grants.progress_report", report_id=report_id))
