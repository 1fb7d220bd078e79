"""Form helpers shared by every package's forms."""

from __future__ import annotations

from functools import cached_property
from gettext import NullTranslations

from babel.support import Translations
from flask import request
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.i18n import messages_path

from portal import formatting
from portal.audit.services import REASON_LENGTH
from portal.errors import InvalidInput
from portal.messages import N_, current_locale

_PLURAL = NullTranslations()  # marks WTForms' plural messages for the catalogue; translates nothing

#: WTForms' own messages that the portal's forms show (their validators and fields without a ``message``). WTForms
#: translates them into Polish and Estonian but has no Lithuanian or Latvian catalogue: the portal's catalogue holds
#: them for every language, and ``FormMessages`` reads them from there where WTForms has none.
WTFORMS_MESSAGES = (
    N_("This field is required."),
    N_("Not a valid choice."),
    N_("Not a valid date value."),
    N_("Not a valid integer value."),
    N_("Invalid Choice: could not coerce."),
    N_("Invalid choice(s): one or more data inputs could not be coerced."),
    N_("Number must be at least %(min)s."),
    N_("Number must be at most %(max)s."),
    N_("Number must be between %(min)s and %(max)s."),
    _PLURAL.ngettext(
        "Field cannot be longer than %(max)d character.", "Field cannot be longer than %(max)d characters.", 2
    ),
    _PLURAL.ngettext(
        "'%(value)s' is not a valid choice for this field.", "'%(value)s' are not valid choices for this field.", 2
    ),
)


class FormMessages:
    """WTForms' messages in the page's language: WTForms' own catalogue, else the portal's (``WTFORMS_MESSAGES``).

    Flask-WTF translates the forms' messages with the catalogue it keeps on the request (``wtforms_translations``),
    loading WTForms' own one when there is none yet; ``use_form_messages`` puts this one there first."""

    def __init__(self, locale: str | None = None) -> None:
        if locale is not None:
            self.locale = locale

    @cached_property
    def locale(self) -> str:
        """The request's language, found when a form first needs a message (most requests never do)."""
        return current_locale()

    @cached_property
    def _wtforms(self) -> NullTranslations:
        return Translations.load(messages_path(), [self.locale], domain="wtforms")

    def ugettext(self, message: str) -> str:
        translated = self._wtforms.gettext(message)
        return translated if translated != message else formatting.catalogue(self.locale).gettext(message)

    def ungettext(self, singular: str, plural: str, n: int) -> str:
        translated = self._wtforms.ngettext(singular, plural, n)
        if translated not in (singular, plural):
            return translated
        return formatting.catalogue(self.locale).ngettext(singular, plural, n)


def use_form_messages() -> None:
    """``before_request``: the forms of this request read WTForms' messages through ``FormMessages``."""
    request.wtforms_translations = FormMessages()


def stripped(value: str | None) -> str | None:
    """A field filter: surrounding blanks go (``Optional()`` lets a blank-only choice through unchecked)."""
    return value.strip() if isinstance(value, str) else value


class ActionForm(FlaskForm):
    """A button-only form: it carries the CSRF token and nothing else."""


def reason_field(label: str | None = None, *, id: str = "reason") -> StringField:
    """The reason every form of a privileged action asks for; the service checks it (``audit.require_reason``).

    ``id`` tells the fields apart where one page has several such forms (the name stays ``reason``).
    """
    shortest, longest = REASON_LENGTH
    return StringField(
        label or _l("Why? (kept in the audit log)"),
        id=id,
        render_kw={"required": True, "minlength": shortest, "maxlength": longest},
    )


class ReasonForm(FlaskForm):
    """A button with the reason for its privileged action (revoking a role, verifying an organisation)."""

    reason = reason_field()


def apply_errors(form: FlaskForm, exc: InvalidInput) -> None:
    """Show a service's field errors next to the form's fields (unknown fields go to the form's top)."""
    for name, message in exc.errors.items():
        field = getattr(form, name, None)
        if field is not None and hasattr(field, "errors"):
            field.errors = [*list(field.errors), message]
        else:
            form.form_errors.append(message)
    if not exc.errors:
        form.form_errors.append(exc.detail)
