from __future__ import annotations

from flask_babel import lazy_gettext as _  # lazy: translated when a form is shown; `_` is what extraction finds
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, SelectMultipleField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from portal.classroom.services import MAX_SEATS

REQUIRED = _("This field is required.")
#: WTForms fills in ``%(max)d`` (and ``%(min)d``) itself.
TOO_LONG = _("At most %(max)d characters.")


def _at_most(characters: int) -> Length:
    return Length(max=characters, message=TOO_LONG)


class CheckboxesField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class CourseForm(FlaskForm):
    title = StringField(_("Course title"), validators=[InputRequired(REQUIRED), _at_most(200)])
    allocation_id = SelectField(_("Draw the hours from"), coerce=int)
    starts_on = DateField(_("Term starts on"), validators=[InputRequired(REQUIRED)])
    ends_on = DateField(_("Term ends on (exclusive)"), validators=[InputRequired(REQUIRED)])
    student_hours = StringField(_("Hours per student"), validators=[InputRequired(REQUIRED), _at_most(20)])
    max_seats = IntegerField(
        _("Seats"),
        validators=[
            InputRequired(REQUIRED),
            NumberRange(min=1, max=MAX_SEATS, message=_("Between %(min)d and %(max)d seats.")),
        ],
    )
    profiles = CheckboxesField(_("Notebook profiles students may start"), default=["cpu"])
    required_affiliation = StringField(
        _("Required affiliation (optional, e.g. student or student@ut.ee)"), validators=[Optional(), _at_most(200)]
    )
    required_entitlement = StringField(_("Required entitlement (optional)"), validators=[Optional(), _at_most(500)])
    materials_url = StringField(
        _("Course materials: a public git repository (optional)"), validators=[Optional(), _at_most(500)]
    )


class JoinForm(FlaskForm):
    code = StringField(_("Join code"), validators=[InputRequired(REQUIRED), _at_most(40)])


class CapForm(FlaskForm):
    hours = StringField(_("New cap (hours)"), validators=[InputRequired(REQUIRED), _at_most(20)])


class LaunchForm(FlaskForm):
    profile = SelectField(_("Profile"))
    hours = StringField(_("Maximum duration (hours)"), default="1", validators=[InputRequired(REQUIRED), _at_most(10)])
