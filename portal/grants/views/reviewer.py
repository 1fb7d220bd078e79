"""The reviewer's pages: the reviews assigned to them, one review's form, and declaring a conflict of
interest."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import login_required
from flask_wtf import FlaskForm

from portal.db import get_db
from portal.errors import Conflict, DomainError, InvalidInput
from portal.grants import queries
from portal.grants import services as grants
from portal.grants.forms import ConflictForm, review_form, score_field_name
from portal.grants.models import ReviewKind
from portal.grants.views.common import bp, show_errors
from portal.web import actor


@bp.get("/reviews")
@login_required
def reviews():
    return render_template("grants/reviews.html", rows=queries.reviews_of(get_db(), actor()))


def _review_page(
    review_id: int,
    *,
    form: FlaskForm | None = None,
    conflict_form: ConflictForm | None = None,
    error: DomainError | None = None,
    status: int = 200,
):
    page = queries.review_page(get_db(), actor(), review_id)
    review, call = page["review"], page["call"]
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
    return (
        render_template(
            "grants/review.html",
            **page,
            form=form,
            conflict_form=conflict_form or ConflictForm(formdata=None),
            error=error,
        ),
        status,
    )


@bp.get("/reviews/<int:review_id>")
@login_required
def review(review_id: int):
    return _review_page(review_id)


@bp.post("/reviews/<int:review_id>")
@login_required
def submit_review(review_id: int):
    db, me = get_db(), actor()
    review, _application, call, _project = queries.my_review(db, me, review_id)
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
        names = {f"scores.{c['key']}": score_field_name(i) for i, c in enumerate(call.criteria)}
        show_errors(form, exc.errors, names)
        return _review_page(review_id, form=form, status=422)
    except Conflict as exc:
        return _review_page(review_id, form=form, error=exc, status=exc.status)
    flash(_("Your review is submitted. Thank you."), "success")
    return redirect(url_for("grants.review", review_id=review_id))


@bp.post("/reviews/<int:review_id>/conflict")
@login_required
def declare_conflict(review_id: int):
    db, me = get_db(), actor()
    queries.my_review(db, me, review_id)
    form = ConflictForm()
    if not form.validate_on_submit():
        return _review_page(review_id, conflict_form=form, status=422)
    try:
        grants.declare_conflict(db, me, review_id, reason=form.conflict_reason.data or "")
    except InvalidInput as exc:
        show_errors(form, exc.errors, {"reason": "conflict_reason"})
        return _review_page(review_id, conflict_form=form, status=422)
    except Conflict as exc:
        return _review_page(review_id, conflict_form=form, error=exc, status=exc.status)
    flash(_("Your conflict of interest is recorded; the call manager will ask someone else."), "success")
    return redirect(url_for("grants.reviews"))
