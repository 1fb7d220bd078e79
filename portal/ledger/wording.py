"""What the portal itself writes on an allocation or a ledger entry ("Purchase: H100 hours", "order 12"), shown in
the reader's language.

The ledger keeps these texts in English, as it always has: the API, the CSV files, the audit log and the CLI read
them so. A page shows the same text in its reader's language: ``allocation_title`` and ``entry_reason`` (the
templates' filters of the same names) recognise a text the portal wrote by its wording (``WORDINGS``) and render
it again from the catalogue; a text a person wrote (an award's title, an adjustment's reason) is shown as written.
The code that writes such a text writes it with ``Wording.english``, so what is stored and what is recognised
cannot drift apart. A message that names an allocation takes ``title_of(allocation)`` as its value, so that a
title the portal wrote is read in the reader's language there too; the API gives both, the stored text and the
text in the language of ``Accept-Language``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from portal.formatting import DEFAULT_LOCALE
from portal.ledger.models import UNITS, ResourceKind
from portal.messages import N_, Amount, Message, Text, current_locale

if TYPE_CHECKING:
    from portal.ledger.models import Allocation, LedgerEntry

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
#: The values that are ids: only digits (so that a text with more after the id is not taken for the wording).
_IDS = frozenset({"allocation", "application", "course", "order", "tranche"})
#: The values that are amounts (``Amount``): stored as English writes them (``2.0 GPU-hours``), read back as an
#: amount of that kind, so that the reader's language writes the number and the unit its own way.
AMOUNTS = frozenset({"kept"})
#: What English writes after an amount, for each kind (``portal.formatting.unit_name``).
_ENGLISH_UNITS = {f"{UNITS[kind][1]}s": kind for kind in ResourceKind}
_AMOUNT = "-?[0-9][0-9,]*(?:\\.[0-9]+)? (?:" + "|".join(map(re.escape, _ENGLISH_UNITS)) + ")"


def _value(name: str, *, named: bool = True) -> str:
    group = f"(?P<{name}>" if named else "(?:"
    if name in _IDS:
        return f"{group}\\d+)"
    return f"{group}{_AMOUNT})" if name in AMOUNTS else f"{group}.+?)"


def _amount(stored: str) -> Amount:
    """``2.0 GPU-hours`` (as ``Wording.english`` stored it) as the amount it says, to one decimal as it says it."""
    number, unit = stored.split(" ", 1)
    kind = _ENGLISH_UNITS[unit]
    return Amount(int(Decimal(number.replace(",", "")) * UNITS[kind][2]), kind)


def _english(value: object) -> str:
    return value.render(DEFAULT_LOCALE) if isinstance(value, Text | Amount) else str(value)


@dataclass(frozen=True)
class Wording:
    """A catalogue message (placeholders ``%(name)s`` only) that the portal stores in English."""

    message: str
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)
    #: The same pattern without named groups, to be one branch of a pattern for several wordings.
    _branch: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = _PLACEHOLDER.split(self.message)
        # even parts are the fixed text, odd parts the names of the values between them
        regex = "".join(re.escape(part) if n % 2 == 0 else _value(part) for n, part in enumerate(parts))
        object.__setattr__(self, "_pattern", re.compile(regex, re.S))
        branch = "".join(re.escape(part) if n % 2 == 0 else _value(part, named=False) for n, part in enumerate(parts))
        object.__setattr__(self, "_branch", branch)

    def english(self, **values: object) -> str:
        """The text as stored: in English, whatever the language of the request that writes it (an ``Amount``
        for each of ``AMOUNTS``)."""
        return self.message % {name: _english(value) for name, value in values.items()}

    def read(self, stored: str) -> Message | None:
        """The stored text as a message to render again, or None when this wording did not write it."""
        found = self._pattern.fullmatch(stored)
        if found is None:
            return None
        values = {name: _amount(value) if name in AMOUNTS else value for name, value in found.groupdict().items()}
        return Message(self.message, **values)


#: A purchase's allocation: the offering's title (which its seller wrote) after the word.
PURCHASE_TITLE = Wording(N_("Purchase: %(offering)s"))
#: A course's allocation, when the classroom names it after the course.
COURSE_TITLE = Wording(N_("Course: %(title)s"))
#: The hours of a paid order credited to its allocation.
ORDER_PAID = Wording(N_("order %(order)s"))
#: Refunded hours taken back from a purchase's allocation.
ORDER_REFUNDED = Wording(N_("refund of order %(order)s"))
TO_ALLOCATION = Wording(N_("to allocation %(allocation)s"))
FROM_ALLOCATION = Wording(N_("from allocation %(allocation)s"))
TO_COURSE = Wording(N_("to course allocation %(allocation)s"))
COURSE_HOURS_BACK = Wording(N_("unused course hours back to allocation %(allocation)s"))
COURSE_HOURS_RETURNED = Wording(N_("unused hours of course allocation %(course)s"))
#: The same, of a closed course whose notebooks still run: what they may still use stays with the course.
COURSE_HOURS_BACK_KEPT = Wording(
    N_("unused course hours back to allocation %(allocation)s (%(kept)s kept for running notebooks)")
)
COURSE_HOURS_RETURNED_KEPT = Wording(
    N_("unused hours of course allocation %(course)s (%(kept)s kept for running notebooks)")
)
#: The teacher's allocation funds a course further.
CAP_RAISED = Wording(N_("raised the cap of a student of “%(title)s”"))
SEAT_FREED = Wording(N_("a seat of “%(title)s” freed for another student"))
COURSE_OUTLIVED_PARENT = Wording(N_("the course ended after its parent allocation"))
COURSE_OVERDRAFT_SETTLED = Wording(
    N_("usage of course allocation %(course)s beyond its hours, settled from allocation %(allocation)s")
)
OVERDRAFT_SETTLED = Wording(N_("usage beyond the course's hours, settled from allocation %(allocation)s"))
GIVEN_BACK = Wording(N_("unused hours given back to the pool"))
ENDED = Wording(N_("the allocation's end date has passed"))
AWARDED = Wording(N_("award of application %(application)s"))
TRANCHE = Wording(N_("tranche %(tranche)s of application %(application)s"))
SLURM_JOB = Wording(N_("Slurm job %(job)s"))
NOTEBOOK = Wording(N_("notebook %(server)s (%(profile)s): %(seconds)s s"))
AGENT_RECORD = Wording(N_("%(site)s agent record %(record)s"))

#: The wordings of titles, by the source of the allocation they may name.
TITLES = {"purchase": (PURCHASE_TITLE,), "course": (COURSE_TITLE,)}
#: The wordings of entries' reasons, tried in this order (the most specific first).
REASONS = (
    ORDER_REFUNDED,
    ORDER_PAID,
    TO_COURSE,
    TO_ALLOCATION,
    FROM_ALLOCATION,
    GIVEN_BACK,
    ENDED,
    COURSE_HOURS_BACK_KEPT,
    COURSE_HOURS_RETURNED_KEPT,
    COURSE_HOURS_BACK,
    COURSE_HOURS_RETURNED,
    CAP_RAISED,
    SEAT_FREED,
    COURSE_OUTLIVED_PARENT,
    COURSE_OVERDRAFT_SETTLED,
    OVERDRAFT_SETTLED,
    AWARDED,
    TRANCHE,
    SLURM_JOB,
    NOTEBOOK,
    AGENT_RECORD,
)
#: Every wording the portal stores.
WORDINGS = (*dict.fromkeys(w for ws in TITLES.values() for w in ws), *REASONS)


#: A pattern that matches what any of a tuple of wordings writes, one branch each, by the tuple's id (the tuple is
#: kept with it, so the id stays its own).
_ANY: dict[int, tuple[tuple[Wording, ...], re.Pattern[str]]] = {}


def _the_one_that_wrote(stored: str, wordings: tuple[Wording, ...]) -> tuple[Wording, ...]:
    """The first of ``wordings`` that wrote ``stored``, found by one match of a pattern with a branch for each
    (the regular expression engine tries the branches in order, as a loop over the wordings would, but without a
    Python call for each: a ledger's page reads 50 reasons against 21 wordings); () when none did."""
    known = _ANY.get(id(wordings))
    if known is None or known[0] is not wordings:
        known = _ANY[id(wordings)] = (wordings, re.compile("|".join(f"({w._branch})" for w in wordings), re.S))
    found = known[1].fullmatch(stored)
    return () if found is None or found.lastindex is None else (wordings[found.lastindex - 1],)


def shown(stored: str, wordings: tuple[Wording, ...], locale: str | None = None) -> str:
    """``stored`` in ``locale`` (default: the request's language) when one of ``wordings`` wrote it, else as it
    is."""
    if len(wordings) > 2:
        wordings = _the_one_that_wrote(stored, wordings)
    for wording in wordings:
        message = wording.read(stored)
        if message is not None:
            return message.render(locale or current_locale())
    return stored


def title_shown(title: str, source: str, locale: str | None = None) -> str:
    """An allocation's ``title``, of an allocation from ``source``, as its reader is shown it."""
    return shown(title, TITLES.get(str(source), ()), locale)


def allocation_title(allocation: Allocation, locale: str | None = None) -> str:
    return title_shown(allocation.title, allocation.source, locale)


@dataclass(frozen=True)
class _Quoted(Text):
    text: Text

    def render(self, locale: str) -> str:
        return repr(self.text.render(locale))


def title_of(allocation: Allocation, *, quoted: bool = False) -> Text | str:
    """``allocation``'s title as a value of a ``Message``: the portal's own wording is rendered in the language of
    the message's reader, a title a person wrote stays as written. ``quoted``: in quotes, as ``repr`` puts them."""
    for wording in TITLES.get(str(allocation.source), ()):
        message = wording.read(allocation.title)
        if message is not None:
            return _Quoted(message) if quoted else message
    return repr(allocation.title) if quoted else allocation.title


def entry_reason(entry: LedgerEntry, locale: str | None = None) -> str:
    return shown(entry.reason or "", REASONS, locale)
