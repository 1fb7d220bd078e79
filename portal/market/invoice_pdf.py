"""Invoices and credit notes as PDF (fpdf2), drawn only from the stored, immutable invoice.

Each document is bilingual, as Polish VAT practice allows and cross-border buyers need: every heading and label
in the seller's language, then the buyer's (``Faktura / Arve``), chosen from the two parties' countries (Polish,
Lithuanian, Latvian, Estonian; English for any other country). One language when both are the same. Figures
are written the seller's way. The legal VAT mentions are printed in both languages in each country's official
wording (docs/glossary.md); what people wrote (names, addresses, the offering's title) is printed as written.

The text is set in DejaVu Sans (``fonts/``, version 2.37 from Debian's fonts-dejavu-core, embedded and
subset by fpdf2), which covers Latin Extended: Polish, Lithuanian, Latvian and Estonian names and addresses
print as written (ą, ł, ė, š, ū, ā, ņ, õ, ü), never transliterated.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from fpdf import FPDF, FontFace

from portal import formatting
from portal.market.models import Invoice, InvoiceKind
from portal.market.vat import CONSUMER_MENTION
from portal.messages import N_

FONTS = Path(__file__).resolve().parent / "fonts"
FONT = "DejaVu"
#: The language an invoice is written in for a party of each country; English for every other country.
COUNTRY_LANGUAGES = {"PL": "pl", "LT": "lt", "LV": "lv", "EE": "et"}
#: ``vat.CONSUMER_MENTION`` as stored on an invoice, its three values named.
CONSUMER_PATTERN = re.compile(
    re.escape(CONSUMER_MENTION)
    .replace(re.escape("%(percent)s"), "(?P<percent>[0-9.]+ %)")
    .replace(re.escape("%(country)s"), "(?P<country>[A-Z]{2})")
    .replace(re.escape("%(whose)s"), "(?P<whose>.+)")
)
#: The labels of the document.
LABELS = {
    "invoice": N_("Invoice"),
    "credit_note": N_("Credit note"),
    "issued": N_("Issued"),
    "seller": N_("Seller"),
    "buyer": N_("Buyer"),
    "vat_number": N_("VAT number"),
    "registry_id": N_("Registry number"),
    "description": N_("Description"),
    "quantity": N_("Quantity"),
    "unit_price": N_("Unit price"),
    "net": N_("Net"),
    "vat": N_("VAT"),
    "total": N_("Total"),
    "hours": N_("h"),  # after the quantity of hours: "10 h", "10 godz."
}


def invoice_languages(invoice: Invoice) -> list[str]:
    """The seller's language, then the buyer's when it is another."""
    languages = [
        COUNTRY_LANGUAGES.get((party.get("country") or "").upper(), "en") for party in (invoice.seller, invoice.buyer)
    ]
    return list(dict.fromkeys(languages))


def _both(languages: list[str], key: str) -> str:
    """A label in each of ``languages``, joined by `` / `` (a language that words it the same is not repeated)."""
    words = [formatting.catalogue(language).gettext(LABELS[key]) for language in languages]
    return " / ".join(dict.fromkeys(words))


def _mention(languages: list[str], mention: str) -> str:
    """The stored (English) legal mention in each language's official wording, one per line. A consumer sale's
    mention is read back into its rate, country and reason (``vat.CONSUMER_MENTION``) and worded anew; a mention
    the catalogue does not know is printed as stored."""
    consumer = CONSUMER_PATTERN.fullmatch(mention)
    worded = []
    for language in languages:
        catalogue = formatting.catalogue(language)
        if consumer is not None:
            values = consumer.groupdict()
            values["whose"] = catalogue.gettext(values["whose"])
            rate = Decimal(values["percent"].removesuffix(" %"))
            values["percent"] = f"{formatting.number(rate, places=-rate.as_tuple().exponent, locale=language)} %"
            worded.append(catalogue.gettext(CONSUMER_MENTION) % values)
        else:
            worded.append(catalogue.gettext(mention))
    return "\n".join(dict.fromkeys(worded))


def invoice_pdf(invoice: Invoice) -> bytes:
    languages = invoice_languages(invoice)
    locale = languages[0]

    def money(cents: int) -> str:
        return formatting.money(cents, invoice.currency, locale=locale)

    pdf = FPDF(format="A4")
    pdf.add_font(FONT, "", str(FONTS / "DejaVuSans.ttf"))
    pdf.add_font(FONT, "B", str(FONTS / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_title(invoice.reference)
    pdf.set_lang(locale)
    pdf.set_font(FONT, "B", 16)
    title = _both(languages, "credit_note" if invoice.kind == InvoiceKind.CREDIT_NOTE else "invoice")
    pdf.multi_cell(0, 8, f"{title} {invoice.reference}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=10)
    issued = formatting.date(invoice.issued_at, locale=locale)
    pdf.cell(0, 6, f"{_both(languages, 'issued')}: {issued}", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for heading, party in (("seller", invoice.seller), ("buyer", invoice.buyer)):
        pdf.set_font(FONT, "B", 10)
        pdf.cell(0, 6, _both(languages, heading), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, size=10)
        for key in ("name", "address", "country", "vat_number", "registry_id"):
            if party.get(key):
                label = f"{_both(languages, key)}: " if key in ("vat_number", "registry_id") else ""
                pdf.multi_cell(0, 5, f"{label}{party[key]}", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    hours = formatting.catalogue(locale).gettext(LABELS["hours"])
    heads = [_both(languages, key) for key in ("description", "quantity", "unit_price", "net")]
    pdf.set_font(FONT, size=10)
    with pdf.table(col_widths=(80, 30, 40, 40), line_height=5, headings_style=FontFace(emphasis="BOLD")) as table:
        for cells in (
            heads,
            *(
                (
                    str(line["description"])[:120],
                    f"{formatting.number(line['quantity'], locale=locale)} {hours}",
                    money(line["unit_price_cents"]),
                    money(line["net_cents"]),
                )
                for line in invoice.lines
            ),
        ):
            row = table.row()
            for value in cells:
                row.cell(value)
    pdf.ln(3)
    for label, cents in (
        (_both(languages, "net"), invoice.net_cents),
        (f"{_both(languages, 'vat')} {_percent(invoice.vat_basis_points, locale)}", invoice.vat_cents),
        (_both(languages, "total"), invoice.gross_cents),
    ):
        pdf.cell(150, 6, label, align="R")
        pdf.cell(40, 6, money(cents), align="R", new_x="LMARGIN", new_y="NEXT")
    if invoice.mention:
        pdf.ln(4)
        pdf.multi_cell(0, 5, _mention(languages, invoice.mention))
    return bytes(pdf.output())


def _percent(basis_points: int, locale: str) -> str:
    """``2300`` -> ``23 %``, ``2150`` -> ``21,5 %`` (pl): the rate as the locale writes a number."""
    rest = basis_points % 100
    places = 0 if rest == 0 else (1 if rest % 10 == 0 else 2)
    return f"{formatting.number(Decimal(basis_points) / 100, places=places, locale=locale)} %"
