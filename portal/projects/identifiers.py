"""Offline validation of organisations' VAT and registry numbers with python-stdnum."""

from __future__ import annotations

import importlib
from types import ModuleType

from stdnum.eu import vat as eu_vat
from stdnum.exceptions import ValidationError
from stdnum.util import clean

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

REGISTRY_NAMES: dict[str, str] = {
    "PL": "REGON",
    "EE": "registry code (registrikood)",
    "LV": "registration number",
    "LT": "company code (įmonės kodas)",
}


class IdentifierError(ValueError):
    """The number is not valid; the message says why, in words a user understands."""


def _vat_prefix(country: str) -> str:
    return "EL" if country == "GR" else country


def _why(exc: ValidationError) -> str:
    return {
        "InvalidChecksum": "its check digit is wrong (a typo?)",
        "InvalidLength": "it has the wrong number of characters",
        "InvalidFormat": "it has the wrong format",
        "InvalidComponent": "a part of it is not valid",
    }.get(type(exc).__name__, str(exc))


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
            raise IdentifierError(f"This is not a valid {country} VAT number: {_why(exc)}.") from exc
    prefix = _vat_prefix(country)
    if compact[:2] in VAT_PREFIXES and compact[:2] != prefix:
        raise IdentifierError(
            f"This VAT number belongs to {compact[:2]}, but the organisation is in {country}; "
            f"a {country} VAT number starts with {prefix}."
        )
    if not compact.startswith(prefix):
        compact = prefix + compact
    try:
        return eu_vat.validate(compact)
    except ValidationError as exc:
        raise IdentifierError(f"This is not a valid {country} VAT number: {_why(exc)}.") from exc


def normalise_registry_id(country: str, value: str) -> str:
    """The registry number in compact form; checked where python-stdnum has the country's validator."""
    country = country.upper()
    module_name = REGISTRY_VALIDATORS.get(country)
    if module_name is None:
        compact = "".join(value.split()).upper()
        if not compact.replace("-", "").replace("/", "").isalnum():
            raise IdentifierError("A registry number contains only letters, digits, '-' and '/'.")
        return compact
    module = importlib.import_module(module_name)
    try:
        return module.validate(value)
    except ValidationError as exc:
        name = REGISTRY_NAMES.get(country, "registry number")
        raise IdentifierError(f"This is not a valid {country} {name}: {_why(exc)}.") from exc


def _cc_module(country: str, kind: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"stdnum.{country.lower()}.{kind}")
    except ImportError:
        return None
