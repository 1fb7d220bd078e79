"""Dashboard, organisation and project pages, members and invitations."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import pgettext
from flask_login import current_user, login_required
from sqlmodel import Session

from portal.authz import Action, allowed
from portal.db import get_db, utcnow
from portal.errors import DomainError, InvalidInput
from portal.forms import ActionForm, ReasonForm, apply_errors
from portal.identity.models import User
from portal.pagination import page_size
from portal.projects import services
from portal.projects.forms import (
    ORGANISATION_KINDS,
    ORGANISATION_ROLES,
    PROJECT_ROLES,
    InviteForm,
    MemberRoleForm,
    OrganisationForm,
    ProjectForm,
)
from portal.projects.models import OrganisationKind, OrganisationRole, Project, ProjectRole
from portal.web import actor, settings

bp = Blueprint("projects", __name__)


@bp.app_template_filter("project_role")
def project_role_label(role: str) -> str:
    """A project role as the pages name it, in the reader's language."""
    return str(PROJECT_ROLES[ProjectRole(role)])


@bp.app_template_filter("organisation_role")
def organisation_role_label(role: str) -> str:
    return str(ORGANISATION_ROLES[OrganisationRole(role)])


@bp.app_template_filter("organisation_kind")
def organisation_kind_label(kind: str) -> str:
    return str(ORGANISATION_KINDS[OrganisationKind(kind)])


#: ``Invitation.state``'s words, each looked up in the catalogue only when shown (once per row).
_INVITATION_STATES = {
    "pending": lambda: pgettext("invitation state", "pending"),
    "accepted": lambda: pgettext("invitation state", "accepted"),
    "revoked": lambda: pgettext("invitation state", "withdrawn"),
    "expired": lambda: pgettext("invitation state", "expired"),
}


@bp.app_template_filter("invitation_state")
def invitation_state_label(state: str) -> str:
    """``Invitation.state``'s word, in the reader's language."""
    return _INVITATION_STATES[state]()


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


@bp.get("/")
def dashboard():
    if not current_user.is_authenticated:
        return render_template("projects/welcome.html")
    db, me = get_db(), actor()
    q = request.args.get("q", "")
    size = page_size(request.args.get("size"))
    projects = services.project_page_of(db, me, query=q, cursor=request.args.get("cursor"), size=size)
    organisations = services.organisation_page_of(db, me, query=q, cursor=request.args.get("org_cursor"), size=size)
    return render_template("projects/dashboard.html", projects=projects, organisations=organisations, q=q)


@bp.route("/organisations/new", methods=["GET", "POST"])
@login_required
def new_organisation():
    form = OrganisationForm()
    if form.validate_on_submit():
        try:
            org = services.create_organisation(
                get_db(),
                actor(),
                name=form.name.data or "",
                kind=form.kind.data or "",
                country=form.country.data or "",
                registry_id=form.registry_id.data or "",
                vat_number=form.vat_number.data or "",
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
        else:
            flash(_("%(name)s is registered. You are its admin.", name=org.name), "success")
            return redirect(url_for("projects.organisation", organisation_id=org.id))
    status = 422 if form.is_submitted() else 200
    return render_template("projects/organisation_form.html", form=form), status


@bp.get("/organisations/<int:organisation_id>")
@login_required
def organisation(organisation_id: int, verify_form: ReasonForm | None = None, status: int = 200):
    db, me = get_db(), actor()
    org = services.get_organisation(db, me, organisation_id)
    q = request.args.get("q", "")
    projects = services.projects_of_organisation(
        db, me, org, query=q, cursor=request.args.get("cursor"), size=page_size(request.args.get("size"))
    )
    return render_template(
        "projects/organisation.html",
        org=org,
        projects=projects,
        q=q,
        can_create=allowed(db, me, Action.CREATE_PROJECT, org),
        can_verify=allowed(db, me, Action.VERIFY_ORGANISATION, org),
        verify_form=verify_form or ReasonForm(formdata=None),
    ), status


@bp.post("/organisations/<int:organisation_id>/verify")
@login_required
def verify_organisation(organisation_id: int):
    form = ReasonForm()
    if not form.validate_on_submit():
        abort(400)
    db = get_db()
    org = services.get_organisation(db, actor(), organisation_id)
    try:
        services.verify_organisation(db, actor(), org, reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return organisation(organisation_id, verify_form=form, status=422)
    flash(_("%(name)s is verified.", name=org.name), "success")
    return redirect(url_for("projects.organisation", organisation_id=organisation_id))


@bp.route("/organisations/<int:organisation_id>/projects/new", methods=["GET", "POST"])
@login_required
def new_project(organisation_id: int):
    db, me = get_db(), actor()
    org = services.get_organisation(db, me, organisation_id)
    form = ProjectForm()
    if form.validate_on_submit():
        try:
            project = services.create_project(
                db, me, org, title=form.title.data or "", description=form.description.data or ""
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
        else:
            flash(_("The project “%(title)s” is created. You are its PI.", title=project.title), "success")
            return redirect(url_for("projects.project", project_id=project.id))
    status = 422 if form.is_submitted() else 200
    return render_template("projects/project_form.html", form=form, org=org, project=None), status


def _allocations_section(db: Session, me: User, project: Project) -> dict[str, Any]:
    """The ledger's part of the project page (``allocations`` and ``transfer_form`` for
    ``ledger/_allocations.html``): ``create_app`` installs ``ledger.views.project_allocations``, so the project
    page receives it rather than importing the ledger, which reads projects."""
    return current_app.extensions["portal.project_allocations"](db, me, project)


def _project_page(project_id: int, *, invite_form: InviteForm | None = None, status: int = 200):
    db, me = get_db(), actor()
    project = services.get_project(db, me, project_id)
    can_manage = allowed(db, me, Action.MANAGE_MEMBERS, project)
    ledger_section = _allocations_section(db, me, project)
    return (
        render_template(
            "projects/project.html",
            project=project,
            org=services.get_organisation_of_project(db, project),
            members=services.members_of(db, me, project),
            invitations=services.invitations_of(db, me, project) if can_manage else [],
            can_manage=can_manage,
            can_edit=allowed(db, me, Action.EDIT_PROJECT, project),
            **ledger_section,
            can_manage_allocations=allowed(db, me, Action.MANAGE_ALLOCATIONS_OF_PROJECT, project),
            invite_form=invite_form or InviteForm(formdata=None),
            roles=list(ProjectRole),
            action_form=ActionForm(),
            now=utcnow(),
            new_link=session.pop("new_invitation_link", None),
        ),
        status,
    )


@bp.get("/projects/<int:project_id>")
@login_required
def project(project_id: int):
    return _project_page(project_id)


@bp.route("/projects/<int:project_id>/edit", methods=["GET", "POST"])
@login_required
def edit_project(project_id: int):
    db, me = get_db(), actor()
    project = services.get_project(db, me, project_id)
    form = ProjectForm(obj=project)
    if form.validate_on_submit():
        try:
            services.update_project(
                db, me, project, title=form.title.data or "", description=form.description.data or ""
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
        else:
            flash(_("The project is saved."), "success")
            return redirect(url_for("projects.project", project_id=project.id))
    elif request.method == "GET" and not allowed(db, me, Action.EDIT_PROJECT, project):
        abort(403)
    status = 422 if form.is_submitted() else 200
    org = services.get_organisation_of_project(db, project)
    return render_template("projects/project_form.html", form=form, org=org, project=project), status


@bp.post("/projects/<int:project_id>/invitations")
@login_required
def invite(project_id: int):
    db, me = get_db(), actor()
    project = services.get_project(db, me, project_id)
    form = InviteForm()
    if form.validate_on_submit():
        try:
            invitation, link = services.invite_member(
                db, settings(), me, project, email=form.email.data or "", role=form.role.data or ""
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
        else:
            flash(_("An invitation was sent to %(address)s.", address=invitation.email), "success")
            session["new_invitation_link"] = link
            return redirect(url_for("projects.project", project_id=project_id) + "#invitations")
    return _project_page(project_id, invite_form=form, status=422)


@bp.post("/projects/<int:project_id>/invitations/<int:invitation_id>/revoke")
@login_required
def revoke_invitation(project_id: int, invitation_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    db = get_db()
    services.revoke_invitation(db, actor(), services.get_project(db, actor(), project_id), invitation_id)
    flash(_("The invitation is withdrawn."), "success")
    return redirect(url_for("projects.project", project_id=project_id) + "#invitations")


def _members_changed(project_id: int, message: str):
    """htmx swaps just the members table; without JavaScript the whole page reloads."""
    if _is_htmx():
        db, me = get_db(), actor()
        project = services.get_project(db, me, project_id)
        return render_template(
            "projects/_members.html",
            project=project,
            members=services.members_of(db, me, project),
            can_manage=allowed(db, me, Action.MANAGE_MEMBERS, project),
            roles=list(ProjectRole),
            action_form=ActionForm(),
            message=message,
        )
    flash(message, "success")
    return redirect(url_for("projects.project", project_id=project_id) + "#members")


@bp.post("/projects/<int:project_id>/members/<int:user_id>/role")
@login_required
def change_role(project_id: int, user_id: int):
    form = MemberRoleForm()
    if not form.validate_on_submit():
        abort(400)
    db = get_db()
    project = services.get_project(db, actor(), project_id)
    services.change_member_role(db, actor(), project, user_id, ProjectRole(form.role.data))
    return _members_changed(project_id, _("The member's role is changed."))


@bp.post("/projects/<int:project_id>/members/<int:user_id>/remove")
@login_required
def remove_member(project_id: int, user_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    db = get_db()
    services.remove_member(db, actor(), services.get_project(db, actor(), project_id), user_id)
    if user_id == current_user.id:
        flash(_("You have left the project."), "success")
        return redirect(url_for("projects.dashboard"))
    return _members_changed(project_id, _("The member is removed from the project."))


@bp.post("/projects/<int:project_id>/leave")
@login_required
def leave(project_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    db = get_db()
    services.leave_project(db, actor(), services.get_project(db, actor(), project_id))
    flash(_("You have left the project."), "success")
    return redirect(url_for("projects.dashboard"))


@bp.get("/invitations/<token>")
@login_required
def invitation(token: str):
    db = get_db()
    try:
        inv, project = services.find_invitation(db, token)
    except DomainError as exc:
        return render_template("error.html", title=exc.title, detail=exc.detail, status=exc.status), exc.status
    return render_template(
        "projects/invitation.html",
        invitation=inv,
        project=project,
        org=services.get_organisation_of_project(db, project),
        action_form=ActionForm(),
        token=token,
        for_me=services.invitation_is_for(db, inv, actor()),
        sent_to=services.masked(inv.email),
    )


@bp.post("/invitations/<token>")
@login_required
def accept_invitation(token: str):
    if not ActionForm().validate_on_submit():
        abort(400)
    project = services.accept_invitation(get_db(), actor(), token)
    flash(_("Welcome to the project “%(title)s”.", title=project.title), "success")
    return redirect(url_for("projects.project", project_id=project.id))
