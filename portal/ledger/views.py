"""Allocation pages for project members; capacity planning and manual allocations for factory staff."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import login_required
from jinja2 import pass_context
from jinja2.runtime import Context
from sqlmodel import Session, col, select

from portal import formatting
from portal.authz import Action, allowed, require
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.formatting import parse_quantity
from portal.forms import apply_errors
from portal.i18n import current_language, page_language
from portal.identity.models import User
from portal.ledger import services as ledger
from portal.ledger import statements, wording
from portal.ledger.forms import CapacityForm, ManualAllocationForm, OverbookingForm, ReleaseForm, TransferForm
from portal.ledger.models import (
    Allocation,
    AllocationSource,
    AllocationState,
    CapacityPeriod,
    LedgerEntry,
    Resource,
    Site,
)
from portal.projects import services as projects
from portal.projects.models import Project
from portal.web import actor, database_id

bp = Blueprint("ledger", __name__)


def _project(project_id: int):
    return projects.get_project(get_db(), actor(), project_id)


@pass_context
def allocation_title(context: Context, allocation: Allocation) -> str:
    """The templates' ``allocation_title``: ``wording.allocation_title`` in the page's language."""
    return wording.allocation_title(allocation, page_language(context))


@pass_context
def entry_reason(context: Context, entry: LedgerEntry) -> str:
    """The templates' ``entry_reason``: ``wording.entry_reason`` in the page's language (once per row)."""
    return wording.entry_reason(entry, page_language(context))


def _abandoned_checkout(allocation: Allocation) -> bool:
    """A purchase whose checkout expired or was cancelled before payment: it never held an hour."""
    return (
        allocation.source == AllocationSource.PURCHASE
        and allocation.state == AllocationState.EXPIRED
        and allocation.credited == 0
    )


def project_allocations(db: Session, actor: User, project: Project) -> dict[str, Any]:
    """The project page's allocations section (``ledger/_allocations.html``): the statements and the transfer
    form. ``create_app`` hands it to the project page, which imports nothing of the ledger."""
    allocations = [
        s for s in statements.allocations_of_project(db, actor, project) if not _abandoned_checkout(s.allocation)
    ]
    transfer_form = TransferForm(formdata=None)
    transfer_form.set_choices(allocations)
    return {"allocations": allocations, "transfer_form": transfer_form}


@bp.get("/projects/<int:project_id>/allocations/<int:allocation_id>")
@login_required
def allocation(project_id: int, allocation_id: int):
    db, me = get_db(), actor()
    project = _project(project_id)
    statement, series = statements.statement_with_series(db, me, project, allocation_id)
    before = request.args.get("before", type=database_id)  # "Show older entries" followed without JavaScript
    entries, older = statements.entries_page(db, statement, before_id=before)
    per = statement.resource.per_display_unit
    return render_template(
        "ledger/allocation.html",
        project=project,
        s=statement,
        entries=entries,
        older=older,
        chart={
            "unit": formatting.unit_name(statement.resource.kind, locale=current_language()),
            "days": [int(datetime.combine(d, time.min, tzinfo=UTC).timestamp()) for d, _amount in series],
            "used": [round(amount / per, 2) for _day, amount in series],
        },
        series=series,
        can_manage=allowed(db, me, Action.MANAGE_ALLOCATIONS_OF_PROJECT, project),
        release_form=ReleaseForm(formdata=None),
    )


@bp.get("/projects/<int:project_id>/allocations/<int:allocation_id>/entries")
@login_required
def older_entries(project_id: int, allocation_id: int):
    """The next page of ledger entries, as table rows for htmx to append; followed as a link (no JavaScript, a
    new tab), the allocation's page from those entries on."""
    if request.headers.get("HX-Request") != "true":
        return allocation(project_id, allocation_id)
    db = get_db()
    statement = statements.get_statement(db, actor(), _project(project_id), allocation_id)
    before = request.args.get("before", type=database_id)
    entries, older = statements.entries_page(db, statement, before_id=before)
    return render_template("ledger/_entries.html", project_id=project_id, s=statement, entries=entries, older=older)


@bp.post("/projects/<int:project_id>/allocations/transfer")
@login_required
def transfer(project_id: int):
    db, me = get_db(), actor()
    project = _project(project_id)
    form = TransferForm()
    options = statements.allocations_of_project(db, me, project)
    form.set_choices(options)
    if form.validate_on_submit():
        source = next(s for s in options if s.allocation.id == form.from_id.data)
        try:
            amount = parse_quantity(form.hours.data or "", source.resource.kind, field="hours")
            ledger.transfer(db, me, from_id=form.from_id.data, to_id=form.to_id.data, amount=amount)
        except InvalidInput as exc:
            apply_errors(form, exc)
        except Conflict as exc:
            form.form_errors.append(exc.detail)
        else:
            flash(_("The hours were moved."), "success")
            return redirect(url_for("projects.project", project_id=project_id) + "#allocations")
    for message in [*form.form_errors, *[e for f in form for e in f.errors]]:
        flash(message, "error")
    return redirect(url_for("projects.project", project_id=project_id) + "#allocations")


@bp.post("/projects/<int:project_id>/allocations/<int:allocation_id>/release")
@login_required
def release(project_id: int, allocation_id: int):
    db, me = get_db(), actor()
    project = _project(project_id)
    statement = statements.get_statement(db, me, project, allocation_id)
    form = ReleaseForm()
    target = url_for("ledger.allocation", project_id=project_id, allocation_id=allocation_id)
    if not form.validate_on_submit():
        flash(_("Enter the hours to give back."), "error")
        return redirect(target)
    try:
        amount = parse_quantity(form.hours.data or "", statement.resource.kind, field="hours")
        ledger.release_to_pool(db, me, allocation_id, amount)
    except InvalidInput as exc:
        flash(" ".join(exc.errors.values()) or exc.detail, "error")
    except Conflict as exc:
        flash(exc.detail, "error")
    else:
        flash(_("The hours were given back to the site's pool."), "success")
    return redirect(target)


# --- factory staff -------------------------------------------------------------------------------------


def _capacity_rows(db):
    return db.exec(
        select(Site, Resource, CapacityPeriod)
        .join(Resource, Resource.site_id == Site.id)
        .outerjoin(CapacityPeriod, CapacityPeriod.resource_id == Resource.id)
        .order_by(Site.name, Resource.code, col(CapacityPeriod.starts_on).desc())
    ).all()


def _resource_choices(db) -> list[tuple[int, str]]:
    resources = db.exec(select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name)).all()
    return [(r.id, f"{s.name}: {r.name}") for r, s in resources]


@bp.route("/admin/capacity", methods=["GET", "POST"])
@login_required
def capacity():
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    form = CapacityForm()
    form.resource_id.choices = _resource_choices(db)
    status = 200
    if form.validate_on_submit():
        resource = db.get(Resource, form.resource_id.data)
        starts_on, ends_on = ledger.quarter_of(form.quarter_start.data)
        try:
            capacity = (
                parse_quantity(form.capacity.data or "", resource.kind, field="capacity")
                if form.capacity.data
                else ledger.capacity_from_gpus(form.units.data or 0, starts_on, ends_on, form.utilisation.data or 0)
            )
            ledger.set_capacity(
                db,
                me,
                resource,
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
            flash(
                _(
                    "Capacity of %(resource)s from %(start)s to %(end)s is planned.",
                    resource=resource.name,
                    start=formatting.date(starts_on, locale=current_language()),
                    end=formatting.date(ends_on, locale=current_language()),
                ),
                "success",
            )
            return redirect(url_for("ledger.capacity"))
    elif form.is_submitted():
        status = 422
    overbooking_form = OverbookingForm(formdata=None)
    overbooking_form.resource_id.choices = form.resource_id.choices
    return _capacity_page(form, overbooking_form, status)


def _capacity_page(form: CapacityForm, overbooking_form: OverbookingForm, status: int):
    return render_template(
        "ledger/capacity.html", rows=_capacity_rows(get_db()), form=form, overbooking_form=overbooking_form
    ), status


@bp.post("/admin/capacity/overbooking")
@login_required
def overbooking():
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    choices = _resource_choices(db)
    form = OverbookingForm()
    form.resource_id.choices = choices
    capacity_form = CapacityForm(formdata=None)
    capacity_form.resource_id.choices = choices
    if not form.validate_on_submit():
        form.form_errors.append(_("Choose a resource and a factor."))
        return _capacity_page(capacity_form, form, 422)
    resource = db.get(Resource, form.resource_id.data)
    try:
        permille = int(Decimal(form.factor.data.strip().replace(",", ".")) * 1000)
        ledger.set_overbooking(db, me, resource, permille, reason=form.reason.data or "")
    except (InvalidOperation, ValueError):
        form.factor.errors = [_("Enter the factor as a number, for example 1.1.")]
        return _capacity_page(capacity_form, form, 422)
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return _capacity_page(capacity_form, form, 422)
    except Conflict as exc:
        db.rollback()
        form.form_errors.append(exc.detail)
        return _capacity_page(capacity_form, form, 409)
    flash(
        _(
            "%(resource)s may now be booked to %(factor)s× its capacity.",
            resource=resource.name,
            factor=formatting.number(Decimal(permille) / 1000, places=3, locale=current_language()),
        ),
        "success",
    )
    return redirect(url_for("ledger.capacity"))


@bp.route("/admin/allocations/new", methods=["GET", "POST"])
@login_required
def new_allocation():
    """An admin opens an allocation by hand (pilot projects, corrections); grants and purchases do it
    themselves."""
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_ALLOCATIONS)
    resources = db.exec(select(Resource, Site).join(Site, Site.id == Resource.site_id).order_by(Site.name)).all()
    form = ManualAllocationForm()
    form.resource_id.choices = [(r.id, f"{s.name}: {r.name}") for r, s in resources]
    status = 200
    if form.validate_on_submit():
        try:
            project = projects.get_project(db, me, form.project_id.data)
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
                ends_at=_midnight(form.ends_on.data),
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
            flash(_("The allocation is open."), "success")
            return redirect(url_for("ledger.allocation", project_id=project.id, allocation_id=allocation.id))
    elif form.is_submitted():
        status = 422
    return render_template("ledger/new_allocation.html", form=form), status


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)
