"""Keyset pagination: one page of a list, and the opaque cursors that lead to the next and previous pages.

A list is ordered by a key that is unique for every row (its last column an id, so rows that tie on the others
keep a stable order). A cursor holds the key of the row a page starts after (forwards) or ends before
(backwards), so reading a page costs the same on page 1 and page 1,000, and rows added or removed meanwhile
neither repeat nor vanish from the pages still to come.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.sql import ColumnElement
from sqlmodel import Session

from portal.errors import DomainError, InvalidInput
from portal.messages import N_, Message

T = TypeVar("T")

#: Rows per page unless the caller asks for another size.
PAGE_SIZE = 50
#: The most rows one page may hold (``size`` from a query string is clamped to it).
MAX_PAGE_SIZE = 200
#: The longest search text a list takes.
MAX_SEARCH = 200


class InvalidCursor(DomainError):
    """A cursor that this portal did not hand out (edited, truncated or for another list): 400."""

    status = 400
    title = "Invalid cursor"


@dataclass(frozen=True)
class Cursor:
    #: The sort key of the boundary row, one value per key column.
    key: tuple[Any, ...]
    #: True: the page ends before ``key`` (the "previous" link); False: it starts after it.
    backwards: bool = False

    def encode(self) -> str:
        text = json.dumps(["b" if self.backwards else "a", *self.key], separators=(",", ":"))
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@dataclass(frozen=True)
class KeyColumn:
    """One column of a list's order: the SQL expression and the Python type its values have in a cursor."""

    expression: ColumnElement[Any]
    kind: type


_NOT_OURS = Message(N_("The cursor is not one this portal handed out; start again from the first page."))


def decode_cursor(text: str | None, columns: Sequence[KeyColumn]) -> Cursor | None:
    """The cursor in ``text`` (None for the first page); ``InvalidCursor`` unless it fits these key columns."""
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw.decode())
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor(_NOT_OURS) from exc
    if (
        not isinstance(value, list)
        or len(value) != len(columns) + 1
        or value[0] not in ("a", "b")
        or any(type(v) is not c.kind for v, c in zip(value[1:], columns, strict=True))
    ):
        raise InvalidCursor(_NOT_OURS)
    return Cursor(key=tuple(value[1:]), backwards=value[0] == "b")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    #: The cursor of the following page, None on the last one.
    next_cursor: str | None
    #: The cursor of the page before, None on the first one.
    previous_cursor: str | None

    def map(self, convert: Callable[[list[T]], list[Any]]) -> Page[Any]:
        """The same page with its items converted as a whole (cursors unchanged)."""
        return Page(convert(self.items), self.next_cursor, self.previous_cursor)


def page_size(value: str | int | None, default: int = PAGE_SIZE) -> int:
    """A page size read from a query string: a number between 1 and ``MAX_PAGE_SIZE``, else the default."""
    try:
        size = int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return min(max(size, 1), MAX_PAGE_SIZE)


def search_pattern(query: str | None) -> str | None:
    """A case-insensitive ``LIKE`` pattern for a search box's text (None when empty); ``%`` and ``_`` match
    themselves."""
    text = (query or "").strip()
    if len(text) > MAX_SEARCH:
        raise InvalidInput(
            Message(N_("Search for at most %(most)s characters."), most=str(MAX_SEARCH)),
            errors={"q": Message(N_("Too long."))},
        )
    if not text:
        return None
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def keyset_page(
    db: Session,
    stmt: sa.Select[Any],
    columns: Sequence[KeyColumn],
    key_of: Callable[[Any], tuple[Any, ...]],
    *,
    cursor: str | None,
    size: int = PAGE_SIZE,
) -> Page[Any]:
    """One page of ``stmt`` (a select without ORDER BY or LIMIT) in the order of ``columns``, ascending.

    ``key_of(row)`` gives a row's key, the same values as ``columns`` in the same order. A page reads one
    statement of at most ``size + 1`` rows (the extra one tells whether there is a following page).
    """
    position = decode_cursor(cursor, columns)
    expressions = [c.expression for c in columns]
    key = sa.tuple_(*expressions)
    if position is not None:
        boundary = sa.tuple_(*(sa.literal(v) for v in position.key))
        stmt = stmt.where(key < boundary if position.backwards else key > boundary)
    backwards = position is not None and position.backwards
    order = [e.desc() for e in expressions] if backwards else expressions
    rows = list(db.execute(stmt.order_by(*order).limit(size + 1)).all())
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
    items = [r if len(r) > 1 else r[0] for r in rows]
    if not items:
        # an empty page after a cursor (its rows deleted meanwhile): offer the way back only
        back = Cursor(position.key, backwards=not position.backwards).encode() if position else None
        return Page([], None if not backwards else back, back if not backwards else None)
    first, last = key_of(items[0]), key_of(items[-1])
    has_next = more if not backwards else True
    has_previous = (position is not None) if not backwards else more
    return Page(
        items,
        Cursor(last).encode() if has_next else None,
        Cursor(first, backwards=True).encode() if has_previous else None,
    )
