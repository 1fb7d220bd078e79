"""The shape every figure takes: a ``Table`` of rows under named ``Column``s (with the format the pages and the
CSV write them in), the columns several tables share, and ``percent``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    #: ``text``; ``int``; ``quantity`` (base units of the row's resource ``kind``); ``cents``; ``percent``.
    format: str = "text"


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)


#: The portal's own currency (offerings' default), shown where nothing was invoiced.
CURRENCY = "EUR"
SIDES = ("public", "private")
#: Columns that several tables share.
SITE, RESOURCE, KIND = Column("site", "Site"), Column("resource", "Resource"), Column("kind", "Kind")
MONTH, SIDE = Column("month", "Month"), Column("side", "Side")
CAPACITY, ALLOCATED = Column("capacity", "Capacity", "quantity"), Column("allocated", "Allocated", "quantity")
USED, USED_PERCENT = Column("used", "Used", "quantity"), Column("used_percent", "Used of capacity", "percent")
USED_SHARE = Column("used_share_percent", "Share of use", "percent")
CURRENCY_COLUMN = Column("currency", "Currency")
MONEY_COLUMNS = (
    Column("net_cents", "Net", "cents"),
    Column("vat_cents", "VAT", "cents"),
    Column("gross_cents", "Gross", "cents"),
)
NET_SHARE = Column("net_share_percent", "Share of net", "percent")


def percent(part: int, whole: int) -> float | None:
    """``part`` of ``whole`` in percent with one decimal, None when the whole is zero."""
    return round(part * 100 / whole, 1) if whole else None
