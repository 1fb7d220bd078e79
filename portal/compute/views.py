"""Notebook pages: launch from a project, follow the start, "My sessions" with Stop."""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlmodel import col, select

from portal.classroom import services as classroom
from portal.classroom.models import CourseSeat, CourseState
from portal.compute.hub_client import HubClient, HubError, ServerStatus
from portal.compute.launch import launch_notebook, stop_notebook
from portal.compute.services import HubBackend, ProfileChoice, hub_backend, notebook_url, profile_choices
from portal.db import get_db, utcnow
from portal.errors import DomainError, InvalidInput
from portal.forms import ActionForm
from portal.ledger import statements, wording
from portal.ledger.models import Allocation, AllocationSource, AllocationState, Resource
from portal.metering.slurm import QueuedJob, queued_job
from portal.notebook_models import NotebookSession
from portal.projects import services as projects
from portal.web import actor, settings

bp = Blueprint("notebooks", __name__)

#: "My sessions" lists this many of the user's stopped notebooks, latest first, with the reason.
RECENTLY_STOPPED = 10


def _client() -> HubClient:
    return HubClient.from_settings(settings())


def _hub_unavailable(exc: HubError):
    """503 in the reader's words; what went wrong (in English, for the operators) goes to the log."""
    current_app.logger.warning("notebook service unavailable: %s", exc)
    detail = _("The notebook service is not reachable right now. Try again in a minute.")
    return render_template("error.html", title=_("Notebooks unavailable"), detail=detail, status=503), 503


def _where_to_start(db, me) -> list[tuple[str, str, str]]:
    """Where the user can start a notebook: (what, its name, the page with the start form): the courses they
    attend that are open, then their projects, their personal project (hours bought as a private buyer) too."""
    places = [
        (_("Course"), course.title, url_for("classroom.course", course_id=course.id))
        for course, seat, _resource in classroom.courses_of(db, me).attending
        if seat.removed_at is None and course.state == CourseState.OPEN
    ]
    places += [
        (_("Project"), summary.project.title, url_for("notebooks.launch", project_id=summary.project.id))
        for summary in projects.projects_of(db, me, personal=True)
    ]
    return places


def _startable_allocations(project) -> list:
    """The project's allocations a member can start notebooks on: active, with hours left, not a course's."""
    return [
        s
        for s in statements.allocations_of_project(get_db(), actor(), project)
        if s.allocation.state == AllocationState.ACTIVE
        and s.allocation.balance > 0
        and s.allocation.source != AllocationSource.COURSE  # a course's hours are its students'
    ]


@bp.route("/projects/<int:project_id>/notebooks", methods=["GET", "POST"])
@login_required
def launch(project_id: int):
    db, me = get_db(), actor()
    project = projects.get_project(db, me, project_id)
    active = _startable_allocations(project)
    error, status = None, 200
    if request.method == "POST":
        if not ActionForm().validate_on_submit():
            abort(400)
        try:
            started = launch_notebook(
                db,
                settings(),
                _client(),
                me,
                allocation_id=request.form.get("allocation_id", type=int) or 0,
                profile=request.form.get("profile", ""),
                hours=request.form.get("hours", type=float) or 0.0,
            )
        except InvalidInput as exc:
            error, status = " ".join(exc.errors.values()) or exc.detail, 422
        except DomainError as exc:
            error, status = exc.detail, exc.status
        except HubError as exc:
            return _hub_unavailable(exc)
        else:
            if started.session is None:
                abort(502)
            return redirect(url_for("notebooks.session", session_id=started.session.id))
    return render_template(
        "compute/launch.html", project=project, allocations=active, error=error, **_profile_field(active)
    ), status


def _profile_field(active: list) -> dict:
    """The profile field for the chosen allocation (the form's, else the first): only the profiles that run on
    it, those this hub cannot start shown as unavailable with why, and one that fits preselected."""
    wanted = request.values.get("allocation_id", type=int)
    chosen = next((s for s in active if s.allocation.id == wanted), active[0] if active else None)
    backend = hub_backend(settings())
    choices = [_in_words(c, backend) for c in profile_choices(settings(), chosen.resource)] if chosen else []
    startable = [c.profile.name for c in choices if c.unavailable is None]
    asked = request.values.get("profile", "")
    selected = asked if asked in startable else (startable[0] if startable else "")
    return {
        "chosen": chosen,
        "choices": choices,
        "selected_profile": selected,
        "backend": backend,
    }


def _in_words(choice: ProfileChoice, backend: HubBackend) -> ProfileChoice:
    """``choice`` with why it cannot start here in the reader's language: ``missing_gpus`` says it in English,
    for the hub, and a profile is unavailable only for want of the hub machine's GPUs."""
    if choice.unavailable is None:
        return choice
    profile = choice.profile
    has = ", ".join(backend.local_gpus) if backend.local_gpus else _("no GPU")
    why = ngettext(
        "The %(profile)s profile needs %(num)d %(model)s GPU, but this hub runs notebooks on its own machine, "
        "which has %(has)s. GPU notebooks run on the factory cluster; choose the CPU profile here.",
        "The %(profile)s profile needs %(num)d %(model)s GPUs, but this hub runs notebooks on its own machine, "
        "which has %(has)s. GPU notebooks run on the factory cluster; choose the CPU profile here.",
        profile.gpus,
        profile=profile.label,
        model=profile.gpu_model or "",
        has=has,
    )
    return replace(choice, unavailable=why)


@bp.get("/projects/<int:project_id>/notebooks/profiles")
@login_required
def profile_field(project_id: int):
    """htmx: the profile field again when another allocation is chosen."""
    db, me = get_db(), actor()
    project = projects.get_project(db, me, project_id)
    return render_template("compute/_profile_field.html", **_profile_field(_startable_allocations(project)))


def _my_session(session_id: int) -> NotebookSession:
    found = get_db().get(NotebookSession, session_id)
    if found is None or found.user_id != actor().id:
        abort(404)
    return found


def notebook_name(found: NotebookSession, allocation_title: str) -> str:
    """What people call a notebook: its allocation and its profile's label (the hub's server name, ``a6-1``,
    is only a detail beside it)."""
    profile = settings().notebook_profile(found.profile)
    return f"{allocation_title} · {profile.label if profile else found.profile}"


@bp.get("/notebooks/<int:session_id>")
@login_required
def session(session_id: int):
    found = _my_session(session_id)
    state = _state(found)
    job = _queued_job(found) if state == "starting" else None
    if job is not None and job.state in ("PENDING", "CONFIGURING"):
        state = "queued"
    template = "compute/_session_state.html" if request.headers.get("HX-Request") == "true" else "compute/session.html"
    allocation = get_db().get(Allocation, found.allocation_id)
    name = notebook_name(found, wording.allocation_title(allocation) if allocation else "")
    url = notebook_url(settings().hub_url, found)
    return render_template(template, s=found, name=name, state=state, url=url, job=job, steps=STEPS)


#: What the session page shows while a notebook starts, in order: the step reached is marked.
STEPS = ("accepted", "queued", "starting", "ready")


def _state(found: NotebookSession) -> str:
    if found.stopped_at is not None:
        return "stopped"
    try:
        status = _client().server_status(found.hub_user, found.server_name)
    except HubError:
        return "unknown"
    return {ServerStatus.READY: "ready", ServerStatus.PENDING: "starting"}.get(status, "stopped")


def _queued_job(found: NotebookSession) -> QueuedJob | None:
    """Where a Slurm-run notebook's job is in the cluster's queue (None for a local server, or no answer)."""
    cluster = settings().slurm_cluster(found.slurm_cluster) if found.slurm_cluster else None
    return queued_job(cluster, f"portal-nb-{found.id}") if cluster is not None else None


@bp.post("/notebooks/<int:session_id>/stop")
@login_required
def stop(session_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    _my_session(session_id)
    try:
        stop_notebook(get_db(), settings(), _client(), actor(), session_id=session_id)
    except HubError as exc:
        return _hub_unavailable(exc)
    flash(_("The notebook is stopped; its time up to now is charged."), "success")
    return redirect(url_for("notebooks.mine"))


@bp.get("/notebooks")
@login_required
def mine():
    """My running notebooks: elapsed time, hours charged so far, and what is left to use: the allocation's
    balance, or for a course's student what is left of their cap (not the whole class's hours)."""
    db, me = get_db(), actor()
    rows = db.exec(
        select(NotebookSession, Allocation, Resource, CourseSeat)
        .join(Allocation, Allocation.id == NotebookSession.allocation_id)
        .join(Resource, Resource.id == Allocation.resource_id)
        .outerjoin(CourseSeat, CourseSeat.id == NotebookSession.course_seat_id)
        .where(NotebookSession.user_id == me.id, col(NotebookSession.stopped_at).is_(None))
        .order_by(col(NotebookSession.requested_at).desc())
    ).all()
    stopped = db.exec(
        select(NotebookSession, Allocation.title, Allocation.source)
        .join(Allocation, Allocation.id == NotebookSession.allocation_id)
        .where(NotebookSession.user_id == me.id, col(NotebookSession.stopped_at).is_not(None))
        .order_by(col(NotebookSession.stopped_at).desc(), col(NotebookSession.id).desc())
        .limit(RECENTLY_STOPPED)
    ).all()
    return render_template(
        "compute/mine.html",
        rows=[(s, a, r, seat, notebook_name(s, wording.allocation_title(a))) for s, a, r, seat in rows],
        stopped=[(s, notebook_name(s, wording.title_shown(title, source))) for s, title, source in stopped],
        places=_where_to_start(db, me),
        now=utcnow(),
        hub_url=settings().hub_url,
        action_form=ActionForm(),
    )


@bp.app_context_processor
def _running_notebooks_for_pages() -> dict:
    """``my_running_notebooks()`` for any page (the dashboard lists them first); queried only when called."""

    def my_running_notebooks() -> list[tuple[NotebookSession, str]]:
        if not current_user.is_authenticated:
            return []
        rows = (
            get_db()
            .exec(
                select(NotebookSession, Allocation.title, Allocation.source)
                .join(Allocation, Allocation.id == NotebookSession.allocation_id)
                .where(NotebookSession.user_id == actor().id, col(NotebookSession.stopped_at).is_(None))
                .order_by(col(NotebookSession.requested_at).desc())
            )
            .all()
        )
        return [(found, notebook_name(found, wording.title_shown(title, source))) for found, title, source in rows]

    return {"my_running_notebooks": my_running_notebooks}
