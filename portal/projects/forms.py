from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length

from portal.projects.models import OrganisationKind, ProjectRole
from portal.projects.services import countries


class OrganisationForm(FlaskForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=200)])
    kind = SelectField("Kind", choices=[SelectChoice(k.value, k.label) for k in OrganisationKind])
    country = SelectField("Country")
    registry_id = StringField("Registry number", validators=[Length(max=64)])
    vat_number = StringField("EU VAT number", validators=[Length(max=32)])

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.country.choices = [SelectChoice("", "Choose…"), *(SelectChoice(c, n) for c, n in countries().items())]


class ProjectForm(FlaskForm):
    title = StringField("Title", validators=[InputRequired(), Length(max=200)])
    description = TextAreaField("Description", validators=[Length(max=5000)])


class InviteForm(FlaskForm):
    email = EmailField("E-mail address", validators=[InputRequired(), Length(max=320)])
    role = SelectField(
        "Role", choices=[SelectChoice(r.value, r.label) for r in ProjectRole if r != ProjectRole.PI], default="member"
    )


class MemberRoleForm(FlaskForm):
    role = SelectField("Role", choices=[SelectChoice(r.value, r.label) for r in ProjectRole])
