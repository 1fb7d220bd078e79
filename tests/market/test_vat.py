"""EU VAT for sales of compute: one test per rule, with numbers python-stdnum accepts."""

from __future__ import annotations

from datetime import date

import pytest

from portal.errors import InvalidInput
from portal.market.vat import (
    OUTSIDE_EU_MENTION,
    REVERSE_CHARGE_MENTION,
    STANDARD_RATES,
    standard_rate,
    treatment_for,
    vat_cents,
)
from portal.projects.identifiers import EU_COUNTRIES

DAY = date(2026, 11, 26)


def sale(customer_country: str, vat_number: str | None = None, on: date = DAY, seller: str = "PL"):
    return treatment_for(
        seller_country=seller, customer_country=customer_country, customer_vat_number=vat_number, on=on
    )


def test_a_business_in_another_member_state_pays_no_vat_under_reverse_charge():
    treatment = sale("LT", "LT119511515")
    assert (treatment.basis_points, treatment.scheme, treatment.country) == (0, "reverse_charge", "LT")
    assert treatment.mention == REVERSE_CHARGE_MENTION
    assert treatment.customer_vat_number == "LT119511515"


def test_a_business_in_the_sellers_country_pays_the_sellers_rate():
    treatment = sale("PL", "PL5260250274")
    assert (treatment.basis_points, treatment.scheme, treatment.percent) == (2300, "domestic", "23 %")


def test_a_consumer_pays_the_rate_of_their_own_country():
    assert (sale("LV").basis_points, sale("LV").scheme) == (2100, "oss")
    assert sale("EE").basis_points == 2400
    assert sale("PL").scheme == "domestic"


def test_estonias_rate_follows_its_validity_dates():
    assert standard_rate("EE", date(2025, 6, 30)) == 2200
    assert standard_rate("EE", date(2025, 7, 1)) == 2400
    assert standard_rate("EE", date(2023, 12, 31)) == 2000
    assert sale("EE", on=date(2025, 6, 30)).percent == "22 %"


def test_every_member_state_has_exactly_one_rate_on_any_day():
    for country in EU_COUNTRIES:
        for day in (date(2024, 1, 1), date(2025, 7, 1), date(2026, 11, 26)):
            matching = [
                r
                for r in STANDARD_RATES
                if r.country == country and r.valid_from <= day and (r.valid_until is None or day < r.valid_until)
            ]
            assert len(matching) == 1, (country, day)


def test_an_invalid_vat_number_is_refused_with_the_reason():
    with pytest.raises(InvalidInput, match="check digit is wrong"):
        sale("LT", "LT119511516")
    with pytest.raises(InvalidInput, match="belongs to PL"):
        sale("LT", "PL5260250274")


def test_customers_outside_the_eu_are_outside_eu_vat():
    treatment = sale("NO")
    assert (treatment.basis_points, treatment.scheme, treatment.mention) == (0, "outside_eu", OUTSIDE_EU_MENTION)


def test_vat_is_rounded_half_up_to_the_cent_in_integers():
    assert vat_cents(1_000, 2300) == 230
    assert vat_cents(1_234, 2300) == 284  # 283.82
    assert vat_cents(250, 2100) == 53  # 52.5 rounds up
    assert vat_cents(-250, 2100) == -53  # a credit note mirrors its invoice
    assert sale("FI").percent == "25.5 %"
