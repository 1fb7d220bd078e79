"""Prices on the order form before payment: what an order would cost with VAT for an organisation or for a
private buyer, the VAT rate and the legal mention in the reader's language, and the billing countries by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from flask_babel import get_locale
from flask_babel import gettext as _

from portal import formatting
from portal.db import utcnow
from portal.errors import InvalidInput
from portal.i18n import current_language
from portal.market import services
from portal.market.models import Offering
from portal.market.vat import VatTreatment, treatment_for, vat_cents
from portal.projects import services as projects
from portal.projects.models import Organisation
from portal.web import settings


@dataclass(frozen=True)
class Quote:
    """What an order would cost, shown on the order form before payment (the order itself is priced again): the
    amounts in cents (the page writes them the reader's way), the rate and the VAT mention in the reader's
    language."""

    currency: str = "EUR"
    net_cents: int = 0
    vat_cents: int = 0
    total_cents: int = 0
    percent: str = ""
    mention: str = ""
    error: str = ""


def quote_for(offering: Offering, organisation: Organisation | None, quantity: int | None) -> Quote:
    if organisation is None:
        return Quote(error=_("Choose the project to see the price with VAT."))
    if quantity is None or not offering.min_quantity <= quantity <= offering.max_quantity:
        return Quote(error=_hours_between(offering))
    try:
        treatment = treatment_for(
            seller_country=settings().seller_country,
            customer_country=organisation.country,
            customer_vat_number=organisation.vat_number,
            on=utcnow().date(),
        )
    except InvalidInput as exc:
        return Quote(error=exc.detail)
    return _priced(offering, quantity, treatment, _vat_mention(treatment))


def private_quote_for(offering: Offering, country: str, quantity: int | None) -> Quote:
    """The price with a consumer's VAT for a private buyer whose billing address is in ``country``."""
    if country not in projects.countries():
        return Quote(error=_("Choose the country of your billing address to see the price with VAT."))
    if quantity is None or not offering.min_quantity <= quantity <= offering.max_quantity:
        return Quote(error=_hours_between(offering))
    treatment = services.private_buyer_vat(settings(), country)
    return _priced(offering, quantity, treatment, _consumer_vat_mention(treatment, country))


def _priced(offering: Offering, quantity: int, treatment: VatTreatment, mention: str) -> Quote:
    net = offering.price_cents * quantity
    vat = vat_cents(net, treatment.basis_points)
    return Quote(offering.currency, net, vat, net + vat, vat_percent(treatment.basis_points), mention)


def _countries_by_name() -> dict[str, str]:
    """The countries a billing address can be in, named and sorted in the reader's language."""
    named = {code: get_locale().territories.get(code, english) for code, english in projects.countries().items()}
    return dict(sorted(named.items(), key=lambda item: item[1]))


def _hours_between(offering: Offering) -> str:
    return _(
        "Choose between %(least)s and %(most)s hours.",
        least=formatting.number(offering.min_quantity, locale=current_language()),
        most=formatting.number(offering.max_quantity, locale=current_language()),
    )


def vat_percent(basis_points: int) -> str:
    """A VAT rate as the reader writes it: ``2300`` -> ``"23 %"``, ``2550`` -> ``"25.5 %"`` (en), ``"25,5 %"``."""
    places = 0 if basis_points % 100 == 0 else 1 if basis_points % 10 == 0 else 2
    return f"{formatting.number(Decimal(basis_points) / 100, places=places, locale=current_language())} %"


def _country_name(code: str | None) -> str:
    return get_locale().territories.get(code, code) if code else ""


def _vat_mention(treatment: VatTreatment) -> str:
    """The legal mention of a sale to a business (``vat.treatment_for``) in the reader's language, with the words
    each country's VAT law uses (docs/glossary.md, "reverse charge"). The invoice PDF keeps its own."""
    if treatment.scheme == "reverse_charge":
        return _(
            "Reverse charge: VAT to be accounted for by the recipient (Article 196 of Council Directive 2006/112/EC)."
        )
    if treatment.scheme == "outside_eu":
        return _("Not subject to EU VAT: place of supply outside the EU (Articles 44 and 59 of Directive 2006/112/EC).")
    return ""


def _consumer_vat_mention(treatment: VatTreatment, customer_country: str) -> str:
    """The mention of a sale to a private person (``vat.consumer_treatment``) in the reader's language."""
    if treatment.scheme == "outside_eu":
        return _vat_mention(treatment)
    values = {"percent": vat_percent(treatment.basis_points), "country": _country_name(treatment.country)}
    if treatment.scheme == "oss":
        return _(
            "Sale to a consumer: VAT %(percent)s of %(country)s, the customer's member state, declared through the "
            "One-Stop Shop (Article 58 of Council Directive 2006/112/EC).",
            **values,
        )
    if customer_country.upper() == treatment.country:
        return _(
            "Sale to a consumer: VAT %(percent)s of %(country)s, the seller's and the customer's member state.",
            **values,
        )
    return _(
        "Sale to a consumer: VAT %(percent)s of %(country)s, the seller's member state (cross-border sales to "
        "consumers below EUR 10,000 a year, Article 59c of Council Directive 2006/112/EC).",
        **values,
    )
