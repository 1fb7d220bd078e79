"""The marketplace's pages: catalogue, ordering, the order's page, billing, invoices; the Stripe webhook."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import stripe
from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlmodel import col, select
from wtforms.fields.choices import SelectChoice

from portal import observability
from portal.authz import Action, require
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.forms import ActionForm, apply_errors
from portal.identity.models import User
from portal.ledger.models import Resource, Site
from portal.market import services
from portal.market.forms import (
    OfferingDetailsForm,
    OfferingForm,
    OfferingStateForm,
    PriceForm,
    RefundForm,
    parse_price,
)
from portal.market.invoice_pdf import invoice_pdf
from portal.market.models import Invoice, InvoiceKind, Offering, OfferingPrice, OfferingState, Order, OrderState
from portal.market.stripe_gateway import StripeGateway
from portal.projects import services as projects
from portal.projects.models import Organisation, OrganisationRole, Project
from portal.web import actor, current_login, database_id, problem, settings

bp = Blueprint("market", __name__)


def gateway() -> StripeGateway:
    if "portal.stripe" not in current_app.extensions:
        current_app.extensions["portal.stripe"] = StripeGateway(settings())
    return current_app.extensions["portal.stripe"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class BuyingFor:
    """The projects a user can buy hours for, and when there is none, the first thing missing: ``organisation``
    (none they buy for), ``verification`` (``organisation`` awaits the staff's check) or ``project`` (a verified
    ``organisation`` has no project to hold the hours)."""

    projects: list[projects.ProjectSummary]
    missing: str | None = None
    organisation: Organisation | None = None


def buying_for(db, me: User) -> BuyingFor:  # type: ignore[no-untyped-def]
    buyer_of = [
        o for o, role in projects.organisations_of(db, me) if role in (OrganisationRole.ADMIN, OrganisationRole.BILLING)
    ]
    verified = [o for o in buyer_of if o.verified_at is not None]
    verified_ids = {o.id for o in verified}
    mine = [
        s for s in projects.projects_of(db, me) if s.project.archived_at is None and s.organisation.id in verified_ids
    ]
    if mine:
        return BuyingFor(mine)
    if verified:
        return BuyingFor([], "project", verified[0])
    if buyer_of:
        return BuyingFor([], "verification", buyer_of[0])
    return BuyingFor([], "organisation")


@bp.get("/market")
def catalogue():  # type: ignore[no-untyped-def]
    site, gpu = request.args.get("site") or None, request.args.get("gpu") or None
    buying = buying_for(get_db(), actor()) if current_user.is_authenticated else None
    return render_template(
        "market/catalogue.html",
        items=services.catalogue(get_db(), site_code=site, gpu_model=gpu),
        site=site,
        gpu=gpu,
        buying=buying,
    )


@bp.route("/market/offerings/<int:offering_id>/order", methods=["GET", "POST"])
@login_required
def order(offering_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    offering = db.get(Offering, offering_id)
    if offering is None:
        abort(404)
    buying = buying_for(db, me)
    error, status = None, 200
    if request.method == "POST":
        try:
            project = projects.get_project(db, me, request.form.get("project_id", type=database_id) or 0)
            quantity = request.form.get("quantity", type=int)
            _placed, pay_url = services.place_order(
                db, settings(), gateway(), me, current_login(), offering=offering, project=project, quantity=quantity
            )  # type: ignore[arg-type]
        except InvalidInput as exc:
            error, status = " ".join(exc.errors.values()) or exc.detail, 422
        except Conflict as exc:
            error, status = exc.detail, exc.status
        else:
            return redirect(pay_url, code=303)
    return render_template(
        "market/order.html", offering=offering, projects=buying.projects, buying=buying, error=error
    ), status


@bp.get("/market/orders/<int:order_id>")
@login_required
def order_status(order_id: int):  # type: ignore[no-untyped-def]
    db = get_db()
    placed = services.get_order(db, actor(), order_id)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.INVOICE)).first()
    template = "market/_order_state.html" if request.headers.get("HX-Request") == "true" else "market/order_status.html"
    return render_template(template, order=placed, invoice=invoice, cancelled=request.args.get("cancelled") == "1")


@bp.post("/market/orders/<int:order_id>/cancel")
@login_required
def cancel(order_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    if not ActionForm().validate_on_submit():
        abort(400)
    placed = services.get_order(db, me, order_id)
    try:
        services.cancel_order(db, gateway(), me, placed)
    except Conflict as exc:
        flash(exc.detail, "error")
    else:
        flash("The order is cancelled and its hours are free again.", "success")
    return redirect(url_for("market.order_status", order_id=order_id))


@bp.get("/market/invoices/<int:invoice_id>.pdf")
@login_required
def invoice_download(invoice_id: int):  # type: ignore[no-untyped-def]
    db = get_db()
    invoice = db.get(Invoice, invoice_id)
    try:
        if invoice is None:
            raise NotFound("No such invoice.")
        services.get_order(db, actor(), invoice.order_id)  # the same people as the order
    except NotFound:
        raise NotFound("No such invoice.") from None  # a hidden invoice reads like a missing one
    return Response(
        invoice_pdf(invoice),
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{invoice.reference}.pdf"'},
    )


@bp.post("/market/stripe/webhook")
def stripe_webhook():  # type: ignore[no-untyped-def]
    """Stripe's events, verified over the raw body; unknown orders are logged and answered 200."""
    try:
        event = gateway().verified_event(request.get_data(), request.headers.get("Stripe-Signature", ""))
    except stripe.SignatureVerificationError as exc:
        observability.stripe_webhook_handled("bad signature")
        return problem(400, "Bad signature", f"The event's Stripe-Signature does not verify: {exc.user_message}")
    except ValueError:
        observability.stripe_webhook_handled("bad signature")
        return problem(400, "Bad signature", "The event's Stripe-Signature does not verify.")
    try:
        outcome = services.handle_stripe_event(get_db(), settings(), event, gateway())
    except services.PaymentNotBookedYet as exc:  # not recorded: Stripe delivers it again
        get_db().rollback()
        observability.stripe_webhook_handled("retry: payment not booked yet")
        current_app.logger.info("stripe event %s (%s): %s", event.id, event.type, exc.detail)
        return problem(exc.status, exc.title, exc.detail)
    observability.stripe_webhook_handled(outcome)
    current_app.logger.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return jsonify(received=True, outcome=outcome)


# --- offerings, for admins and site operators --------------------------------------------------------------


def _resource_choices(db):  # type: ignore[no-untyped-def]
    stmt = select(Resource, Site).join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
    rows = db.exec(stmt.order_by(Site.name, Resource.code)).all()
    return [SelectChoice(r.id, f"{s.name}: {r.name}") for r, s in rows]


def _offering_rows(db):  # type: ignore[no-untyped-def]
    return db.exec(
        select(Offering, Resource, Site)
        .join(Resource, Resource.id == Offering.resource_id)  # type: ignore[arg-type]
        .join(Site, Site.id == Resource.site_id)  # type: ignore[arg-type]
        .order_by(Site.name, col(Offering.created_at).desc())
    ).all()


def _price_history(db, offering_ids: list[int]) -> dict[int, list[tuple[OfferingPrice, str]]]:  # type: ignore[no-untyped-def]
    history: dict[int, list[tuple[OfferingPrice, str]]] = {i: [] for i in offering_ids}
    if not offering_ids:
        return history
    rows = db.exec(
        select(OfferingPrice, User.display_name)
        .outerjoin(User, User.id == OfferingPrice.changed_by_id)  # type: ignore[arg-type]
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
        raise NotFound("No such offering.")
    return offering


@bp.route("/admin/offerings", methods=["GET", "POST"])
@login_required
def offerings():  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_CAPACITY)
    form = OfferingForm()
    form.resource_id.choices = _resource_choices(db)  # type: ignore[assignment]
    status = 200
    if form.validate_on_submit():
        try:
            price = parse_price(form.price.data)
            resource = db.get(Resource, form.resource_id.data)
            if resource is None:
                raise InvalidInput("Choose a resource.", errors={"resource_id": "Choose a resource."})
            offering = services.create_offering(
                db,
                me,
                resource=resource,
                title=form.title.data or "",
                description=form.description.data or "",
                price_cents=price,
                min_quantity=form.min_quantity.data,  # type: ignore[arg-type]
                max_quantity=form.max_quantity.data,  # type: ignore[arg-type]
                validity_months=form.validity_months.data,  # type: ignore[arg-type]
                reason=form.reason.data or "",
            )
        except InvalidInput as exc:
            db.rollback()
            apply_errors(form, exc)
            status = 422
        else:
            flash(f"The offering “{offering.title}” is saved as a draft; publish it to put it on sale.", "success")
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
def offering(  # type: ignore[no-untyped-def]
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
            flash(f"The price is now {item.price_cents / 100:.2f} {item.currency} per hour for new orders.", "success")
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
        history=_price_history(db, [item.id])[item.id],  # type: ignore[list-item]
        order_count=len(orders),
        form=form,
        state_form=state_form or OfferingStateForm(formdata=None),
        details_form=details_form or OfferingDetailsForm(obj=item, formdata=None),
    ), status


@bp.post("/admin/offerings/<int:offering_id>/details")
@login_required
def offering_details(offering_id: int):  # type: ignore[no-untyped-def]
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
            flash("The offering is saved.", "success")
            return redirect(url_for("market.offering", offering_id=offering_id))
    return offering(offering_id, details_form=form, status=422)


@bp.post("/admin/offerings/<int:offering_id>/state")
@login_required
def offering_state(offering_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    item = _staff_offering(offering_id)
    form = OfferingStateForm()
    if not form.validate_on_submit():
        flash("Choose publish or retire.", "error")
        return redirect(url_for("market.offering", offering_id=offering_id))
    try:
        services.set_offering_state(db, me, item, OfferingState(form.state.data), reason=form.reason.data or "")
    except InvalidInput as exc:
        db.rollback()
        apply_errors(form, exc)
        return offering(offering_id, status=422, state_form=form)
    flash(f"“{item.title}” is now {item.state}.", "success")
    return redirect(url_for("market.offering", offering_id=offering_id))


# --- an organisation's orders and invoices ---------------------------------------------------------------


@bp.get("/organisations/<int:organisation_id>/billing")
@login_required
def billing(organisation_id: int):  # type: ignore[no-untyped-def]
    """Orders, invoices and credit notes: the organisation's admins and billing members, and finance."""
    db, me = get_db(), actor()
    organisation = db.get(Organisation, organisation_id)
    if organisation is None:
        raise NotFound("No such organisation.")
    orders = services.orders_of_organisation(db, me, organisation)
    invoices = services.invoices_of_organisation(db, me, organisation)
    titles = {o.id: o.title for o in db.exec(select(Offering)).all()}
    project_ids = {o.project_id for o in orders}
    project_titles = (
        {p.id: p.title for p in db.exec(select(Project).where(col(Project.id).in_(project_ids))).all()}
        if project_ids
        else {}
    )
    return render_template(
        "market/billing.html",
        org=organisation,
        orders=orders,
        invoices=invoices,
        offering_titles=titles,
        project_titles=project_titles,
    )


# --- finance ---------------------------------------------------------------------------------------------


def _finance_rows(db, state: str | None, organisation_id: int | None, problems_only: bool = False):  # type: ignore[no-untyped-def]
    stmt = select(Order, Organisation).join(Organisation, Organisation.id == Order.organisation_id)  # type: ignore[arg-type]
    if state:
        stmt = stmt.where(Order.state == state)
    if problems_only:
        stmt = stmt.where(col(Order.problem).is_not(None))
    if organisation_id:
        stmt = stmt.where(Order.organisation_id == organisation_id)
    return db.exec(stmt.order_by(col(Order.created_at).desc(), col(Order.id).desc())).all()


def _finance_page(errors: dict[int, str] | None = None, status: int = 200):  # type: ignore[no-untyped-def]
    db = get_db()
    state = request.args.get("state") or None
    if state not in {s.value for s in OrderState}:
        state = None
    organisation_id = request.args.get("organisation", type=database_id)
    problems_only = request.args.get("problems") == "1"
    rows = _finance_rows(db, state, organisation_id, problems_only)
    order_ids = [o.id for o, _org in rows]
    documents: dict[int, list[Invoice]] = {i: [] for i in order_ids}  # type: ignore[misc]
    if order_ids:
        for invoice in db.exec(
            select(Invoice).where(col(Invoice.order_id).in_(order_ids)).order_by(col(Invoice.issued_at))
        ).all():
            documents[invoice.order_id].append(invoice)
    refundable = {
        o.id: services.refundable_quantity(db, o)
        for o, _org in rows
        if o.state in (OrderState.PAID, OrderState.PARTIALLY_REFUNDED)
    }
    organisations = db.exec(
        select(Organisation).where(col(Organisation.id).in_(select(Order.organisation_id))).order_by(Organisation.name)
    ).all()
    return render_template(
        "market/finance_orders.html",
        rows=rows,
        documents=documents,
        refundable=refundable,
        organisations=organisations,
        states=[s.value for s in OrderState],
        state=state,
        organisation_id=organisation_id,
        problems_only=problems_only,
        errors=errors or {},
        submitted=request.form.get("quantity", "") if request.method == "POST" else "",
        submitted_reason=request.form.get("reason", "") if request.method == "POST" else "",
        refund_form=RefundForm(formdata=None),
    ), status


@bp.get("/finance/orders")
@login_required
def finance_orders():  # type: ignore[no-untyped-def]
    require(get_db(), actor(), Action.MANAGE_BILLING)
    return _finance_page()


@bp.post("/finance/orders/<int:order_id>/refund")
@login_required
def refund(order_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_BILLING)
    placed = db.get(Order, order_id)
    if placed is None:
        raise NotFound("No such order.")
    form = RefundForm()
    if not form.validate_on_submit():
        message = " ".join(e for f in form for e in f.errors) or "Enter the hours to refund."
        return _finance_page({order_id: message}, 422)
    if placed.payment_intent_id is None:
        return _finance_page({order_id: "This order has no Stripe payment to refund."}, 409)
    try:
        note = services.refund_order(
            db,
            settings(),
            gateway(),
            me,
            placed,
            quantity=form.quantity.data,  # type: ignore[arg-type]
            reason=form.reason.data or "",
        )
    except InvalidInput as exc:
        db.rollback()
        return _finance_page({order_id: " ".join(exc.errors.values()) or exc.detail}, 422)
    except Conflict as exc:
        db.rollback()
        return _finance_page({order_id: exc.detail}, exc.status)
    except stripe.StripeError as exc:
        db.rollback()
        current_app.logger.warning("refund of order %s refused by Stripe: %s", order_id, exc)
        return _finance_page({order_id: f"Stripe refused the refund: {exc.user_message or exc}"}, 502)
    flash(f"{form.quantity.data} hours of order {order_id} are refunded; credit note {note.reference}.", "success")
    return redirect(url_for("market.finance_orders", **request.args))


def euros(cents: int) -> str:
    """Integer cents as a EUR amount with two decimals, without floats: -7500 -> ``"-75.00"``."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _cell(value: object) -> str:
    """Text a spreadsheet would run as a formula is prefixed with an apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _date(moment) -> str:  # type: ignore[no-untyped-def]
    return moment.isoformat(timespec="seconds") if moment else ""


def _csv(name: str, header: list[str], rows: list[list[str]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(
        out.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@bp.get("/finance/orders.csv")
@login_required
def orders_csv():  # type: ignore[no-untyped-def]
    db = get_db()
    require(db, actor(), Action.MANAGE_BILLING)
    rows = db.exec(
        select(Order, Organisation)
        .join(Organisation, Organisation.id == Order.organisation_id)  # type: ignore[arg-type]
        .order_by(col(Order.id))
    ).all()
    header = [
        "order_id", "organisation_id", "organisation", "country", "vat_number", "vat_scheme", "vat_country",
        "state", "quantity", "unit_price_eur", "net_eur", "vat_eur", "gross_eur", "refunded_eur", "currency",
        "created_at", "paid_at", "problem",
    ]  # fmt: skip
    lines = [
        [
            str(o.id),
            str(org.id),
            _cell(org.name),
            _cell(org.country),
            _cell(o.customer_vat_number or org.vat_number or ""),
            _cell(o.vat_scheme),
            _cell(o.vat_country or ""),
            str(o.state),
            str(o.quantity),
            euros(o.unit_price_cents),
            euros(o.net_cents),
            euros(o.vat_cents),
            euros(o.gross_cents),
            euros(o.refunded_cents),
            o.currency,
            _date(o.created_at),
            _date(o.paid_at),
            _cell(o.problem or ""),
        ]
        for o, org in rows
    ]
    return _csv("orders.csv", header, lines)


@bp.get("/finance/invoices.csv")
@login_required
def invoices_csv():  # type: ignore[no-untyped-def]
    db = get_db()
    require(db, actor(), Action.MANAGE_BILLING)
    rows = db.exec(
        select(Invoice, Order)
        .join(Order, Order.id == Invoice.order_id)  # type: ignore[arg-type]
        .order_by(col(Invoice.id))
    ).all()
    references = {i.id: i.reference for i, _o in rows}
    header = [
        "invoice_id", "reference", "kind", "corrects", "order_id", "organisation_id", "organisation", "country",
        "vat_number", "vat_scheme", "vat_rate_percent", "net_eur", "vat_eur", "gross_eur", "currency", "issued_at",
    ]  # fmt: skip
    lines = [
        [
            str(i.id),
            _cell(i.reference),
            str(i.kind),
            _cell(references.get(i.corrects_id, "") if i.corrects_id else ""),
            str(i.order_id),
            str(i.organisation_id),
            _cell(i.buyer.get("name", "")),
            _cell(i.buyer.get("country", "")),
            _cell(i.buyer.get("vat_number") or ""),
            _cell(o.vat_scheme),
            euros(i.vat_basis_points),
            euros(i.net_cents),
            euros(i.vat_cents),
            euros(i.gross_cents),
            i.currency,
            _date(i.issued_at),
        ]
        for i, o in rows
    ]
    return _csv("invoices.csv", header, lines)


def init_app(app) -> None:  # type: ignore[no-untyped-def]
    from portal import web

    web.csrf.exempt(stripe_webhook)
    app.register_blueprint(bp)
