"""Invoices and credit notes as PDF (fpdf2), drawn only from the stored, immutable invoice.

The text is set in DejaVu Sans (``fonts/``, version 2.37 from Debian's fonts-dejavu-core, embedded and
subset by fpdf2), which covers Latin Extended: Polish, Lithuanian, Latvian and Estonian names and addresses
print as written (ą, ł, ė, š, ū, ā, ņ, õ, ü), never transliterated.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from fpdf import FPDF

from portal.market.models import Invoice, InvoiceKind


def money(cents: int, currency: str) -> str:
    return f"{Decimal(cents) / 100:,.2f} {currency}"


FONTS = Path(__file__).resolve().parent / "fonts"
FONT = "DejaVu"


def invoice_pdf(invoice: Invoice) -> bytes:
    pdf = FPDF(format="A4")
    pdf.add_font(FONT, "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_title(invoice.reference)
    pdf.set_font(FONT, "B", 16)
    title = "Credit note" if invoice.kind == InvoiceKind.CREDIT_NOTE else "Invoice"
    pdf.cell(0, 10, f"{title} {invoice.reference}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=10)
    pdf.cell(0, 6, f"Issued {invoice.issued_at:%Y-%m-%d}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for heading, party in (("Seller", invoice.seller), ("Buyer", invoice.buyer)):
        pdf.set_font(FONT, "B", 10)
        pdf.cell(0, 6, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, size=10)
        for key in ("name", "address", "country", "vat_number", "registry_id"):
            if party.get(key):
                label = {"vat_number": "VAT number: ", "registry_id": "Registry number: "}.get(key, "")
                pdf.cell(0, 5, f"{label}{party[key]}", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    pdf.set_font(FONT, "B", 10)
    widths = (90, 25, 35, 40)
    for width, head in zip(widths, ("Description", "Quantity", "Unit price", "Net"), strict=True):
        pdf.cell(width, 7, head, border=1)
    pdf.ln()
    pdf.set_font(FONT, size=10)
    for line in invoice.lines:
        cells = (
            line["description"],
            f"{line['quantity']} {line['unit']}s",
            money(line["unit_price_cents"], invoice.currency),
            money(line["net_cents"], invoice.currency),
        )
        for width, value in zip(widths, cells, strict=True):
            pdf.cell(width, 7, str(value)[:60], border=1)
        pdf.ln()
    pdf.ln(3)
    rate = f"{invoice.vat_basis_points / 100:g} %"
    for label, cents in (
        ("Net", invoice.net_cents),
        (f"VAT {rate}", invoice.vat_cents),
        ("Total", invoice.gross_cents),
    ):
        pdf.cell(150, 6, label, align="R")
        pdf.cell(40, 6, money(cents, invoice.currency), align="R", new_x="LMARGIN", new_y="NEXT")
    if invoice.mention:
        pdf.ln(4)
        pdf.multi_cell(0, 5, invoice.mention)
    return bytes(pdf.output())
