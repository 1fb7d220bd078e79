"""Stripe's webhook: events verified over the raw body, handed to ``market.webhooks``; a payment not booked yet
is answered so that Stripe delivers the event again.
"""

from __future__ import annotations

import stripe
from flask import current_app, jsonify, request

from portal import observability
from portal.db import get_db
from portal.market import services, webhooks
from portal.market.views.common import bp, gateway
from portal.web import problem, settings


@bp.post("/market/stripe/webhook")
def stripe_webhook():
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
        outcome = webhooks.handle_stripe_event(get_db(), settings(), event, gateway())
    except services.PaymentNotBookedYet as exc:  # not recorded: Stripe delivers it again
        get_db().rollback()
        observability.stripe_webhook_handled("retry: payment not booked yet")
        current_app.logger.info("stripe event %s (%s): %s", event.id, event.type, exc.detail)
        return problem(exc.status, exc.title, exc.detail)
    observability.stripe_webhook_handled(outcome)
    current_app.logger.info("stripe event %s (%s): %s", event.id, event.type, outcome)
    return jsonify(received=True, outcome=outcome)
