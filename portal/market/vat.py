"""EU VAT for sales of compute: which rate applies to whom, as data with validity dates.

Compute sold through the portal is an electronically supplied service. The rules:

- Business customer with a valid VAT number of *another* EU member state: reverse charge, 0 %, and the
  invoice says so (Article 196 of the VAT Directive).
- Customer in the seller's own country (business or consumer): the seller country's standard rate.
- Consumer in another EU member state: the rate of the consumer's country (One-Stop Shop).
- Customer outside the EU: outside the scope of EU VAT (Articles 44 and 59), 0 %, stated on the invoice.

A private buyer (a consumer, ``consumer_treatment``) never has reverse charge; the invoice states the rate and
the country whose VAT it is. Above the EUR 10,000 a year of cross-border sales to consumers (Article 59c; the
setting ``seller_above_oss_threshold``) a consumer in another member state pays their own country's rate, which
the seller declares through the OSS; below it, the seller's own rate.

Rates are basis points (2300 = 23 %); amounts are integer cents, VAT rounded half up once per invoice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from portal.errors import InvalidInput
from portal.messages import N_, Message
from portal.projects.identifiers import EU_COUNTRIES, IdentifierError, normalise_vat_number


@dataclass(frozen=True)
class VatRate:
    country: str
    #: Basis points: 2300 is 23 %.
    basis_points: int
    valid_from: date
    #: First day it no longer applies; None while in force.
    valid_until: date | None = None


_ALWAYS = date(2000, 1, 1)

#: Standard VAT rates of the EU member states; a change adds a row and closes the previous one.
STANDARD_RATES: tuple[VatRate, ...] = (
    VatRate("AT", 2000, _ALWAYS),
    VatRate("BE", 2100, _ALWAYS),
    VatRate("BG", 2000, _ALWAYS),
    VatRate("CY", 1900, _ALWAYS),
    VatRate("CZ", 2100, _ALWAYS),
    VatRate("DE", 1900, _ALWAYS),
    VatRate("DK", 2500, _ALWAYS),
    VatRate("EE", 2000, _ALWAYS, date(2024, 1, 1)),
    VatRate("EE", 2200, date(2024, 1, 1), date(2025, 7, 1)),
    VatRate("EE", 2400, date(2025, 7, 1)),
    VatRate("ES", 2100, _ALWAYS),
    VatRate("FI", 2400, _ALWAYS, date(2024, 9, 1)),
    VatRate("FI", 2550, date(2024, 9, 1)),
    VatRate("FR", 2000, _ALWAYS),
    VatRate("GR", 2400, _ALWAYS),
    VatRate("HR", 2500, _ALWAYS),
    VatRate("HU", 2700, _ALWAYS),
    VatRate("IE", 2300, _ALWAYS),
    VatRate("IT", 2200, _ALWAYS),
    VatRate("LT", 2100, _ALWAYS),
    VatRate("LU", 1700, _ALWAYS),
    VatRate("LV", 2100, _ALWAYS),
    VatRate("MT", 1800, _ALWAYS),
    VatRate("NL", 2100, _ALWAYS),
    VatRate("PL", 2300, _ALWAYS),
    VatRate("PT", 2300, _ALWAYS),
    VatRate("RO", 1900, _ALWAYS, date(2025, 8, 1)),
    VatRate("RO", 2100, date(2025, 8, 1)),
    VatRate("SE", 2500, _ALWAYS),
    VatRate("SI", 2200, _ALWAYS),
    VatRate("SK", 2000, _ALWAYS, date(2025, 1, 1)),
    VatRate("SK", 2300, date(2025, 1, 1)),
)

# The mentions are stored in English on the invoice; its PDF prints them in each language's official wording too.
REVERSE_CHARGE_MENTION = N_(
    "Reverse charge: VAT to be accounted for by the recipient (Article 196 of Council Directive 2006/112/EC)."
)
OUTSIDE_EU_MENTION = N_(
    "Not subject to EU VAT: place of supply outside the EU (Articles 44 and 59 of Directive 2006/112/EC)."
)
#: A sale to a consumer: the rate, the country whose VAT it is, and why (one of the three below). The PDF reads
#: the three values back from the stored mention (``invoice_pdf``) to print it in each language.
CONSUMER_MENTION = N_("Sale to a consumer: VAT %(percent)s of %(country)s, %(whose)s.")
CONSUMER_AT_HOME = N_("the seller's and the customer's member state")
CONSUMER_BELOW_THRESHOLD = N_(
    "the seller's member state (cross-border sales to consumers below EUR 10,000 a year, Article 59c of Council "
    "Directive 2006/112/EC)"
)
CONSUMER_THROUGH_OSS = N_(
    "the customer's member state, declared through the One-Stop Shop (Article 58 of Council Directive 2006/112/EC)"
)


def standard_rate(country: str, on: date) -> int:
    """The standard rate of an EU member state on a day, in basis points."""
    for rate in STANDARD_RATES:
        if rate.country == country and rate.valid_from <= on and (rate.valid_until is None or on < rate.valid_until):
            return rate.basis_points
    raise LookupError(f"no VAT rate for {country} on {on}")


@dataclass(frozen=True)
class VatTreatment:
    basis_points: int
    #: Where the VAT is due (the seller's or the customer's country), or None outside the EU.
    country: str | None
    scheme: str  # "domestic", "reverse_charge", "oss", "outside_eu"
    #: The legal mention the invoice must carry, if any.
    mention: str = ""
    #: The customer's normalised VAT number, when one was given and accepted.
    customer_vat_number: str | None = None

    @property
    def percent(self) -> str:
        whole, rest = divmod(self.basis_points, 100)
        return f"{whole}.{rest:02d}".rstrip("0").rstrip(".") + " %"


def treatment_for(
    *, seller_country: str, customer_country: str, customer_vat_number: str | None, on: date
) -> VatTreatment:
    """The VAT of a sale on ``on``; an invalid VAT number is refused with the reason, never ignored."""
    seller_country, customer_country = seller_country.upper(), customer_country.upper()
    vat_number = None
    if customer_vat_number and customer_vat_number.strip():
        try:
            vat_number = normalise_vat_number(customer_country, customer_vat_number)
        except IdentifierError as exc:
            raise InvalidInput(exc.message, errors={"vat_number": exc.message}) from exc
    if customer_country not in EU_COUNTRIES:
        return VatTreatment(0, None, "outside_eu", OUTSIDE_EU_MENTION, vat_number)
    if customer_country == seller_country:
        return VatTreatment(standard_rate(seller_country, on), seller_country, "domestic", "", vat_number)
    if vat_number is not None:
        return VatTreatment(0, customer_country, "reverse_charge", REVERSE_CHARGE_MENTION, vat_number)
    return VatTreatment(standard_rate(customer_country, on), customer_country, "oss")


def consumer_treatment(
    *, seller_country: str, customer_country: str, on: date, above_oss_threshold: bool
) -> VatTreatment:
    """The VAT of a sale to a consumer living in ``customer_country`` (from their declared billing address):
    the seller's rate at home, none outside the EU; elsewhere in the EU their own country's rate (OSS) when the
    seller is ``above_oss_threshold`` (the setting ``seller_above_oss_threshold``), else the seller's rate. The
    mention says the rate and the country whose VAT it is."""
    seller_country, customer_country = seller_country.upper(), customer_country.upper()
    if customer_country not in EU_COUNTRIES:
        return VatTreatment(0, None, "outside_eu", OUTSIDE_EU_MENTION)
    if customer_country == seller_country or not above_oss_threshold:
        rate = standard_rate(seller_country, on)
        treatment = VatTreatment(rate, seller_country, "domestic")
        whose = CONSUMER_AT_HOME if customer_country == seller_country else CONSUMER_BELOW_THRESHOLD
    else:
        treatment = VatTreatment(standard_rate(customer_country, on), customer_country, "oss")
        whose = CONSUMER_THROUGH_OSS
    mention = CONSUMER_MENTION % {"percent": treatment.percent, "country": treatment.country, "whose": whose}
    return VatTreatment(treatment.basis_points, treatment.country, treatment.scheme, mention)


def vat_cents(net_cents: int, basis_points: int) -> int:
    """VAT on a net amount, rounded half up to the cent, in integers only."""
    if net_cents < 0:
        return -vat_cents(-net_cents, basis_points)
    return (net_cents * basis_points + 5_000) // 10_000


class VatNumberNotConfirmed(InvalidInput):
    """VIES did not confirm a VAT number (or could not be asked)."""

    status = 409
    title = "VAT number not confirmed"


def confirm_with_vies(url: str, vat_number: str, *, timeout: float = 10.0) -> None:
    """Ask the EU's VIES service whether a VAT number is registered; raise with the reason if not."""
    import requests

    country, number = vat_number[:2], vat_number[2:]
    try:
        response = requests.post(url, json={"countryCode": country, "vatNumber": number}, timeout=timeout)
        response.raise_for_status()
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise VatNumberNotConfirmed(
            Message(N_("The EU's VIES service could not confirm the VAT number right now; try again later.")),
            errors={"vat_number": Message(N_("VIES did not answer."))},
        ) from exc
    if answer.get("valid") is not True:
        raise VatNumberNotConfirmed(
            Message(
                N_("VIES does not know %(vat_number)s as a registered VAT number; reverse charge cannot apply."),
                vat_number=vat_number,
            ),
            errors={"vat_number": Message(N_("Not registered in VIES."))},
        )
