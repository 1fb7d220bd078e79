"""Checkout Sessions in ``mode=payment``, added to localstripe, which has none.

What it reproduces of Stripe's API (https://docs.stripe.com/api/checkout/sessions):

* ``POST /v1/checkout/sessions`` with ``line_items[N][price_data][currency|unit_amount|product_data][name]``
  (or ``[product]``, an existing localstripe Product) and ``line_items[N][quantity]``, ``mode``,
  ``success_url``, ``cancel_url``, ``metadata``, ``customer`` or ``customer_email``, ``customer_creation``,
  ``client_reference_id``, ``expires_at`` (30 minutes to 24 hours ahead; 24 hours by default),
  ``payment_intent_data[metadata|description]``, ``payment_method_types`` (card only), ``locale``,
  ``submit_type``, ``ui_mode=hosted``. Unknown parameters are refused as Stripe refuses them, so that code
  written against the stand-in does not send what Stripe would reject. The answer is a ``checkout.session``
  (``cs_test_…``, ``status=open``, ``payment_status=unpaid``, ``url`` to the hosted page of
  :mod:`portal_standin.devstripe.hosted_page`).
* ``GET /v1/checkout/sessions/{id}`` (``expand[]`` of ``line_items``, ``payment_intent``, ``customer``),
  ``GET /v1/checkout/sessions`` (``limit``, ``starting_after``, ``status``, ``payment_intent``, ``customer``;
  newest first), ``GET /v1/checkout/sessions/{id}/line_items`` (``limit``, ``starting_after``),
  ``POST /v1/checkout/sessions/{id}/expire``.
* Expiry: an open session whose ``expires_at`` has passed becomes ``expired`` (checked every second and on
  every read), like an explicit expire: its PaymentIntent, if a declined attempt left one, is canceled and a
  ``checkout.session.expired`` event is sent.
* Paying (from the hosted page) goes through localstripe's own classes: a Customer when the session has one
  or ``customer_creation=always``, a card PaymentMethod, a PaymentIntent confirmed with it and so its Charge
  and balance transaction, all retrievable and refundable through the ordinary API afterwards. Events:
  ``payment_intent.created``, ``payment_intent.succeeded`` (localstripe's), ``charge.succeeded`` and
  ``checkout.session.completed``; after a declined card ``payment_intent.payment_failed`` and
  ``charge.failed``, the session staying open and the next attempt reusing its PaymentIntent, as Checkout
  does. Events are signed and delivered by localstripe's webhook code, one second after they happen.

Not reproduced: other modes (setup, subscription), Prices and ``line_items[N][price]``, discounts, taxes,
shipping, adjustable quantities, embedded or custom UI modes, ``after_expiration`` recovery, payment links,
asynchronous payment methods, ``POST /v1/checkout/sessions/{id}`` (update), exact wording of every error.

Sessions live in localstripe's store under ``checkout.session:<id>``, so they are saved with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from aiohttp import web
from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    Event,
    PaymentIntent,
    PaymentMethod,
    StripeObject,
    store,
    try_convert_to_int,
)
from localstripe.server import get_post_data, json_response, unflatten_data
from localstripe.webhooks import schedule_webhook

from portal_standin.devstripe.errors import invalid_request, missing_parameter, not_found, unknown_parameter
from portal_standin.devstripe.money import format_amount, minimum_charge

log = logging.getLogger(__name__)

#: Stripe's default and allowed lifetimes of a Checkout Session.
DEFAULT_LIFETIME_S = 24 * 3600
MIN_LIFETIME_S = 30 * 60
#: Slack for ``expires_at`` computed by a client a little before the request arrives.
_CLOCK_SLACK_S = 60
#: Stripe's largest amount for a payment (in the smallest unit).
MAX_AMOUNT = 99_999_999

#: Stripe's test card that succeeds.
SUCCEEDING_CARD = "4242424242424242"
#: A test card whose charge localstripe declines (``card_declined``, "Your card was declined.").
DECLINED_CARD = "4000000000000341"

_ALPHANUMERIC = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


# --- parameter checks ------------------------------------------------------------------------------------


def _reject_unknown(params: dict[str, Any], allowed: Iterable[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            raise unknown_parameter(f"{prefix}[{key}]" if prefix else key)


def _string(value: Any, param: str, *, required: bool = False, max_length: int = 5000) -> str | None:
    if value is None or value == "":
        if required:
            raise missing_parameter(param)
        return None
    if not isinstance(value, str):
        raise invalid_request(f"Invalid string: {value!r}", param, "parameter_invalid_string")
    if len(value) > max_length:
        raise invalid_request(f"Invalid string: must be at most {max_length} characters long", param)
    return value


def _integer(value: Any, param: str, *, minimum: int = 0) -> int:
    if value is None or value == "":
        raise missing_parameter(param)
    number = try_convert_to_int(value)
    if not isinstance(number, int) or isinstance(number, bool):
        raise invalid_request(f"Invalid integer: {value}", param, "parameter_invalid_integer")
    if number < minimum:
        raise invalid_request(f"This value must be greater than or equal to {minimum}.", param)
    return number


def _url(value: Any, param: str, *, required: bool = False) -> str | None:
    url = _string(value, param, required=required, max_length=5000)
    if url is not None and not re.match(r"^https?://[^\s/]+", url):
        raise invalid_request("Not a valid URL", param, "url_invalid")
    return url


def _metadata(value: Any, param: str) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid_request("Invalid object", param, "parameter_invalid_object")
    if len(value) > 50:
        raise invalid_request("Metadata can have at most 50 keys.", param)
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 40 or len(item) > 500:
            raise invalid_request("Metadata keys are at most 40 characters and values strings of at most 500.", param)
    return dict(value)


def _price_line(item: Any, index: int, created: int) -> dict[str, Any]:
    """One ``line_items[N]`` with ``price_data`` → the ``item`` object Stripe lists for it."""
    param = f"line_items[{index}]"
    if not isinstance(item, dict):
        raise invalid_request("Invalid object", param, "parameter_invalid_object")
    if "price" in item:
        raise invalid_request(
            "The Stripe stand-in has no Prices: give the line item's price_data instead.", f"{param}[price]"
        )
    _reject_unknown(item, ("price_data", "quantity"), param)
    price_data = item.get("price_data")
    if not isinstance(price_data, dict):
        raise missing_parameter(f"{param}[price_data]")
    _reject_unknown(
        price_data, ("currency", "unit_amount", "product_data", "product", "tax_behavior"), f"{param}[price_data]"
    )
    currency = _string(price_data.get("currency"), f"{param}[price_data][currency]", required=True)
    assert currency is not None
    if not re.fullmatch(r"[A-Za-z]{3}", currency):
        raise invalid_request(f"Invalid currency: {currency}", f"{param}[price_data][currency]")
    currency = currency.lower()
    unit_amount = _integer(price_data.get("unit_amount"), f"{param}[price_data][unit_amount]")
    quantity = _integer(item.get("quantity"), f"{param}[quantity]", minimum=1)

    product_data, product_id = price_data.get("product_data"), price_data.get("product")
    if (product_data is None) == (product_id is None):
        raise invalid_request(
            "You must specify exactly one of product or product_data.", f"{param}[price_data][product_data]"
        )
    if product_id is not None:
        product_id = _string(product_id, f"{param}[price_data][product]", required=True)
        product = store.get("product:" + product_id)
        if product is None:
            raise invalid_request(
                f"No such product: '{product_id}'", f"{param}[price_data][product]", "resource_missing"
            )
        name, description = product.name, getattr(product, "description", None)
    else:
        if not isinstance(product_data, dict):
            raise invalid_request("Invalid object", f"{param}[price_data][product_data]", "parameter_invalid_object")
        _reject_unknown(product_data, ("name", "description", "metadata"), f"{param}[price_data][product_data]")
        name = _string(product_data.get("name"), f"{param}[price_data][product_data][name]", required=True)
        description = _string(product_data.get("description"), f"{param}[price_data][product_data][description]")
        _metadata(product_data.get("metadata"), f"{param}[price_data][product_data][metadata]")
        product_id = random_id("prod_", 14)

    total = unit_amount * quantity
    return {
        "id": random_id("li_"),
        "object": "item",
        "amount_discount": 0,
        "amount_subtotal": total,
        "amount_tax": 0,
        "amount_total": total,
        "currency": currency,
        "description": name,
        "price": {
            "id": random_id("price_"),
            "object": "price",
            "active": False,
            "billing_scheme": "per_unit",
            "created": created,
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": product_id,
            "recurring": None,
            "tax_behavior": price_data.get("tax_behavior") or "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": str(unit_amount),
        },
        "quantity": quantity,
        # Not part of Stripe's item object; kept for the hosted page.
        "_product_description": description,
    }


_CREATE_PARAMS = (
    "mode",
    "line_items",
    "success_url",
    "cancel_url",
    "metadata",
    "customer",
    "customer_email",
    "customer_creation",
    "client_reference_id",
    "expires_at",
    "payment_intent_data",
    "payment_method_types",
    "locale",
    "submit_type",
    "ui_mode",
)


# --- the resource ----------------------------------------------------------------------------------------


class CheckoutSession(StripeObject):
    """A ``checkout.session`` in ``mode=payment``, stored in localstripe's store."""

    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, origin: str, params: dict[str, Any]) -> None:
        now = int(time.time())
        _reject_unknown(params, _CREATE_PARAMS)

        mode = _string(params.get("mode"), "mode", required=True)
        if mode not in ("payment", "setup", "subscription"):
            raise invalid_request("Invalid mode: must be one of payment, setup, or subscription", "mode")
        if mode != "payment":
            raise invalid_request(f"The Stripe stand-in supports mode=payment only, not mode={mode}.", "mode")
        if params.get("ui_mode") not in (None, "hosted"):
            raise invalid_request("The Stripe stand-in supports ui_mode=hosted only.", "ui_mode")

        raw_items = params.get("line_items")
        if not raw_items:
            raise invalid_request("`line_items` is required in `payment` mode.", "line_items", "parameter_missing")
        if not isinstance(raw_items, list):
            raise invalid_request("Invalid array", "line_items", "parameter_invalid_array")
        line_items = [_price_line(item, index, now) for index, item in enumerate(raw_items)]
        currencies = {item["currency"] for item in line_items}
        if len(currencies) > 1:
            raise invalid_request("All line items must use the same currency.", "line_items")
        currency = currencies.pop()
        amount_total = sum(item["amount_total"] for item in line_items)
        if amount_total < minimum_charge(currency):
            minimum = format_amount(minimum_charge(currency), currency)
            raise invalid_request(
                f"The Checkout Session's total amount due must add up to at least {minimum}", "line_items"
            )
        if amount_total > MAX_AMOUNT:
            raise invalid_request(
                f"The Checkout Session's total amount due must be no more than {format_amount(MAX_AMOUNT, currency)}",
                "line_items",
                "amount_too_large",
            )

        success_url = _url(params.get("success_url"), "success_url")
        cancel_url = _url(params.get("cancel_url"), "cancel_url")

        customer = _string(params.get("customer"), "customer")
        customer_email = _string(params.get("customer_email"), "customer_email", max_length=800)
        customer_creation = _string(params.get("customer_creation"), "customer_creation")
        if customer is not None:
            if customer_email is not None:
                raise invalid_request("You may only specify one of these parameters: customer, customer_email.")
            if customer_creation is not None:
                raise invalid_request(
                    "You may only specify one of these parameters: customer, customer_creation.", "customer_creation"
                )
            if store.get("customer:" + customer) is None:
                raise invalid_request(f"No such customer: '{customer}'", "customer", "resource_missing")
        if customer_creation not in (None, "always", "if_required"):
            raise invalid_request(
                "Invalid customer_creation: must be one of always or if_required", "customer_creation"
            )
        if customer_email is not None and "@" not in customer_email:
            raise invalid_request(f"Invalid email address: {customer_email}", "customer_email", "email_invalid")

        expires_at = now + DEFAULT_LIFETIME_S
        if params.get("expires_at") not in (None, ""):
            expires_at = _integer(params["expires_at"], "expires_at")
            if not now + MIN_LIFETIME_S - _CLOCK_SLACK_S <= expires_at <= now + DEFAULT_LIFETIME_S + _CLOCK_SLACK_S:
                raise invalid_request(
                    "The `expires_at` timestamp must be between 30 minutes and 24 hours after the Checkout Session "
                    "is created.",
                    "expires_at",
                )

        payment_intent_data = params.get("payment_intent_data") or {}
        if not isinstance(payment_intent_data, dict):
            raise invalid_request("Invalid object", "payment_intent_data", "parameter_invalid_object")
        _reject_unknown(payment_intent_data, ("metadata", "description"), "payment_intent_data")
        payment_methods = params.get("payment_method_types")
        if payment_methods is not None and payment_methods != ["card"]:
            raise invalid_request("The Stripe stand-in accepts cards only.", "payment_method_types")
        submit_type = _string(params.get("submit_type"), "submit_type")
        if submit_type not in (None, "auto", "book", "donate", "pay", "subscribe"):
            raise invalid_request(f"Invalid submit_type: {submit_type}", "submit_type")

        metadata = _metadata(params.get("metadata"), "metadata")
        client_reference_id = _string(params.get("client_reference_id"), "client_reference_id", max_length=200)
        locale = _string(params.get("locale"), "locale")
        intent_metadata = _metadata(payment_intent_data.get("metadata"), "payment_intent_data[metadata]")
        intent_description = _string(payment_intent_data.get("description"), "payment_intent_data[description]")

        # All checks are done: the object is filled in, and only then enters the store.
        session_id = random_id(self._id_prefix, 58)
        self.mode = mode
        self.status = "open"
        self.payment_status = "unpaid"
        self.currency = currency
        self.amount_subtotal = amount_total
        self.amount_total = amount_total
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.metadata = metadata
        self.customer = customer
        self.customer_email = customer_email
        self.customer_creation = None if customer is not None else (customer_creation or "if_required")
        self.customer_details: dict[str, Any] | None = None
        self.client_reference_id = client_reference_id
        self.expires_at = expires_at
        self.payment_intent: str | None = None
        self.locale = locale
        self.submit_type = submit_type
        self._line_items = line_items
        self._payment_intent_metadata = intent_metadata
        self._payment_intent_description = intent_description
        self._hosted_url = f"{origin}/pay/{session_id}"
        super().__init__(id=session_id)
        self.created = now

    # --- reading ---

    @property
    def _line_items_url(self) -> str:
        return f"/v1/checkout/sessions/{self.id}/line_items"

    def _line_item_objects(self) -> list[dict[str, Any]]:
        """The line items as Stripe exports them (without the stand-in's own keys)."""
        return [{k: v for k, v in item.items() if not k.startswith("_")} for item in self._line_items]

    def _export(self, expand: Any = None) -> dict[str, Any]:
        paths = _expand_paths(expand)
        obj: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "after_expiration": None,
            "allow_promotion_codes": None,
            "amount_subtotal": self.amount_subtotal,
            "amount_total": self.amount_total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": self.cancel_url,
            "client_reference_id": self.client_reference_id,
            "client_secret": None,
            "created": self.created,
            "currency": self.currency,
            "custom_fields": [],
            "customer": self.customer,
            "customer_creation": self.customer_creation,
            "customer_details": self.customer_details,
            "customer_email": self.customer_email,
            "expires_at": self.expires_at,
            "invoice": None,
            "livemode": False,
            "locale": self.locale,
            "metadata": dict(self.metadata),
            "mode": self.mode,
            "payment_intent": self.payment_intent,
            "payment_link": None,
            "payment_method_types": ["card"],
            "payment_status": self.payment_status,
            "status": self.status,
            "submit_type": self.submit_type,
            "subscription": None,
            "success_url": self.success_url,
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": "hosted",
            # Stripe gives the URL only while the session can still be paid.
            "url": self._hosted_url if self.status == "open" else None,
        }
        for path in paths:
            head, _, rest = path.partition(".")
            if head == "line_items" and not rest:
                obj["line_items"] = paginate(self._line_items_url, self._line_item_objects())
            elif head in ("payment_intent", "customer"):
                if obj[head] is not None:
                    cls = PaymentIntent if head == "payment_intent" else Customer
                    obj[head] = cls._api_retrieve(obj[head])._export(expand=[rest] if rest else None)
            else:
                raise invalid_request(f"This property cannot be expanded ({path}).", "expand")
        return obj

    @classmethod
    def _api_retrieve(cls, id: str) -> CheckoutSession:
        obj = store.get(cls.object + ":" + id)
        if obj is None:
            raise not_found(f"No such checkout.session: '{id}'", "session")
        obj._expire_if_overdue()
        return obj

    @classmethod
    def _all(cls) -> list[CheckoutSession]:
        """Every session, newest first (the store keeps insertion order)."""
        return [value for key, value in reversed(store.items()) if key.startswith(cls.object + ":")]

    # --- state changes ---

    def _expire_if_overdue(self, now: float | None = None) -> bool:
        if self.status == "open" and (now if now is not None else time.time()) >= self.expires_at:
            self._expire()
            return True
        return False

    def _expire(self) -> None:
        """open → expired; a PaymentIntent left by a declined attempt is canceled. Sends the events."""
        if self.status != "open":
            raise invalid_request(
                f'Only Checkout Sessions with a status in ["open"] can be expired; {self.id} is {self.status}.',
                "session",
            )
        self.status = "expired"
        if self.payment_intent is not None:
            intent = PaymentIntent._api_retrieve(self.payment_intent)
            if intent.status in ("requires_payment_method", "requires_confirmation", "requires_action"):
                intent._canceled = True
                intent.next_action = None
                intent.cancellation_reason = "abandoned"
                schedule_webhook(Event("payment_intent.canceled", intent))
        schedule_webhook(Event("checkout.session.expired", self))
        store.dump_to_disk()

    def _pay(self, email: str, card_number: str) -> str | None:
        """Pay the session with a test card, through localstripe's own objects.

        Returns ``None`` when paid (the session is then ``complete``), or the card's decline message (the
        session stays ``open``).
        """
        if self.status != "open":
            raise invalid_request(f"This Checkout Session is {self.status}.", "session")

        intent = PaymentIntent._api_retrieve(self.payment_intent) if self.payment_intent else None
        customer_id = self.customer or (intent.customer if intent is not None else None)
        if customer_id is None and self.customer_creation == "always":
            customer_id = Customer(email=email).id
        expiry_year = datetime.date.today().year + 3
        method = PaymentMethod(
            type="card",
            card={"number": card_number, "exp_month": "12", "exp_year": str(expiry_year), "cvc": "123"},
            billing_details={"email": email, "name": None, "phone": None, "address": None},
        )
        if intent is None:
            intent = PaymentIntent(
                amount=self.amount_total,
                currency=self.currency,
                customer=customer_id,
                payment_method=method.id,
                metadata=dict(self._payment_intent_metadata),
            )
            intent.description = self._payment_intent_description
            intent.payment_method_types = ["card"]
            self.payment_intent = intent.id
            schedule_webhook(Event("payment_intent.created", intent))
        else:
            # A new attempt after a decline: Checkout confirms the same PaymentIntent again.
            intent.customer = customer_id
            intent.payment_method = method.id
            intent.latest_charge = None

        declined: list[bool] = []
        intent._confirm(on_failure_now=lambda: declined.append(True))
        charge = intent.latest_charge
        if declined:
            schedule_webhook(Event("charge.failed", charge))
            schedule_webhook(Event("payment_intent.payment_failed", intent))
            return str(charge.failure_message)

        schedule_webhook(Event("charge.succeeded", charge))
        self.status = "complete"
        self.payment_status = "paid"
        self.customer = customer_id
        self.customer_details = {
            "address": None,
            "email": email,
            "name": None,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        }
        schedule_webhook(Event("checkout.session.completed", self))
        return None


# --- lists and expansion ---------------------------------------------------------------------------------


def _expand_paths(expand: Any) -> list[str]:
    if expand is None or expand == "":
        return []
    if isinstance(expand, str):
        expand = [expand]
    if not isinstance(expand, list) or not all(isinstance(path, str) for path in expand):
        raise invalid_request("Invalid array", "expand", "parameter_invalid_array")
    return expand


def _limit(value: Any) -> int:
    if value is None or value == "":
        return 10
    limit = _integer(value, "limit", minimum=1)
    if limit > 100:
        raise invalid_request("This value must be less than or equal to 100.", "limit")
    return limit


def paginate(
    url: str, objects: list[Any], limit: Any = None, starting_after: Any = None, export: Callable[[Any], Any] = dict
) -> dict[str, Any]:
    """A Stripe list object over ``objects`` (each with an ``id``), cursor-paginated like Stripe's."""
    count = _limit(limit)
    start = 0
    if starting_after not in (None, ""):
        ids = [obj["id"] if isinstance(obj, dict) else obj.id for obj in objects]
        if starting_after not in ids:
            raise invalid_request(f"No such object: '{starting_after}'", "starting_after", "resource_missing")
        start = ids.index(starting_after) + 1
    page = objects[start : start + count]
    return {
        "object": "list",
        "data": [export(obj) for obj in page],
        "has_more": len(objects) > start + count,
        "url": url,
    }


# --- HTTP handlers ---------------------------------------------------------------------------------------


def request_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def create_session(request: web.Request) -> web.Response:
    data = await get_post_data(request) or {}
    expand = data.pop("expand", None)
    session = CheckoutSession(request_origin(request), data)
    return json_response(session._export(expand=expand))


async def retrieve_session(request: web.Request) -> web.Response:
    data = unflatten_data(request.query)
    expand = data.pop("expand", None)
    _reject_unknown(data, ())
    return json_response(CheckoutSession._api_retrieve(request.match_info["id"])._export(expand=expand))


async def list_sessions(request: web.Request) -> web.Response:
    data = unflatten_data(request.query)
    _reject_unknown(data, ("limit", "starting_after", "status", "payment_intent", "customer"))
    expire_overdue_sessions()
    sessions = CheckoutSession._all()
    for field in ("status", "payment_intent", "customer"):
        if data.get(field):
            sessions = [session for session in sessions if getattr(session, field) == data[field]]
    return json_response(
        paginate(
            "/v1/checkout/sessions",
            sessions,
            data.get("limit"),
            data.get("starting_after"),
            export=lambda session: session._export(),
        )
    )


async def list_line_items(request: web.Request) -> web.Response:
    data = unflatten_data(request.query)
    _reject_unknown(data, ("limit", "starting_after"))
    session = CheckoutSession._api_retrieve(request.match_info["id"])
    return json_response(
        paginate(session._line_items_url, session._line_item_objects(), data.get("limit"), data.get("starting_after"))
    )


async def expire_session(request: web.Request) -> web.Response:
    data = await get_post_data(request) or {}
    expand = data.pop("expand", None)
    _reject_unknown(data, ())
    session = CheckoutSession._api_retrieve(request.match_info["id"])
    session._expire()
    return json_response(session._export(expand=expand))


def expire_overdue_sessions() -> int:
    now = time.time()
    return sum(session._expire_if_overdue(now) for session in CheckoutSession._all())


async def expiry_sweeper(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: expires overdue sessions every second, as Stripe does on its own."""

    async def sweep() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                expire_overdue_sessions()
            except UserError:  # pragma: no cover - nothing to tell a client; keep sweeping
                log.exception("expiring overdue Checkout Sessions failed")

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/checkout/sessions", create_session)
    app.router.add_get("/v1/checkout/sessions", list_sessions)
    app.router.add_get("/v1/checkout/sessions/{id}", retrieve_session)
    app.router.add_get("/v1/checkout/sessions/{id}/line_items", list_line_items)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_session)
    app.cleanup_ctx.append(expiry_sweeper)
