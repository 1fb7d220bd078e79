"""The marketplace: offerings, orders, Stripe Checkout and its webhook, invoices with EU VAT, refunds."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """The marketplace's pages and the Stripe webhook."""
    from portal.market import api as _api  # noqa: F401  (its routes on the API blueprint)
    from portal.market import views

    views.init_app(app)
