"""Refunds the way Stripe makes them, on top of localstripe's ``Refund``.

localstripe 1.15.10 refunds any amount any number of times, defaults to the whole charge even after a
partial refund, refuses ``reason`` and sends no event. :func:`install` wraps ``Refund.__init__`` (so both
``POST /v1/refunds`` and localstripe's own refunds, such as a partial capture's, go through it) to:

* refuse an amount above what remains refundable on the charge with Stripe's 400
  ``Refund amount (€15.00) is greater than unrefunded amount on charge (€10.00)`` (``param=amount``), and a
  refund of a fully refunded charge with code ``charge_already_refunded``;
* default the amount to what remains refundable, as Stripe does;
* accept ``reason`` (``duplicate``, ``fraudulent``, ``requested_by_customer``) and fill ``payment_intent``
  from the charge when only ``charge`` was given;
* send ``refund.created`` and ``charge.refunded`` (the charge with its new ``amount_refunded`` and
  ``refunded``, ``data.previous_attributes`` holding the old values), signed and delivered like
  localstripe's other events.

Not reproduced: pending or failed refunds, ``refund.updated``, ``charge.refund.updated``, refunds of
uncaptured charges, ``instructions_email``, ``refund_application_fee``, ``reverse_transfer``.
"""

from __future__ import annotations

from typing import Any

from localstripe.resources import Charge, Event, PaymentIntent, Refund, store, try_convert_to_int
from localstripe.webhooks import schedule_webhook

from portal_standin.devstripe.errors import invalid_request
from portal_standin.devstripe.money import format_amount

REASONS = ("duplicate", "fraudulent", "requested_by_customer")

_original_init = Refund.__init__


def _charge_to_refund(charge: Any, payment_intent: Any) -> Charge | None:
    """The succeeded charge a refund request is about, or ``None`` to leave the checks to localstripe."""
    if isinstance(charge, str) and charge.startswith("ch_") and payment_intent is None:
        found = store.get("charge:" + charge)
    elif charge is None and isinstance(payment_intent, str) and payment_intent.startswith("pi_"):
        intent: PaymentIntent | None = store.get("payment_intent:" + payment_intent)
        found = intent.latest_charge if intent is not None else None
    else:
        found = None
    return found if found is not None and found.status == "succeeded" else None


def _refund_init(
    self: Refund,
    charge: Any = None,
    payment_intent: Any = None,
    amount: Any = None,
    metadata: Any = None,
    reason: Any = None,
    **kwargs: Any,
) -> None:
    if reason is not None and reason not in REASONS:
        raise invalid_request(
            f"Invalid reason: must be one of {', '.join(REASONS)}", "reason", "parameter_invalid_string"
        )
    charge_obj = _charge_to_refund(charge, payment_intent)
    previous: dict[str, Any] = {}
    if charge_obj is not None and not kwargs:
        refunded = charge_obj.amount_refunded
        remaining = charge_obj.amount - refunded
        if remaining <= 0:
            raise invalid_request(
                f"Charge {charge_obj.id} has already been refunded.",
                code="charge_already_refunded",
                charge=charge_obj.id,
            )
        requested = try_convert_to_int(amount)
        if amount is None:
            amount = remaining
        elif isinstance(requested, int) and requested > remaining:
            raise invalid_request(
                f"Refund amount ({format_amount(requested, charge_obj.currency)}) is greater than unrefunded "
                f"amount on charge ({format_amount(remaining, charge_obj.currency)})",
                "amount",
            )
        previous = {"amount_refunded": refunded, "refunded": charge_obj.refunded}

    _original_init(self, charge=charge, payment_intent=payment_intent, amount=amount, metadata=metadata, **kwargs)

    self.reason = reason
    charge_obj = Charge._api_retrieve(self.charge)
    if self.payment_intent is None:
        self.payment_intent = charge_obj.payment_intent
    schedule_webhook(Event("refund.created", self))
    event = Event("charge.refunded", charge_obj)
    current = {"amount_refunded": charge_obj.amount_refunded, "refunded": charge_obj.refunded}
    event.data["previous_attributes"] = {key: value for key, value in previous.items() if current[key] != value}
    schedule_webhook(event)


def install() -> None:
    """Wrap localstripe's ``Refund`` (once per process)."""
    if Refund.__init__ is not _refund_init:
        Refund.__init__ = _refund_init
