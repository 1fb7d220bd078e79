"""Course pages: the teacher's courses and dashboard, joining with a code, the student's launcher."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import Protocol

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlmodel import Session, col, select
from wtforms.fields.choices import SelectChoice

from portal.authz import Action, allowed
from portal.classroom import services as classroom
from portal.classroom.forms import CapForm, CourseForm, JoinForm, LaunchForm
from portal.classroom.models import Course, CourseState
from portal.config import Settings
from portal.db import get_db
from portal.errors import DomainError, InvalidInput, ServiceUnavailable
from portal.formatting import parse_quantity, quantity, unit_name
from portal.forms import ActionForm, apply_errors
from portal.i18n import current_language
from portal.identity.models import User
from portal.ledger import wording
from portal.ledger.models import Allocation, AllocationState, Resource
from portal.notebook_models import NotebookSession
from portal.web import actor, csv_response, current_login, settings

bp = Blueprint("classroom", __name__)


class StartNotebook(Protocol):
    """Starts a notebook for ``actor`` on ``allocation_id``; the started session's id (None: no record of it).
    Raises ``DomainError`` (refused, invalid) or ``ServiceUnavailable`` (the hub failed)."""

    def __call__(
        self, db: Session, settings: Settings, actor: User, *, allocation_id: int, profile: str, hours: float
    ) -> int | None: ...


def _start_notebook() -> StartNotebook:
    """compute's ``start_notebook``, installed by ``create_app``: compute checks and charges the course seats,
    so classroom receives what starts a notebook rather than importing it."""
    return current_app.extensions["portal.start_notebook"]


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _submit(form: FlaskForm, work: Callable[[], str]) -> tuple[str | None, int]:
    """Run ``work`` for a valid submitted form: where to go next, or None and the status to show the form
    again with (a domain error goes to the form: field errors next to their fields)."""
    if not form.validate_on_submit():
        return None, 422 if request.method == "POST" else 200
    try:
        return work(), 302
    except InvalidInput as exc:
        apply_errors(form, exc)
        return None, 422
    except DomainError as exc:
        form.form_errors.append(exc.detail)
        return None, exc.status


@bp.get("/courses")
@login_required
def index():
    db, me = get_db(), actor()
    can_teach = bool(classroom.funding_options(db, me))
    return render_template(
        "classroom/index.html",
        mine=classroom.courses_of(db, me),
        join_form=JoinForm(formdata=None),
        can_teach=can_teach,
        ask=[] if can_teach else classroom.projects_to_ask(db, me),
    )


@bp.route("/courses/new", methods=["GET", "POST"])
@login_required
def new():
    db, me = get_db(), actor()
    options = classroom.funding_options(db, me)
    form = CourseForm()
    form.allocation_id.choices = [
        SelectChoice(
            o.allocation.id,
            _(
                "%(project)s · %(allocation)s · %(amount)s left",
                project=o.project.title,
                allocation=wording.allocation_title(o.allocation),
                amount=quantity(o.allocation.balance, o.resource.kind, locale=current_language()),
            ),
        )
        for o in options
    ]
    form.profiles.choices = [(p.name, p.label) for p in settings().notebook_profiles]

    def create() -> str:
        chosen = next((o for o in options if o.allocation.id == form.allocation_id.data), None)
        if chosen is None:
            raise InvalidInput(_("Choose an allocation."), errors={"allocation_id": _("Choose one.")})
        course = classroom.create_course(
            db,
            settings(),
            me,
            parent_allocation_id=chosen.allocation.id,
            title=form.title.data or "",
            starts_at=_day_start(form.starts_on.data),
            ends_at=_day_start(form.ends_on.data),
            student_cap=parse_quantity(form.student_hours.data or "", chosen.resource.kind, field="student_hours"),
            max_seats=form.max_seats.data or 0,
            profiles=list(form.profiles.data or []),
            required_affiliation=form.required_affiliation.data or "",
            required_entitlement=form.required_entitlement.data or "",
            materials_url=form.materials_url.data or "",
        )
        flash(_("The course is open. Give your students its join code."), "success")
        return url_for("classroom.course", course_id=course.id)

    target, status = _submit(form, create)
    if target:
        return redirect(target)
    ask = [] if options else classroom.projects_to_ask(db, me)
    return render_template("classroom/new.html", form=form, has_options=bool(options), ask=ask), status


@bp.route("/courses/join", methods=["GET", "POST"])
@login_required
def join():
    """The join form; a link ``/courses/join?code=...`` fills it in, and the student confirms."""
    form = JoinForm() if request.method == "POST" else JoinForm(formdata=None, code=request.args.get("code", ""))

    def take_seat() -> str:
        seat = classroom.join_course(get_db(), actor(), current_login(), form.code.data or "")
        flash(_("You joined the course."), "success")
        if request.form.get("start"):
            started = _start_first_notebook(seat.course_id, seat.cap - seat.used)
            if started is not None:
                return url_for("notebooks.session", session_id=started)
        return url_for("classroom.course", course_id=seat.course_id)

    target, status = _submit(form, take_seat)
    if target:
        return redirect(target)
    return render_template("classroom/join.html", form=form), status


def _start_first_notebook(course_id: int, seconds_left: int) -> int | None:
    """What "Join and start a notebook" starts: the course's first profile for an hour (less if the seat has
    less); the started session's id, or None with the reason flashed (the student is on the course by then)."""
    db, me = get_db(), actor()
    found = db.get(Course, course_id)
    if found is None or not found.profiles or seconds_left <= 0:
        return None
    hours = min(1.0, math.floor(seconds_left / 36) / 100)
    try:
        return _start_notebook()(
            db, settings(), me, allocation_id=found.allocation_id, profile=found.profiles[0], hours=hours
        )
    except DomainError as exc:
        flash(_("The notebook did not start: %(reason)s", reason=exc.detail), "error")
    except ServiceUnavailable as exc:
        current_app.logger.warning("notebook service unavailable: %s", exc)  # the detail is for the operators
        flash(_("The notebook service is not reachable right now. Start it from the course page."), "error")
    return None


def _course(course_id: int, action: Action = Action.VIEW_COURSE) -> Course:
    return classroom.get_course(get_db(), actor(), course_id, action)


@bp.get("/courses/<int:course_id>")
@login_required
def course(course_id: int):
    db, me = get_db(), actor()
    found = _course(course_id)
    if allowed(db, me, Action.MANAGE_COURSE, found):
        view = classroom.overview(db, me, found)
        per = view.resource.per_display_unit
        unit = unit_name(view.resource.kind, locale=current_language())
        chart = {
            "unit": unit,
            "used_label": _("Used (%(unit)s)", unit=unit),
            "cap_label": _("Cap (%(unit)s)", unit=unit),
            "names": [row.student.display_name for row in view.students],
            "used": [round(row.seat.used / per, 2) for row in view.students],
            "caps": [round(row.seat.cap / per, 2) for row in view.students],
        }
        join_link = f"{settings().base_url}{url_for('classroom.join', code=found.join_code)}"
        return render_template(
            "classroom/teacher.html",
            view=view,
            c=found,
            chart=chart,
            join_link=join_link,
            profile_labels={p.name: p.label for p in settings().notebook_profiles},
            cap_form=CapForm(formdata=None),
            action_form=ActionForm(),
        )
    return _student_page(found)


def _student_page(found: Course, form: LaunchForm | None = None, error: str | None = None, status: int = 200):
    db, me = get_db(), actor()
    seat = classroom.seat_of(db, me, found)
    if seat is None:  # pragma: no cover - VIEW_COURSE admits only the teacher and students
        abort(404)
    allocation = db.get(Allocation, found.allocation_id)
    resource = db.get(Resource, allocation.resource_id)
    profiles = [p for p in settings().notebook_profiles if p.name in found.profiles]
    form = form or LaunchForm(formdata=None)
    form.profile.choices = [(p.name, p.label) for p in profiles]
    sessions = db.exec(
        select(NotebookSession)
        .where(NotebookSession.course_seat_id == seat.id)
        .order_by(col(NotebookSession.requested_at).desc())
        .limit(20)
    ).all()
    open_now = found.state == CourseState.OPEN and seat.removed_at is None
    return render_template(
        "classroom/student.html",
        c=found,
        seat=seat,
        resource=resource,
        form=form,
        error=error,
        sessions=sessions,
        can_launch=open_now and seat.used < seat.cap,
        profile_labels={p.name: p.label for p in settings().notebook_profiles},
    ), status


@bp.post("/courses/<int:course_id>/notebooks")
@login_required
def launch(course_id: int):
    """A student starts a notebook on the course's allocation (the hub's spawn check enforces the cap)."""
    db, me = get_db(), actor()
    found = _course(course_id)
    if classroom.seat_of(db, me, found) is None:
        abort(403)  # the teacher: course hours are the students'
    form = LaunchForm()
    form.profile.choices = [(name, name) for name in found.profiles]
    if not form.validate_on_submit():
        return _student_page(found, form, _("Choose a profile and the hours."), 422)
    try:
        hours = float((form.hours.data or "0").replace(",", "."))
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours):
        return _student_page(found, form, _("Enter the hours as a number."), 422)
    try:
        session_id = _start_notebook()(
            db, settings(), me, allocation_id=found.allocation_id, profile=form.profile.data or "", hours=hours
        )
    except InvalidInput as exc:
        return _student_page(found, form, " ".join(exc.errors.values()) or exc.detail, 422)
    except DomainError as exc:
        return _student_page(found, form, exc.detail, exc.status)
    except ServiceUnavailable as exc:
        current_app.logger.warning("notebook service unavailable: %s", exc)  # the detail is for the operators
        detail = _("The notebook service is not reachable right now. Try again in a minute.")
        title = _("Notebooks unavailable")
        return render_template("error.html", title=title, detail=detail, status=503), 503
    if session_id is None:
        abort(502)
    return redirect(url_for("notebooks.session", session_id=session_id))


@bp.get("/courses/<int:course_id>/usage.csv")
@login_required
def usage_csv(course_id: int):
    found = _course(course_id, Action.MANAGE_COURSE)
    header, rows = classroom.usage_table(get_db(), actor(), found)
    return csv_response(f"course-{found.id}-usage.csv", header, rows)


@bp.post("/courses/<int:course_id>/seats/<int:seat_id>/cap")
@login_required
def raise_cap(course_id: int, seat_id: int):
    db, me = get_db(), actor()
    found = _course(course_id, Action.MANAGE_COURSE)
    form = CapForm()
    target = url_for("classroom.course", course_id=course_id)
    if not form.validate_on_submit():
        flash(_("Enter the new cap in hours."), "error")
        return redirect(target)
    allocation = db.get(Allocation, found.allocation_id)
    resource = db.get(Resource, allocation.resource_id)
    try:
        amount = parse_quantity(form.hours.data or "", resource.kind, field="hours")
        classroom.raise_cap(db, me, found, seat_id, amount)
    except InvalidInput as exc:
        flash(" ".join(exc.errors.values()) or exc.detail, "error")
    except classroom.Conflict as exc:
        flash(exc.detail, "error")
    else:
        flash(_("The student's cap is raised."), "success")
    return redirect(target)


@bp.post("/courses/<int:course_id>/seats/<int:seat_id>/remove")
@login_required
def remove(course_id: int, seat_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    removal = classroom.remove_student(get_db(), actor(), _course(course_id, Action.MANAGE_COURSE), seat_id)
    if removal.seat_freed:
        flash(_("The student is removed and their seat is free."), "success")
    elif removal.waiting:
        flash(
            _(
                "The student is removed; their running notebooks stop within a minute. Their seat is freed once "
                "those notebooks have stopped and their last minutes are charged."
            ),
            "info",
        )
    else:
        flash(
            _(
                "The student is removed; their running notebooks stop within a minute. Their seat stays taken: "
                "your allocation could not cover a new student's hours."
            ),
            "info",
        )
    return redirect(url_for("classroom.course", course_id=course_id))


@bp.post("/courses/<int:course_id>/close")
@login_required
def close(course_id: int):
    if not ActionForm().validate_on_submit():
        abort(400)
    closed = classroom.close_course(get_db(), actor(), _course(course_id, Action.MANAGE_COURSE))
    if get_db().get(Allocation, closed.allocation_id).state == AllocationState.EXPIRED:
        flash(_("The course is closed; its unused hours went back to your allocation."), "success")
    else:
        flash(
            _(
                "The course is closed. Its running notebooks stop within a minute; then its unused hours go back "
                "to your allocation."
            ),
            "success",
        )
    return redirect(url_for("classroom.course", course_id=course_id))


@bp.app_context_processor
def _courses_for_pages() -> dict:
    """``my_open_courses()`` for any page (the dashboard lists a student's courses first); queried when called."""

    def my_open_courses() -> list[Course]:
        if not current_user.is_authenticated:
            return []
        return [
            course
            for course, seat, _resource in classroom.courses_of(get_db(), actor()).attending
            if seat.removed_at is None and course.state == CourseState.OPEN
        ]

    return {"my_open_courses": my_open_courses}
