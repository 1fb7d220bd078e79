"""The one place the portal talks to Stripe: the real ``stripe`` library, pointed at Stripe or at the local
stand-in by ``PORTAL_STRIPE_API_BASE``; the same code path in the demo, the tests and production."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import stripe

from portal.config import Settings
from portal.errors import DomainError
from portal.messages import N_, Message


class PaymentServiceError(DomainError):
    status = 502
    title = "Payment service unavailable"


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class StripeGateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kwargs: dict[str, Any] = {"max_network_retries": 2}
        if settings.stripe_api_base:
            kwargs["base_addresses"] = {"api": settings.stripe_api_base}
        self.client = stripe.StripeClient(settings.stripe_api_key, **kwargs)

    def create_checkout_session(
        self,
        *,
        order_id: int,
        name: str,
        unit_amount_cents: int,
        quantity: int,
        currency: str,
        success_url: str,
        cancel_url: str,
        customer_email: str | None,
        idempotency_key: str,
    ) -> CheckoutSession:
        """A Checkout Session for the order's gross amount, computed by the portal; the order id is in the
        metadata and in the idempotency key, so a retried request cannot charge twice."""
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "price_data": {
                        "currency": currency.lower(),
                        "unit_amount": unit_amount_cents,
                        "product_data": {"name": name},
                    },
                    "quantity": quantity,
                }
            ],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": {"order_id": str(order_id)},
            "payment_intent_data": {"metadata": {"order_id": str(order_id)}},
            "client_reference_id": str(order_id),
        }
        if customer_email:
            params["customer_email"] = customer_email
        try:
            session = self.client.v1.checkout.sessions.create(
                params,
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise PaymentServiceError(
                Message(N_("The payment could not be started: %(reason)s"), reason=str(exc.user_message or exc))
            ) from exc
        return CheckoutSession(session.id, session.url or "")

    def expire_checkout_session(self, session_id: str) -> None:
        with contextlib.suppress(stripe.InvalidRequestError):  # already complete or expired
            self.client.v1.checkout.sessions.expire(session_id)

    def refund(self, *, payment_intent: str, amount_cents: int, idempotency_key: str) -> str:
        try:
            refund = self.client.v1.refunds.create(
                {"payment_intent": payment_intent, "amount": amount_cents},
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise PaymentServiceError(
                Message(N_("The refund failed at Stripe: %(reason)s"), reason=str(exc.user_message or exc))
            ) from exc
        return refund.id

    def checkout_session_of_payment(self, payment_intent: str) -> str | None:
        """The id of the Checkout Session that created the PaymentIntent, or ``None`` if none did."""
        try:
            sessions = self.client.v1.checkout.sessions.list({"payment_intent": payment_intent, "limit": 1})
        except stripe.StripeError as exc:
            raise PaymentServiceError(
                Message(
                    N_("Stripe could not be asked about payment %(payment)s: %(reason)s"),
                    payment=payment_intent,
                    reason=str(exc),
                )
            ) from exc
        return sessions.data[0].id if sessions.data else None

    def verified_event(self, payload: bytes, signature: str) -> stripe.Event:
        """The event if its signature is right and it was signed within ``WEBHOOK_TOLERANCE_S`` of now, either
        way; ``stripe.SignatureVerificationError`` otherwise.

        The stripe library refuses old timestamps only; a timestamp ahead of the clock is refused here, so that
        a signed delivery cannot be kept for later use.
        """
        event = stripe.Webhook.construct_event(
            payload, signature, self.settings.stripe_webhook_secret, tolerance=WEBHOOK_TOLERANCE_S
        )
        signed_at = _signed_at(signature)
        if signed_at is None or signed_at > time.time() + WEBHOOK_TOLERANCE_S:
            raise stripe.SignatureVerificationError(
                "Timestamp in the future, outside the tolerance zone", signature, payload.decode(errors="replace")
            )
        return event


#: How far a webhook's signing time may be from the portal's clock, in the past (the stripe library's check)
#: and in the future: Stripe's default tolerance.
WEBHOOK_TOLERANCE_S = 300


def _signed_at(signature: str) -> int | None:
    """The ``t=`` of a ``Stripe-Signature`` header (the moment Stripe signed it), or ``None``."""
    for item in signature.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            return int(value) if value.isdigit() and len(value) < 16 else None
    return None
