"""Messages written now and read later, each in its reader's language: the inbox notices and their e-mails.

A service says what happened as a ``Message``: a catalogue message, marked with ``N_`` where it is written so that
``pybabel extract`` finds it, and its named values. ``notifications.notify`` renders it in the recipient's language
(their saved choice, else English) when it writes the inbox entry and the e-mail: the same decision reaches a Polish
PI in Polish and the call's Estonian manager in Estonian. Dates, amounts and money among the values are written the
reader's way too (``Amount``, ``Money``, or a ``date``/``datetime``)::

    notify(db, settings, pi,
           subject=Message(N_("Decision on “%(title)s”: accepted"), title=application.title),
           body=Message(N_("The hours are on the project page from %(start)s."), start=start) + cutoff_sentence,
           link=f"/projects/{project.id}")

The values themselves (titles, names) are not translated: people wrote them. Code outside a request and without
a recipient (logs, the CLI) renders in English with ``str(message)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime as DateTime
from typing import TYPE_CHECKING, Any

from flask import has_request_context
from flask_babel import get_locale

from portal import formatting

if TYPE_CHECKING:
    from portal.config import Settings
    from portal.identity.models import User
    from portal.ledger.models import ResourceKind

__all__ = [
    "N_",
    "Amount",
    "Message",
    "Money",
    "Text",
    "from_json",
    "language_of",
    "listed",
    "paragraphs",
    "render",
    "to_json",
]


def N_(message: str) -> str:
    """Marks a message for the catalogue; it is translated when it is rendered for its reader."""
    return message


@dataclass(frozen=True)
class Amount:
    """Hours (or TB-months) in base units, written in the reader's words: ``2.0 GPU-hours``, ``2,0 godz. GPU``."""

    amount: int
    kind: ResourceKind
    places: int = 1

    def render(self, locale: str) -> str:
        return formatting.quantity(self.amount, self.kind, places=self.places, locale=locale)


@dataclass(frozen=True)
class Money:
    cents: int
    currency: str

    def render(self, locale: str) -> str:
        return formatting.money(self.cents, self.currency, locale=locale)


class Text:
    """Something a reader is shown: a ``Message``, or messages joined (``a + b``, ``None`` parts left out)."""

    def render(self, locale: str) -> str:
        raise NotImplementedError

    def __add__(self, other: Text | str | None) -> Text:
        return _Joined((self, other))

    def __radd__(self, other: Text | str | None) -> Text:
        return _Joined((other, self))

    def __str__(self) -> str:
        """In the language of the request being answered (a page's, the API's ``Accept-Language``), else English."""
        return self.render(current_locale())


@dataclass(frozen=True, init=False)
class Message(Text):
    text: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, text: str, /, **values: Any) -> None:
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "values", values)

    def render(self, locale: str) -> str:
        translated = formatting.catalogue(locale).gettext(self.text) if locale != formatting.DEFAULT_LOCALE else None
        template = translated or self.text
        if not self.values:
            return template
        return template % {name: _shown(value, locale) for name, value in self.values.items()}


@dataclass(frozen=True)
class _Joined(Text):
    parts: tuple[Text | str | None, ...]
    separator: str = " "

    def render(self, locale: str) -> str:
        return self.separator.join(filter(None, (render(part, locale) for part in _flat(self.parts, self.separator))))


def _flat(parts: Iterable[Text | str | None], separator: str) -> Iterable[Text | str | None]:
    for part in parts:
        if isinstance(part, _Joined) and part.separator == separator:
            yield from _flat(part.parts, separator)
        else:
            yield part


def listed(parts: Iterable[Text | str]) -> Text:
    """``parts`` with commas between them, each in the reader's language (a plain string as it is)."""
    return _Joined(tuple(parts), ", ")


def paragraphs(*parts: Text | str | None) -> Text:
    """``parts`` as paragraphs (a blank line between them; ``None`` and empty ones left out)."""
    return _Joined(parts, "\n\n")


def _shown(value: Any, locale: str) -> Any:
    if isinstance(value, Text | Amount | Money):
        return value.render(locale)
    if isinstance(value, DateTime):
        return formatting.datetime(value, locale=locale)
    if isinstance(value, Date):
        return formatting.date(value, locale=locale)
    if isinstance(value, int) and not isinstance(value, bool):
        return formatting.number(value, locale=locale)
    return value


def language_of(settings: Settings, user: User) -> str:
    """The language ``user`` reads their notices in: the one they chose (the switch saves it), else English."""
    saved = user.preferred_language
    return saved if saved and saved in settings.languages else formatting.DEFAULT_LOCALE


# --- kept to be read later: a text as JSON (an inbox notice is shown in whatever language its reader has then) ----


def to_json(text: Text | str | None) -> Any:
    """``text`` as JSON that ``from_json`` makes the same text of again."""
    if text is None or isinstance(text, str):
        return text
    if isinstance(text, _Joined):
        return {"join": [to_json(part) for part in text.parts], "separator": text.separator}
    if isinstance(text, Message):
        return {"message": text.text, "values": {name: _value_json(value) for name, value in text.values.items()}}
    raise TypeError(f"cannot keep {type(text).__name__} as JSON")


def from_json(data: Any) -> Text | str | None:
    if data is None or isinstance(data, str):
        return data
    if "join" in data:
        return _Joined(tuple(from_json(part) for part in data["join"]), data["separator"])
    return Message(data["message"], **{name: _value_from_json(value) for name, value in data["values"].items()})


def _value_json(value: Any) -> Any:
    if isinstance(value, Text):
        return {"text": to_json(value)}
    if isinstance(value, Amount):
        return {"amount": value.amount, "kind": str(value.kind), "places": value.places}
    if isinstance(value, Money):
        return {"cents": value.cents, "currency": value.currency}
    if isinstance(value, DateTime):
        return {"datetime": value.isoformat()}
    if isinstance(value, Date):
        return {"date": value.isoformat()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _value_from_json(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if "text" in value:
        return from_json(value["text"])
    if "amount" in value:  # the kind as stored: formatting takes a ResourceKind's value as well
        return Amount(value["amount"], value["kind"], value["places"])
    if "cents" in value:
        return Money(value["cents"], value["currency"])
    if "datetime" in value:
        return DateTime.fromisoformat(value["datetime"])
    return Date.fromisoformat(value["date"])


def current_locale() -> str:
    if has_request_context():
        locale = get_locale()
        if locale is not None:
            return str(locale)
    return formatting.DEFAULT_LOCALE


def render(text: Text | str | None, locale: str) -> str:
    """``text`` in ``locale``: a plain string is shown as it is (people wrote it, or it is already rendered)."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    return text.render(locale)
