"""The administrator's page: creating a call for proposals."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import login_required
from wtforms.fields.choices import SelectChoice

from portal.authz import Action, require
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.formatting import parse_quantity
from portal.grants import queries
from portal.grants import services as grants
from portal.grants.forms import CallForm
from portal.grants.models import AccessMode, ReviewMode
from portal.grants.views.common import bp, show_errors
from portal.identity.services import find_user_by_email
from portal.ledger.models import ResourceKind
from portal.web import actor


def _json_list(text: str, field: str, errors: dict[str, str]) -> list[dict[str, Any]]:
    try:
        value = json.loads(text or "[]")
    except ValueError as exc:
        errors[field] = _("Not valid JSON: %(error)s.", error=str(exc))
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        errors[field] = _("Give a JSON list of objects.")
        return []
    return value


@bp.route("/admin/calls/new", methods=["GET", "POST"])
@login_required
def new_call():
    db, me = get_db(), actor()
    require(db, me, Action.CREATE_CALLS)
    resources = queries.all_resources(db)
    by_id = {r.id: r for r, _s in resources}
    form = CallForm()
    for row in form.budgets:
        row.resource_id.choices = [
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
                    budgets_error = _("Choose the resource of each budget.")
                continue
            try:
                budgets[resource.id] = budgets.get(resource.id, 0) + parse_quantity(
                    text, resource.kind, field="budgets"
                )
            except InvalidInput as exc:
                budgets_error = f"{resource.name}: {exc.errors.get('budgets', exc.detail)}"
        if not budgets and not budgets_error:
            budgets_error = _("Give at least one resource a budget.")
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
            errors["eligible_countries"] = _("Give two-letter ISO codes separated by commas, for example PL, LT.")
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
                    opens_at=grants.start_of_day(form.opens_on.data),
                    closes_at=grants.end_of_day(form.closes_on.data),
                    first_cutoff=form.first_cutoff.data,
                    cutoff_every_days=form.cutoff_every_days.data,
                    decision_within_working_days=form.decision_within_working_days.data,
                    eligible_kinds=list(form.eligible_kinds.data or []),
                    eligible_countries=countries,
                    questions=questions,
                    criteria=criteria,
                    reason=form.reason.data or "",
                )
            except InvalidInput as exc:
                errors.update(exc.errors or {"": exc.detail})
            else:
                flash(
                    _("The call “%(title)s” is created as a draft. Open it when it is ready.", title=created.title),
                    "success",
                )
                return redirect(url_for("grants.manage", call_id=created.id))
        budgets_error = errors.pop("budgets", budgets_error)
        show_errors(form, errors, {"closes_at": "closes_on"})
        status = 422
    elif form.is_submitted():
        status = 422
    return render_template("grants/new_call.html", form=form, budgets_error=budgets_error), status
