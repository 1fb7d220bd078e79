"""Finance's pages: every order with its invoices and credit notes (filtered by state, organisation or
problem), refunding hours of a paid order through Stripe, and the orders and invoices as CSV.
"""

from __future__ import annotations

import stripe
from flask import current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import login_required
from sqlmodel import col, select

from portal import formatting
from portal.authz import Action, require
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.i18n import current_language
from portal.market import services
from portal.market.forms import RefundForm
from portal.market.models import Invoice, Order, OrderState
from portal.market.views.common import bp, gateway
from portal.projects.models import Organisation
from portal.web import actor, csv_response, database_id, settings


def _finance_rows(db, state: str | None, organisation_id: int | None, problems_only: bool = False):
    stmt = select(Order, Organisation).outerjoin(Organisation, Organisation.id == Order.organisation_id)
    if state:
        stmt = stmt.where(Order.state == state)
    if problems_only:
        stmt = stmt.where(col(Order.problem).is_not(None))
    if organisation_id:
        stmt = stmt.where(Order.organisation_id == organisation_id)
    return db.exec(stmt.order_by(col(Order.created_at).desc(), col(Order.id).desc())).all()


def _finance_page(errors: dict[int, str] | None = None, status: int = 200):
    db = get_db()
    state = request.args.get("state") or None
    if state not in {s.value for s in OrderState}:
        state = None
    organisation_id = request.args.get("organisation", type=database_id)
    problems_only = request.args.get("problems") == "1"
    rows = _finance_rows(db, state, organisation_id, problems_only)
    order_ids = [o.id for o, _org in rows]
    documents: dict[int, list[Invoice]] = {i: [] for i in order_ids}
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
def finance_orders():
    require(get_db(), actor(), Action.MANAGE_BILLING)
    return _finance_page()


@bp.post("/finance/orders/<int:order_id>/refund")
@login_required
def refund(order_id: int):
    db, me = get_db(), actor()
    require(db, me, Action.MANAGE_BILLING)
    placed = db.get(Order, order_id)
    if placed is None:
        raise NotFound(_("No such order."))
    form = RefundForm()
    if not form.validate_on_submit():
        message = " ".join(str(e) for f in form for e in f.errors) or _("Enter the hours to refund.")
        return _finance_page({order_id: message}, 422)
    if placed.payment_intent_id is None:
        return _finance_page({order_id: _("This order has no Stripe payment to refund.")}, 409)
    try:
        note = services.refund_order(
            db,
            settings(),
            gateway(),
            me,
            placed,
            quantity=form.quantity.data,
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
        return _finance_page({order_id: _("Stripe refused the refund: %(why)s", why=exc.user_message or exc)}, 502)
    refunded = ngettext(
        "%(hours)s hour of order %(order)s is refunded; credit note %(reference)s.",
        "%(hours)s hours of order %(order)s are refunded; credit note %(reference)s.",
        form.quantity.data,
        hours=formatting.number(form.quantity.data, locale=current_language()),
        order=order_id,
        reference=note.reference,
    )
    flash(refunded, "success")
    return redirect(url_for("market.finance_orders", **request.args))


def euros(cents: int) -> str:
    """Integer cents as a EUR amount with two decimals, without floats: -7500 -> ``"-75.00"``."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def _date(moment) -> str:
    return moment.isoformat(timespec="seconds") if moment else ""


@bp.get("/finance/orders.csv")
@login_required
def orders_csv():
    db = get_db()
    require(db, actor(), Action.MANAGE_BILLING)
    rows = db.exec(
        select(Order, Organisation)
        .outerjoin(Organisation, Organisation.id == Order.organisation_id)
        .order_by(col(Order.id))
    ).all()
    header = [
        "order_id", "organisation_id", "organisation", "country", "vat_number", "vat_scheme", "vat_country",
        "state", "quantity", "unit_price_eur", "net_eur", "vat_eur", "gross_eur", "refunded_eur", "currency",
        "created_at", "paid_at", "problem", "private_buyer", "login_country",
    ]  # fmt: skip
    lines = [
        [
            str(o.id),
            str(org.id) if org else "",
            org.name if org else o.billing_name or "",
            org.country if org else o.billing_country or "",
            o.customer_vat_number or (org.vat_number if org else None) or "",
            o.vat_scheme,
            o.vat_country or "",
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
            o.problem or "",
            "" if org else "yes",
            o.login_country or "",
        ]
        for o, org in rows
    ]
    return csv_response("orders.csv", header, lines)


@bp.get("/finance/invoices.csv")
@login_required
def invoices_csv():
    db = get_db()
    require(db, actor(), Action.MANAGE_BILLING)
    rows = db.exec(select(Invoice, Order).join(Order, Order.id == Invoice.order_id).order_by(col(Invoice.id))).all()
    references = {i.id: i.reference for i, _o in rows}
    header = [
        "invoice_id", "reference", "kind", "corrects", "order_id", "organisation_id", "organisation", "country",
        "vat_number", "vat_scheme", "vat_rate_percent", "net_eur", "vat_eur", "gross_eur", "currency", "issued_at",
    ]  # fmt: skip
    lines = [
        [
            str(i.id),
            i.reference,
            str(i.kind),
            references.get(i.corrects_id, "") if i.corrects_id else "",
            str(i.order_id),
            str(i.organisation_id) if i.organisation_id is not None else "",
            i.buyer.get("name", ""),
            i.buyer.get("country", ""),
            i.buyer.get("vat_number") or "",
            o.vat_scheme,
            euros(i.vat_basis_points),
            euros(i.net_cents),
            euros(i.vat_cents),
            euros(i.gross_cents),
            i.currency,
            _date(i.issued_at),
        ]
        for i, o in rows
    ]
    return csv_response("invoices.csv", header, lines)
