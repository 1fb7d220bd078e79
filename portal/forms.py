"""Form helpers shared by every package's forms."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import StringField

from portal.audit.services import REASON_LENGTH
from portal.errors import InvalidInput


def stripped(value: str | None) -> str | None:
    """A field filter: surrounding blanks go (``Optional()`` lets a blank-only choice through unchecked)."""
    return value.strip() if isinstance(value, str) else value


class ActionForm(FlaskForm):
    """A button-only form: it carries the CSRF token and nothing else."""


def reason_field(label: str = "Why? (kept in the audit log)", *, id: str = "reason") -> StringField:
    """The reason every form of a privileged action asks for; the service checks it (``audit.require_reason``).

    ``id`` tells the fields apart where one page has several such forms (the name stays ``reason``).
    """
    shortest, longest = REASON_LENGTH
    return StringField(label, id=id, render_kw={"required": True, "minlength": shortest, "maxlength": longest})


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
