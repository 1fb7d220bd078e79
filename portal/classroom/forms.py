from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, SelectMultipleField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from portal.classroom.services import MAX_SEATS


class CheckboxesField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class CourseForm(FlaskForm):
    title = StringField("Course title", validators=[InputRequired(), Length(max=200)])
    allocation_id = SelectField("Draw the hours from", coerce=int)
    starts_on = DateField("Term starts on", validators=[InputRequired()])
    ends_on = DateField("Term ends on (exclusive)", validators=[InputRequired()])
    student_hours = StringField("Hours per student", validators=[InputRequired(), Length(max=20)])
    max_seats = IntegerField("Seats", validators=[InputRequired(), NumberRange(min=1, max=MAX_SEATS)])
    profiles = CheckboxesField("Notebook profiles students may start", default=["cpu"])
    required_affiliation = StringField(
        "Required affiliation (optional, e.g. student or student@ut.ee)", validators=[Optional(), Length(max=200)]
    )
    required_entitlement = StringField("Required entitlement (optional)", validators=[Optional(), Length(max=500)])
    materials_url = StringField(
        "Course materials: a public git repository (optional)", validators=[Optional(), Length(max=500)]
    )


class JoinForm(FlaskForm):
    code = StringField("Join code", validators=[InputRequired(), Length(max=40)])


class CapForm(FlaskForm):
    hours = StringField("New cap (hours)", validators=[InputRequired(), Length(max=20)])


class LaunchForm(FlaskForm):
    profile = SelectField("Profile")
    hours = StringField("Maximum duration (hours)", default="1", validators=[InputRequired(), Length(max=10)])
