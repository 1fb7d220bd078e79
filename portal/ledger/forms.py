from __future__ import annotations

from flask_babel import gettext
from flask_babel import lazy_gettext as _  # lazy: translated when a form is shown; `_` is what extraction finds
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional, ValidationError

from portal.formatting import quantity
from portal.forms import reason_field
from portal.i18n import current_language
from portal.ledger import wording
from portal.ledger.services import PLANNING_YEARS
from portal.ledger.statements import AllocationStatement

#: The validators' messages, in the page's language (WTForms has no Lithuanian or Latvian of its own).
REQUIRED = _("This field is required.")
TOO_LONG = _("At most %(max)d characters.")
#: The reason a privileged action asks for (``portal.forms.reason_field``), in the page's language.
WHY = _("Why? (kept in the audit log)")


class TransferForm(FlaskForm):
    from_id = SelectField(_("From"), coerce=int)
    to_id = SelectField(_("To"), coerce=int)
    hours = StringField(_("Hours"), validators=[InputRequired(REQUIRED), Length(max=20, message=TOO_LONG)])

    def set_choices(self, statements: list[AllocationStatement]) -> None:
        choices = [
            SelectChoice(
                s.allocation.id,
                gettext(
                    "%(title)s (%(site)s, %(balance)s left)",
                    title=wording.allocation_title(s.allocation),
                    site=s.site.name,
                    balance=quantity(s.allocation.balance, s.resource.kind, locale=current_language()),
                ),
            )
            for s in statements
        ]
        self.from_id.choices = choices
        self.to_id.choices = choices


class ReleaseForm(FlaskForm):
    hours = StringField(_("Hours to give back"), validators=[InputRequired(REQUIRED), Length(max=20, message=TOO_LONG)])


class CapacityForm(FlaskForm):
    resource_id = SelectField(_("Resource"), coerce=int)
    quarter_start = DateField(
        _("A day in the quarter"),
        validators=[InputRequired(REQUIRED)],
    )
    units = IntegerField(
        _("GPUs or cores in service"),
        validators=[Optional(), NumberRange(min=0, message=_("Enter a number of at least %(min)s."))],
    )
    utilisation = IntegerField(
        _("Target utilisation (%)"),
        default=80,
        validators=[Optional(), NumberRange(1, 100, message=_("Enter a number between %(min)s and %(max)s."))],
    )
    capacity = StringField(
        _("…or the capacity in hours (TB-months for storage)"),
        validators=[Optional(), Length(max=20, message=TOO_LONG)],
    )
    reason = reason_field(WHY)

    def validate_quarter_start(self, field: DateField) -> None:
        if field.data is not None and not PLANNING_YEARS[0] <= field.data.year <= PLANNING_YEARS[1]:
            raise ValidationError(
                gettext(
                    "Plan a quarter between %(first)s and %(last)s.", first=PLANNING_YEARS[0], last=PLANNING_YEARS[1]
                )
            )


class ManualAllocationForm(FlaskForm):
    project_id = IntegerField(_("Project number"), validators=[InputRequired(REQUIRED)])
    resource_id = SelectField(_("Resource"), coerce=int)
    title = StringField(_("Title"), validators=[InputRequired(REQUIRED), Length(max=200, message=TOO_LONG)])
    hours = StringField(
        _("Hours (TB-months for storage)"), validators=[InputRequired(REQUIRED), Length(max=20, message=TOO_LONG)]
    )
    starts_on = DateField(_("Starts on"), validators=[InputRequired(REQUIRED)])
    ends_on = DateField(_("Ends on (exclusive)"), validators=[InputRequired(REQUIRED)])
    reason = TextAreaField(_("Reason"), validators=[InputRequired(REQUIRED), Length(max=1000, message=TOO_LONG)])


class OverbookingForm(FlaskForm):
    resource_id = SelectField(_("Resource"), coerce=int, id="overbooking-resource")
    factor = StringField(
        _("Overbooking factor (1.0 = none)"), validators=[InputRequired(REQUIRED), Length(max=8, message=TOO_LONG)]
    )
    reason = reason_field(WHY, id="overbooking-reason")
