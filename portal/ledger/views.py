"""Allocation pages for project members; capacity planning and manual allocations for factory staff."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import login_required
from sqlmodel import Session, col, select

from portal.authz import Action, allowed, require
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.formatting import parse_quantity
from portal.forms import apply_errors
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import statements
from portal.ledger.forms import CapacityForm, ManualAllocationForm, OverbookingForm, ReleaseForm, TransferForm
from portal.ledger.models import AllocationSource, CapacityPeriod, Resource, Site
from portal.projects import services as projects
from portal.projects.models import Project
from portal.web import actor, database_id

bp = Blueprint("ledger", __name__)


def _project(project_id: int):  # type: ignore[no-untyped-def]
    return projects.get_project(get_db(), actor(), project_id)


def project_allocations(db: Session, actor: User, project: Project) -> dict[str, Any]:
    """The project page's allocations section (``ledger/_allocations.html``): the statements and the transfer
    form. ``create_app`` hands it to the project page, which imports nothing of the ledger."""
    allocations = statements.allocations_of_project(db, actor, project)
    transfer_form = TransferForm(formdata=None)
    transfer_form.set_choices(allocations)
    return {"allocations": allocations, "transfer_form": transfer_form}


@bp.get("/projects/<int:project_id>/allocations/<int:allocation_id>")
@login_required
def allocation(project_id: int, allocation_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    project = _project(project_id)
    statement = statements.get_statement(db, me, project, allocation_id)
    entries, older = statements.entries_page(db, statement)
    series = statements.usage_series(db, statement)
    per = statement.resource.per_display_unit
    return render_template(
        "ledger/allocation.html",
        project=project,
        s=statement,
        entries=entries,
        older=older,
        chart={
            "unit": statement.resource.display_unit + "s",
            "days": [int(datetime.combine(d, time.min, tzinfo=UTC).timestamp()) for d, _ in series],
            "used": [round(amount / per, 2) for _, amount in series],
        },
        series=series,
        can_manage=allowed(db, me, Action.MANAGE_ALLOCATIONS_OF_PROJECT, project),
        release_form=ReleaseForm(formdata=None),
    )


@bp.get("/projects/<int:project_id>/allocations/<int:allocation_id>/entries")
@login_required
def older_entries(project_id: int, allocation_id: int):  # type: ignore[no-untyped-def]
    """The next page of ledger entries, as table rows for htmx to append."""
    db = get_db()
    statement = statements.get_statement(db, actor(), _project(project_id), allocation_id)
    before = request.args.get("before", type=database_id)
    entries, older = statements.entries_page(db, statement, before_id=before)
    return render_template("ledger/_entries.html", project_id=project_id, s=statement, entries=entries, older=older)


@bp.post("/projects/<int:project_id>/allocations/transfer")
@login_required
def transfer(project_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    project = _project(project_id)
    form = TransferForm()
    options = statements.allocations_of_project(db, me, project)
    form.set_choices(options)
    if form.validate_on_submit():
        source = next(s for s in options if s.allocation.id == form.from_id.data)
        try:
            amount = parse_quantity(form.hours.data or "", source.resource.kind, field="hours")
            ledger.transfer(db, me, from_id=form.from_id.data, to_id=form.to_id.data, amount=amount)  # type: ignore[arg-type]
        except InvalidInput as exc:
            apply_errors(form, exc)
        except Conflict as exc:
            form.form_errors.append(exc.detail)
        else:
            flash("The hours were moved.", "success")
            return redirect(url_for("projects.project", project_id=project_id) + "#allocations")
    for message in [*form.form_errors, *[e for f in form for e in f.errors]]:
        flash(message, "error")
    return redirect(url_for("projects.project", project_id=project_id) + "#allocations")


@bp.post("/projects/<int:project_id>/allocations/<int:allocation_id>/release")
@login_required
def release(project_id: int, allocation_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    project = _project(project_id)
    statement = statements.get_statement(db, me, project, allocation_id)
    form = ReleaseForm()
    target = url_for("ledger.allocation", project_id=project_id, allocation_id=allocation_id)
    if not form.validate_on_submit():
        flash("Enter the hours to give back.", "error")
        return redirect(target)
    try:
        amount = parse_quantity(form.hours.data or "", statement.resource.kind, field="hours")
        ledger.release_to_pool(db, me, allocation_id, amount)
    except InvalidInput as exc:
        flash(" ".join(exc.errors.values()) or exc.detail, "error")
    except ledger.Conflict as exc:
        flash(exc.detail, "error")
    else:
        flash("The hours were given back to the site's pool.", "success")
    return redirect(target)


# --- factory staff -------------------------------------------------------------------------------------


def _capacity_rows(db):  # type: ignore[no-untyped-def]
    return db.exec(
        select(Site, Resource, CapacityPeriod)
        .join(Resource, Resource.site_id == Site.id)  # type: ignore[arg-type]
        .outerjoin(CapacityPeriod, CapacityPeriod.resource_id == Resource.id)  # type: ignore[arg-type]
        .order_by(Site.name, Resource.code, col(CapacityPeriod.starts_on).desc())
    ).all()


def _resource_choices(db) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    resources = db.exec(select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name)).all()  # type: ignore[arg-type]
    return [(r.id, f"{s.name}: {r.name}") for r, s in resources]


@bp.route("/admin/capacity", methods=["GET", "POST"])
@login_required
def capacity():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    form = CapacityForm()
    form.resource_id.choices = _resource_choices(db)  # type: ignore[assignment]
    status = 200
    if form.validate_on_submit():
        resource = db.get(Resource, form.resource_id.data)
        starts_on, ends_on = ledger.quarter_of(form.quarter_start.data)  # type: ignore[arg-type]
        try:
            capacity = (
                parse_quantity(form.capacity.data or "", resource.kind, field="capacity")  # type: ignore[union-attr]
                if form.capacity.data
                else ledger.capacity_from_gpus(form.units.data or 0, starts_on, ends_on, form.utilisation.data or 0)
            )
            ledger.set_capacity(
                db,
                me,
                resource,  # type: ignore[arg-type]
                starts_on=starts_on,
                ends_on=ends_on,
                capacity=capacity,
                reason=form.reason.data or "",
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
            status = 422
        except Conflict as exc:
            form.form_errors.append(exc.detail)
            status = 409
        else:
            flash(f"Capacity of {resource.name} for {starts_on} to {ends_on} is planned.", "success")  # type: ignore[union-attr]
            return redirect(url_for("ledger.capacity"))
    elif form.is_submitted():
        status = 422
    overbooking_form = OverbookingForm(formdata=None)
    overbooking_form.resource_id.choices = form.resource_id.choices
    return _capacity_page(form, overbooking_form, status)


def _capacity_page(form: CapacityForm, overbooking_form: OverbookingForm, status: int):  # type: ignore[no-untyped-def]
    return render_template(
        "ledger/capacity.html", rows=_capacity_rows(get_db()), form=form, overbooking_form=overbooking_form
    ), status


@bp.post("/admin/capacity/overbooking")
@login_required
def overbooking():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    choices = _resource_choices(db)
    form = OverbookingForm()
    form.resource_id.choices = choices  # type: ignore[assignment]
    capacity_form = CapacityForm(formdata=None)
    capacity_form.resource_id.choices = choices  # type: ignore[assignment]
    if not form.validate_on_submit():
        form.form_errors.append("Choose a resource and a factor.")
        return _capacity_page(capacity_form, form, 422)
    resource = db.get(Resource, form.resource_id.data)
    try:
        permille = int(Decimal(form.factor.data.strip().replace(",", ".")) * 1000)  # type: ignore[union-attr]
        ledger.set_overbooking(db, me, resource, permille, reason=form.reason.data or "")  # type: ignore[arg-type]
    except (InvalidOperation, ValueError):
        form.factor.errors = ["Enter the factor as a number, for example 1.1."]
        return _capacity_page(capacity_form, form, 422)
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return _capacity_page(capacity_form, form, 422)
    except Conflict as exc:
        db.rollback()
        form.form_errors.append(exc.detail)
        return _capacity_page(capacity_form, form, 409)
    flash(f"{resource.name} may now be booked to {permille / 1000:.3f}× its capacity.", "success")  # type: ignore[union-attr]
    return redirect(url_for("ledger.capacity"))


@bp.route("/admin/allocations/new", methods=["GET", "POST"])
@login_required
def new_allocation():  # type: ignore[no-untyped-def]
    """An admin opens an allocation by hand (pilot projects, corrections); grants and purchases do it
    themselves."""
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_ALLOCATIONS)
    resources = db.exec(select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name)).all()  # type: ignore[arg-type]
    form = ManualAllocationForm()
    form.resource_id.choices = [(r.id, f"{s.name}: {r.name}") for r, s in resources]  # type: ignore[assignment]
    status = 200
    if form.validate_on_submit():
        try:
            project = projects.get_project(db, me, form.project_id.data)  # type: ignore[arg-type]
            resource = db.get(Resource, form.resource_id.data)
            if resource is None:
                abort(400)
            amount = parse_quantity(form.hours.data or "", resource.kind, field="hours")
            allocation = ledger.open_allocation(
                db,
                me,
                project=project,
                resource=resource,
                amount=amount,
                starts_at=_midnight(form.starts_on.data),
                ends_at=_midnight(form.ends_on.data),  # type: ignore[arg-type]
                source=AllocationSource.ADMIN,
                title=form.title.data or "",
                reason=form.reason.data or "",
            )
        except InvalidInput as exc:
            apply_errors(form, exc)
            status = 422
        except (Conflict, NotFound) as exc:
            form.form_errors.append(exc.detail)
            status = 409
        else:
            flash("The allocation is open.", "success")
            return redirect(url_for("ledger.allocation", project_id=project.id, allocation_id=allocation.id))
    elif form.is_submitted():
        status = 422
    return render_template("ledger/new_allocation.html", form=form), status


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)
