"""The marketplace's and the ledger's pages in Polish and Lithuanian: the words, the money (``1 234,50 €``), the
dates and the hours written the reader's way, and no English message or raw stored value left on the page."""

from __future__ import annotations

import html
import re

from flask.testing import FlaskClient
from sqlmodel import Session, select

from portal import formatting
from portal.ledger import services as ledger
from portal.market.models import Invoice, Order
from tests.ledger_world import HOUR
from tests.market.test_market import shop
from tests.market.test_market_pages import paid_order

#: The fixture of tests/market/test_market.py (a verified LT company with a VAT number; "H100 hours" at 2.50 EUR).
__all__ = ["shop"]

PL = {"Accept-Language": "pl"}
LT = {"Accept-Language": "lt"}
NBSP = "\xa0"


def page(client: FlaskClient, url: str, headers: dict[str, str]) -> str:
    response = client.get(url, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return html.unescape(response.get_data(as_text=True))


def assert_no_english(text: str, *messages: str) -> None:
    left = [m for m in messages if m in text]
    assert not left, f"English left on the page: {left}"
    # The English unit after a number (a resource's own name, such as "H100 GPU-hours", is what people wrote).
    assert not re.search(r"(?<![\w.,])\d[\d.,]* (GPU-hours|core-hours|TB-months)", text), (
        "an English unit after a number"
    )


def test_the_catalogue_is_in_polish_and_lithuanian_with_their_money_and_units(shop) -> None:
    polish = page(shop.client, "/market", PL)
    assert "Kup godziny GPU" in polish and "Cena za godzinę (netto)" in polish and "Dostępne teraz" in polish
    assert f"2,50{NBSP}€" in polish  # the price per hour, the Polish way
    assert "3 miesiące" in polish and "godz. GPU" in polish and ">Zamów</a>" in polish
    assert_no_english(polish, "Buy GPU hours", "Price per hour (net)", "Available now", "months", "€2.50", "2.50 EUR")

    lithuanian = page(shop.client, "/market", LT)
    assert "Pirkti GPU valandų" in lithuanian and "Valandos kaina (be PVM)" in lithuanian
    assert f"2,50{NBSP}€" in lithuanian and "3 mėnesiai" in lithuanian and ">Užsakyti</a>" in lithuanian
    assert_no_english(lithuanian, "Buy GPU hours", "Price per hour (net)", "Available now", "months", "€2.50")


def test_the_order_form_quotes_net_vat_and_total_in_the_readers_language(shop) -> None:
    order_page = f"/market/offerings/{shop.offering.id}/order"
    polish = page(shop.client, order_page, PL)
    # An LT company with a VAT number buys from the PL seller: reverse charge, in the words of Polish VAT law.
    assert f'id="quote-net">2,50{NBSP}€' in polish and f'id="quote-total"><strong>2,50{NBSP}€' in polish
    assert "VAT 0 %" in polish and "Do zapłaty" in polish and "Odwrotne obciążenie" in polish
    assert "za godzinę netto" in polish and "Przejdź do płatności" in polish and "Kup jako osoba prywatna" in polish
    assert_no_english(
        polish,
        "Total to pay",
        "Reverse charge",
        "Continue to payment",
        "per hour before VAT",
        "Buy as a private person",
    )

    # 400 hours: a thousand euros, grouped the Lithuanian way; the reverse charge in Lithuanian VAT law's words.
    quote = page(
        shop.client, f"/market/offerings/{shop.offering.id}/quote?project_id={shop.project.id}&quantity=400", LT
    )
    assert f'id="quote-net">1{NBSP}000,00{NBSP}€' in quote and f'id="quote-vat">0,00{NBSP}€' in quote
    assert f'id="quote-total"><strong>1{NBSP}000,00{NBSP}€' in quote
    assert "PVM 0 %" in quote and "Iš viso mokėti" in quote and "Atvirkštinis apmokestinimas" in quote
    assert_no_english(quote, "Net", "Total to pay", "Reverse charge", "€1,000.00")

    too_many = page(shop.client, f"/market/offerings/{shop.offering.id}/quote?quantity=100000", PL)
    assert "Wybierz od 1 do 500 godzin." in too_many and "Choose between" not in too_many

    # A private buyer in Finland pays the Finnish rate, with its decimal comma, declared through the OSS.
    private = page(
        shop.client, f"/market/offerings/{shop.offering.id}/quote?buyer=private&billing_country=FI&quantity=10", PL
    )
    assert "VAT 25,5 %" in private and f"25,00{NBSP}€" in private and f"6,38{NBSP}€" in private
    assert "Sprzedaż na rzecz konsumenta" in private and "Finlandia" in private and "procedurze OSS" in private
    assert_no_english(private, "Sale to a consumer", "One-Stop Shop", "25.5 %")


def test_the_billing_and_order_pages_show_translated_states_kinds_and_local_money_and_dates(shop, db: Session) -> None:
    placed = paid_order(shop, db, 40)  # 40 h × 2.50 EUR, reverse charge
    invoice = db.exec(select(Invoice).where(Invoice.order_id == placed.id)).one()
    billing = f"/organisations/{shop.org.id}/billing"

    polish = page(shop.client, billing, PL)
    assert "Rozliczenia: Kaunas Vision UAB" in polish and "Faktury i faktury korygujące" in polish
    assert f"100,00{NBSP}€" in polish and f"0,00{NBSP}€" in polish
    assert ">opłacone</span>" in polish and ">Faktura</td>" in polish and invoice.reference in polish
    assert formatting.date(placed.created_at, locale="pl") in polish
    assert_no_english(
        polish, "Billing of", "Invoices and credit notes", ">paid</span>", "€100.00", "100.00 EUR", "No invoices yet"
    )

    lithuanian = page(shop.client, billing, LT)
    assert "Atsiskaitymai: Kaunas Vision UAB" in lithuanian and f"100,00{NBSP}€" in lithuanian
    assert ">apmokėtas</span>" in lithuanian and ">Sąskaita faktūra</td>" in lithuanian
    assert formatting.date(placed.created_at, locale="lt") in lithuanian

    order = page(shop.client, f"/market/orders/{placed.id}", LT)
    assert f"Užsakymas {placed.id}" in order and "(0 %, atvirkštinis apmokestinimas)" in order
    assert f"100,00{NBSP}€" in order and ">apmokėtas</strong>" in order
    assert_no_english(order, "reverse charge", "reverse_charge", "Download invoice", ">paid<", "100.00 EUR")
    assert "(0 %, odwrotne obciążenie)" in page(shop.client, f"/market/orders/{placed.id}", PL)


def test_an_allocation_page_is_in_polish_and_lithuanian_with_local_hours_and_ledger_words(shop, db: Session) -> None:
    placed = paid_order(shop, db, 40)
    allocation_id = db.get(Order, placed.id).allocation_id
    ledger.charge_usage(db, allocation_id, 3 * HOUR, idempotency_key="i18n-allocation-page")
    url = f"/projects/{shop.project.id}/allocations/{allocation_id}"

    polish = page(shop.client, url, PL)
    assert "Rejestr operacji" in polish and "Saldo po operacji" in polish and "Zużycie dziennie" in polish
    assert ">aktywny</span>" in polish and "<td>zużycie</td>" in polish and "<td>zakup</td>" in polish
    assert "37,0 godz. GPU" in polish and "-3,00 godz. GPU" in polish  # remaining; the usage entry
    assert "Oddaj godziny" in polish and "Godziny do oddania" in polish  # the section and its form's label
    assert_no_english(
        polish, "Ledger", "Balance after", "Usage per day", ">active<", "<td>usage</td>", "Give hours back"
    )

    lithuanian = page(shop.client, url, LT)
    assert "Operacijų žurnalas" in lithuanian and ">aktyvus</span>" in lithuanian
    assert "<td>naudojimas</td>" in lithuanian and "37,0 GPU val." in lithuanian
    assert_no_english(lithuanian, "Ledger", "Balance after", "<td>usage</td>", "Hours to give back")

    project = page(shop.client, f"/projects/{shop.project.id}", PL)  # the project page's allocations section
    assert "Przydziały" in project and "Zużycie / dzień" in project and "37,0 godz. GPU" in project
    assert_no_english(project, "Burn rate / day", "Shared or moved")
