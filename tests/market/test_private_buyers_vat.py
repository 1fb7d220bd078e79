"""A private buyer's VAT follows the setting ``seller_above_oss_threshold`` (Article 59c of the VAT Directive):
above EUR 10,000 a year of cross-border sales to consumers, a consumer in another member state pays their own
country's rate through the One-Stop Shop; below it, the seller's own rate, which the quote, the order and the
invoice all say."""

from __future__ import annotations

from datetime import date

import pytest
from sqlmodel import select

from portal.config import load_settings
from portal.market.models import Invoice, Order, OrderState
from portal.market.vat import consumer_treatment, standard_rate
from tests.market.test_invoice_pdf import text_of
from tests.market.test_market import fresh, pay, shop, wait_for
from tests.market.test_private_buyers import buy_privately, person, private_order_of

__all__ = ["shop"]


def quote(client, shop, country: str) -> str:
    return client.get(
        f"/market/offerings/{shop.offering.id}/quote",
        query_string={"buyer": "private", "billing_country": country, "quantity": 10},
    ).get_data(as_text=True)


def test_the_setting_defaults_to_above_the_threshold_and_reads_its_environment_variable(monkeypatch):
    assert load_settings(env="test").seller_above_oss_threshold is True  # a factory's sales are well above it
    monkeypatch.setenv("PORTAL_SELLER_ABOVE_OSS_THRESHOLD", "false")
    assert load_settings(env="test").seller_above_oss_threshold is False


def test_above_the_threshold_a_finnish_consumer_pays_finnish_vat_through_the_oss(shop, login, db):
    assert shop.settings.seller_above_oss_threshold is True
    finnish = standard_rate("FI", date.today())
    client, aino = person(shop, login, identifier="FI/PL/010180-123A", name="Aino")
    shown = quote(client, shop, "FI")
    assert f"VAT {finnish / 100:g} %" in shown and "One-Stop Shop" in shown and "Article 59c" not in shown
    buy_privately(shop, client, country="FI", billing_address="Mannerheimintie 1, 00100 Helsinki")
    placed = private_order_of(db, aino)
    assert (placed.vat_scheme, placed.vat_country, placed.vat_basis_points) == ("oss", "FI", finnish)


def test_below_the_threshold_a_finnish_consumer_pays_the_sellers_vat_on_quote_order_and_invoice(
    shop, login, db, monkeypatch
):
    monkeypatch.setattr(shop.settings, "seller_above_oss_threshold", False)
    client, aino = person(shop, login, identifier="FI/PL/010180-123A", name="Aino")
    shown = quote(client, shop, "FI")
    assert "VAT 23 %" in shown and "Article 59c" in shown and "One-Stop Shop" not in shown  # the seller's PL rate
    pay_url = buy_privately(shop, client, country="FI", billing_address="Mannerheimintie 1, 00100 Helsinki")
    placed = private_order_of(db, aino)
    assert (placed.vat_scheme, placed.vat_country, placed.vat_basis_points, placed.vat_cents) == (
        "domestic",
        "PL",
        2300,
        575,
    )
    assert placed.billing_country == "FI"

    pay(pay_url.headers["Location"])
    wait_for("the webhook", lambda: fresh(db, Order, placed.id).state == OrderState.PAID)
    (invoice,) = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).all()
    assert (invoice.vat_basis_points, invoice.vat_cents) == (2300, 575)
    assert invoice.mention.startswith("Sale to a consumer: VAT 23 % of PL, the seller's member state")
    assert "59c" in text_of(client.get(f"/market/invoices/{invoice.id}.pdf").data)


@pytest.mark.parametrize("above", [True, False])
def test_a_consumer_at_home_or_outside_the_eu_is_charged_the_same_on_either_side_of_the_threshold(above):
    on = date(2026, 1, 15)
    home = consumer_treatment(seller_country="PL", customer_country="PL", on=on, above_oss_threshold=above)
    assert (home.scheme, home.country, home.basis_points) == ("domestic", "PL", 2300)
    assert "Article 59c" not in home.mention
    swiss = consumer_treatment(seller_country="PL", customer_country="CH", on=on, above_oss_threshold=above)
    assert (swiss.scheme, swiss.country, swiss.basis_points) == ("outside_eu", None, 0)
