"""The marketplace's forms: offerings for factory staff, refunds for finance."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from flask_wtf import FlaskForm
from wtforms import HiddenField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import AnyOf, InputRequired, Length, NumberRange, Optional

from portal.errors import InvalidInput
from portal.forms import reason_field

VALIDITY_CHOICES = [SelectChoice(3, "3 months"), SelectChoice(6, "6 months"), SelectChoice(12, "12 months")]


def parse_price(text: str | None, *, field: str = "price") -> int:
    """``"2.50"`` (or ``"2,50"``) EUR -> 250 cents, exactly: Decimal, never a float."""
    raw = (text or "").strip().replace(",", ".")
    message = "Enter the price in EUR with at most two decimals, for example 2.50."
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        raise InvalidInput(message, errors={field: message}) from None
    if not amount.is_finite() or "e" in raw.lower():
        raise InvalidInput(message, errors={field: message})
    if amount > 10**10:  # before quantizing, which a number this long overflows
        raise InvalidInput(message, errors={field: "That price is too large."})
    if amount != amount.quantize(Decimal("0.01")):
        raise InvalidInput(message, errors={field: message})
    if amount <= 0:
        raise InvalidInput("The price is a positive amount.", errors={field: "The price is a positive amount."})
    return int(amount * 100)


class OfferingForm(FlaskForm):
    resource_id = SelectField("Resource", coerce=int)
    title = StringField("Title", validators=[InputRequired(), Length(max=200)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=5000)])
    price = StringField("Price per hour in EUR, before VAT", validators=[InputRequired(), Length(max=20)])
    min_quantity = IntegerField("Smallest order (hours)", default=1, validators=[InputRequired(), NumberRange(min=1)])
    max_quantity = IntegerField("Largest order (hours)", validators=[InputRequired(), NumberRange(min=1)])
    validity_months = SelectField("Bought hours are valid for", coerce=int, choices=VALIDITY_CHOICES, default=6)
    reason = reason_field()


class OfferingDetailsForm(FlaskForm):
    title = StringField("Title", validators=[InputRequired(), Length(max=200)])
    description = TextAreaField("Description", validators=[Optional(), Length(max=5000)])
    min_quantity = IntegerField("Smallest order (hours)", validators=[InputRequired(), NumberRange(min=1)])
    max_quantity = IntegerField("Largest order (hours)", validators=[InputRequired(), NumberRange(min=1)])
    validity_months = SelectField("Bought hours are valid for", coerce=int, choices=VALIDITY_CHOICES)
    reason = reason_field(id="details-reason")


class PriceForm(FlaskForm):
    price = StringField("New price per hour in EUR, before VAT", validators=[InputRequired(), Length(max=20)])
    reason = reason_field("Why this price? (kept in the audit log)", id="price-reason")


class OfferingStateForm(FlaskForm):
    state = HiddenField("State", validators=[InputRequired(), AnyOf(["draft", "published", "retired"])])
    reason = reason_field(id="state-reason")


class RefundForm(FlaskForm):
    quantity = IntegerField("Unused hours to refund", validators=[InputRequired(), NumberRange(min=1)])
    reason = reason_field()
