"""Form helpers shared by every package's forms."""

from __future__ import annotations

from flask_wtf import FlaskForm

from portal.errors import InvalidInput


class ActionForm(FlaskForm):
    """A button-only form: it carries the CSRF token and nothing else."""


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
