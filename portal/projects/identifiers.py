"""Offline validation of organisations' VAT and registry numbers with python-stdnum."""

from __future__ import annotations

import importlib
from types import ModuleType

from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError
from stdnum.util import clean

from portal.messages import N_, Message, Text

#: EU member states by ISO code; VAT numbers use "EL" for Greece.
EU_COUNTRIES = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "CY",
        "CZ",
        "DE",
        "DK",
        "EE",
        "ES",
        "FI",
        "FR",
        "GR",
        "HR",
        "HU",
        "IE",
        "IT",
        "LT",
        "LU",
        "LV",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SE",
        "SI",
        "SK",
    ]
)

#: Prefixes of EU VAT numbers (Greece's is "EL", Northern Ireland's "XI").
VAT_PREFIXES = frozenset((EU_COUNTRIES - {"GR"}) | {"EL", "XI"})

#: Country -> stdnum module validating its business or institution registry number.
REGISTRY_VALIDATORS: dict[str, str] = {
    "PL": "stdnum.pl.regon",
    "EE": "stdnum.ee.registrikood",
    "LV": "stdnum.lv.pvn",
    "FI": "stdnum.fi.ytunnus",
    "DE": "stdnum.de.handelsregisternummer",
    "FR": "stdnum.fr.siren",
    "DK": "stdnum.dk.cvr",
    "SE": "stdnum.se.orgnr",
    "NO": "stdnum.no.orgnr",
    "ES": "stdnum.es.cif",
    "AT": "stdnum.at.businessid",
    "RO": "stdnum.ro.onrc",
    "SI": "stdnum.si.maticna",
    "HR": "stdnum.hr.oib",
    "PT": "stdnum.pt.nif",
    "CH": "stdnum.ch.uid",
}

#: The name of a country's registry number, as its error messages say it.
REGISTRY_NAMES: dict[str, str] = {
    "PL": N_("REGON"),
    "EE": N_("registry code (registrikood)"),
    "LV": N_("registration number"),
    "LT": N_("company code (įmonės kodas)"),
}
REGISTRY_NUMBER = N_("registry number")


class IdentifierError(ValueError):
    """The number is not valid; ``message`` says why, in words a user understands, and ``str()`` reads it in the
    language of the request being answered (English outside one)."""

    def __init__(self, message: Text) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return str(self.message)


def _vat_prefix(country: str) -> str:
    return "EL" if country == "GR" else country


#: Why python-stdnum refused a number (its exception's name), one whole sentence each.
_INVALID_VAT_NUMBER = {
    "InvalidChecksum": N_("This is not a valid %(country)s VAT number: its check digit is wrong (a typo?)."),
    "InvalidLength": N_("This is not a valid %(country)s VAT number: it has the wrong number of characters."),
    "InvalidFormat": N_("This is not a valid %(country)s VAT number: it has the wrong format."),
    "InvalidComponent": N_("This is not a valid %(country)s VAT number: a part of it is not valid."),
}
_INVALID_REGISTRY_NUMBER = {
    "InvalidChecksum": N_("This is not a valid %(country)s %(name)s: its check digit is wrong (a typo?)."),
    "InvalidLength": N_("This is not a valid %(country)s %(name)s: it has the wrong number of characters."),
    "InvalidFormat": N_("This is not a valid %(country)s %(name)s: it has the wrong format."),
    "InvalidComponent": N_("This is not a valid %(country)s %(name)s: a part of it is not valid."),
}


def _invalid_vat_number(country: str, exc: ValidationError) -> Message:
    message = _INVALID_VAT_NUMBER.get(type(exc).__name__)
    if message is None:
        return Message(N_("This is not a valid %(country)s VAT number: %(reason)s."), country=country, reason=str(exc))
    return Message(message, country=country)


def normalise_vat_number(country: str, value: str) -> str:
    """The VAT number in its compact form with country prefix, or IdentifierError with the reason."""
    country = country.upper()
    # Not eu_vat.compact(): it raises (uncaught, a 500) on a number without a known country prefix,
    # which the form explicitly allows.
    compact = clean(value, " -./,").upper().strip()
    if country not in EU_COUNTRIES:
        module = _cc_module(country, "vat")
        if module is None:
            return compact
        try:
            return module.validate(value)
        except ValidationError as exc:
            raise IdentifierError(_invalid_vat_number(country, exc)) from exc
    prefix = _vat_prefix(country)
    if compact[:2] in VAT_PREFIXES and compact[:2] != prefix:
        raise IdentifierError(
            Message(
                N_(
                    "This VAT number belongs to %(prefix)s, but the organisation is in %(country)s; "
                    "a %(country)s VAT number starts with %(expected)s."
                ),
                prefix=compact[:2],
                country=country,
                expected=prefix,
            )
        )
    if not compact.startswith(prefix):
        compact = prefix + compact
    try:
        return eu_vat.validate(compact)
    except ValidationError as exc:
        raise IdentifierError(_invalid_vat_number(country, exc)) from exc


def normalise_registry_id(country: str, value: str) -> str:
    """The registry number in compact form; checked where python-stdnum has the country's validator."""
    country = country.upper()
    module_name = REGISTRY_VALIDATORS.get(country)
    if module_name is None:
        compact = "".join(value.split()).upper()
        if not compact.replace("-", "").replace("/", "").isalnum():
            raise IdentifierError(Message(N_("A registry number contains only letters, digits, '-' and '/'.")))
        return compact
    module = importlib.import_module(module_name)
    try:
        return module.validate(value)
    except ValidationError as exc:
        name = Message(REGISTRY_NAMES.get(country, REGISTRY_NUMBER))
        message = _INVALID_REGISTRY_NUMBER.get(type(exc).__name__)
        if message is None:
            raise IdentifierError(
                Message(
                    N_("This is not a valid %(country)s %(name)s: %(reason)s."),
                    country=country,
                    name=name,
                    reason=str(exc),
                )
            ) from exc
        raise IdentifierError(Message(message, country=country, name=name)) from exc


def _cc_module(country: str, kind: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"stdnum.{country.lower()}.{kind}")
    except ImportError:
        return None
