"""What the marketplace's pages share: the blueprint and the Stripe gateway the settings name (one per app)."""

from __future__ import annotations

from flask import Blueprint, current_app

from portal.market.stripe_gateway import StripeGateway
from portal.web import settings

bp = Blueprint("market", __name__)


def gateway() -> StripeGateway:
    if "portal.stripe" not in current_app.extensions:
        current_app.extensions["portal.stripe"] = StripeGateway(settings())
    return current_app.extensions["portal.stripe"]
