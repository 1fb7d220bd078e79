"""The one way quantities, money, numbers and dates are shown and read: integer base units <-> display units.

Every function takes the ``locale`` to show in. Python callers get ``"en"`` unless they ask: CSV cells, audit
summaries and service messages stay the same whoever causes them. The templates' filters (``portal.i18n``) pass
the request's locale, so a page shows ``1 234,50 €`` in Polish and ``€1,234.50`` in English."""

from __future__ import annotations

import functools
import re
from datetime import UTC
from datetime import date as Date
from datetime import datetime as DateTime
from datetime import time as Time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import DateTimePattern, format_date, format_time, get_date_format, get_time_format
from babel.numbers import NumberPattern, format_currency, get_decimal_symbol, get_group_symbol, parse_pattern
from babel.support import NullTranslations, Translations
from babel.units import format_unit
from flask import has_request_context
from flask_babel import get_locale, get_translations
from flask_babel import lazy_gettext as _l

from portal.errors import InvalidInput
from portal.ledger.models import UNITS, ResourceKind

#: The locale of everything shown outside a page: CSV, audit summaries, the CLI.
DEFAULT_LOCALE = "en"
#: The catalogues (``portal.i18n`` compiles them): the units' names in each language.
TRANSLATIONS = Path(__file__).resolve().parent / "translations"


# Babel parses a locale's name and a format's pattern on every call; a page formats hundreds of figures in one
# locale with a few patterns, so each is parsed once per process (the results are the same objects Babel would
# build, and immutable in use).


@functools.lru_cache(maxsize=64)
def _locale(name: str) -> Locale:
    return Locale.parse(name)


@functools.lru_cache(maxsize=16)
def _pattern(places: int) -> NumberPattern:
    """``#,##0`` with ``places`` decimals: grouping of thousands, no rounding of its own (``number`` rounds)."""
    return parse_pattern("#,##0" + ("." + "0" * places if places > 0 else ""))


@functools.lru_cache(maxsize=16)
def _quantum(places: int) -> Decimal:
    return Decimal(1).scaleb(-places)


@functools.lru_cache(maxsize=64)
def _date_pattern(name: str) -> DateTimePattern:
    return get_date_format("medium", locale=_locale(name))


@functools.lru_cache(maxsize=64)
def _time_pattern(name: str) -> DateTimePattern:
    return get_time_format("short", locale=_locale(name))


@functools.lru_cache(maxsize=64)
def _separators(name: str) -> dict[int, str]:
    """Python's ``,`` and ``.`` as the locale writes them: its group and decimal symbols (Latin digits)."""
    parsed = _locale(name)
    return str.maketrans({",": get_group_symbol(parsed), ".": get_decimal_symbol(parsed)})


#: What Babel does last to every number it writes: a quoted literal loses its quotes (``''`` is one quote).
_QUOTED = re.compile(r"'([^']*)'")


#: Base units per display unit of each kind, as an exact Decimal (``ResourceKind`` members and their values alike
#: find theirs: a StrEnum hashes as its value).
_PER_DISPLAY_UNIT = {kind: Decimal(per) for kind, (_base, _display, per) in UNITS.items()}


@functools.lru_cache(maxsize=4096)
def _day(value: Date, name: str) -> str:
    """A day as the locale writes it: a pure function of the two, and a page shows the same few days many times."""
    return format_date(value, format=_date_pattern(name), locale=_locale(name))


def number(value: int | Decimal, *, places: int = 0, locale: str = DEFAULT_LOCALE) -> str:
    """``1234.5`` -> ``"1,234.50"`` (en), ``"1 234,50"`` (pl; no-break spaces), rounded half up to ``places``.

    Written as Babel writes it with the pattern ``#,##0.00`` (tests/i18n/test_i18n.py compares the two in every
    language): the exact digits, ``-`` before a negative (also ``-0.00``), groups of three with the locale's
    symbols. Python's own formatting does that, without Babel's lookups of the symbols for each number."""
    exact = Decimal(value).quantize(_quantum(places), rounding=ROUND_HALF_UP)
    written = f"{exact:,f}".translate(_separators(locale))
    return written if "'" not in written else _QUOTED.sub(lambda m: m.group(1) or "'", written)


def money(cents: int, currency: str, *, locale: str = DEFAULT_LOCALE) -> str:
    """Integer cents of ``currency`` as the locale writes money: ``123450, "EUR"`` -> ``"€1,234.50"`` (en),
    ``"1 234,50 €"`` (pl, lt, lv, et; no-break spaces). Exact: no float on the way."""
    return format_currency(Decimal(cents) / 100, currency, locale=_locale(locale))


def date(value: Date | DateTime, *, locale: str = DEFAULT_LOCALE) -> str:
    """A day in the locale's medium form: ``Mar 5, 2026`` (en), ``5 mar 2026`` (pl), ``2026-03-05`` (lt). A
    datetime is read in UTC first."""
    if isinstance(value, DateTime):
        value = value.astimezone(UTC).date()
    return _day(value, locale)


@functools.lru_cache(maxsize=8192)
def _clock(hour: int, minute: int, name: str) -> str:
    """A time of day to the minute as the locale writes it (its short time format has no seconds): a pure
    function of the three, which a ledger's page asks for on every row."""
    return format_time(Time(hour, minute), format=_time_pattern(name), tzinfo=UTC, locale=_locale(name))


@functools.lru_cache(maxsize=64)
def _date_and_time(name: str) -> str:
    """How the locale puts a day and a time together (``{1}, {0}``: the day, then the time)."""
    return str(_locale(name).datetime_formats["medium"])


def datetime(value: DateTime, *, locale: str = DEFAULT_LOCALE) -> str:
    """A moment in UTC, to the minute, as the locale writes it, with ``UTC`` after it: ``Mar 5, 2026, 2:07 PM
    UTC`` (en), ``5 mar 2026, 14:07 UTC`` (pl). A naive datetime is taken to be UTC, as the database keeps it."""
    moment = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    time = _clock(moment.hour, moment.minute, locale)
    return f"{_date_and_time(locale).format(time, _day(moment.date(), locale))} UTC"


def hours(seconds: int, *, places: int = 1, locale: str = DEFAULT_LOCALE) -> str:
    """Integer seconds as hours with the locale's short unit: ``9000`` -> ``"2.5 hr"`` (en), ``"2,5 godz."`` (pl)."""
    value = (Decimal(seconds) / 3600).quantize(_quantum(places), rounding=ROUND_HALF_UP)
    return format_unit(value, "duration-hour", length="short", format=_pattern(places), locale=_locale(locale))


def display_amount(amount: int, kind: ResourceKind, *, places: int = 1, locale: str = DEFAULT_LOCALE) -> str:
    """``7200`` GPU-seconds -> ``"2.0"`` (GPU-hours), exactly, with grouping of thousands."""
    per = _PER_DISPLAY_UNIT.get(kind) or UNITS[ResourceKind(kind)][2]  # a kind or its value (a page's many figures)
    return number(Decimal(amount) / per, places=places, locale=locale)


@functools.lru_cache(maxsize=16)
def _compiled_catalogue(locale: str, _modified: float) -> NullTranslations:
    return Translations.load(str(TRANSLATIONS), [locale])


def catalogue(locale: str) -> NullTranslations:
    """The request's own translations when it is in ``locale`` (a page's filters), else the compiled catalogue of
    ``locale``, read again when it is rebuilt."""
    if has_request_context() and str(get_locale()) == locale:
        return get_translations()
    compiled = TRANSLATIONS / locale / "LC_MESSAGES" / "messages.mo"
    return _compiled_catalogue(locale, compiled.stat().st_mtime if compiled.exists() else 0.0)


def unit_name(kind: ResourceKind, *, locale: str = DEFAULT_LOCALE) -> str:
    """The display unit after a number, in the locale's words (``GPU-hours``; the glossary's terms)."""
    if kind not in _PER_DISPLAY_UNIT:
        kind = ResourceKind(kind)  # a ValueError for what is not a kind
    if locale == DEFAULT_LOCALE:
        return f"{UNITS[kind][1]}s"
    translations = catalogue(locale)  # only the name shown is looked up: a page asks once per figure
    if kind == ResourceKind.GPU:
        return translations.pgettext("unit after a number", "GPU-hours")
    if kind == ResourceKind.CPU:
        return translations.pgettext("unit after a number", "core-hours")
    return translations.pgettext("unit after a number", "TB-months")


def quantity(amount: int, kind: ResourceKind, *, places: int = 1, locale: str = DEFAULT_LOCALE) -> str:
    """``7200`` GPU-seconds -> ``"2.0 GPU-hours"`` (en), ``"2,0 godz. GPU"`` (pl)."""
    return f"{display_amount(amount, kind, places=places, locale=locale)} {unit_name(kind, locale=locale)}"


def parse_quantity(text: str, kind: ResourceKind, *, field: str = "amount") -> int:
    """``"2.5"`` GPU-hours -> ``9000`` GPU-seconds; a clear error for anything else."""
    per = UNITS[ResourceKind(kind)][2]
    try:
        value = Decimal(text.strip().replace(",", "."))
    except InvalidOperation as exc:
        raise InvalidInput(_l("Enter a number."), errors={field: _l("Enter a number, for example 12.5.")}) from exc
    if not value.is_finite() or value <= 0:
        raise InvalidInput(_l("Enter a positive number."), errors={field: _l("Must be more than zero.")})
    if value.as_tuple().exponent < -2:
        raise InvalidInput(_l("Too many decimals."), errors={field: _l("Use at most two decimals.")})
    return int(value * per)


def csv_safe(value: Any) -> Any:
    """Text cells that a spreadsheet would run as a formula get a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
