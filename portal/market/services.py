"""The marketplace: offerings, orders paid through Stripe Checkout, invoices with EU VAT, refunds.

Hours are credited only by a verified webhook (``market.webhooks``): the event id is stored in the same
transaction that credits the allocation and issues the invoice, so a redelivered, late or out-of-order event
changes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from babel.lists import format_list
from sqlmodel import Session, col, select

from portal.audit import services as audit
from portal.audit.models import AuditAction
from portal.authz import Action, AssuranceTooLow, allowed, organisation_role, require, require_level
from portal.config import AssuranceLevel, OIDCProvider, Settings
from portal.db import utcnow
from portal.errors import Conflict, InvalidInput, NotAuthorised, NotFound
from portal.formatting import DEFAULT_LOCALE
from portal.identity.models import Login, User
from portal.ledger import services as ledger
from portal.ledger import wording
from portal.ledger.models import UNITS, CapacityPeriod, Resource, Site
from portal.market.invoicing import book_refund, refundable_quantity, refunded_quantity
from portal.market.invoicing import issue_invoice as issue_invoice
from portal.market.models import (
    Invoice,
    Offering,
    OfferingPrice,
    OfferingState,
    Order,
    OrderState,
)
from portal.market.stripe_gateway import StripeGateway
from portal.market.vat import VatTreatment, confirm_with_vies, consumer_treatment, treatment_for, vat_cents
from portal.market.webhooks import HANDLED_EVENTS as HANDLED_EVENTS
from portal.market.webhooks import PaymentNotBookedYet as PaymentNotBookedYet
from portal.market.webhooks import _fulfil as _fulfil
from portal.market.webhooks import handle_stripe_event as handle_stripe_event
from portal.messages import N_, Message, Text
from portal.projects import services as projects
from portal.projects.models import Organisation, OrganisationRole, Project


class OrderRefused(Conflict):
    title = "Order not possible"


# --- offerings ------------------------------------------------------------------------------------------


#: The most hours one order may buy: far beyond any real order, and within the quantity columns' range.
LARGEST_ORDER = 1_000_000
QUANTITIES_MESSAGE = Message(
    N_("The largest quantity is at least the smallest, which is at least 1; an order buys at most %(largest)s hours."),
    largest=LARGEST_ORDER,
)


def create_offering(
    db: Session,
    actor: User | None,
    *,
    resource: Resource,
    title: str,
    price_cents: int,
    max_quantity: int,
    min_quantity: int = 1,
    validity_months: int = 6,
    description: str = "",
    reason: str,
) -> Offering:
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    errors = {}
    if not title.strip():
        errors["title"] = Message(N_("Enter a title."))
    if not isinstance(price_cents, int) or price_cents <= 0:
        errors["price"] = Message(N_("The price is a positive amount."))
    if not 1 <= min_quantity <= max_quantity <= LARGEST_ORDER:
        errors["max_quantity"] = QUANTITIES_MESSAGE
    if validity_months not in (3, 6, 12):
        errors["validity_months"] = Message(N_("Bought hours are valid 3, 6 or 12 months."))
    if errors:
        raise InvalidInput(Message(N_("The offering could not be saved.")), errors=errors)
    offering = Offering(
        resource_id=resource.id,
        title=title.strip(),
        description=description,
        price_cents=price_cents,
        min_quantity=min_quantity,
        max_quantity=max_quantity,
        validity_months=validity_months,
    )
    db.add(offering)
    db.flush()
    db.add(OfferingPrice(offering_id=offering.id, price_cents=price_cents, changed_by_id=actor.id if actor else None))
    summary = f"offering '{offering.title}' of {resource.name} at {price_cents} cents an hour"
    audit.record(db, actor, AuditAction.OFFERING_CREATED, offering, summary=summary, reason=reason)
    db.commit()
    return offering


def update_offering(
    db: Session,
    actor: User,
    offering: Offering,
    *,
    title: str,
    description: str,
    min_quantity: int,
    max_quantity: int,
    validity_months: int,
    reason: str,
) -> Offering:
    """Edit what an offering says and allows; orders already placed keep what they bought."""
    require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    errors = {}
    if not title.strip():
        errors["title"] = Message(N_("Enter a title."))
    if not 1 <= min_quantity <= max_quantity <= LARGEST_ORDER:
        errors["max_quantity"] = QUANTITIES_MESSAGE
    if validity_months not in (3, 6, 12):
        errors["validity_months"] = Message(N_("Bought hours are valid 3, 6 or 12 months."))
    if errors:
        raise InvalidInput(Message(N_("The offering could not be saved.")), errors=errors)
    fields = ("title", "description", "min_quantity", "max_quantity", "validity_months")
    before = {f: getattr(offering, f) for f in fields}
    offering.title, offering.description = title.strip()[:200], description[:5000]
    offering.min_quantity, offering.max_quantity, offering.validity_months = min_quantity, max_quantity, validity_months
    changed = {
        f: {"before": before[f], "after": getattr(offering, f)} for f in fields if before[f] != getattr(offering, f)
    }
    summary = f"offering '{offering.title}': {', '.join(changed) or 'nothing'} changed"
    audit.record(db, actor, AuditAction.OFFERING_UPDATED, offering, summary=summary, reason=reason, details=changed)
    db.commit()
    return offering


def change_price(db: Session, actor: User, offering: Offering, price_cents: int, *, reason: str) -> Offering:
    """A new price for new orders; orders placed before keep theirs (each order stores its unit price)."""
    require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    if not isinstance(price_cents, int) or price_cents <= 0:
        raise InvalidInput(
            Message(N_("The price is a positive amount.")), errors={"price": Message(N_("Must be positive."))}
        )
    before, offering.price_cents = offering.price_cents, price_cents
    db.add(OfferingPrice(offering_id=offering.id, price_cents=price_cents, changed_by_id=actor.id))
    summary = f"price of '{offering.title}' {before} -> {price_cents} cents an hour"
    details = {"before_cents": before, "after_cents": price_cents}
    audit.record(db, actor, AuditAction.PRICE_CHANGED, offering, summary=summary, reason=reason, details=details)
    db.commit()
    return offering


def set_offering_state(
    db: Session, actor: User | None, offering: Offering, state: OfferingState, *, reason: str
) -> Offering:
    if actor is not None:
        require(db, actor, Action.MANAGE_CAPACITY)
    reason = audit.require_reason(reason)
    before, offering.state = offering.state, state
    summary = f"offering '{offering.title}' {before} -> {state}"
    details = {"before": before, "after": state}
    audit.record(
        db, actor, AuditAction.OFFERING_STATE_CHANGED, offering, summary=summary, reason=reason, details=details
    )
    db.commit()
    return offering


@dataclass(frozen=True)
class CatalogueItem:
    offering: Offering
    resource: Resource
    site: Site
    #: Display units still free over the offering's validity from today (capacity × overbooking − reserved).
    available: int


def catalogue(db: Session, *, site_code: str | None = None, gpu_model: str | None = None) -> list[CatalogueItem]:
    """Published offerings with the capacity honestly left for a purchase made today."""
    stmt = (
        select(Offering, Resource, Site)
        .join(Resource, Resource.id == Offering.resource_id)
        .join(Site, Site.id == Resource.site_id)
        .where(Offering.state == OfferingState.PUBLISHED)
        .order_by(Site.name, Offering.price_cents)
    )
    if site_code:
        stmt = stmt.where(Site.code == site_code)
    if gpu_model:
        stmt = stmt.where(Resource.gpu_model == gpu_model)
    rows = db.exec(stmt).all()
    items = []
    for offering, resource, site in rows:
        starts_at, ends_at = _validity(offering)
        free = _free_capacity(db, resource, starts_at, ends_at)
        items.append(CatalogueItem(offering, resource, site, free // UNITS[resource.kind][2]))
    return items


def _validity(offering: Offering) -> tuple[datetime, datetime]:
    today = utcnow().date()
    starts_at = datetime.combine(today, time.min, tzinfo=UTC)
    return starts_at, starts_at + timedelta(days=round(offering.validity_months * 30.44))


def _free_capacity(db: Session, resource: Resource, starts_at: datetime, ends_at: datetime) -> int:
    """The most an allocation over these dates could still reserve: the tightest period decides."""
    periods = db.exec(
        select(CapacityPeriod)
        .where(
            CapacityPeriod.resource_id == resource.id,
            col(CapacityPeriod.starts_on) < ends_at.date(),
            col(CapacityPeriod.ends_on) > starts_at.date(),
        )
        .order_by(CapacityPeriod.starts_on)
    ).all()
    if not periods or periods[0].starts_on > starts_at.date() or periods[-1].ends_on < ends_at.date():
        return 0
    total = int((ends_at - starts_at).total_seconds())
    best: int | None = None
    for period in periods:
        start = max(starts_at, datetime.combine(period.starts_on, time.min, tzinfo=UTC))
        end = min(ends_at, datetime.combine(period.ends_on, time.min, tzinfo=UTC))
        seconds = int((end - start).total_seconds())
        if seconds <= 0:
            continue
        room = period.capacity * resource.overbooking_permille // 1000 - period.reserved
        fits = max(0, room) * total // seconds  # the share of an allocation that lands in this period
        best = fits if best is None else min(best, fits)
    return best or 0


# --- ordering ---------------------------------------------------------------------------------------------


def _require_buyer(db: Session, actor: User, login: Login | None, organisation: Organisation) -> None:
    role = organisation_role(db, actor, organisation.id)
    if role not in (OrganisationRole.BILLING, OrganisationRole.ADMIN):
        raise NotAuthorised(
            Message(
                N_("Only %(organisation)s's admins and billing members may buy for it."),
                organisation=organisation.name,
            )
        )
    if organisation.verified_at is None:
        raise OrderRefused(
            Message(
                N_("%(organisation)s is not verified yet; the factory's staff check it first."),
                organisation=organisation.name,
            )
        )
    try:  # the login placing this order, not an earlier, stronger one
        require_level(login, AssuranceLevel.SUBSTANTIAL, to="buy for an organisation")
    except AssuranceTooLow as exc:
        raise OrderRefused(exc.detail) from exc


def place_order(
    db: Session,
    settings: Settings,
    gateway: StripeGateway,
    actor: User,
    login: Login | None,
    *,
    offering: Offering,
    project: Project,
    quantity: int,
) -> tuple[Order, str]:
    """Hold the capacity, create the order and its Checkout Session; returns the order and the page to pay on."""
    require(db, actor, Action.VIEW_PROJECT, project)
    if project.organisation_id is None:
        raise OrderRefused(Message(N_("This is a personal project: its owner buys hours for it as a private person.")))
    organisation = db.get(Organisation, project.organisation_id)
    assert organisation is not None
    _require_buyer(db, actor, login, organisation)
    _check_offering(offering, quantity)
    treatment = treatment_for(
        seller_country=settings.seller_country,
        customer_country=organisation.country,
        customer_vat_number=organisation.vat_number,
        on=utcnow().date(),
    )
    if settings.vies_check and treatment.scheme == "reverse_charge" and treatment.customer_vat_number:
        confirm_with_vies(settings.vies_url, treatment.customer_vat_number)
    return _open_order(
        db,
        settings,
        gateway,
        actor,
        offering=offering,
        project=project,
        quantity=quantity,
        treatment=treatment,
        organisation_id=organisation.id,
    )


def _check_offering(offering: Offering, quantity: int) -> None:
    if offering.state != OfferingState.PUBLISHED:
        raise OrderRefused(Message(N_("This offering is not on sale.")))
    if not isinstance(quantity, int) or not offering.min_quantity <= quantity <= offering.max_quantity:
        raise InvalidInput(
            Message(N_("Choose another quantity.")),
            errors={
                "quantity": Message(
                    N_("Between %(min)s and %(max)s."), min=offering.min_quantity, max=offering.max_quantity
                )
            },
        )


def _open_order(
    db: Session,
    settings: Settings,
    gateway: StripeGateway,
    actor: User,
    *,
    offering: Offering,
    project: Project,
    quantity: int,
    treatment: VatTreatment,
    **buyer: str | int | None,
) -> tuple[Order, str]:
    """Hold the capacity, write the order (``buyer``: its organisation, or a private buyer's billing details)
    and open its Checkout Session."""
    resource = db.get(Resource, offering.resource_id)
    assert resource is not None
    net = offering.price_cents * quantity
    vat = vat_cents(net, treatment.basis_points)
    starts_at, ends_at = _validity(offering)
    with ledger.unit_of_work(db):
        allocation = ledger.hold_for_purchase(
            db,
            project=project,
            resource=resource,
            amount=quantity * UNITS[resource.kind][2],
            starts_at=starts_at,
            ends_at=ends_at,
            title=wording.PURCHASE_TITLE.english(offering=offering.title),
        )
        order = Order(
            **buyer,
            project_id=project.id,
            buyer_id=actor.id,
            offering_id=offering.id,
            quantity=quantity,
            unit_price_cents=offering.price_cents,
            net_cents=net,
            vat_basis_points=treatment.basis_points,
            vat_cents=vat,
            gross_cents=net + vat,
            currency=offering.currency,
            vat_scheme=treatment.scheme,
            vat_country=treatment.country,
            customer_vat_number=treatment.customer_vat_number,
            allocation_id=allocation.id,
        )
        db.add(order)
    try:
        session = gateway.create_checkout_session(
            order_id=order.id,
            name=f"{offering.title} ({quantity} {resource.display_unit}s)",
            unit_amount_cents=order.gross_cents,
            quantity=1,
            currency=order.currency,
            success_url=f"{settings.base_url}/market/orders/{order.id}",
            cancel_url=f"{settings.base_url}/market/orders/{order.id}?cancelled=1",
            customer_email=actor.email,
            # the order and the moment it was placed: unique even across databases sharing one Stripe account
            idempotency_key=f"order-{order.id}-{order.created_at.timestamp():.6f}-checkout",
        )
    except Exception:
        _expire_order(db, order)
        raise
    order.checkout_session_id = session.id
    db.commit()
    return order, session.url


# --- private buyers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillingDetails:
    """A private buyer's name and address as their invoice prints them, and the country of that address (which
    decides their VAT)."""

    name: str
    address: str
    country: str


def billing_details(name: str | None, address: str | None, country: str | None) -> BillingDetails:
    """The details a private buyer typed, checked: bad ones are refused, saying what to change."""
    name, address, country = (name or "").strip(), (address or "").strip(), (country or "").strip().upper()
    errors = {}
    if not name:
        errors["billing_name"] = Message(N_("Enter the name the invoice is made out to."))
    elif len(name) > 200:
        errors["billing_name"] = Message(N_("The name is longer than 200 characters."))
    if not address:
        errors["billing_address"] = Message(N_("Enter your billing address (street, postcode, town)."))
    elif len(address) > 500:
        errors["billing_address"] = Message(N_("The address is longer than 500 characters."))
    if country not in projects.countries():
        errors["billing_country"] = Message(N_("Choose the country of your billing address."))
    if errors:
        raise InvalidInput(Message(N_("The billing details are not complete.")), errors=errors)
    return BillingDetails(name, address, country)


def login_country(login: Login | None) -> str | None:
    """The member state that issued the eID of this login: the first part of the eIDAS person identifier
    (``EE/PL/38001085718``), when the provider asserted one."""
    identifier = str((login.attributes or {}).get("person_identifier") or "") if login else ""
    origin = identifier.split("/", 1)[0].upper()
    return origin if len(identifier) > 3 and identifier[2] == "/" and origin in projects.countries() else None


def logins_reaching(settings: Settings, level: AssuranceLevel) -> list[OIDCProvider]:
    """The configured logins that always give ``level`` or higher (they refuse or never ask for less)."""
    return [
        p
        for p in settings.oidc_providers
        if p.min_acr >= level or (p.request_acr is not None and (p.level_for(p.request_acr) or p.min_acr) >= level)
    ]


def require_private_buyer(settings: Settings, login: Login | None) -> None:
    """A private buyer's login must be at level substantial (a person, not an organisation, answers for the
    purchase); refused with the reason and the logins that give that level."""
    try:
        require_level(login, AssuranceLevel.SUBSTANTIAL, to="buy hours as a private person")
    except AssuranceTooLow as exc:
        strong = [p.label for p in logins_reaching(settings, AssuranceLevel.SUBSTANTIAL)]
        how = (
            Message(
                N_(
                    "Log in again with %(logins)s (always at that level) or with an eIDAS login made with a means "
                    "of that level (such as a national eID card)."
                ),
                logins=_Either(tuple(strong)),
            )
            if strong
            else Message(
                N_("Log in again with an eIDAS login made with a means of that level (such as a national eID card).")
            )
        )
        raise OrderRefused(exc.detail + how) from exc


@dataclass(frozen=True)
class _Either(Text):
    """Names joined by "or" the reader's way: ``A or B`` in English, ``A lub B`` in Polish."""

    names: tuple[str, ...]

    def render(self, locale: str) -> str:
        if locale == DEFAULT_LOCALE:
            return " or ".join(self.names)
        return format_list(list(self.names), style="or", locale=locale)


def private_buyer_vat(settings: Settings, country: str) -> VatTreatment:
    """Today's VAT for a private buyer whose billing address is in ``country``: the quote shows it, the order
    charges it; whether a consumer elsewhere in the EU pays their own country's rate is the setting
    ``seller_above_oss_threshold``."""
    return consumer_treatment(
        seller_country=settings.seller_country,
        customer_country=country,
        on=utcnow().date(),
        above_oss_threshold=settings.seller_above_oss_threshold,
    )


def place_private_order(
    db: Session,
    settings: Settings,
    gateway: StripeGateway,
    actor: User,
    login: Login | None,
    *,
    offering: Offering,
    quantity: int,
    billing: BillingDetails,
) -> tuple[Order, str]:
    """A person buys hours for themselves: into their personal project (made on the first purchase), with the
    VAT of a consumer living in the billing address's country; the eID's country is kept beside it as the
    second piece of evidence of where they live."""
    require_private_buyer(settings, login)
    _check_offering(offering, quantity)
    treatment = private_buyer_vat(settings, billing.country)
    project = projects.open_personal_project(db, actor)
    return _open_order(
        db,
        settings,
        gateway,
        actor,
        offering=offering,
        project=project,
        quantity=quantity,
        treatment=treatment,
        organisation_id=None,
        billing_name=billing.name,
        billing_address=billing.address,
        billing_country=billing.country,
        login_country=login_country(login),
    )


def private_purchases_of(db: Session, actor: User) -> tuple[list[Order], list[Invoice]]:
    """The actor's own purchases as a private person and their invoices and credit notes, newest first."""
    orders = list(
        db.exec(
            select(Order)
            .where(Order.buyer_id == actor.id, col(Order.organisation_id).is_(None))
            .order_by(col(Order.created_at).desc(), col(Order.id).desc())
        )
    )
    invoices = list(
        db.exec(
            select(Invoice)
            .where(col(Invoice.order_id).in_([o.id for o in orders]))
            .order_by(col(Invoice.issued_at).desc(), col(Invoice.id).desc())
        )
    )
    return orders, invoices


def _expire_order(db: Session, order: Order) -> None:
    with ledger.unit_of_work(db):
        ledger.release_purchase_hold(db, order.allocation_id)
        if order.state == OrderState.PENDING:
            order.state = OrderState.EXPIRED


def cancel_order(db: Session, gateway: StripeGateway, actor: User, order: Order) -> Order:
    """The buyer gives up before paying: the Checkout Session is expired at Stripe and the hold released."""
    if order.buyer_id != actor.id and (
        order.organisation_id is None or organisation_role(db, actor, order.organisation_id) != OrganisationRole.ADMIN
    ):
        raise NotAuthorised(Message(N_("Only the buyer or the organisation's admins cancel an order.")))
    if order.state != OrderState.PENDING:
        raise OrderRefused(Message(_NOT_CANCELLABLE[OrderState(order.state)]))
    if order.checkout_session_id:
        gateway.expire_checkout_session(order.checkout_session_id)
    _expire_order(db, order)
    return order


#: Why an order that is no longer pending cannot be cancelled, per state.
_NOT_CANCELLABLE = {
    OrderState.PAID: N_("This order is paid; only a pending order can be cancelled."),
    OrderState.EXPIRED: N_("This order is expired; only a pending order can be cancelled."),
    OrderState.REFUNDED: N_("This order is refunded; only a pending order can be cancelled."),
    OrderState.PARTIALLY_REFUNDED: N_("This order is partially refunded; only a pending order can be cancelled."),
}


def get_order(db: Session, actor: User, order_id: int) -> Order:
    """An order its organisation's admins and billing members, and finance staff, may see; a private buyer's
    order only they and finance staff."""
    order = db.get(Order, order_id)
    if order is None:
        raise NotFound(Message(N_("No such order.")))
    role = organisation_role(db, actor, order.organisation_id) if order.organisation_id is not None else None
    if (
        role not in (OrganisationRole.ADMIN, OrganisationRole.BILLING)
        and order.buyer_id != actor.id
        and not allowed(db, actor, Action.MANAGE_BILLING)
    ):
        raise NotFound(Message(N_("No such order.")))
    return order


# --- refunds ------------------------------------------------------------------------------------------------


def refund_order(
    db: Session, settings: Settings, gateway: StripeGateway, actor: User, order: Order, *, quantity: int, reason: str
) -> Invoice:
    """Finance refunds unused hours: a Stripe refund (idempotency key), a ledger debit and a credit note."""
    require(db, actor, Action.MANAGE_BILLING)
    reason = audit.require_reason(reason)
    available = refundable_quantity(db, order)
    if not isinstance(quantity, int) or not 1 <= quantity <= available:
        raise InvalidInput(
            Message(N_("Choose how many unused hours to refund.")),
            errors={
                "quantity": Message(
                    N_("Between 1 and %(available)s (the unused hours of the order)."), available=available
                )
            },
        )
    per_hour_gross = order.gross_cents // order.quantity
    amount = (
        per_hour_gross * quantity
        if quantity < order.quantity - refunded_quantity(order)
        else order.gross_cents - order.refunded_cents
    )
    key = f"order-{order.id}-{order.created_at.timestamp():.6f}-refund-{order.refunded_cents}-{amount}"
    assert order.payment_intent_id is not None
    gateway.refund(payment_intent=order.payment_intent_id, amount_cents=amount, idempotency_key=key)
    return book_refund(db, settings, order, quantity=quantity, gross_cents=amount, key=key, actor=actor, reason=reason)


# --- reading ------------------------------------------------------------------------------------------------


def orders_of_organisation(db: Session, actor: User, organisation: Organisation) -> list[Order]:
    role = organisation_role(db, actor, organisation.id)
    if role not in (OrganisationRole.ADMIN, OrganisationRole.BILLING) and not allowed(db, actor, Action.MANAGE_BILLING):
        raise NotFound(Message(N_("No such organisation.")))
    return list(
        db.exec(select(Order).where(Order.organisation_id == organisation.id).order_by(col(Order.created_at).desc()))
    )


def invoices_of_organisation(db: Session, actor: User, organisation: Organisation) -> list[Invoice]:
    orders_of_organisation(db, actor, organisation)  # the same permission
    return list(
        db.exec(
            select(Invoice).where(Invoice.organisation_id == organisation.id).order_by(col(Invoice.issued_at).desc())
        )
    )
