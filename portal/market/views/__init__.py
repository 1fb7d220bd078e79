"""The marketplace's pages: catalogue, ordering, the order's page, billing, invoices; the Stripe webhook.

One module per audience, all on one blueprint (``common.bp``): ``buyer`` (the catalogue, ordering, the order's
page, a private buyer's purchases and an organisation's billing page) with ``quotes`` (the prices with VAT on
the order form), ``staff`` (offerings, for admins and site operators), ``finance`` (every order, refunds, the
CSV exports) and ``webhook`` (Stripe's events). Importing this package registers every route; the names the
single module had are named here too.
"""

from __future__ import annotations

from portal.market.views import buyer, common, finance, quotes, staff, webhook
from portal.market.views.buyer import (
    BuyingFor,
    PrivateBuying,
    billing,
    buying_for,
    cancel,
    catalogue,
    invoice_download,
    order,
    order_status,
    purchases,
    quote,
)
from portal.market.views.common import (
    bp,
    gateway,
)
from portal.market.views.finance import (
    euros,
    finance_orders,
    invoices_csv,
    orders_csv,
    refund,
)
from portal.market.views.quotes import (
    Quote,
    private_quote_for,
    quote_for,
    vat_percent,
)
from portal.market.views.staff import (
    offering,
    offering_details,
    offering_state,
    offering_state_word,
    offerings,
)
from portal.market.views.webhook import (
    stripe_webhook,
)

__all__ = [
    "BuyingFor",
    "PrivateBuying",
    "Quote",
    "billing",
    "bp",
    "buyer",
    "buying_for",
    "cancel",
    "catalogue",
    "common",
    "euros",
    "finance",
    "finance_orders",
    "gateway",
    "init_app",
    "invoice_download",
    "invoices_csv",
    "offering",
    "offering_details",
    "offering_state",
    "offering_state_word",
    "offerings",
    "order",
    "order_status",
    "orders_csv",
    "private_quote_for",
    "purchases",
    "quote",
    "quote_for",
    "quotes",
    "refund",
    "staff",
    "stripe_webhook",
    "vat_percent",
    "webhook",
]


def init_app(app) -> None:
    from portal import web

    web.csrf.exempt(stripe_webhook)
    app.register_blueprint(bp)
