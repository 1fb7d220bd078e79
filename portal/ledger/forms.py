from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from portal.formatting import display_amount
from portal.forms import reason_field
from portal.ledger.services import PLANNING_YEARS
from portal.ledger.statements import AllocationStatement


class TransferForm(FlaskForm):
    from_id = SelectField("From", coerce=int)
    to_id = SelectField("To", coerce=int)
    hours = StringField("Hours", validators=[InputRequired(), Length(max=20)])

    def set_choices(self, statements: list[AllocationStatement]) -> None:
        choices = [
            SelectChoice(
                s.allocation.id,  # type: ignore[arg-type]
                f"{s.allocation.title} ({s.site.name}, {display_amount(s.allocation.balance, s.resource.kind)} "
                f"{s.resource.display_unit}s left)",
            )
            for s in statements
        ]
        self.from_id.choices = choices  # type: ignore[assignment]
        self.to_id.choices = choices  # type: ignore[assignment]


class ReleaseForm(FlaskForm):
    hours = StringField("Hours to give back", validators=[InputRequired(), Length(max=20)])


class CapacityForm(FlaskForm):
    resource_id = SelectField("Resource", coerce=int)
    quarter_start = DateField("A day in the quarter", validators=[InputRequired()])
    units = IntegerField("GPUs or cores in service", validators=[Optional(), NumberRange(min=0)])
    utilisation = IntegerField("Target utilisation (%)", default=80, validators=[Optional(), NumberRange(1, 100)])
    capacity = StringField("…or the capacity in hours (TB-months for storage)", validators=[Optional(), Length(max=20)])
    reason = reason_field()

    def validate_quarter_start(self, field: DateField) -> None:
        if field.data is not None and not PLANNING_YEARS[0] <= field.data.year <= PLANNING_YEARS[1]:
            raise ValidationError(f"Plan a quarter between {PLANNING_YEARS[0]} and {PLANNING_YEARS[1]}.")


class ManualAllocationForm(FlaskForm):
    project_id = IntegerField("Project number", validators=[InputRequired()])
    resource_id = SelectField("Resource", coerce=int)
    title = StringField("Title", validators=[InputRequired(), Length(max=200)])
    hours = StringField("Hours (TB-months for storage)", validators=[InputRequired(), Length(max=20)])
    starts_on = DateField("Starts on", validators=[InputRequired()])
    ends_on = DateField("Ends on (exclusive)", validators=[InputRequired()])
    reason = TextAreaField("Reason", validators=[InputRequired(), Length(max=1000)])


class OverbookingForm(FlaskForm):
    resource_id = SelectField("Resource", coerce=int, id="overbooking-resource")
    factor = StringField("Overbooking factor (1.0 = none)", validators=[InputRequired(), Length(max=8)])
    reason = reason_field(id="overbooking-reason")
