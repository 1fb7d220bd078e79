"""Offerings, for admins and site operators: the list with its price history, creating an offering (a draft),
and one offering's page, where its details, its price (for new orders only) and its state (publish, retire)
change, each with a reason for the audit log.
"""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import pgettext
from flask_login import login_required
from sqlmodel import col, select
from wtforms.fields.choices import SelectChoice

from portal import formatting
from portal.authz import Action, require
from portal.db import get_db
from portal.errors import InvalidInput, NotFound
from portal.forms import apply_errors
from portal.i18n import current_language
from portal.identity.models import User
from portal.ledger.models import Resource, Site
from portal.market import services
from portal.market.forms import OfferingDetailsForm, OfferingForm, OfferingStateForm, PriceForm, parse_price
from portal.market.models import Offering, OfferingPrice, OfferingState, Order
from portal.market.views.common import bp
from portal.web import actor


def offering_state_word(state: str) -> str:
    """An offering's state in the reader's words (as ``market/_labels.html`` writes it)."""
    words = {
        OfferingState.DRAFT: pgettext("offering state", "draft"),
        OfferingState.PUBLISHED: pgettext("offering state", "published"),
        OfferingState.RETIRED: pgettext("offering state", "retired"),
    }
    return words.get(state, state)


def _resource_choices(db):
    stmt = select(Resource, Site).join(Site, Site.id == Resource.site_id)
    rows = db.exec(stmt.order_by(Site.name, Resource.code)).all()
    return [SelectChoice(r.id, f"{s.name}: {r.name}") for r, s in rows]


def _offering_rows(db):
    return db.exec(
        select(Offering, Resource, Site)
        .join(Resource, Resource.id == Offering.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .order_by(Site.name, col(Offering.created_at).desc())
    ).all()


def _price_history(db, offering_ids: list[int]) -> dict[int, list[tuple[OfferingPrice, str]]]:
    history: dict[int, list[tuple[OfferingPrice, str]]] = {i: [] for i in offering_ids}
    if not offering_ids:
        return history
    rows = db.exec(
        select(OfferingPrice, User.display_name)
        .outerjoin(User, User.id == OfferingPrice.changed_by_id)
        .where(col(OfferingPrice.offering_id).in_(offering_ids))
        .order_by(col(OfferingPrice.valid_from).desc(), col(OfferingPrice.id).desc())
    ).all()
    for price, name in rows:
        history[price.offering_id].append((price, name or "—"))
    return history


def _staff_offering(offering_id: int) -> Offering:
    db = get_db()
    require(db, actor(), Action.MANAGE_CAPACITY)
    offering = db.get(Offering, offering_id)
    if offering is None:
        raise NotFound(_("No such offering."))
    return offering


@bp.route("/admin/offerings", methods=["GET", "POST"])
@login_required
def offerings():
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    form = OfferingForm()
    form.resource_id.choices = _resource_choices(db)
    status = 200
    if form.validate_on_submit():
        try:
            price = parse_price(form.price.data)
            resource = db.get(Resource, form.resource_id.data)
            if resource is None:
                choose = _("Choose a resource.")
                raise InvalidInput(choose, errors={"resource_id": choose})
            offering = services.create_offering(
                db,
                me,
                resource=resource,
                title=form.title.data or "",
                description=form.description.data or "",
                price_cents=price,
                min_quantity=form.min_quantity.data,
                max_quantity=form.max_quantity.data,
                validity_months=form.validity_months.data,
                reason=form.reason.data or "",
            )
        except InvalidInput as exc:
            db.rollback()
            apply_errors(form, exc)
            status = 422
        else:
            flash(
                _("The offering “%(title)s” is saved as a draft; publish it to put it on sale.", title=offering.title),
                "success",
            )
            return redirect(url_for("market.offering", offering_id=offering.id))
    elif form.is_submitted():
        status = 422
    rows = _offering_rows(db)
    return render_template(
        "market/offerings.html",
        rows=rows,
        history=_price_history(db, [o.id for o, _r, _s in rows]),
        form=form,
    ), status


@bp.route("/admin/offerings/<int:offering_id>", methods=["GET", "POST"])
@login_required
def offering(
    offering_id: int,
    details_form: OfferingDetailsForm | None = None,
    status: int = 200,
    state_form: OfferingStateForm | None = None,
):
    """One offering: its details, its price history, a new price (for new orders only), publish and retire."""
    db, me = get_db(), actor()
    item = _staff_offering(offering_id)
    other_form = details_form is not None or state_form is not None
    form = PriceForm(formdata=None) if other_form else PriceForm()
    if form.validate_on_submit():
        try:
            services.change_price(db, me, item, parse_price(form.price.data), reason=form.reason.data or "")
        except InvalidInput as exc:
            db.rollback()
            apply_errors(form, exc)
            status = 422
        else:
            price = formatting.money(item.price_cents, item.currency, locale=current_language())
            flash(_("The price is now %(price)s per hour for new orders.", price=price), "success")
            return redirect(url_for("market.offering", offering_id=offering_id))
    elif form.is_submitted():
        status = 422
    resource = db.get(Resource, item.resource_id)
    site = db.get(Site, resource.site_id) if resource else None
    orders = db.exec(select(Order).where(Order.offering_id == item.id)).all()
    return render_template(
        "market/offering.html",
        offering=item,
        resource=resource,
        site=site,
        history=_price_history(db, [item.id])[item.id],
        order_count=len(orders),
        form=form,
        state_form=state_form or OfferingStateForm(formdata=None),
        details_form=details_form or OfferingDetailsForm(obj=item, formdata=None),
    ), status


@bp.post("/admin/offerings/<int:offering_id>/details")
@login_required
def offering_details(offering_id: int):
    db, me = get_db(), actor()
    item = _staff_offering(offering_id)
    form = OfferingDetailsForm()
    if form.validate_on_submit():
        try:
            services.update_offering(
                db,
                me,
                item,
                title=form.title.data or "",
                description=form.description.data or "",
                min_quantity=form.min_quantity.data or 0,
                max_quantity=form.max_quantity.data or 0,
                validity_months=form.validity_months.data or 0,
                reason=form.reason.data or "",
            )
        except InvalidInput as exc:
            db.rollback()
            apply_errors(form, exc)
        else:
            flash(_("The offering is saved."), "success")
            return redirect(url_for("market.offering", offering_id=offering_id))
    return offering(offering_id, details_form=form, status=422)


@bp.post("/admin/offerings/<int:offering_id>/state")
@login_required
def offering_state(offering_id: int):
    db, me = get_db(), actor()
    item = _staff_offering(offering_id)
    form = OfferingStateForm()
    if not form.validate_on_submit():
        flash(_("Choose publish or retire."), "error")
        return redirect(url_for("market.offering", offering_id=offering_id))
    try:
        services.set_offering_state(db, me, item, OfferingState(form.state.data), reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return offering(offering_id, status=422, state_form=form)
    flash(_("“%(title)s” is now %(state)s.", title=item.title, state=offering_state_word(item.state)), "success")
    return redirect(url_for("market.offering", offering_id=offering_id))
