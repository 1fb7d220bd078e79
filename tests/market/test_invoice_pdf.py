"""Invoice and credit-note PDFs print Polish, Lithuanian, Latvian and Estonian letters as written: the text read
back out of the PDF (pypdf) is the text on the invoice."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from types import SimpleNamespace

from pypdf import PdfReader

from portal.market.invoice_pdf import invoice_pdf
from portal.market.models import InvoiceKind


def text_of(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def an_invoice(**changes):
    invoice = SimpleNamespace(
        reference="BAIF-2026-000042",
        kind=InvoiceKind.INVOICE,
        issued_at=datetime(2026, 12, 3, tzinfo=UTC),
        seller={"name": "Baltic AI Factory", "address": "ul. Przykładowa 1, 00-001 Warszawa", "country": "PL"},
        buyer={
            "name": "Tallinn Vision OÜ",
            "address": "Šiaurės pr. 5, Kaunas; Rīgas iela 1, Liepāja; Ņ, Ģ, Ķ",
            "country": "EE",
            "vat_number": "EE100931558",
        },
        lines=[
            {
                "description": "H100 GPU-hours, Gdańsk",
                "quantity": 10,
                "unit": "hour",
                "unit_price_cents": 250,
                "net_cents": 2500,
            }
        ],
        currency="EUR",
        vat_basis_points=0,
        net_cents=2500,
        vat_cents=0,
        gross_cents=2500,
        mention="Odwrotne obciążenie / Pöördmaksustamine / Apgrieztā maksāšana / Atvirkštinis apmokestinimas",
    )
    for key, value in changes.items():
        setattr(invoice, key, value)
    return invoice


def test_every_baltic_and_polish_letter_is_printed_as_written() -> None:
    text = text_of(invoice_pdf(an_invoice()))
    for written in (
        "ul. Przykładowa 1, 00-001 Warszawa",
        "Tallinn Vision OÜ",
        "Šiaurės pr. 5, Kaunas; Rīgas iela 1, Liepāja; Ņ, Ģ, Ķ",
        "H100 GPU-hours, Gdańsk",
        "Odwrotne obciążenie / Pöördmaksustamine / Apgrieztā maksāšana / Atvirkštinis apmokestinimas",
        "Razem / Kokku 25,00\xa0€",
    ):
        assert written in text, (written, text)


def test_a_credit_note_says_so_in_both_languages() -> None:
    text = text_of(invoice_pdf(an_invoice(kind=InvoiceKind.CREDIT_NOTE, reference="BAIF-2026-000043")))
    assert text.startswith("Faktura korygująca / Kreeditarve BAIF-2026-000043")


def test_the_invoice_speaks_the_sellers_language_then_the_buyers_with_the_legal_mention_in_each() -> None:
    from portal.market.vat import OUTSIDE_EU_MENTION, REVERSE_CHARGE_MENTION

    text = text_of(invoice_pdf(an_invoice(mention=REVERSE_CHARGE_MENTION, vat_basis_points=2300)))
    words = " ".join(text.split())  # the PDF's wrapped lines and spacing aside
    assert words.startswith("Faktura / Arve BAIF-2026-000042")
    assert "Sprzedawca / Müüja" in words and "Nabywca / Ostja" in words
    assert "Numer VAT UE / KMKR number: EE100931558" in words  # the glossary's terms
    assert "10 godz." in words and "VAT / Käibemaks 23 %" in words
    # each country's official wording of the reverse charge, as its VAT law requires
    assert "Odwrotne obciążenie:" in words and "Pöördmaksustamine:" in words
    assert "Reverse charge" not in words

    # a Latvian seller and a buyer outside the Baltics and Poland: Latvian and English
    seller = {"name": "Baltic AI Factory", "address": "Rīgas iela 1, Rīga", "country": "LV"}
    buyer = {"name": "Acme Inc.", "address": "1 Main St, Boston", "country": "US"}
    words = " ".join(text_of(invoice_pdf(an_invoice(seller=seller, buyer=buyer, mention=OUTSIDE_EU_MENTION))).split())
    assert words.startswith("Rēķins / Invoice BAIF-2026-000042")
    assert "Pārdevējs / Seller" in words and "Kopā / Total 25,00 €" in words
    assert "Neapliek ar ES PVN" in words and "Not subject to EU VAT" in words

    # both parties in Poland: Polish only
    buyer = {"name": "Przykład sp. z o.o.", "address": "ul. Długa 2, Gdańsk", "country": "PL"}
    words = " ".join(text_of(invoice_pdf(an_invoice(buyer=buyer, mention=""))).split())
    assert words.startswith("Faktura BAIF-2026-000042") and "Razem 25,00 €" in words and " / " not in words
