"""The one way quantities are shown and read: integer base units <-> decimal display units."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from portal.errors import InvalidInput
from portal.ledger.models import UNITS, ResourceKind


def display_amount(amount: int, kind: ResourceKind, *, places: int = 1) -> str:
    """``7200`` GPU-seconds -> ``"2.0"`` (GPU-hours), exactly, with grouping of thousands."""
    per = UNITS[ResourceKind(kind)][2]
    value = (Decimal(amount) / Decimal(per)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{value:,}"


def quantity(amount: int, kind: ResourceKind, *, places: int = 1) -> str:
    """``7200`` GPU-seconds -> ``"2.0 GPU-hours"``."""
    return f"{display_amount(amount, kind, places=places)} {UNITS[ResourceKind(kind)][1]}s"


def parse_quantity(text: str, kind: ResourceKind, *, field: str = "amount") -> int:
    """``"2.5"`` GPU-hours -> ``9000`` GPU-seconds; a clear error for anything else."""
    per = UNITS[ResourceKind(kind)][2]
    try:
        value = Decimal(text.strip().replace(",", "."))
    except InvalidOperation as exc:
        raise InvalidInput("Enter a number.", errors={field: "Enter a number, for example 12.5."}) from exc
    if not value.is_finite() or value <= 0:
        raise InvalidInput("Enter a positive number.", errors={field: "Must be more than zero."})
    if value.as_tuple().exponent < -2:  # type: ignore[operator]
        raise InvalidInput("Too many decimals.", errors={field: "Use at most two decimals."})
    return int(value * per)


def csv_safe(value: Any) -> Any:
    """Text cells that a spreadsheet would run as a formula get a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
