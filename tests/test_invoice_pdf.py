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


def an_invoice(**changes):  # type: ignore[no-untyped-def]
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
        "Total 25.00 EUR",
    ):
        assert written in text, (written, text)


def test_a_credit_note_says_so() -> None:
    text = text_of(invoice_pdf(an_invoice(kind=InvoiceKind.CREDIT_NOTE, reference="BAIF-2026-000043")))
    assert text.startswith("Credit note BAIF-2026-000043")
