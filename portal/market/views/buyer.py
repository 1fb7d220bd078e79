"""The buyers' pages: the catalogue, ordering (for a project of an organisation, or as a private person) with
its price redrawn as the form changes, a private buyer's purchases, the order's page and cancelling it, the
invoice PDF, and an organisation's orders and invoices (its billing page).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required
from sqlmodel import col, select

from portal.config import AssuranceLevel, OIDCProvider
from portal.db import get_db
from portal.errors import Conflict, InvalidInput, NotFound
from portal.forms import ActionForm
from portal.identity.models import User
from portal.market import services
from portal.market.models import Invoice, InvoiceKind, Offering
from portal.market.views.common import bp, gateway
from portal.market.views.quotes import Quote, _countries_by_name, private_quote_for, quote_for, vat_percent
from portal.projects import services as projects
from portal.projects.models import Organisation, OrganisationRole, Project
from portal.web import actor, current_login, database_id, settings


@dataclass(frozen=True)
class BuyingFor:
    """The projects a user can buy hours for, and when there is none, the first thing missing: ``organisation``
    (none they buy for), ``verification`` (``organisation`` awaits the staff's check) or ``project`` (a verified
    ``organisation`` has no project to hold the hours)."""

    projects: list[projects.ProjectSummary]
    missing: str | None = None
    organisation: Organisation | None = None


def buying_for(db, me: User) -> BuyingFor:
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
def catalogue():
    """The offerings, filtered by the site and the GPU as people read them (a city, a site's name or code; a
    GPU model), in any letter case; the choices are the ones on sale."""
    site = (request.args.get("site") or "").strip()
    gpu = (request.args.get("gpu") or "").strip()
    buying = buying_for(get_db(), actor()) if current_user.is_authenticated else None
    everything = services.catalogue(get_db())
    items = [
        item
        for item in everything
        if (not site or site.casefold() in {item.site.city.casefold(), item.site.name.casefold(), item.site.code})
        and (not gpu or gpu.casefold() == (item.resource.gpu_model or "").casefold())
    ]
    return render_template(
        "market/catalogue.html",
        items=items,
        site=site,
        gpu=gpu,
        site_choices=sorted({item.site.city for item in everything}),
        gpu_choices=sorted({item.resource.gpu_model for item in everything if item.resource.gpu_model}),
        buying=buying,
    )


@bp.route("/market/offerings/<int:offering_id>/order", methods=["GET", "POST"])
@login_required
def order(offering_id: int):
    db, me = get_db(), actor()
    offering = db.get(Offering, offering_id)
    if offering is None:
        abort(404)
    buying = buying_for(db, me)
    private = request.values.get("buyer") == "private"
    error, status = None, 200
    if request.method == "POST":
        quantity, form = request.form.get("quantity", type=int), request.form
        common = (db, settings(), gateway(), me, current_login())
        try:
            if private:
                billing = services.billing_details(
                    form.get("billing_name"), form.get("billing_address"), form.get("billing_country")
                )
                _placed, pay_url = services.place_private_order(
                    *common, offering=offering, quantity=quantity, billing=billing
                )
            else:
                project = projects.get_project(db, me, form.get("project_id", type=database_id) or 0)
                _placed, pay_url = services.place_order(*common, offering=offering, project=project, quantity=quantity)
        except InvalidInput as exc:
            error, status = " ".join(exc.errors.values()) or exc.detail, 422
        except Conflict as exc:
            error, status = exc.detail, exc.status
        else:
            return redirect(pay_url, code=303)
    return render_template(
        "market/order.html",
        offering=offering,
        projects=buying.projects,
        buying=buying,
        error=None if private else error,
        quote=_quote_on_form(offering, buying) if buying.projects else None,
        private=_private_buying(offering, me, error if private else None),
    ), status


@dataclass(frozen=True)
class PrivateBuying:
    """The order form's part for buying as a private person: refused (``refusal``, with the logins that give the
    level needed) or the billing details to fill in, with the price for them."""

    refusal: str = ""
    logins: list[OIDCProvider] = field(default_factory=list)
    error: str | None = None
    name: str = ""
    address: str = ""
    country: str = ""
    countries: dict[str, str] = field(default_factory=dict)
    quote: Quote | None = None


def _private_buying(offering: Offering, me: User, error: str | None) -> PrivateBuying:
    try:
        services.require_private_buyer(settings(), current_login())
    except Conflict as exc:
        return PrivateBuying(exc.detail, services.logins_reaching(settings(), AssuranceLevel.SUBSTANTIAL))
    form = request.form if request.method == "POST" and request.form.get("buyer") == "private" else {}
    country = form.get("billing_country") or services.login_country(current_login()) or ""
    return PrivateBuying(
        error=error,
        name=form.get("billing_name", me.display_name),
        address=form.get("billing_address", ""),
        country=country,
        countries=_countries_by_name(),
        quote=_private_quote(offering, country),
    )


def _quote_on_form(offering: Offering, buying: BuyingFor) -> Quote:
    chosen = request.values.get("project_id", type=database_id)
    organisation = next((s.organisation for s in buying.projects if chosen is None or s.project.id == chosen), None)
    return quote_for(offering, organisation, _typed_quantity(offering))


def _private_quote(offering: Offering, country: str) -> Quote:
    return private_quote_for(offering, country.strip().upper(), _typed_quantity(offering))


def _typed_quantity(offering: Offering) -> int | None:
    typed = request.values.get("quantity")
    if typed is None:
        return offering.min_quantity
    return int(typed.strip()) if typed.strip().isdigit() else None


@bp.get("/market/offerings/<int:offering_id>/quote")
@login_required
def quote(offering_id: int):
    """The order form's price with VAT, redrawn (htmx) as the buyer changes the project or the hours, or, buying
    as a private person (``buyer=private``), the billing country or the hours."""
    db = get_db()
    offering = db.get(Offering, offering_id)
    if offering is None:
        abort(404)
    if request.args.get("buyer") == "private":
        quoted = _private_quote(offering, request.args.get("billing_country", ""))
        return render_template("market/_quote.html", quote=quoted, quote_id="private-quote")
    return render_template("market/_quote.html", quote=_quote_on_form(offering, buying_for(db, actor())))


@bp.get("/market/purchases")
@login_required
def purchases():
    """A private buyer's own purchases and invoices (an organisation's are on its billing page)."""
    db, me = get_db(), actor()
    orders, invoices = services.private_purchases_of(db, me)
    return render_template(
        "market/purchases.html",
        orders=orders,
        invoices=invoices,
        project=projects.personal_project_of(db, me),
        offering_titles={o.id: o.title for o in db.exec(select(Offering)).all()},
    )


@bp.get("/market/orders/<int:order_id>")
@login_required
def order_status(order_id: int):
    db = get_db()
    placed = services.get_order(db, actor(), order_id)
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id, Invoice.kind == InvoiceKind.INVOICE)).first()
    template = "market/_order_state.html" if request.headers.get("HX-Request") == "true" else "market/order_status.html"
    return render_template(
        template,
        order=placed,
        invoice=invoice,
        cancelled=request.args.get("cancelled") == "1",
        vat_percent=vat_percent(placed.vat_basis_points),
    )


@bp.post("/market/orders/<int:order_id>/cancel")
@login_required
def cancel(order_id: int):
    db, me = get_db(), actor()
    if not ActionForm().validate_on_submit():
        abort(400)
    placed = services.get_order(db, me, order_id)
    try:
        services.cancel_order(db, gateway(), me, placed)
    except Conflict as exc:
        flash(exc.detail, "error")
    else:
        flash(_("The order is cancelled and its hours are free again."), "success")
    return redirect(url_for("market.order_status", order_id=order_id))


@bp.get("/market/invoices/<int:invoice_id>.pdf")
@login_required
def invoice_download(invoice_id: int):
    db = get_db()
    invoice = db.get(Invoice, invoice_id)
    try:
        if invoice is None:
            raise NotFound(_("No such invoice."))
        services.get_order(db, actor(), invoice.order_id)  # the same people as the order
    except NotFound:
        raise NotFound(_("No such invoice.")) from None  # a hidden invoice reads like a missing one
    from portal.market.invoice_pdf import invoice_pdf  # fpdf takes ~0.45 s to import: only when a PDF is made

    return Response(
        invoice_pdf(invoice),
        mimetype="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{invoice.reference}.pdf"'},
    )


@bp.get("/organisations/<int:organisation_id>/billing")
@login_required
def billing(organisation_id: int):
    """Orders, invoices and credit notes: the organisation's admins and billing members, and finance."""
    db, me = get_db(), actor()
    organisation = db.get(Organisation, organisation_id)
    if organisation is None:
        raise NotFound(_("No such organisation."))
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
