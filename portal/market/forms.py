"""The marketplace's forms: offerings for factory staff, refunds for finance."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from flask_babel import lazy_gettext as _  # lazy: translated when a form is shown; `_` is what extraction finds
from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, InputRequired, Length, NumberRange, Optional

from portal.errors import InvalidInput
from portal.forms import reason_field

#: The validators' messages, in the page's language (WTForms has no Lithuanian or Latvian of its own).
REQUIRED = _("This field is required.")
TOO_LONG = _("At most %(max)d characters.")
#: The reason a privileged action asks for (``portal.forms.reason_field``), in the page's language.
WHY = _("Why? (kept in the audit log)")
AT_LEAST = _("Enter a number of at least %(min)s.")

VALIDITY_CHOICES = [SelectChoice(3, _("3 months")), SelectChoice(6, _("6 months")), SelectChoice(12, _("12 months"))]


def parse_price(text: str | None, *, field: str = "price") -> int:
    """``"2.50"`` (or ``"2,50"``) EUR -> 250 cents, exactly: Decimal, never a float."""
    raw = (text or "").strip().replace(",", ".")
    message = str(_("Enter the price in EUR with at most two decimals, for example 2.50."))
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise InvalidInput(message, errors={field: message}) from None
    if not amount.is_finite() or "e" in raw.lower():
        raise InvalidInput(message, errors={field: message})
    if amount > 10**10:  # before quantizing, which a number this long overflows
        raise InvalidInput(message, errors={field: str(_("That price is too large."))})
    if amount != amount.quantize(Decimal("0.01")):
        raise InvalidInput(message, errors={field: message})
    if amount <= 0:
        positive = str(_("The price is a positive amount."))
        raise InvalidInput(positive, errors={field: positive})
    return int(amount * 100)


class OfferingForm(FlaskForm):
    resource_id = SelectField(_("Resource"), coerce=int)
    title = StringField(_("Title"), validators=[InputRequired(REQUIRED), Length(max=200, message=TOO_LONG)])
    description = TextAreaField(_("Description"), validators=[Optional(), Length(max=5000, message=TOO_LONG)])
    price = StringField(
        _("Price per hour in EUR, before VAT"), validators=[InputRequired(REQUIRED), Length(max=20, message=TOO_LONG)]
    )
    min_quantity = IntegerField(
        _("Smallest order (hours)"),
        default=1,
        validators=[InputRequired(REQUIRED), NumberRange(min=1, message=AT_LEAST)],
    )
    max_quantity = IntegerField(
        _("Largest order (hours)"), validators=[InputRequired(REQUIRED), NumberRange(min=1, message=AT_LEAST)]
    )
    validity_months = SelectField(_("Bought hours are valid for"), coerce=int, choices=VALIDITY_CHOICES, default=6)
    reason = reason_field(WHY)


class OfferingDetailsForm(FlaskForm):
    title = StringField(_("Title"), validators=[InputRequired(REQUIRED), Length(max=200, message=TOO_LONG)])
    description = TextAreaField(_("Description"), validators=[Optional(), Length(max=5000, message=TOO_LONG)])
    min_quantity = IntegerField(
        _("Smallest order (hours)"), validators=[InputRequired(REQUIRED), NumberRange(min=1, message=AT_LEAST)]
    )
    max_quantity = IntegerField(
        _("Largest order (hours)"), validators=[InputRequired(REQUIRED), NumberRange(min=1, message=AT_LEAST)]
    )
    validity_months = SelectField(_("Bought hours are valid for"), coerce=int, choices=VALIDITY_CHOICES)
    reason = reason_field(WHY, id="details-reason")


class PriceForm(FlaskForm):
    price = StringField(
        _("New price per hour in EUR, before VAT"),
        validators=[InputRequired(REQUIRED), Length(max=20, message=TOO_LONG)],
    )
    reason = reason_field(_("Why this price? (kept in the audit log)"), id="price-reason")


class OfferingStateForm(FlaskForm):
    state = HiddenField(
        _("State"),
        validators=[
            InputRequired(REQUIRED),
            AnyOf(["draft", "published", "retired"], message=_("Choose publish or retire.")),
        ],
    )
    reason = reason_field(WHY, id="state-reason")


class RefundForm(FlaskForm):
    quantity = IntegerField(
        _("Unused hours to refund"), validators=[InputRequired(REQUIRED), NumberRange(min=1, message=AT_LEAST)]
    )
    reason = reason_field(WHY)
