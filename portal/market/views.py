"""The marketplace's pages: catalogue, ordering, the order's page, billing, invoices; the Stripe webhook."""

from __future__ import annotations

import stripe
from flask import Blueprint, Response, abort, current_app, jsonify, redirect, render_template, request
from flask_login import login_required

from portal.db import get_db
from portal.errors import Conflict, InvalidInput
from portal.market import services
from portal.market.invoice_pdf import invoice_pdf
from portal.market.models import Invoice, Offering
from portal.market.stripe_gateway import StripeGateway
from portal.projects import services as projects
from portal.web import actor, current_login, problem, settings

bp = Blueprint("market", __name__)


def gateway() -> StripeGateway:
    if "portal.stripe" not in current_app.extensions:
        current_app.extensions["portal.stripe"] = StripeGateway(settings())
    return current_app.extensions["portal.stripe"]  # type: ignore[no-any-return]


@bp.get("/market")
def catalogue():  # type: ignore[no-untyped-def]
    site, gpu = request.args.get("site") or None, request.args.get("gpu") or None
    return render_template(
        "market/catalogue.html", items=services.catalogue(get_db(), site_code=site, gpu_model=gpu), site=site, gpu=gpu
    )


@bp.route("/market/offerings/<int:offering_id>/order", methods=["GET", "POST"])
@login_required
def order(offering_id: int):  # type: ignore[no-untyped-def]
    db, me = get_db(), actor()
    offering = db.get(Offering, offering_id)
    if offering is None:
        abort(404)
    my_projects = [s for s in projects.projects_of(db, me) if s.project.archived_at is None]
    error, status = None, 200
    if request.method == "POST":
        try:
            project = projects.get_project(db, me, request.form.get("project_id", type=int) or 0)
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
    return render_template("market/order.html", offering=offering, projects=my_projects, error=error), status


@bp.get("/market/orders/<int:order_id>")
@login_required
def order_status(order_id: int):  # type: ignore[no-untyped-def]
    placed = services.get_order(get_db(), actor(), order_id)
    template = "market/_order_state.html" if request.headers.get("HX-Request") == "true" else "market/order_status.html"
    return render_template(template, order=placed, cancelled=request.args.get("cancelled") == "1")


@bp.get("/market/invoices/<int:invoice_id>.pdf")
@login_required
def invoice_download(invoice_id: int):  # type: ignore[no-untyped-def]
    db = get_db()
    invoice = db.get(Invoice, invoice_id)
    if invoice is None:
        abort(404)
    services.get_order(db, actor(), invoice.order_id)  # the same people as the order
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
    except (ValueError, stripe.SignatureVerificationError):
        return problem(400, "Bad signature", "The event's Stripe-Signature does not verify.")
    outcome = services.handle_stripe_event(get_db(), settings(), event)
    current_app.logger.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return jsonify(received=True, outcome=outcome)


def init_app(app) -> None:  # type: ignore[no-untyped-def]
    from portal import web

    web.csrf.exempt(stripe_webhook)
    app.register_blueprint(bp)
