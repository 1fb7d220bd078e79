"""Amounts as Stripe handles them: integers in the currency's smallest unit."""

from __future__ import annotations

#: Currencies without a minor unit (Stripe's "zero-decimal currencies").
ZERO_DECIMAL = frozenset({"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv"})

#: Stripe's minimum charge amounts in the smallest unit, for the currencies a European portal may meet;
#: any other currency needs at least 1.
MINIMUM_CHARGE = {"eur": 50, "usd": 50, "chf": 50, "gbp": 30, "dkk": 250, "nok": 300, "sek": 300, "pln": 200}

_SYMBOLS = {"eur": "€", "usd": "$", "gbp": "£"}


def format_amount(amount: int, currency: str) -> str:
    """``1234, "eur"`` → ``€12.34``; ``500, "sek"`` → ``5.00 SEK``, the way Stripe writes amounts in messages."""
    currency = currency.lower()
    sign, amount = ("-", -amount) if amount < 0 else ("", amount)
    number = f"{amount:,}" if currency in ZERO_DECIMAL else f"{amount // 100:,}.{amount % 100:02d}"
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {currency.upper()}"


def minimum_charge(currency: str) -> int:
    return MINIMUM_CHARGE.get(currency.lower(), 1)
